"""Replacing archives in the mount (issue 11): O_TRUNC and rename over an archive stage the new
content, the old archive is deleted only after the new one is archived, durably across a crash;
and the retrieval limits of the mount (setfattr on a directory, the --auto-retrieve cap).

Core tests drive VaultFS against a real ``glacierfs serve`` (no FUSE); the mount tests run real
``rsync``, ``cp -f``, ``mv`` and ``setfattr`` on a real FUSE mount.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from glacierfs.errors import ServiceError
from glacierfs.treehash import tree_hash
from tests.helpers.mounts import VAULT as MVAULT
from tests.helpers.mounts import server_inventory, skip_without_fuse, unmount, wait_until
from tests.helpers.vfs import VAULT, Env, err, read_all, sync, write_file


@pytest.fixture
def env(glacier_server, tmp_path):
    e = Env(glacier_server, tmp_path)
    yield e
    e.close()


@pytest.fixture
def slow_jobs_env(glacier_server_factory, tmp_path):
    """Retrieval jobs stay InProgress until the test completes them (admin hook)."""
    e = Env(glacier_server_factory("--job-delay", "3600"), tmp_path)
    yield e
    e.close()


def server_archives(env: Env) -> dict[str, dict]:
    """The vault's archives as the server's next inventory lists them, by id."""

    return {a["ArchiveId"]: a for a in server_inventory(env.server, VAULT)}


def archive_id(fs: Any, path: str) -> str:
    return fs.getxattr(path, "user.glacier.archive_id").decode()


def archived(fs: Any, path: str, data: bytes) -> str:
    write_file(fs, path, data)
    sync(fs, path)
    return archive_id(fs, path)


def retrieval_jobs(env: Env) -> list[str]:
    """Archive ids of the vault's retrieval jobs, one per job."""
    jobs = env.server.client().list_jobs(vaultName=VAULT)["JobList"]
    return [j["ArchiveId"] for j in jobs if j["Action"] == "ArchiveRetrieval"]


# --------------------------------------------------------------------------- replace (core)


def test_o_trunc_replaces_and_deletes_the_old_archive_after_the_new_one(env, caplog):
    fs = env.fs()
    old = archived(fs, "/f", b"old content")
    caplog.set_level(logging.INFO)
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"new!", 0)
    assert fs.getattr("/f").size == 4  # the path shows the new content meanwhile
    fs.flush(fh)
    fs.release(fh)
    assert read_all(fs, "/f") == b"new!"
    sync(fs, "/f")  # returns once the new archive exists and the old one is deleted
    new = archive_id(fs, "/f")
    assert new != old and env.catalog.get(old) is None
    assert [n for n, _ in fs.readdir("/")] == ["f"]
    assert read_all(fs, "/f") == b"new!"
    on_server = server_archives(env)
    assert list(on_server) == [new] and on_server[new]["SHA256TreeHash"] == tree_hash(b"new!")
    assert "early deletion" in caplog.text  # the old archive was seconds old
    assert os.listdir(fs.staging.dir) == []


def test_rename_over_an_archive_replaces_it_and_leaves_no_stray(env):
    """An editor's save: write f.tmp, mv f.tmp f (also rsync's temp file, sed -i)."""
    fs = env.fs()
    fs.mkdir("/d")
    old = archived(fs, "/d/f", b"v1")
    write_file(fs, "/d/f.tmp", b"version 2")
    fs.rename("/d/f.tmp", "/d/f")
    assert err(fs.getattr, "/d/f.tmp") == errno.ENOENT
    assert read_all(fs, "/d/f") == b"version 2"
    sync(fs, "/d/f")
    assert [n for n, _ in fs.readdir("/d")] == ["f"]
    new = archive_id(fs, "/d/f")
    on_server = server_archives(env)
    assert old not in on_server and list(on_server) == [new]
    assert on_server[new]["SHA256TreeHash"] == tree_hash(b"version 2")


def test_rename_over_an_archive_while_the_temp_file_uploads(env):
    """The temp file's upload is running when it is renamed: superseded, and uploaded again
    under the new name (never left waiting: fsync returns)."""
    from glacierfs.upload import UploadEngine

    started: list[str] = []

    class Slow(UploadEngine):
        def upload(self, source: Any, archive_path: str, **kw: Any) -> Any:
            started.append(archive_path)
            time.sleep(0.5)
            return super().upload(source, archive_path, **kw)

    fs = env.fs(engine_factory=lambda: Slow(env.glacier, env.catalog, VAULT))
    old = archived(fs, "/f", b"v1")
    write_file(fs, "/f.tmp", b"v2")
    wait_until(lambda: "f.tmp" in started, 30, "the temp file's upload")
    fs.rename("/f.tmp", "/f")
    sync(fs, "/f")
    on_server = server_archives(env)
    assert old not in on_server and len(on_server) == 1
    assert next(iter(on_server.values()))["SHA256TreeHash"] == tree_hash(b"v2")


def test_a_second_replace_before_the_first_uploads_replaces_the_same_archive(env):
    fs = env.fs(upload_delay=3600)
    old = archived(fs, "/f", b"v1")
    write_file(fs, "/f.tmp", b"v2")
    fs.rename("/f.tmp", "/f")
    write_file(fs, "/f.tmp", b"v3")
    fs.rename("/f.tmp", "/f")  # drops v2's staged file; v3 inherits the archive to replace
    sync(fs, "/f")
    on_server = server_archives(env)
    assert old not in on_server and len(on_server) == 1
    assert next(iter(on_server.values()))["SHA256TreeHash"] == tree_hash(b"v3")


def test_rm_of_a_replacement_removes_the_path(env):
    fs = env.fs(upload_delay=3600)
    old = archived(fs, "/f", b"v1")
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"v2", 0)
    fs.flush(fh)
    fs.release(fh)
    fs.unlink("/f")
    assert err(fs.getattr, "/f") == errno.ENOENT
    assert env.catalog.get(old) is None and old not in server_archives(env)


def test_rm_of_an_open_replacement_removes_the_path(env):
    """libfuse renames a file rm'ed while open to .fuse_hidden*: for a replacement that is an rm
    of the path, so the archive it was to replace goes too; the reader keeps its bytes."""
    fs = env.fs(upload_delay=3600)
    old = archived(fs, "/f", b"v1")
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"v2", 0)
    fs.flush(fh)
    fs.release(fh)
    reader = fs.open("/f", os.O_RDONLY)
    fs.rename("/f", "/.fuse_hidden0000000100000001")
    assert fs.read(reader, 10, 0) == b"v2"
    fs.release(reader)
    assert err(fs.getattr, "/f") == errno.ENOENT
    assert env.catalog.get(old) is None and old not in server_archives(env)


def test_append_and_in_place_writes_stay_refused(env, caplog):
    fs = env.fs()
    archived(fs, "/f", b"v1")
    assert err(fs.open, "/f", os.O_WRONLY | os.O_APPEND) == errno.EPERM
    assert "replace it whole" in caplog.text
    assert err(fs.truncate, "/f", 0) == errno.EPERM


def test_a_crash_before_the_new_archive_exists_keeps_the_old_one(env):
    """kill -9 after close(2) returned, before the upload: the state on disk is the manifest
    (with the archive to replace) and the staged bytes; the old archive is never touched."""
    fs = env.fs(upload_delay=3600)
    old = archived(fs, "/f", b"v1")
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"v2", 0)
    fs.flush(fh)
    fs.release(fh)
    fs.stop()  # nothing uploaded: as after a kill
    assert old in server_archives(env) and env.catalog.get(old) is not None
    again = env.fs()
    deadline = time.monotonic() + 30
    while env.catalog.get(old) is not None:  # the next mount finishes the replacement
        assert time.monotonic() < deadline, "the replacement was not resumed"
        time.sleep(0.05)
    on_server = server_archives(env)
    assert list(on_server) == [archive_id(again, "/f")]
    assert read_all(again, "/f") == b"v2"


class _NoDeletes:
    """The Glacier client with DeleteArchive failing: the state on disk is then exactly that of a
    kill -9 between "new archive exists" and "old archive deleted"."""

    def __init__(self, glacier: Any) -> None:
        self._glacier = glacier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._glacier, name)

    def delete_archive(self, vault: str, archive_id: str) -> None:
        raise ServiceError("simulated crash before DeleteArchive")


def test_a_crash_between_new_archived_and_old_deleted_deletes_the_old_at_the_next_mount(env):
    fs = env.fs()
    old = archived(fs, "/f", b"v1")
    fs.glacier = _NoDeletes(env.glacier)
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"v2", 0)
    fs.flush(fh)
    fs.release(fh)
    sync(fs, "/f")
    assert old in server_archives(env) and len(server_archives(env)) == 2
    manifests = [n for n in os.listdir(fs.staging.dir) if n.endswith(".json")]
    assert len(manifests) == 1  # the pending delete, recorded durably
    fs.stop()
    again = env.fs()
    deadline = time.monotonic() + 30
    while os.listdir(again.staging.dir):
        assert time.monotonic() < deadline, "the pending delete was not finished"
        time.sleep(0.05)
    on_server = server_archives(env)
    assert old not in on_server and len(on_server) == 1
    assert next(iter(on_server.values()))["SHA256TreeHash"] == tree_hash(b"v2")
    assert read_all(again, "/f") == b"v2"


def test_an_archive_made_before_a_crash_is_found_and_never_mistaken_for_the_replaced_one(env, caplog):
    """The engine made the new archive, then the bookkeeping was cut off (here: an error right
    after the upload; at a restart the same path runs). The retry finds the new archive by
    path, size and tree hash (never the replaced one): no second upload, the old one deleted."""
    from glacierfs.upload import UploadEngine

    armed: list[bool] = []

    class CutOff(UploadEngine):
        def upload(self, source: Any, archive_path: str, **kw: Any) -> Any:
            archive = super().upload(source, archive_path, **kw)
            if armed and armed.pop():
                raise ServiceError("simulated crash after the archive was made")
            return archive

    fs = env.fs(engine_factory=lambda: CutOff(env.glacier, env.catalog, VAULT))
    old = archived(fs, "/f", b"old bytes")
    caplog.set_level(logging.INFO)
    armed.append(True)
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"new bytes", 0)
    fs.flush(fh)
    fs.release(fh)
    sync(fs, "/f")
    assert "was already uploaded as" in caplog.text
    on_server = server_archives(env)
    assert old not in on_server and list(on_server) == [archive_id(fs, "/f")], on_server
    assert read_all(fs, "/f") == b"new bytes"
    # the same bytes again: whether the engine reuses the archive there (same description) or
    # makes a new one, one archive is left, never none
    fh = fs.open("/f", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"new bytes", 0)
    fs.flush(fh)
    fs.release(fh)
    sync(fs, "/f")
    on_server = server_archives(env)
    assert list(on_server) == [archive_id(fs, "/f")]
    assert on_server[archive_id(fs, "/f")]["SHA256TreeHash"] == tree_hash(b"new bytes")


# --------------------------------------------------------------------------- retrieval limits (core)


def _cold(fs: Any, paths: list[str]) -> None:
    """Archives whose bytes are not cached (as once evicted)."""
    for p in paths:
        fs.cache.discard(archived(fs, p, p.encode() * 10))
    for p in paths:
        assert fs.getxattr(p, "user.glacier.state") == b"archived"


def test_setfattr_on_a_directory_retrieves_the_subtree_within_the_cap(slow_jobs_env, caplog):
    env = slow_jobs_env
    fs = env.fs(retrieve_max_jobs=3)
    fs.mkdir("/d")
    fs.mkdir("/d/e")
    cold = ["/d/a", "/d/b", "/d/e/c", "/d/e/d", "/d/e/g"]
    _cold(fs, cold)
    caplog.set_level(logging.INFO)
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")
    first = retrieval_jobs(env)
    assert len(first) == 3 and len(set(first)) == 3
    assert caplog.text.count("retrieval (Bulk) started for") == 3
    assert "--retrieve-max-jobs" in caplog.text
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")  # the cap is full: nothing more
    assert sorted(retrieval_jobs(env)) == sorted(first)
    env.server.complete_jobs()
    wait_until(lambda: sum(fs.getxattr(p, "user.glacier.state") == b"cached" for p in cold) == 3, 30,
               "three retrievals cached")
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")  # the other two, never one of the first again
    jobs = retrieval_jobs(env)
    assert len(jobs) == 5 and len(set(jobs)) == 5
    env.server.complete_jobs()
    wait_until(lambda: all(fs.getxattr(p, "user.glacier.state") == b"cached" for p in cold), 30, "all cached")
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")
    assert len(retrieval_jobs(env)) == 5
    assert read_all(fs, "/d/e/g") == b"/d/e/g" * 10


def test_setfattr_on_a_directory_stays_within_the_bytes_per_hour(slow_jobs_env, caplog):
    """--retrieve-max-bytes-per-hour: a directory retrieval starts jobs for at most that many bytes
    of archives an hour (one bigger archive alone when the hour is empty), never one twice."""
    env = slow_jobs_env
    fs = env.fs(retrieve_max_bytes_per_hour=100)
    now = [1000.0]
    fs.retrievals.clock = lambda: now[0]  # the hour's window, moved by the test
    fs.mkdir("/d")
    sizes = {"/d/a": 40, "/d/b": 40, "/d/c": 60, "/d/d": 60, "/d/e": 150}
    for p, n in sizes.items():
        fs.cache.discard(archived(fs, p, b"x" * n))
    caplog.set_level(logging.INFO)
    ids = {archive_id(fs, p): p for p in sizes}

    def retrieving() -> list[str]:
        return sorted(ids[a] for a in retrieval_jobs(env))

    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")
    assert retrieving() == ["/d/a", "/d/b"]  # 80 bytes; /d/c would make 140
    assert "3 archive(s) not retrieved yet" in caplog.text and "--retrieve-max-bytes-per-hour" in caplog.text
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")  # the same hour: nothing more
    assert retrieving() == ["/d/a", "/d/b"]
    now[0] += 3601  # the next hour
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")
    assert retrieving() == ["/d/a", "/d/b", "/d/c"]  # 60; /d/d would make 120
    now[0] += 3601
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")
    assert retrieving() == ["/d/a", "/d/b", "/d/c", "/d/d"]
    now[0] += 3601
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")  # bigger than the limit: alone in an empty hour
    assert retrieving() == sorted(sizes)
    fs.setxattr("/d", "user.glacier.retrieve", b"Bulk")
    assert len(retrieval_jobs(env)) == 5


def test_auto_retrieve_is_capped_per_hour(slow_jobs_env, caplog):
    env = slow_jobs_env
    fs = env.fs(auto_retrieve="Bulk", auto_retrieve_max=2)
    cold = ["/a", "/b", "/c"]
    _cold(fs, cold)
    for p in cold:
        assert err(fs.open, p, os.O_RDONLY) == errno.EAGAIN
    assert len(retrieval_jobs(env)) == 2
    assert caplog.text.count("started a Bulk retrieval (--auto-retrieve") == 2
    assert "cap of 2 job(s) per hour is reached" in caplog.text
    for p in cold:  # again: running ones are joined, the cap still holds
        assert err(fs.open, p, os.O_RDONLY) == errno.EAGAIN
    assert len(retrieval_jobs(env)) == 2
    assert [fs.getxattr(p, "user.glacier.state") for p in cold].count(b"retrieving") == 2


# --------------------------------------------------------------------------- real mounts


def run(*cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, **kw)


def _settled(server: Any, mnt: Path, expected: dict[str, bytes]) -> None:
    """Wait until the vault holds exactly one archive per expected path with its content."""
    from glacierfs.codec import decode_description

    want = {p: tree_hash(b) for p, b in expected.items()}
    seen: dict[str, list[str]] = {}

    def done() -> bool:
        nonlocal seen
        seen = {}
        for a in server_inventory(server, MVAULT):
            seen.setdefault(decode_description(a["ArchiveDescription"]).path or "", []).append(a["SHA256TreeHash"])
        return seen == {p: [h] for p, h in want.items()}

    try:
        wait_until(done, 60, "one archive per path with the new content", interval=0.3)
    except AssertionError:
        raise AssertionError(f"vault: {seen}\nwanted: {want}") from None


@pytest.fixture
def rsync_available():
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (scripts/setup test installs it)")


def test_rsync_of_a_changed_tree_replaces_changed_files(glacier_server, mount_factory, tmp_path, rsync_available):
    m = mount_factory(glacier_server, "--cache-size", "1")  # the old archives are (mostly) not cached: rsync must not need them
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": b"a1", "b.txt": b"b1", "sub/c.txt": b"c1", "sub/keep.txt": b"same"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    res = run("rsync", "-a", f"{src}/", f"{m.mnt}/")
    assert res.returncode == 0, res.stderr + m.log()
    _settled(glacier_server, m.mnt, files)
    # change two files (new sizes and mtimes), add one
    (src / "a.txt").write_bytes(b"a2 changed")
    (src / "sub/c.txt").write_bytes(b"c2 changed too")
    (src / "sub/new.txt").write_bytes(b"new")
    os.utime(src / "a.txt", (1_700_000_000, 1_700_000_000))
    files.update({"a.txt": b"a2 changed", "sub/c.txt": b"c2 changed too", "sub/new.txt": b"new"})
    res = run("rsync", "-a", f"{src}/", f"{m.mnt}/")
    assert res.returncode == 0, res.stderr + m.log()
    assert (m.mnt / "a.txt").read_bytes() == b"a2 changed"  # shown at once, from the staged bytes
    _settled(glacier_server, m.mnt, files)
    assert sorted(os.listdir(m.mnt / "sub")) == ["c.txt", "keep.txt", "new.txt"]
    assert (m.mnt / "a.txt").stat().st_mtime == 1_700_000_000
    res = run("rsync", "-a", "--itemize-changes", f"{src}/", f"{m.mnt}/")  # a second run changes nothing
    assert res.returncode == 0 and not [ln for ln in res.stdout.splitlines() if ln.startswith(">")], res.stdout


def test_editor_save_and_cp_f_over_archives(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    f, g = m.mnt / "notes.txt", m.mnt / "copy.txt"
    f.write_bytes(b"first draft\n")
    g.write_bytes(b"copy v1\n")
    assert run("sync", str(f), str(g)).returncode == 0, m.log()
    # the editor: write f.tmp, rename it over f
    (m.mnt / "notes.txt.tmp").write_bytes(b"second draft\n")
    assert run("mv", str(m.mnt / "notes.txt.tmp"), str(f)).returncode == 0, m.log()
    new = tmp_path / "new.txt"
    new.write_bytes(b"copy v2, longer\n")
    res = run("cp", "-f", str(new), str(g))
    assert res.returncode == 0, res.stderr + m.log()
    assert f.read_bytes() == b"second draft\n" and g.read_bytes() == b"copy v2, longer\n"
    _settled(glacier_server, m.mnt, {"notes.txt": b"second draft\n", "copy.txt": b"copy v2, longer\n"})
    wait_until(lambda: run("getfattr", "--only-values", "-n", "user.glacier.state", str(g)).stdout == "cached",
               30, "copy.txt archived")
    res = run("sh", "-c", f"echo appended >> '{g}'")  # >> to an archive: refused, with a hint in the log
    assert res.returncode != 0 and "Operation not permitted" in res.stderr
    assert "replace it whole" in m.log()
    assert sorted(os.listdir(m.mnt)) == ["copy.txt", "notes.txt"]
    # `>` over an archive replaces it too
    assert run("sh", "-c", f"echo third > '{f}'").returncode == 0, m.log()
    _settled(glacier_server, m.mnt, {"notes.txt": b"third\n", "copy.txt": b"copy v2, longer\n"})
    # sed -i: reads the (cached) archive, writes a temp file in the directory, renames it over
    wait_until(lambda: run("getfattr", "--only-values", "-n", "user.glacier.state", str(f)).stdout == "cached",
               30, "notes.txt archived")
    res = run("sed", "-i", "s/third/fourth/", str(f))
    assert res.returncode == 0, res.stderr + m.log()
    _settled(glacier_server, m.mnt, {"notes.txt": b"fourth\n", "copy.txt": b"copy v2, longer\n"})
    assert sorted(os.listdir(m.mnt)) == ["copy.txt", "notes.txt"]
    assert "early deletion" in m.log()


def test_kill_before_the_new_archive_exists_keeps_the_old_one(glacier_server_factory, mount_factory, tmp_path):
    """kill -9 of the mount while the replacing upload runs (the server paces it): the old
    archive is still in the vault; the next mount finishes the replacement."""

    server = glacier_server_factory("--bandwidth", "128K")
    m = mount_factory(server)
    f = m.mnt / "f.txt"
    f.write_bytes(b"old\n")
    assert run("sync", str(f)).returncode == 0, m.log()
    old = run("getfattr", "--only-values", "-n", "user.glacier.archive_id", str(f)).stdout
    new = os.urandom(512 * 1024)
    (tmp_path / "new.bin").write_bytes(new)
    assert run("cp", "-f", str(tmp_path / "new.bin"), str(f)).returncode == 0, m.log()
    wait_until(lambda: "uploading /f.txt" in m.log(), 30, "the replacing upload to start")
    m.kill()
    m.proc.wait(10)  # type: ignore[union-attr]
    unmount(m.mnt)

    ids = [a["ArchiveId"] for a in server_inventory(server, MVAULT)]
    assert old in ids, "the old archive went before its replacement existed"
    m2 = mount_factory(server, name="mnt")
    assert (m2.mnt / "f.txt").read_bytes() == new  # the staged replacement, shown at once
    _settled(server, m2.mnt, {"f.txt": new})


def test_setfattr_on_a_mounted_directory_starts_capped_jobs(glacier_server_factory, mount_factory, tmp_path):
    server = glacier_server_factory("--job-delay", "3600")
    m = mount_factory(server, "--cache-size", "1", "--retrieve-max-jobs", "2")
    d = m.mnt / "photos"
    d.mkdir()
    for name in ("a", "b", "c"):
        (d / name).write_bytes(name.encode() * 100)
        assert run("sync", str(d / name)).returncode == 0, m.log()
    (m.mnt / "warm").write_bytes(b"w")
    assert run("sync", str(m.mnt / "warm")).returncode == 0, m.log()
    for _ in range(2):
        res = run("setfattr", "-n", "user.glacier.retrieve", "-v", "Bulk", str(d))
        assert res.returncode == 0, res.stderr + m.log()
    jobs = [j["ArchiveId"] for j in server.client().list_jobs(vaultName=MVAULT)["JobList"]
            if j["Action"] == "ArchiveRetrieval"]
    assert len(jobs) == 2 and len(set(jobs)) == 2
    states = [run("getfattr", "--only-values", "-n", "user.glacier.state", str(d / n)).stdout for n in "abc"]
    assert states.count("retrieving") == 2 and states.count("archived") == 1


def test_auto_retrieve_cap_in_a_daemon_mount(glacier_server_factory, tmp_path):
    """``glacierfs mount`` (the daemonizing command: options reach the daemon) with
    --auto-retrieve-max 2: reading three uncached files starts two jobs, the log says why not three."""
    from tests.helpers.mounts import MountSet

    skip_without_fuse()
    server = glacier_server_factory("--job-delay", "3600")
    server.client().create_vault(vaultName=MVAULT)
    ms = MountSet()
    mnt = tmp_path / "mnt"
    try:
        res = ms.mount("--endpoint-url", server.url, "--region", "us-east-1", "--cache-dir", str(tmp_path / "cache"),
                       "--cache-size", "1", "--auto-retrieve", "Bulk", "--auto-retrieve-max", "2",
                       "--retrieve-max-bytes-per-hour", "1G", MVAULT, mnt=mnt)  # accepted by the daemonizing command
        log = ms.log_of(res)
        for name in ("a", "b", "c", "warm"):  # each new file evicts the one before (--cache-size 1)
            (mnt / name).write_bytes(name.encode() * 100)
            assert run("sync", str(mnt / name)).returncode == 0, log.read_text()
        for name in ("a", "b", "c"):
            res2 = run("cat", str(mnt / name))
            assert res2.returncode != 0 and "Resource temporarily unavailable" in res2.stderr, res2
        jobs = [j for j in server.client().list_jobs(vaultName=MVAULT)["JobList"] if j["Action"] == "ArchiveRetrieval"]
        assert len(jobs) == 2
        text = log.read_text()
        assert text.count("started a Bulk retrieval (--auto-retrieve") == 2
        assert "cap of 2 job(s) per hour is reached" in text
    finally:
        ms.cleanup()


def test_a_manifest_records_what_it_replaces_and_survives_without_data_once_archived(tmp_path):
    from glacierfs.fs.stagedir import Manifest, StagingArea

    area = StagingArea(tmp_path)
    waiting, waiting_data = area.new()
    waiting_data.write_bytes(b"new")
    area.write_manifest(waiting, Manifest("/f", replaces=("OLD",)))
    done, done_data = area.new()
    area.write_manifest(done, Manifest("/g", started=True, replaces=("OLD2",), archived="NEW"))
    os.unlink(done_data)  # the bytes moved into the cache; the deletes are what is left
    gone, gone_data = area.new()
    area.write_manifest(gone, Manifest("/h"))
    os.unlink(gone_data)
    found = StagingArea(tmp_path).recover()
    assert found == {waiting: Manifest("/f", replaces=("OLD",)),
                     done: Manifest("/g", started=True, replaces=("OLD2",), archived="NEW")}


# --------------------------------------------------------------------------- replaced archives' deletes: wait, status, kill -9


def _held(server: Any, op: str) -> int:
    return int(server.admin("held", method="GET")["waiting"].get(op, 0))


def _replace_held(server: Any, m: Any, tmp_path: Path) -> tuple[Path, str, bytes]:
    """Archive f.txt, hold DeleteArchive, replace f.txt (cp -f): returns once the new archive exists
    and the delete of the old one waits in the server (nothing deleted yet)."""
    f = m.mnt / "f.txt"
    f.write_bytes(b"old\n")
    assert run("sync", str(f)).returncode == 0, m.log()
    old = run("getfattr", "--only-values", "-n", "user.glacier.archive_id", str(f)).stdout
    assert old
    server.admin("hold?ops=DeleteArchive")
    new = b"new content\n"
    (tmp_path / "new.bin").write_bytes(new)
    assert run("cp", "-f", str(tmp_path / "new.bin"), str(f)).returncode == 0, m.log()
    wait_until(lambda: _held(server, "DeleteArchive") >= 1, 60, "the delete of the replaced archive to be held")
    return f, old, new


def _paths_and_ids(server: Any) -> dict[str, list[str]]:
    from glacierfs.codec import decode_description

    seen: dict[str, list[str]] = {}
    for a in server_inventory(server, MVAULT):
        seen.setdefault(decode_description(a["ArchiveDescription"]).path or "", []).append(a["ArchiveId"])
    return seen


def test_wait_and_status_cover_the_delete_of_a_replaced_archive(glacier_server, mount_factory, tmp_path):
    """The new archive exists and its upload is no longer pending, but the old archive is not
    deleted yet (its DeleteArchive is held): `wait` does not return, `status` lists it; once
    the delete goes through, `wait` returns and the old archive is gone from the vault."""
    from tests.helpers.cli import Cli

    server = glacier_server
    m = mount_factory(server)
    cli = Cli(server.url, tmp_path / "cache", tmp_path)
    f, old, new = _replace_held(server, m, tmp_path)
    res = cli("wait", "-v", MVAULT, "--region", "us-east-1", "--timeout", "0.5", code=8)
    assert "1 replaced archive delete(s)" in res.stderr and "f.txt" in res.stderr, str(res)
    res = cli("wait", "-v", MVAULT, "--region", "us-east-1", "other/dir", "--timeout", "0.5")  # not under PATH
    st = cli("status", "-v", MVAULT, "--region", "us-east-1")
    assert f"replace pending: f.txt (deletes archive {old}, new archive " in st.stdout, str(st)
    waiter = cli.popen("wait", "-v", MVAULT, "--region", "us-east-1", "f.txt")
    try:
        assert server.admin("release")["released"] >= 1
        _out, errs = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, errs
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    # wait returned: the old archive is already gone, the new one is the path's only archive
    now = run("getfattr", "--only-values", "-n", "user.glacier.archive_id", str(f)).stdout
    assert now != old and _paths_and_ids(server) == {"f.txt": [now]}
    assert f.read_bytes() == new
    assert "replace pending" not in cli("status", "-v", MVAULT, "--region", "us-east-1").stdout


@pytest.mark.parametrize("delete_took_effect", [False, True], ids=["delete-lost", "delete-done-unanswered"])
def test_kill_between_new_archived_and_old_deleted(glacier_server, mount_factory, tmp_path, delete_took_effect):
    """kill -9 of the mount while its DeleteArchive of the replaced archive is held in the server:
    either the delete never takes effect (the connection is reset), or it does with nobody left to
    hear the answer. The next mount deletes what is left, exactly once; the new archive stays."""
    from tests.helpers.cli import Cli

    server = glacier_server
    m = mount_factory(server)
    f, old, new = _replace_held(server, m, tmp_path)
    now = run("getfattr", "--only-values", "-n", "user.glacier.archive_id", str(f)).stdout
    assert now and now != old
    m.kill()
    m.proc.wait(10)  # type: ignore[union-attr]
    unmount(m.mnt)
    first_log = m.log()
    assert server.admin("release" if delete_took_effect else "release?drop=1")["released"] >= 1
    expected = {"f.txt": [now] if delete_took_effect else sorted([old, now])}

    def ids() -> dict[str, list[str]]:
        return {p: sorted(v) for p, v in _paths_and_ids(server).items()}

    if delete_took_effect:  # the released request goes on in a server thread: wait for its effect
        wait_until(lambda: ids() == expected, 30, f"the released delete of {old} to take effect")
    assert ids() == expected, ids()

    m2 = mount_factory(server, name="mnt")
    Cli(server.url, tmp_path / "cache", tmp_path)("wait", "-v", MVAULT, "--region", "us-east-1", "--timeout", "60")
    assert _paths_and_ids(server) == {"f.txt": [now]}  # the old one gone, the new one kept, no other
    assert (m2.mnt / "f.txt").read_bytes() == new
    logs = first_log + m2.log()
    assert logs.count(f"deleted archive {old}") == 1, logs
    assert f"deleted archive {now}" not in logs
