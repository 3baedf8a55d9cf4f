"""FUSE mount tests: real mounts against a real `glacierfs serve`, driven by real cp, ls, rm, sync, cat, getfattr, setfattr.

The helpers are in tests/helpers/mounts.py and the ``mount_factory`` fixture in tests/conftest.py: it
unmounts (lazily if needed) and kills the mount process at teardown, even when the test failed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounts import (
    VAULT,
    env,
    getfattr,
    glacierfs,
    mounted,
    open_uploads,
    run,
    server_inventory,
    skip_without_fuse,
    unmount,
    wait_until,
)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _treehash(path: Path) -> str:
    return glacierfs("treehash", str(path)).stdout.split()[0]


# --------------------------------------------------------------------------- done-when scenarios


def test_cp_nonascii_nested_sync_treehash_then_remount(glacier_server, mount_factory, tmp_path):
    src = tmp_path / "src"
    (src / "dïr" / "sübdir ünï").mkdir(parents=True)
    (src / "dïr" / "héllo wörld.txt").write_bytes("grüße\n".encode() * 1000)
    (src / "dïr" / "sübdir ünï" / "日本語.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "top.dat").write_bytes(os.urandom(4097))
    m = mount_factory(glacier_server)
    res = run("cp", "-r", str(src / "dïr"), str(src / "top.dat"), str(m.mnt))
    assert res.returncode == 0, res.stderr
    files = sorted(p for p in m.mnt.rglob("*") if p.is_file())
    assert [str(p.relative_to(m.mnt)) for p in files] == sorted(_files(src))
    res = run("sync", *map(str, files), timeout=120)
    assert res.returncode == 0, res.stderr + m.log()
    for p in files:
        assert getfattr(p, "user.glacier.state") in ("cached",), m.log()
        assert getfattr(p, "user.glacier.treehash") == _treehash(src / p.relative_to(m.mnt))
        assert getfattr(p, "user.glacier.archive_id")
    m.stop()
    m2 = mount_factory(glacier_server, name="mnt")
    assert _files(m2.mnt) == _files(src)
    listed = run("ls", "-lR", str(m2.mnt))
    assert "日本語.bin" in listed.stdout
    archives = server_inventory(glacier_server, VAULT)
    assert sorted(a["SHA256TreeHash"] for a in archives) == sorted(_treehash(p) for p in src.rglob("*") if p.is_file())


def _cli_upload(server: Any, cache: Path, cwd: Path, *files: str) -> None:
    """Upload with the CLI (same catalog as the mount, but nothing in the mount's data cache)."""
    res = subprocess.run(
        [sys.executable, "-m", "glacierfs", "upload", "--endpoint-url", server.url, "--region", "us-east-1",
         "--cache-dir", str(cache), "-q", "-v", VAULT, *files],
        capture_output=True, text=True, timeout=120, env=env(), cwd=cwd,
    )
    assert res.returncode == 0, res.stderr


def test_cat_uncached_fails_fast_then_retrieve(glacier_server_factory, mount_factory, tmp_path):
    server = glacier_server_factory("--job-delay", "2")
    server.client(max_attempts=3).create_vault(vaultName=VAULT)
    src = tmp_path / "src"
    (src / "cold").mkdir(parents=True)
    data = os.urandom(2 * 1024 * 1024 + 5)
    (src / "cold" / "file.bin").write_bytes(data)
    _cli_upload(server, tmp_path / "cache", src, "cold/file.bin")
    m = mount_factory(server, vault=VAULT)
    target = m.mnt / "cold" / "file.bin"
    assert target.stat().st_size == len(data)
    assert getfattr(target, "user.glacier.state") == "archived"
    t0 = time.monotonic()
    res = run("cat", str(target), timeout=30)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0
    assert "Resource temporarily unavailable" in res.stderr
    assert elapsed < 5, "a read of an uncached archive must fail at once, not wait"
    assert "setfattr -n user.glacier.retrieve" in m.log()
    res = run("setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(target))
    assert res.returncode == 0, res.stderr
    assert getfattr(target, "user.glacier.state") in ("retrieving", "cached")
    deadline = time.monotonic() + 60
    while getfattr(target, "user.glacier.state") != "cached":
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.2)
    assert target.read_bytes() == data
    res = run("setfattr", "-n", "user.glacier.retrieve", "-v", "Sometime", str(target))
    assert res.returncode != 0 and "Invalid argument" in res.stderr


def test_writes_at_any_offset_reach_the_archive(glacier_server, mount_factory, tmp_path):
    """Writes go through FUSE write_buf (libfuse copies into the staged file): order and offsets kept."""
    m = mount_factory(glacier_server)
    mib = 1 << 20
    data = os.urandom(3 * mib + 123)
    f = m.mnt / "pieces.bin"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, data[2 * mib:], 2 * mib) == len(data) - 2 * mib  # the tail first
        assert os.pwrite(fd, data[:10], 0) == 10
        assert os.pwrite(fd, data[10:2 * mib], 10) == 2 * mib - 10  # more than one request
    finally:
        os.close(fd)
    assert run("sync", str(f)).returncode == 0, m.log()
    assert f.read_bytes() == data
    local = tmp_path / "pieces.bin"
    local.write_bytes(data)
    assert getfattr(f, "user.glacier.treehash") == _treehash(local)


def test_rm_deletes_archive_in_vault(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    (tmp_path / "a.txt").write_bytes(b"first\n" * 100)
    (tmp_path / "b.txt").write_bytes(b"second\n" * 100)
    assert run("cp", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(m.mnt)).returncode == 0
    assert run("sync", str(m.mnt / "a.txt"), str(m.mnt / "b.txt")).returncode == 0, m.log()
    doomed = getfattr(m.mnt / "a.txt", "user.glacier.archive_id")
    kept = getfattr(m.mnt / "b.txt", "user.glacier.archive_id")
    res = run("rm", str(m.mnt / "a.txt"))
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(m.mnt)) == ["b.txt"]
    ids = [a["ArchiveId"] for a in server_inventory(glacier_server, VAULT)]
    assert doomed not in ids and kept in ids


# --------------------------------------------------------------------------- semantics


def test_posix_semantics_table(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    f = m.mnt / "doc.txt"
    f.write_bytes(b"v1\n")
    assert run("sync", str(f)).returncode == 0, m.log()
    # archives are immutable: documented errnos, never EXDEV (mv would copy+delete)
    assert "Operation not permitted" in run("mv", str(f), str(m.mnt / "other.txt")).stderr
    # changed in place: refused (a whole replacement, `>`/cp -f/mv over it, is tests/test_replace.py)
    assert "Operation not permitted" in run("sh", "-c", f"echo v2 >> '{f}'").stderr
    assert "Operation not permitted" in run("truncate", "-s", "0", str(f)).stderr
    assert "Operation not permitted" in run("ln", str(f), str(m.mnt / "hard")).stderr
    assert "Operation not permitted" in run("ln", "-s", "doc.txt", str(m.mnt / "soft")).stderr
    assert run("chmod", "600", str(f)).returncode == 0  # accepted and ignored
    assert run("getfattr", "-n", "security.selinux", str(f)).returncode != 0
    assert "Operation not supported" in run("getfattr", "-n", "security.selinux", str(f)).stderr
    assert run("getfattr", "-n", "user.other", str(f)).returncode != 0
    assert f.read_bytes() == b"v1\n"
    # files not yet archives can be renamed and rewritten before they upload
    g = m.mnt / "draft.txt"
    g.write_bytes(b"draft")
    assert run("mv", str(g), str(m.mnt / "final.txt")).returncode == 0
    assert run("sync", str(m.mnt / "final.txt")).returncode == 0, m.log()
    assert (m.mnt / "final.txt").read_bytes() == b"draft"
    # directories: mkdir persists, rmdir removes empty ones only
    (m.mnt / "empty" / "deeper").mkdir(parents=True)
    assert "Directory not empty" in run("rmdir", str(m.mnt / "empty")).stderr
    assert run("rmdir", str(m.mnt / "empty" / "deeper")).returncode == 0
    m.stop()
    m2 = mount_factory(glacier_server)
    assert sorted(os.listdir(m2.mnt)) == ["doc.txt", "empty", "final.txt"]
    assert run("rmdir", str(m2.mnt / "empty")).returncode == 0
    assert sorted(os.listdir(m2.mnt)) == ["doc.txt", "final.txt"]
    xattrs = run("getfattr", "-d", str(m2.mnt / "doc.txt")).stdout
    for name in ("treehash", "archive_id", "state", "description"):
        assert f"user.glacier.{name}=" in xattrs


def test_rm_while_uploading_aborts(glacier_server, mount_factory, tmp_path):
    """rm of a file while its upload runs: the path goes at once, and in the end the service holds
    no open upload and no archive of it (an upload that completed anyway is deleted)."""
    m = mount_factory(glacier_server, "--part-size", "1M", "--concurrency", "1")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 * 1024 * 1024))
    assert run("cp", str(big), str(m.mnt)).returncode == 0
    # the upload has started (or, on a fast machine, already finished: the invariants hold either way)
    wait_until(lambda: open_uploads(glacier_server, VAULT) or "uploaded /big.bin" in m.log(), 30,
               "the upload of big.bin to start")
    assert run("rm", str(m.mnt / "big.bin")).returncode == 0
    assert os.listdir(m.mnt) == []
    small = m.mnt / "marker"
    small.write_bytes(b"x")
    assert run("sync", str(small)).returncode == 0, m.log()
    # the worker deletes an archive that completed during the rm just after Complete returns
    wait_until(lambda: not open_uploads(glacier_server, VAULT)
               and [a["Size"] for a in server_inventory(glacier_server, VAULT)] == [1], 30,
               f"no open upload and only the marker archived\n{m.log()}")


def test_daemon_mode_local_and_umount(tmp_path):
    skip_without_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    data_dir = tmp_path / "glacier-data"
    cache = tmp_path / "cache"
    common = ["--cache-dir", str(cache), "--local", str(data_dir)]
    pid = None
    try:
        res = glacierfs("mount", *common, "localvault", str(mnt), timeout=60)
        assert mounted(mnt), res.stderr
        found = re.search(r"pid (\d+)", res.stderr)
        assert found, res.stderr
        pid = int(found.group(1))
        (mnt / "hello.txt").write_bytes(b"hello local\n")
        assert run("sync", str(mnt / "hello.txt")).returncode == 0
        # the CLI reaches the same local data through the server the mount runs
        out = tmp_path / "fetched.txt"
        got = glacierfs("download", *common, "-q", "-v", "localvault", "hello.txt", "-o", str(out), timeout=120,
                        check=False)
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == b"hello local\n"
        again = glacierfs("mount", *common, "localvault", str(mnt), check=False)
        assert again.returncode != 0 and "already" in again.stderr
        glacierfs("umount", str(mnt))
        assert not mounted(mnt)
    finally:
        unmount(mnt)
        if pid is None:  # the daemon's pid is also in its vault's mount.lock
            for lock in cache.rglob("mount.lock"):
                text = lock.read_text().strip()
                try:
                    cmdline = Path(f"/proc/{text}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if text.isdigit() and str(mnt) in cmdline:
                    pid = int(text)
        if pid is not None:
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- slow scenarios

MiB = 1024 * 1024


def _write_file(path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
        f.write(os.urandom(size % MiB))


@pytest.mark.slow
def test_sigkill_during_upload_resumes_to_exactly_one_archive(glacier_server, mount_factory, tmp_path):
    big = tmp_path / "big.bin"
    _write_file(big, 200 * MiB)
    expected = _treehash(big)
    m = mount_factory(glacier_server, "--part-size", "1M", "--concurrency", "1")
    assert run("cp", str(big), str(m.mnt / "big.bin"), timeout=300).returncode == 0
    # a second copy that is still being written when the mount dies
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys,time\nf=open(sys.argv[1],'wb')\n"
         "while True:\n f.write(b'x'*65536); f.flush(); time.sleep(0.05)\n",
         str(m.mnt / "cut-off.bin")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
    )
    try:
        deadline = time.monotonic() + 120
        parts = 0
        while parts < 5:
            assert time.monotonic() < deadline, f"upload did not start\n{m.log()}"
            uploads = open_uploads(glacier_server, VAULT)
            if uploads:
                c = glacier_server.client(max_attempts=3)
                parts = len(c.list_parts(vaultName=VAULT, uploadId=uploads[0]["MultipartUploadId"])["Parts"])
            time.sleep(0.1)
        assert (m.mnt / "cut-off.bin").stat().st_size > 0
        m.kill()
    finally:
        writer.kill()
        writer.wait(10)
    assert open_uploads(glacier_server, VAULT), "the kill should have interrupted the upload"
    m2 = mount_factory(glacier_server)
    assert sorted(os.listdir(m2.mnt)) == ["big.bin"], m2.log()
    res = run("sync", str(m2.mnt / "big.bin"), timeout=300)
    assert res.returncode == 0, res.stderr + m2.log()
    assert getfattr(m2.mnt / "big.bin", "user.glacier.treehash") == expected
    archives = server_inventory(glacier_server, VAULT)
    assert [a["SHA256TreeHash"] for a in archives] == [expected]
    assert open_uploads(glacier_server, VAULT) == []
    assert "resum" in m2.log().lower()


@pytest.mark.slow
def test_parallel_copies_while_listing(glacier_server, mount_factory, tmp_path):
    sources = []
    for i in range(4):
        p = tmp_path / f"src{i}.bin"
        _write_file(p, 50 * MiB)
        sources.append(p)
    m = mount_factory(glacier_server)
    (m.mnt / "d").mkdir()
    stop = threading.Event()
    listings: list[int] = []
    failures: list[str] = []

    def lister() -> None:
        while not stop.is_set():
            res = run("ls", "-lR", str(m.mnt), timeout=60)
            if res.returncode != 0:
                failures.append(res.stderr)
            listings.append(res.returncode)

    t = threading.Thread(target=lister)
    t.start()
    try:
        procs = [subprocess.Popen(["cp", str(p), str(m.mnt / "d" / p.name)], stderr=subprocess.PIPE) for p in sources]
        for p in procs:
            assert p.wait(300) == 0, p.stderr.read() if p.stderr else ""
        res = run("sync", *[str(m.mnt / "d" / p.name) for p in sources], timeout=600)
        assert res.returncode == 0, res.stderr + m.log()
    finally:
        stop.set()
        t.join(120)
    assert listings and not failures, failures[:3]
    for p in sources:
        target = m.mnt / "d" / p.name
        assert getfattr(target, "user.glacier.treehash") == _treehash(p)
        assert run("cmp", str(p), str(target)).returncode == 0
    assert sorted(a["SHA256TreeHash"] for a in server_inventory(glacier_server, VAULT)) == sorted(
        _treehash(p) for p in sources
    )


def test_all_vaults_root(glacier_server, mount_factory, tmp_path):
    glacier_server.client(max_attempts=3).create_vault(vaultName="first")
    m = mount_factory(glacier_server, "--all-vaults", vault=None)
    assert os.listdir(m.mnt) == ["first"]
    assert run("mkdir", str(m.mnt / "second"), str(m.mnt / "third")).returncode == 0
    assert sorted(os.listdir(m.mnt)) == ["first", "second", "third"]
    (m.mnt / "second" / "f.txt").write_bytes(b"in the second vault")
    assert run("sync", str(m.mnt / "second" / "f.txt")).returncode == 0, m.log()
    assert getfattr(m.mnt / "second" / "f.txt", "user.glacier.state") == "cached"
    assert "Directory not empty" in run("rmdir", str(m.mnt / "second")).stderr
    assert run("rmdir", str(m.mnt / "third")).returncode == 0, m.log()
    names = [v["VaultName"] for v in glacier_server.client(max_attempts=3).list_vaults()["VaultList"]]
    assert sorted(names) == ["first", "second"]
    assert "Invalid argument" in run("mkdir", str(m.mnt / "bad name")).stderr


def test_rm_while_open(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    (m.mnt / "arch").write_bytes(b"archived bytes")
    assert run("sync", str(m.mnt / "arch")).returncode == 0, m.log()
    with open(m.mnt / "arch", "rb") as reader:
        assert run("rm", str(m.mnt / "arch")).returncode == 0
        assert reader.read() == b"archived bytes"
    with open(m.mnt / "writing", "wb") as writer:
        writer.write(b"partial")
        writer.flush()
        assert run("rm", str(m.mnt / "writing")).returncode == 0
        writer.write(b" more")
    (m.mnt / "queued").write_bytes(b"queued, then removed while a reader has it open")
    with open(m.mnt / "queued", "rb") as reader:
        assert run("rm", str(m.mnt / "queued")).returncode == 0
        assert reader.read(6) == b"queued"
    marker = m.mnt / "marker"
    marker.write_bytes(b"m")
    assert run("sync", str(marker)).returncode == 0, m.log()
    assert os.listdir(m.mnt) == ["marker"]
    assert [a["Size"] for a in server_inventory(glacier_server, VAULT)] == [1]


def test_cli_changes_while_mounted_show_at_once(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    (m.mnt / "mine.txt").write_bytes(b"through the mount")
    assert run("sync", str(m.mnt / "mine.txt")).returncode == 0, m.log()
    assert run("ls", "-l", str(m.mnt)).returncode == 0  # the listing is now reused while unchanged
    src = tmp_path / "src"
    src.mkdir()
    (src / "cli.txt").write_bytes(b"through the CLI")
    _cli_upload(glacier_server, tmp_path / "cache", src, "cli.txt")
    assert sorted(os.listdir(m.mnt)) == ["cli.txt", "mine.txt"]
    assert (m.mnt / "cli.txt").stat().st_size == len(b"through the CLI")
    assert getfattr(m.mnt / "cli.txt", "user.glacier.state") == "archived"


def test_daemon_mount_failure_is_one_line(glacier_server, tmp_path):
    skip_without_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = glacierfs("mount", "--endpoint-url", glacier_server.url, "--region", "us-east-1", "--cache-dir",
                    str(tmp_path / "cache"), "missing-vault", str(mnt), check=False, timeout=90)
    try:
        assert res.returncode != 0
        assert res.stderr.startswith("glacierfs: error: mount failed:"), res.stderr
        assert "missing-vault" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not mounted(mnt)
    finally:
        unmount(mnt)
