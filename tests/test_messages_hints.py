"""Hints from the core (upload engine, catalog) work as printed; ``abort`` never aborts a stranger's upload.

The core does not know the options in use, so it raises typed errors whose ``hints`` are the
words of ``glacierfs`` commands; the CLI renders them with :mod:`glacierfs.hints` (the
``--local`` data dir and ``--cache-dir`` of the command, made absolute and quoted). Each test
copies the printed command from stderr and runs it in the same shell against the real server.

``abort FILE`` without local state aborts only an open upload provably FILE's (every part it
holds is FILE's bytes, issue 8's rule); an upload with FILE's description but other bytes, or
no parts, is left with one line naming the command that aborts it by id.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from glacierfs.catalog import Catalog
from glacierfs.codec import encode_description
from glacierfs.treehash import MiB, tree_hash
from glacierfs.upload.state import Identity, UploadState
from tests.helpers.shell import Shell, hints_in

MTIME = 1_600_000_000


def commands_in(res: subprocess.CompletedProcess[str]) -> list[str]:
    """The commands of the one hinted error line, in order (``run: A, then: B``)."""
    found = [h for h in hints_in(res.stderr) if h.startswith("glacierfs ")]
    assert len(found) == 1, f"$ {res.args}\n{res.stderr}"
    return found[0].split(", then: ")


@pytest.fixture
def env(glacier_server_module, tmp_path: Path, request: pytest.FixtureRequest):
    """(shell, the command prefix, the vault, the server): a fresh vault of the module's server."""
    server = glacier_server_module
    vault = "h-" + request.node.name.replace("[", "-").replace("]", "")[:40]
    server.client().create_vault(vaultName=vault)
    (tmp_path / "my data").symlink_to(server.data_dir)  # a --local path with a space, relative
    return Shell(tmp_path, server), "glacierfs --local 'my data' --cache-dir 'my cache'", vault, server


def _file(sh: Shell, name: str, size: int) -> tuple[Path, bytes]:
    data = bytes((i * 7 + i // 4093) % 256 for i in range(size))
    path = sh.cwd / name
    path.write_bytes(data)
    os.utime(path, (MTIME, MTIME))
    return path, data


def _catalog(sh: Shell, g: str, vault: str) -> Catalog:
    assert sh.run(f"{g} status -v {vault}").returncode == 0  # makes the vault's catalog
    [db] = [p for p in (sh.cwd / "my cache").rglob("cache.db") if p.parent.parent.name == vault]
    return Catalog.open_dir(db.parent)


def _state(path: Path, upload_id: str, **kw: object) -> UploadState:
    st = os.stat(path)
    return UploadState(
        source=path.name, archive_path=path.name, description=encode_description(path.name, st.st_mtime),
        mtime=st.st_mtime, identity=Identity.of(st), size=st.st_size, part_size=MiB, upload_id=upload_id, **kw,
    )


def _open_uploads(server, vault: str) -> set[str]:
    return {u["MultipartUploadId"] for u in server.client().list_multipart_uploads(vaultName=vault)["UploadsList"]}


def _initiate(server, vault: str, description: str) -> str:
    return server.client().initiate_multipart_upload(vaultName=vault, archiveDescription=description,
                                                     partSize=str(MiB))["uploadId"]


def _part(server, vault: str, upload_id: str, data: bytes) -> None:
    server.client().upload_multipart_part(vaultName=vault, uploadId=upload_id, range=f"bytes 0-{len(data) - 1}/*",
                                          body=data)


# --------------------------------------------------------------------------- catalog


def test_a_corrupt_catalog_names_the_rebuild_with_the_options_in_use(env) -> None:
    sh, g, vault, server = env
    _file(sh, "a.bin", 1000)
    assert sh.run(f"{g} upload -v {vault} a.bin").returncode == 0
    catalog = _catalog(sh, g, vault)
    directory = catalog.directory
    catalog.close()
    for f in directory.iterdir():
        f.unlink()
    (directory / "cache.db").write_bytes(b"this is not a database" * 200)

    res = sh.run(f"{g} inventory -v {vault}")
    assert res.returncode == 7 and f"delete {directory} and run" in res.stderr, res.stderr
    [rebuild] = commands_in(res)
    assert "--local" in rebuild and "--cache-dir" in rebuild, rebuild
    shutil.rmtree(directory)  # what the error says to do first
    server.snapshot(vault)
    res = sh.run(rebuild, complete_jobs=True)
    assert res.returncode == 0 and res.stdout.startswith("a.bin\t1000\t"), res.stderr


# --------------------------------------------------------------------------- upload engine


def test_lost_part_hashes_name_the_abort_by_id_that_works(env) -> None:
    sh, g, vault, server = env
    path, _ = _file(sh, "b.bin", MiB + 5)
    upload_id = _initiate(server, vault, encode_description("b.bin", MTIME))
    catalog = _catalog(sh, g, vault)
    catalog.put_upload(os.path.realpath(path), _state(path, upload_id, status="completing"))  # no part hashes
    catalog.close()

    res = sh.run(f"{g} upload -v {vault} b.bin")
    assert res.returncode == 7 and "lost part hashes" in res.stderr, res.stderr
    [abort] = commands_in(res)
    assert "--local" in abort and f"--upload-id={upload_id}" in abort, abort
    done = sh.run(abort)
    assert done.returncode == 0 and done.stdout == f"aborted upload {upload_id}\n", done.stderr
    assert upload_id not in _open_uploads(server, vault)
    again = sh.run(f"{g} upload -v {vault} b.bin")
    assert again.returncode == 0 and again.stdout.endswith(f"  {MiB + 5}  b.bin\n"), again.stderr


def test_an_upload_completed_earlier_is_told_how_to_check_and_never_sent_twice(env) -> None:
    """Complete finds the upload id unknown: the printed inventory, then abort, then upload: one archive."""
    sh, g, vault, server = env
    path, data = _file(sh, "c.bin", 3000)
    description = encode_description("c.bin", MTIME)
    earlier = server.client().upload_archive(vaultName=vault, archiveDescription=description, body=data)["archiveId"]
    catalog = _catalog(sh, g, vault)
    state = _state(path, "NOSUCHUPLOADIDXYZ", status="completing", tree_hash=tree_hash(data), parts={0: tree_hash(data)})
    catalog.put_upload(os.path.realpath(path), state)
    catalog.close()

    res = sh.run(f"{g} upload -v {vault} c.bin")
    assert res.returncode == 7 and "completed earlier or has expired" in res.stderr, res.stderr
    inventory, abort = commands_in(res)
    server.snapshot(vault)
    listed = sh.run(inventory, complete_jobs=True)
    assert listed.returncode == 0 and f"\t{earlier}" in listed.stdout, listed.stderr
    done = sh.run(abort)
    assert done.returncode == 0, done.stderr
    again = sh.run(f"{g} upload -v {vault} c.bin")
    assert again.returncode == 0 and again.stdout.startswith(f"{earlier}  "), again.stderr
    server.snapshot(vault)
    inv = server.client()
    assert inv.describe_vault(vaultName=vault)["NumberOfArchives"] == 1


def test_a_part_the_service_keeps_dropping_names_the_abort_that_works(env) -> None:
    """A proxy answers part 0 with success but never stores it: Complete is refused, the part is sent
    again once, then one error naming the abort (with the proxy's --endpoint-url); it works."""
    from tests.helpers.hardening import LyingProxy

    sh, _, vault, server = env
    _, data = _file(sh, "f.bin", 2 * MiB + 3)
    dropping = {"on": True}

    def swallow(op: str, headers: dict[str, str]) -> tuple[int, dict[str, str]] | None:
        if dropping["on"] and op == "UploadMultipartPart" and headers.get("content-range", "").startswith("bytes 0-"):
            return 204, {"x-amz-sha256-tree-hash": headers["x-amz-sha256-tree-hash"]}
        return None

    with LyingProxy(server.url, lambda answer: False, swallow) as proxy:
        g = f"glacierfs --endpoint-url {proxy.url} --cache-dir 'my cache'"
        res = sh.run(f"{g} upload -v {vault} --part-size 1M --concurrency 1 f.bin")
        assert res.returncode == 6 and "still fails" in res.stderr, res.stderr
        [abort] = commands_in(res)
        assert f"--endpoint-url {proxy.url}" in abort and "--upload-id=" in abort, abort
        dropping["on"] = False
        done = sh.run(abort)
        assert done.returncode == 0 and done.stdout.startswith("aborted upload "), done.stderr
        assert _open_uploads(server, vault) == set()
        again = sh.run(f"{g} upload -v {vault} --part-size 1M f.bin")
        assert again.returncode == 0 and again.stdout.endswith(f"  {len(data)}  f.bin\n"), again.stderr


# --------------------------------------------------------------------------- abort


def test_abort_leaves_an_upload_that_is_not_provably_the_files(env) -> None:
    sh, g, vault, server = env
    _, data = _file(sh, "d.bin", 2 * MiB + 10)
    description = encode_description("d.bin", MTIME)
    ours = _initiate(server, vault, description)
    _part(server, vault, ours, data[:MiB])
    foreign = _initiate(server, vault, description)  # same path and mtime elsewhere, other bytes
    _part(server, vault, foreign, bytes(MiB))
    empty = _initiate(server, vault, description)  # no parts: nothing shows whose it is

    res = sh.run(f"{g} abort -v {vault} d.bin")
    assert res.returncode == 0 and res.stdout == "aborted d.bin\n", res.stderr
    assert _open_uploads(server, vault) == {foreign, empty}  # only the provable one is gone
    left = [ln for ln in res.stderr.splitlines() if "left open upload" in ln]
    assert len(left) == 2 and any(foreign in ln for ln in left) and any(empty in ln for ln in left), res.stderr

    res = sh.run(f"{g} abort -v {vault} d.bin")  # nothing provable is left: not found, both named
    assert res.returncode == 3 and "2 open upload(s) with its description left alone" in res.stderr, res.stderr
    assert _open_uploads(server, vault) == {foreign, empty}

    [named] = [h for h in hints_in(res.stderr) if foreign in h]  # the user decides it is theirs
    done = sh.run(named)
    assert done.returncode == 0 and done.stdout == f"aborted upload {foreign}\n", done.stderr
    assert _open_uploads(server, vault) == {empty}
    gone = sh.run(named)
    assert gone.returncode == 3 and f"no open upload {foreign}" in gone.stderr, gone.stderr
    usage = sh.run(f"{g} abort -v {vault}")
    assert usage.returncode == 2 and "give either FILE or --upload-id" in usage.stderr, usage.stderr


def test_abort_by_id_forgets_the_local_state_naming_it(env) -> None:
    """A sync's or a mount's pending upload has no FILE to name: its id does, and its state goes too."""
    sh, g, vault, server = env
    path, _ = _file(sh, "e.bin", 1000)
    upload_id = _initiate(server, vault, encode_description("e.bin", MTIME))
    catalog = _catalog(sh, g, vault)
    catalog.put_upload("sync:e.bin", _state(path, upload_id, status="uploading"))
    catalog.close()
    res = sh.run(f"{g} abort -v {vault} --upload-id={upload_id}")
    assert res.returncode == 0, res.stderr
    assert upload_id not in _open_uploads(server, vault)
    status = sh.run(f"{g} status -v {vault}")
    assert "upload pending" not in status.stdout, status.stdout


def test_the_mounts_not_cached_hint_works_as_printed(glacier_server_factory, tmp_path: Path) -> None:
    """A real mount's log line for an archive that is not cached ends in a ``glacierfs download``
    command with the mount's options (relative --cache-dir with a space, made absolute) and a name
    starting with '-' (after ``--``); pasted into a shell as printed, it downloads the file."""
    from tests.helpers.mounts import MountSet, skip_without_fuse, wait_until

    skip_without_fuse()
    server = glacier_server_factory()
    server.client().create_vault(vaultName="hv")
    mounts = MountSet()
    mnt = tmp_path / "mnt"
    try:
        res = mounts.mount("--endpoint-url", server.url, "--region", "us-east-1", "--cache-dir", "my cache",
                           "--cache-size", "1", "hv", mnt=mnt, cwd=tmp_path)
        log = mounts.log_of(res)
        cold, data = mnt / "-cold file.txt", b"cold bytes\n" * 10
        cold.write_bytes(data)
        assert subprocess.run(["sync", str(cold)], timeout=60).returncode == 0
        (mnt / "warm").write_bytes(b"w")  # evicts the cold file (--cache-size 1)
        assert subprocess.run(["sync", str(mnt / "warm")], timeout=60).returncode == 0

        def state() -> bytes:
            return os.getxattr(cold, "user.glacier.state")

        wait_until(lambda: state() == b"archived", 30, "the cold file evicted")
        with pytest.raises(OSError):
            cold.read_bytes()
        lines = [ln for ln in log.read_text().splitlines() if "is in Glacier and not cached locally" in ln]
        assert lines, log.read_text()
        hint = lines[-1].split(", or: ", 1)[1]
        assert "--cache-dir" in hint and str(tmp_path / "my cache") in hint and " -- " in hint, hint
        out = tmp_path / "out"
        out.mkdir()
        got = Shell(out, server).run(hint, complete_jobs=True)
        assert got.returncode == 0, got.stderr
        assert (out / "-cold file.txt").read_bytes() == data
    finally:
        mounts.cleanup()
