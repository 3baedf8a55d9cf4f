"""Hardening: corrupt or truncated local state files.

A pending upload is left behind by a CLI that dies (SIGKILL from inside, after two parts the
server accepted). Then the catalog files under ``--cache-dir`` are damaged in several ways and
the commands are run again. Each command either works (a transparent rebuild) or fails with one
clear error line that says how to rebuild - the same error every time, never a traceback or a
hang. Following the advice (deleting the named directory) and re-running the upload must finish
the *same* pending upload: exactly one archive on the server and no open multipart upload, so
the pending upload was never lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from glacierfs.treehash import MiB
from tests.helpers.hardening import (
    Cli,
    Result,
    assert_exactly_once,
    assert_one_error,
    open_uploads,
    random_files,
)

SEED = 4242

# The child kills itself once the server accepted its second part: an upload pending in the
# catalog and open on the server (a ``sitecustomize`` for that process only).
DIE_HOOK = """
import os, signal, threading

import glacierfs.client as c

_real = c.Glacier.upload_part
_count = [0]
_lock = threading.Lock()

def upload_part(self, *args, **kwargs):
    result = _real(self, *args, **kwargs)
    with _lock:
        _count[0] += 1
        if _count[0] >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return result

c.Glacier.upload_part = upload_part
"""


def pending_upload(cli: Cli, tmp_path: Path, name: str) -> None:
    hook = tmp_path / "die-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(DIE_HOOK)
    env = cli.env()
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run(
        cli.argv(("upload", "-q", "-v", "v", "--part-size", "1M", "--concurrency", "1", name)),
        cwd=cli.cwd, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == -9, f"the upload should have died: {proc.returncode} {proc.stderr}"


def catalog_dir(cache: Path) -> Path:
    [db] = list(cache.rglob("cache.db"))
    return db.parent


def damage(directory: Path, how: str, rng: random.Random) -> None:
    db = directory / "cache.db"
    size = db.stat().st_size
    if how == "truncate-half":
        os.truncate(db, size // 2)
    elif how == "truncate-zero":
        os.truncate(db, 0)
    elif how == "garbage":
        db.write_bytes(rng.randbytes(size))
    elif how == "header":
        with open(db, "r+b") as f:
            f.write(b"this is not sqlite at all")
    elif how == "pages":
        with open(db, "r+b") as f:
            for _ in range(4):
                page = rng.randrange(1, max(2, size // 4096))
                f.seek(page * 4096)
                f.write(rng.randbytes(4096))
    elif how == "wal-garbage":
        (directory / "cache.db-wal").write_bytes(rng.randbytes(64 * 1024))
        with contextlib.suppress(FileNotFoundError):
            (directory / "cache.db-shm").unlink()
    elif how == "deleted":
        shutil.rmtree(directory)
    else:  # pragma: no cover
        raise AssertionError(how)


def rebuild_dir(res: Result, cache: Path) -> Path:
    """The directory an error tells the user to delete (it must be inside the cache dir); the error
    must also say what becomes of the pending uploads that the damaged state held."""
    m = re.search(r"delete (\S+) and run", res.stderr)
    assert m, f"the error does not say how to rebuild:\n{res}"
    assert "pending uploads" in res.stderr, f"the error does not say what happens to pending uploads:\n{res}"
    target = Path(m.group(1))
    assert cache.resolve() in target.resolve().parents, f"told to delete {target}, outside {cache}"
    return target


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "how", ["truncate-half", "truncate-zero", "header", "pages", "wal-garbage", "deleted"]
)
def test_damaged_catalog_never_loses_a_pending_upload(how: str, glacier_server, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}:{how}")
    ctx = f"seed {SEED} damage {how}"
    glacier_server.client().create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 2, [3 * MiB])
    done, pending = list(files)
    cache = tmp_path / "cache"
    cli = Cli(glacier_server.url, cache, work)
    cli("upload", "-q", "-v", "v", done)
    pending_upload(cli, tmp_path, pending)
    assert len(open_uploads(glacier_server, "v")) == 1, ctx
    status = json.loads(cli("status", "-v", "v", "--json").stdout)
    assert [u["path"] for u in status["pending_uploads"]] == [pending], ctx

    damage(catalog_dir(cache), how, rng)

    outcomes = []
    for args in (("status", "-v", "v", "--json"), ("inventory", "-v", "v"), ("status", "-v", "v", "--json")):
        res = cli(*args, code=None, timeout=60)
        outcomes.append(res.returncode)
        if res.returncode not in (0, 8):  # 8: no inventory yet (the vault is new), listing still printed
            assert_one_error(res, codes=(7,), match="rebuild", ctx=ctx)
            rebuild_dir(res, cache)
    # the same answer each time: no state that half-repairs itself into something else
    assert outcomes[0] == outcomes[2], f"{ctx}: {outcomes}"
    if outcomes[0] == 7:
        _mount_refuses_clearly(glacier_server, cache, tmp_path, ctx)
    print(f"{ctx}: status/inventory/status exit {outcomes}")

    res = cli("upload", "-q", "-v", "v", pending, code=None, timeout=120)
    if res.returncode != 0:
        assert_one_error(res, codes=(7,), match="rebuild", ctx=ctx)
        again = cli("upload", "-q", "-v", "v", pending, code=None, timeout=120)
        assert again.returncode == res.returncode and again.stderr == res.stderr, f"{ctx}: not stable\n{again}"
        shutil.rmtree(rebuild_dir(res, cache))  # what the error says to do
        res = cli("upload", "-q", "-v", "v", pending, timeout=120)
    # the pending upload was taken over, not started again beside the open one
    assert_exactly_once(glacier_server, "v", files, ctx)
    assert len(res.lines) == 1 and res.lines[0].endswith(f"  {pending}"), f"{ctx}\n{res}"
    # and the catalog works again afterwards
    glacier_server.snapshot("v")
    listed = sorted(line.split("\t")[0] for line in cli("inventory", "-v", "v", "-f").lines)
    assert listed == sorted(files), f"{ctx}: {listed}"


def _mount_refuses_clearly(server, cache: Path, tmp_path: Path, ctx: str) -> None:
    """``glacierfs mount`` on the damaged catalog: one clear error and exit 7, nothing left mounted."""
    from tests.helpers import mounts as tm

    if tm.fuse_available():
        return
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = Cli(server.url, cache, tmp_path)
    try:
        res = cli("mount", "v", str(mnt), "--region", "us-east-1", code=None, timeout=90)
        assert_one_error(res, codes=(7,), match="rebuild", ctx=f"{ctx}: mount")
        assert not tm.mounted(mnt), ctx
    finally:
        tm.unmount(mnt)


@pytest.mark.timeout(120)
def test_abort_finds_a_pending_upload_whose_state_is_gone(glacier_server, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    glacier_server.client().create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 1, [3 * MiB])
    [name] = files
    cache = tmp_path / "cache"
    cli = Cli(glacier_server.url, cache, work)
    pending_upload(cli, tmp_path, name)
    assert len(open_uploads(glacier_server, "v")) == 1
    shutil.rmtree(catalog_dir(cache))
    assert cli("abort", "-v", "v", name).lines == [f"aborted {name}"]
    assert open_uploads(glacier_server, "v") == [], f"seed {SEED}"
    cli.error(3, "abort", "-v", "v", name, match=f"no pending upload of {name}")


@pytest.mark.timeout(120)
def test_damaged_download_sidecar_and_partial_are_refetched(glacier_server, tmp_path: Path) -> None:
    """A truncated partial file and a garbled sidecar next to the target: verified download anyway."""
    rng = random.Random(SEED)
    glacier_server.client().create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 1, [3 * MiB])
    [name] = files
    cli = Cli(glacier_server.url, tmp_path / "cache", work)
    aid = cli("upload", "-q", "-v", "v", name).lines[0].split("  ")[0]
    out = tmp_path / "out"
    out.mkdir()
    base = Path(name).name
    (out / f".{base}.glacierfs-part").write_bytes(rng.randbytes(1000))
    (out / f".{base}.glacierfs-part.json").write_bytes(b'{"archive_id": "' + aid.encode() + b'", "chunks": {"0": [')
    cli("download", "-q", "-v", "v", f"-a={aid}", "-o", str(out))
    assert (out / base).read_bytes() == files[name], f"seed {SEED}"
    assert sorted(os.listdir(out)) == [base], f"seed {SEED}: leftovers {os.listdir(out)}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("garbage", [b'{"path": "/only-copy.bin", "mt', b"[1, 2]"], ids=["torn", "list"])
def test_mount_staged_file_with_a_damaged_manifest_is_not_lost(
    garbage: bytes, glacier_server_factory, tmp_path: Path
) -> None:
    """A file closed in the mount but not uploaded yet lives only in staging: damaging its manifest
    must not make the next mount delete those bytes (the only copy) as if the copy had been cut off."""
    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    rng = random.Random(SEED)
    port, data_dir = str(_free_port()), tmp_path / "server-data"
    failing = glacier_server_factory("--port", port, "--faults", "500=1.0", "--faults-ops",
                                     "InitiateMultipartUpload,UploadMultipartPart", data_dir=data_dir)
    failing.client().create_vault(vaultName="mv")
    cache = tmp_path / "cache"
    data = rng.randbytes(300_000)
    m = tm.Mount(tmp_path / "mnt", cache, failing.url, "mv")
    try:
        m.start()
        (m.mnt / "only-copy.bin").write_bytes(data)
        manifests: list[Path] = []
        deadline = time.monotonic() + 30
        while not manifests and time.monotonic() < deadline:
            manifests = list(cache.rglob("staging/*.json"))
            time.sleep(0.05)
        assert manifests, f"no manifest after close\n{m.log()}"
        m.kill()
    finally:
        m.close()
    failing.stop()
    glacier_server_factory("--port", port, data_dir=data_dir)
    [manifest] = manifests
    manifest.write_bytes(garbage)
    m2 = tm.Mount(tmp_path / "mnt", cache, f"http://127.0.0.1:{port}", "mv")
    try:
        m2.start()  # returns once mounted: recovery of the staging area ran before the mount
        (m2.mnt / "after.txt").write_bytes(b"the mount still works")
        listed = sorted(os.listdir(m2.mnt))
        log_text = m2.log()
    finally:
        m2.close()
    assert "Traceback" not in log_text, log_text
    assert listed == ["after.txt"], f"{listed}\n{log_text}"
    kept = [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == data]
    assert kept, f"seed {SEED}: the only copy of a closed file was deleted because its manifest was damaged\n{log_text}"
    assert any(str(kept[0]) in line for line in log_text.splitlines()), (
        f"seed {SEED}: the log does not say where the bytes were kept\n{log_text}"
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_mount_never_serves_damaged_cached_bytes_silently(how: str, glacier_server, tmp_path: Path) -> None:
    """The mount's cache of archive bytes (data/<archive id>) is damaged between two mounts: reading
    the file must give the archive's bytes or an error, never the damaged bytes as if they were it."""
    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    rng = random.Random(SEED)
    glacier_server.client().create_vault(vaultName="mv")
    cache = tmp_path / "cache"
    data = rng.randbytes(200_000)
    m = tm.Mount(tmp_path / "mnt", cache, glacier_server.url, "mv")
    try:
        m.start()
        (m.mnt / "f.bin").write_bytes(data)
        res = subprocess.run(["sync", str(m.mnt / "f.bin")], capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr + m.log()
    finally:
        m.close()
    [cached] = [p for p in cache.rglob("data/*") if p.is_file()]
    assert cached.read_bytes() == data
    if how == "truncate":
        os.truncate(cached, len(data) // 2)
    else:
        raw = bytearray(data)
        raw[1000] ^= 0xFF
        cached.write_bytes(bytes(raw))
    m2 = tm.Mount(tmp_path / "mnt", cache, glacier_server.url, "mv")
    try:
        m2.start()
        try:
            got = (m2.mnt / "f.bin").read_bytes()
        except OSError as exc:
            got = exc
    finally:
        m2.close()
    assert isinstance(got, OSError) or got == data, (
        f"seed {SEED}: the mount served {len(got)} damaged bytes ({how}) as the archive\n{m2.log()}"
    )
