"""Daemon mounts driven through the installed ``glacierfs`` console script, cleaned up always.

:class:`MountSet` runs ``glacierfs mount`` (the real daemonizing command), remembers every
mount point and daemon pid it started, and :meth:`MountSet.cleanup` detaches what is still
mounted and ends only those daemons (found by pid and by the mount-point marker in their
environment), so a failing test leaves nothing behind and never touches other processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from glacierfs.mount import MOUNTPOINT_ENV, mount_state
from glacierfs.processes import pid_running, processes_with_env

CLI = Path(sys.executable).parent / "glacierfs"  # the console script of the venv under test
EXIT_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without PYTHONPATH: the console script must find the package itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", MOUNTPOINT_ENV)}
    env.update(extra)
    return env


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``glacierfs ARGS`` (the installed console script) and return the finished process."""
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env if env is not None else clean_env())


def in_mount_table(mnt: Path) -> bool:
    """Mounted, live or dead."""
    return mount_state(mnt) != "none"


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class MountSet:
    """Every ``glacierfs mount`` a test ran, for assertions and for a cleanup that cannot be skipped."""

    def __init__(self) -> None:
        self.points: list[Path] = []
        self.pids: set[int] = set()

    def mount(self, *args: str, mnt: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
              check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``glacierfs mount ARGS MNT``; with ``check`` it must succeed (the daemon's pid is recorded)."""
        if not in_mount_table(mnt):  # a dead mount point cannot even be stat'ed
            mnt.mkdir(parents=True, exist_ok=True)
        if mnt not in self.points:
            self.points.append(mnt)
        res = cli("mount", *args, str(mnt), cwd=cwd, env=env, timeout=timeout)
        found = re.search(r"\(pid (\d+), log ", res.stderr)
        if found:
            self.pids.add(int(found.group(1)))
        if check and res.returncode != 0:
            raise AssertionError(f"mount failed ({res.returncode}): {res.stderr}")
        return res

    def pid(self, mnt: Path) -> int:
        pids = [p for p in processes_with_env(MOUNTPOINT_ENV, str(mnt)) if pid_running(p)]
        assert len(pids) == 1, f"daemons of {mnt}: {pids}"
        return pids[0]

    def log_of(self, res: subprocess.CompletedProcess[str]) -> Path:
        found = re.search(r", log (.+)\)$", res.stderr.strip().splitlines()[-1])
        assert found, res.stderr
        return Path(found.group(1))

    def cleanup(self) -> None:
        for mnt in self.points:
            self.pids.update(processes_with_env(MOUNTPOINT_ENV, str(mnt)))
            if in_mount_table(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30, check=False)
        deadline = time.monotonic() + EXIT_TIMEOUT
        for pid in self.pids:
            while pid_running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_running(pid):
                os.kill(pid, signal.SIGKILL)
