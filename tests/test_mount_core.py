"""Mount behaviour of the core on real mounts (issues 8, 10, 13): retrievals are not paid twice,
``--read-only`` keeps retrieval, names that are not UTF-8 fail one by one, and a CLI delete
shows in a running mount at once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import mounts as tm
from tests.helpers.hardening import LyingProxy

VAULT = "core"
RETRIEVED = 5  # archives retrieved, then evicted by a tiny cache
REMOUNTS = 3


def _cli(server_url: str, cache: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "glacierfs", *args, "--endpoint-url", server_url, "--region", "us-east-1",
         "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=120, env=tm.env(), cwd=cwd, check=False,
    )


def _wait(cond, what: str, m: tm.Mount, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{m.log()}"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_evicted_retrievals_are_not_downloaded_again_at_remount(glacier_server, tmp_path: Path) -> None:
    tm.skip_without_fuse()
    glacier_server.client().create_vault(vaultName=VAULT)
    src = tmp_path / "src"
    src.mkdir()
    names = [f"r{i}.bin" for i in range(RETRIEVED)]
    for i, n in enumerate(names):
        (src / n).write_bytes(os.urandom(20_000 + i))
    cache = tmp_path / "cache"
    with LyingProxy(glacier_server.url, lambda answer: False) as proxy:
        up = _cli(proxy.url, cache, src, "upload", "-q", "-v", VAULT, *names)  # the mount's endpoint
        assert up.returncode == 0, up.stderr
        def downloads() -> int:
            return proxy.seen.count("GetJobOutput")

        def retrieval_jobs() -> int:
            jobs = glacier_server.client().list_jobs(vaultName=VAULT)["JobList"]
            return sum(j["Action"] == "ArchiveRetrieval" for j in jobs)

        def mount() -> tm.Mount:
            m = tm.Mount(tmp_path / "mnt", cache, proxy.url, VAULT, "--cache-size", "1")
            m.start()
            return m

        m = mount()
        try:
            for n in names:  # each retrieval evicts the previous one (the cache holds one archive)
                res = tm.run("setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(m.mnt / n))
                assert res.returncode == 0, res.stderr
                _wait(lambda n=n: tm.getfattr(m.mnt / n, "user.glacier.state") == "cached", f"{n} cached", m)
            assert retrieval_jobs() == RETRIEVED
            base = downloads()
            assert base >= RETRIEVED
        finally:
            m.close()
        for r in range(REMOUNTS):
            m = mount()
            try:
                _wait(lambda m=m, r=r: m.log_path.read_text().count("reattached") == r + 2, "the reattach at mount start", m)
                # an explicit ask still downloads (once): the one we retrieve now
                again = m.mnt / names[r]
                res = tm.run("setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(again))
                assert res.returncode == 0, res.stderr
                _wait(lambda a=again: tm.getfattr(a, "user.glacier.state") == "cached", "cached", m)
            finally:
                m.close()
            base += 1
            assert downloads() == base, f"remount {r}: {downloads() - base} evicted archive(s) downloaded again"
        assert retrieval_jobs() == RETRIEVED, "a live retrieval job was started again"


@pytest.mark.timeout(180)
def test_read_only_mount_keeps_retrieval_and_refuses_writes(
    glacier_server, mount_factory, tmp_path: Path
) -> None:
    glacier_server.client().create_vault(vaultName=tm.VAULT)
    src = tmp_path / "src"
    src.mkdir()
    (src / "cold.bin").write_bytes(b"cold" * 1000)
    up = _cli(glacier_server.url, tmp_path / "cache", src, "upload", "-q", "-v", tm.VAULT, "cold.bin")
    assert up.returncode == 0, up.stderr
    m = mount_factory(glacier_server, "--read-only")
    target = m.mnt / "cold.bin"
    res = tm.run("setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(target))
    assert res.returncode == 0, res.stderr + m.log()
    _wait(lambda: tm.getfattr(target, "user.glacier.state") == "cached", "retrieval", m)
    assert target.read_bytes() == b"cold" * 1000
    res = tm.run("cp", str(src / "cold.bin"), str(m.mnt / "new.bin"))
    assert res.returncode != 0 and "Read-only file system" in res.stderr, res.stderr
    for cmd in (["rm", str(target)], ["mkdir", str(m.mnt / "d")], ["touch", str(target)]):
        res = tm.run(*cmd)
        assert res.returncode != 0 and "Read-only file system" in res.stderr, (cmd, res.stderr)


@pytest.mark.timeout(180)
def test_latin1_names_fail_one_by_one(glacier_server, mount_factory, tmp_path: Path) -> None:
    src = tmp_path / "old"
    src.mkdir()
    bad_file = os.fsdecode(b"caf\xe9.txt")
    bad_dir = os.fsdecode(b"r\xe9sum\xe9s")
    (src / "good.txt").write_bytes(b"good")
    (src / bad_file).write_bytes(b"latin-1 name")
    (src / bad_dir).mkdir()
    (src / bad_dir / "inner.txt").write_bytes(b"inside a latin-1 directory")
    (src / "ünï").mkdir()
    (src / "ünï" / "fine.txt").write_bytes(b"utf-8 names work")
    m = mount_factory(glacier_server)
    res = tm.run("cp", "-r", str(src), str(m.mnt))
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and all("Invalid or incomplete multibyte or wide character" in e for e in errors), \
        res.stderr
    assert sorted(os.listdir(m.mnt / "old")) == ["good.txt", "ünï"]
    assert (m.mnt / "old" / "ünï" / "fine.txt").read_bytes() == b"utf-8 names work"
    assert tm.run("stat", os.fsencode(m.mnt / "old" / bad_file).decode("utf-8", "surrogateescape")).returncode != 0
    res = subprocess.run(["stat", os.fsencode(m.mnt / "old") + b"/" + b"caf\xe9.txt"], capture_output=True,
                         check=False)
    assert b"No such file or directory" in res.stderr
    log_text = m.log()
    assert "Traceback" not in log_text, log_text
    assert len(re.findall(r"must be valid UTF-8", log_text)) == 2, log_text


@pytest.mark.timeout(180)
def test_cli_delete_disappears_from_a_running_mount(
    glacier_server, mount_factory, tmp_path: Path
) -> None:
    m = mount_factory(glacier_server)
    (m.mnt / "keep.txt").write_bytes(b"keep")
    (m.mnt / "gone.txt").write_bytes(b"gone")
    assert tm.run("sync", str(m.mnt / "keep.txt"), str(m.mnt / "gone.txt")).returncode == 0, m.log()
    listed = tm.run("ls", "-l", str(m.mnt))
    assert "gone.txt" in listed.stdout
    assert (m.mnt / "gone.txt").stat().st_size == 4  # the kernel caches this entry (entry_timeout 1 h)
    res = _cli(glacier_server.url, tmp_path / "cache", tmp_path, "delete", "-v", tm.VAULT, "gone.txt")
    assert res.returncode == 0, res.stderr
    _wait(lambda: not (m.mnt / "gone.txt").exists(), "the deleted file to disappear", m, timeout=15)
    listed = tm.run("ls", "-l", str(m.mnt))
    assert "gone.txt" not in listed.stdout and "keep.txt" in listed.stdout, listed.stdout
