"""The mount runs more than libfuse's default 10 worker threads (``max_threads=64``), on a real mount.

``fsync`` (``sync FILE``) blocks its FUSE worker until the archive exists. With libfuse's
default of 10 workers, ten waiting ``sync`` would freeze every other operation on the mount;
README says the mount allows 64 (libfuse 3.12+ honors ``max_threads``; 3.14 measured). Here 20
``sync`` wait on uploads the server holds back, the mount daemon's thread count
(``/proc/PID/task``) must grow past 10 workers, and ``ls -l`` of the mount must still answer.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import mounts as tm

VAULT = "threads"
SYNCS = 20


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.timeout(180)
def test_twenty_waiting_fsyncs_do_not_freeze_the_mount(glacier_server_factory, tmp_path: Path) -> None:
    tm.skip_without_fuse()
    server = glacier_server_factory("--faults", "slow=1", "--faults-ops", "InitiateMultipartUpload,UploadArchive",
                                    "--slow-seconds", "10")
    server.client().create_vault(vaultName=VAULT)
    m = tm.Mount(tmp_path / "mnt", tmp_path / "cache", server.url, VAULT)
    syncs: list[subprocess.Popen[bytes]] = []
    try:
        m.start()
        assert m.proc is not None
        for i in range(SYNCS):
            (m.mnt / f"f{i:02d}.txt").write_bytes(b"x" * (100 + i))
        base = _threads(m.proc.pid)
        syncs = [subprocess.Popen(["sync", str(m.mnt / f"f{i:02d}.txt")]) for i in range(SYNCS)]
        # the uploads go two at a time and each waits 10 s for its first answer: most syncs wait
        deadline = time.monotonic() + 60
        while _threads(m.proc.pid) < base + 12:
            assert time.monotonic() < deadline, f"{_threads(m.proc.pid)} threads (base {base})\n{m.log()}"
            assert sum(p.poll() is None for p in syncs) > 10, "the syncs ended before the count grew"
            time.sleep(0.05)
        waiting = sum(p.poll() is None for p in syncs)
        res = tm.run("ls", "-l", str(m.mnt), timeout=30)  # needs a free worker
        assert res.returncode == 0 and "f19.txt" in res.stdout, res.stderr
        assert waiting > 10, f"only {waiting} syncs were waiting"
    finally:
        # SIGKILL of the mount first: a clean unmount would wait for the 20 held-back uploads, and
        # a sync waiting in the kernel for the daemon ends only when the FUSE connection does
        m.kill()
        for p in syncs:
            p.kill()
        for p in syncs:
            p.wait(30)
