"""Mount behaviour of the core on real mounts (issues 8, 10, 13): retrievals are not paid twice,
``--read-only`` keeps retrieval, names that are not UTF-8 fail one by one, and a CLI delete
shows in a running mount at once.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import mounts as tm
from tests.helpers.hardening import LyingProxy

log = logging.getLogger(__name__)
VAULT = "core"
# issue 8: 300 archives retrieved and evicted by a tiny cache, then 4 remounts. Kept cheap:
# tiny archives, a server with job delay 0, the jobs started by one setfattr call and one
# `restore` (a setfattr is synchronous and each ask lists the vault's jobs, so 300 asks through
# the mount alone cost over a minute), the states read with one getfattr call.
RETRIEVED = 300
REMOUNTS = 4
ASKED = 20  # of them asked for through the mount; the others' jobs come from `glacierfs restore`


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


def _states(paths: list[Path]) -> dict[str, str]:
    """``user.glacier.state`` of many files with one getfattr process: file name -> state."""
    res = tm.run("getfattr", "--absolute-names", "-n", "user.glacier.state", *map(str, paths), timeout=60)
    out: dict[str, str] = {}
    name = None
    for line in res.stdout.splitlines():
        if line.startswith("# file: "):
            name = Path(line[len("# file: "):]).name
        elif name is not None and line.startswith("user.glacier.state="):
            out[name] = line.split("=", 1)[1].strip('"')
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_evicted_retrievals_are_not_downloaded_again_at_remount(glacier_server, tmp_path: Path) -> None:
    tm.skip_without_fuse()
    glacier_server.client().create_vault(vaultName=VAULT)
    src = tmp_path / "src"
    src.mkdir()
    names = [f"r{i:03d}.bin" for i in range(RETRIEVED)]
    for i, n in enumerate(names):
        (src / n).write_bytes(os.urandom(100 + i))
    cache = tmp_path / "cache"
    with LyingProxy(glacier_server.url, lambda answer: False) as proxy:
        up = _cli(proxy.url, cache, src, "upload", "-q", "-v", VAULT, *names)  # the mount's endpoint
        assert up.returncode == 0, up.stderr

        def downloads() -> int:
            return proxy.seen.count("GetJobOutput")

        def retrieval_jobs() -> list[str]:
            c = glacier_server.client()
            return [j["ArchiveId"] for page in c.get_paginator("list_jobs").paginate(vaultName=VAULT)
                    for j in page["JobList"] if j["Action"] == "ArchiveRetrieval"]

        def mount() -> tm.Mount:
            m = tm.Mount(tmp_path / "mnt", cache, proxy.url, VAULT, "--cache-size", "1")
            m.start()
            return m

        # The jobs: asked for through the mount (a few, one setfattr call) and by one `glacierfs
        # restore --no-wait` (the rest: one process, one ListJobs sweep) on the mount's endpoint
        # and cache dir; the mount follows every job of an archive it never cached.
        t0 = time.monotonic()
        m = mount()
        try:
            paths = [m.mnt / n for n in names]
            res = tm.run("setfattr", "-n", "user.glacier.retrieve", "-v", "Standard",
                         *map(str, paths[:ASKED]), timeout=120)
            assert res.returncode == 0, res.stderr
            _wait(lambda: downloads() >= ASKED, f"{ASKED} downloads", m, timeout=120)
            _wait(lambda: "retrieving" not in _states(paths[:ASKED]).values(), "the asked retrievals", m)
        finally:
            m.close()
        rest = _cli(proxy.url, cache, src, "restore", "-q", "-v", VAULT, "-o", str(tmp_path / "restored"),
                    "--no-wait", *names[ASKED:])
        assert rest.returncode == 0, rest.stderr
        assert len(retrieval_jobs()) == RETRIEVED
        restored = downloads() - ASKED
        log.info("jobs started in %.1f s", time.monotonic() - t0)
        m = mount()
        try:
            _wait(lambda: downloads() >= RETRIEVED + restored, f"{RETRIEVED} downloads", m, timeout=240)
            # the cache holds one archive: every other one was downloaded, then evicted
            _wait(lambda: "retrieving" not in _states(paths).values(), "the retrievals to end", m, timeout=120)
            states = _states(paths)
            assert sorted(states) == names and set(states.values()) <= {"cached", "archived"}, states
            base = downloads()
            assert base == RETRIEVED + restored, f"{base - RETRIEVED - restored} archive(s) downloaded twice"
        finally:
            m.close()
        log.info("%d archives retrieved through the mount in %.1f s", RETRIEVED, time.monotonic() - t0)
        for r in range(REMOUNTS):
            m = mount()
            try:
                _wait(lambda m=m, r=r: m.log_path.read_text().count("reattached") == r + 3, "the reattach at mount start", m)
                last = m.log_path.read_text().rsplit("reattached", 1)[1].splitlines()[0]
                assert last.startswith(" 0 retrieval job(s); ") and "evicted archive(s) not downloaded again" in last, last
                # an explicit ask still downloads (once): the one we retrieve now
                again = m.mnt / names[r * 7]
                res = tm.run("setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(again))
                assert res.returncode == 0, res.stderr
                _wait(lambda a=again: tm.getfattr(a, "user.glacier.state") == "cached", "cached", m)
                assert again.read_bytes() == (src / names[r * 7]).read_bytes()
            finally:
                m.close()
            base += 1
            assert downloads() == base, f"remount {r}: {downloads() - base} evicted archive(s) downloaded again"
        assert len(retrieval_jobs()) == RETRIEVED, "a live retrieval job was started again"


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
