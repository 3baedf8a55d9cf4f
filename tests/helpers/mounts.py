"""Real FUSE mounts for tests, cleaned up always.

* :class:`Mount` runs ``python -m glacierfs mount --foreground`` as a child of the test;
  :meth:`Mount.close` is its teardown (stop, else kill, and detach the mount point);
* :class:`MountSet` runs ``glacierfs mount`` (the installed, daemonizing console script) and
  holds foreground :class:`Mount` objects too (:meth:`MountSet.add`); it remembers every mount
  point and daemon pid it started, and :meth:`MountSet.cleanup` closes the foreground mounts,
  detaches what is still mounted and ends only those daemons (found by pid and by the
  mount-point marker in their environment), so a failing test leaves nothing behind and never
  touches other processes. The ``mount_factory`` fixture (tests/conftest.py) is built on it;
* :func:`run`, :func:`getfattr`, :func:`glacierfs`: the real commands a test drives a mount with;
  :func:`server_inventory`, :func:`open_uploads`: what the *server* holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from glacierfs.mount import MOUNTPOINT_ENV, mount_state
from glacierfs.processes import pid_running, processes_with_env
from tests.helpers import REPO

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


# --------------------------------------------------------------------------- foreground mounts


READY_TIMEOUT = 30.0
VAULT = "mnt-vault"  # the vault mount_factory (tests/conftest.py) mounts unless told otherwise


def fuse_available() -> str | None:
    """None when FUSE mounts can run here, else the reason to skip."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def skip_without_fuse() -> None:
    reason = fuse_available()
    if reason:
        pytest.skip(reason)


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def glacierfs(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess."""
    res = subprocess.run(
        [sys.executable, "-m", "glacierfs", *args], capture_output=True, text=True, timeout=timeout, env=env(), cwd=REPO
    )
    if check and res.returncode != 0:
        raise AssertionError(f"glacierfs {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def unmount(mnt: Path) -> None:
    """Unmount, lazily if busy; never raises."""
    for cmd in (["fusermount3", "-u", str(mnt)], ["fusermount3", "-u", "-z", str(mnt)]):
        if not mounted(mnt):
            return
        subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        for _ in range(50):
            if not mounted(mnt):
                return
            time.sleep(0.1)


def mounted(mnt: Path) -> bool:
    """``mnt`` is in /proc/mounts (live or dead)."""
    target = str(mnt)
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == target for line in f if len(line.split()) > 1)
    except OSError:
        return False


class Mount:
    """``glacierfs mount --foreground`` in a subprocess owned by the test."""

    def __init__(self, mnt: Path, cache_dir: Path, endpoint: str | None, vault: str | None, *extra: str) -> None:
        self.mnt = mnt
        self.cache_dir = cache_dir
        self.endpoint = endpoint
        self.vault = vault
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = mnt.parent / f"{mnt.name}.mount.log"

    def start(self) -> Mount:
        self.mnt.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "glacierfs", "mount", "--foreground", "--cache-dir", str(self.cache_dir)]
        if self.endpoint:
            args += ["--endpoint-url", self.endpoint, "--region", "us-east-1"]
        args += self.extra
        if self.vault:
            args.append(self.vault)
        args.append(str(self.mnt))
        logf = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env(), cwd=REPO)
        logf.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while not mounted(self.mnt):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mount not ready:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the mount process (the mount point stays, dead, until unmounted)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        unmount(self.mnt)

    def stop(self) -> None:
        """Unmount cleanly, then make sure the process is gone."""
        unmount(self.mnt)
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        """The teardown of every test: :meth:`stop`, and whatever happens there, end the process
        and detach the mount point, so a failing test leaves nothing mounted or running."""
        try:
            self.stop()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            unmount(self.mnt)


def server_inventory(server: Any, vault: str) -> list[dict]:
    """The vault's archives as the server's next inventory lists them."""
    server.snapshot(vault)
    c = server.client(max_attempts=3)
    job = c.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval", "Format": "JSON"})
    for _ in range(100):
        desc = c.describe_job(vaultName=vault, jobId=job["jobId"])
        if desc["Completed"]:
            break
        server.complete_jobs(job["jobId"])
        time.sleep(0.1)
    out = c.get_job_output(vaultName=vault, jobId=job["jobId"])
    return json.loads(out["body"].read())["ArchiveList"]


def open_uploads(server: Any, vault: str) -> list[dict]:
    return server.client(max_attempts=3).list_multipart_uploads(vaultName=vault)["UploadsList"]


def run(*cmd: str, timeout: float = 120, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=check, cwd=cwd)


def getfattr(path: Path, name: str) -> str | None:
    res = run("getfattr", "--only-values", "-n", name, str(path))
    return res.stdout if res.returncode == 0 else None


# --------------------------------------------------------------------------- a test's mounts


class MountSet:
    """Every mount a test started, for assertions and for a cleanup that cannot be skipped."""

    def __init__(self) -> None:
        self.points: list[Path] = []
        self.pids: set[int] = set()
        self.foreground: list[Mount] = []

    def add(self, m: Mount) -> Mount:
        """Own the foreground mount ``m`` (not started yet): :meth:`cleanup` closes it."""
        self.foreground.append(m)
        return m

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
        """Close every foreground mount (all of them, even when one fails), then the daemons."""
        first: BaseException | None = None
        for m in self.foreground:
            try:
                m.close()
            except BaseException as exc:
                first = first or exc
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
        if first is not None:
            raise first
