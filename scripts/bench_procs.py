"""Processes for the benchmarks: a ``glacierfs serve``, a foreground mount, RSS sampling.

Everything here cleans up after itself: servers are stopped, mounts unmounted (lazily if
busy) and their processes killed, also when a benchmark fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0

# Never read the developer's AWS config or reach instance metadata; the local server accepts
# any credentials.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/glacierfs-bench-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/glacierfs-bench-credentials",
}


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env.update(AWS_ENV)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def isolate_aws() -> None:
    """Apply :data:`AWS_ENV` to this process too (boto3 clients made here)."""
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(AWS_ENV)


def glacierfs(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run the CLI; raise with its output when it fails."""
    res = subprocess.run(
        [sys.executable, "-m", "glacierfs", *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=REPO, check=False,
    )
    if res.returncode != 0:
        raise RuntimeError(f"glacierfs {' '.join(args)} -> exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res


# --------------------------------------------------------------------------- memory


def proc_status_kib(pid: int, field: str) -> int | None:
    """``VmRSS``/``VmHWM`` (KiB) of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every ``interval`` s in a thread; ``peak_mib`` also reads VmHWM."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.max_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is None:
                return
            self.max_kib = max(self.max_kib, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mib(self) -> float:
        hwm = proc_status_kib(self.pid, "VmHWM") or 0
        return max(self.max_kib, hwm) / 1024


# --------------------------------------------------------------------------- server


class Server:
    """``glacierfs serve`` on ``data_dir`` (job delay 0, no periodic inventory)."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        from tests.helpers.glacier_server import GlacierServer

        isolate_aws()
        self._srv = GlacierServer(data_dir, *extra, start=False)
        self._srv.command = self._command  # type: ignore[method-assign]
        self._srv.start()
        self.url: str = self._srv.url  # type: ignore[assignment]

    def _command(self) -> list[str]:
        # like the test helper, minus --verbose: an access-log line per request costs time
        return [sys.executable, "-m", "glacierfs", "serve", "--port", "0", "--data-dir", str(self._srv.data_dir),
                "--job-delay", "0", "--inventory-interval", "86400", "--admin", *self._srv.extra_args]

    @property
    def pid(self) -> int:
        return self._srv.proc.pid  # type: ignore[union-attr]

    def create_vault(self, vault: str) -> None:
        self._srv.client().create_vault(vaultName=vault)

    def populate(self, vault: str, count: int, size: int = 1, descriptions: list[str] | None = None,
                 snapshot: bool = False) -> None:
        self._srv.populate(vault, count, size, descriptions, snapshot)

    def snapshot(self, vault: str) -> dict:
        return self._srv.snapshot(vault)

    def stop(self) -> None:
        self._srv.stop()

    def client_args(self, cache_dir: Path) -> list[str]:
        return ["--endpoint-url", self.url, "--region", "us-east-1", "--cache-dir", str(cache_dir)]


@contextlib.contextmanager
def server(data_dir: Path, *extra: str) -> Iterator[Server]:
    srv = Server(data_dir, *extra)
    try:
        yield srv
    finally:
        srv.stop()


# --------------------------------------------------------------------------- mount


def mounted(mnt: Path) -> bool:
    target = str(mnt)
    try:
        with open("/proc/mounts") as f:
            return any(len(p := line.split()) > 1 and p[1] == target for line in f)
    except OSError:
        return False


def fuse_available() -> str | None:
    """None when FUSE mounts can run here, else why not."""
    import shutil

    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def unmount(mnt: Path) -> None:
    """Unmount, lazily if busy; never raises."""
    for cmd in (["fusermount3", "-u", str(mnt)], ["fusermount3", "-u", "-z", str(mnt)]):
        if not mounted(mnt):
            return
        subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        for _ in range(100):
            if not mounted(mnt):
                return
            time.sleep(0.05)


class Mount:
    """``glacierfs mount --foreground`` of one vault, owned by the benchmark.

    ``ready_seconds``: from starting the process until the mount point is mounted and its root
    answers ``os.listdir``.
    """

    def __init__(self, srv: Server, cache_dir: Path, vault: str, mnt: Path, *extra: str) -> None:
        self.mnt = mnt
        self.log_path = mnt.parent / f"{mnt.name}.mount.log"
        mnt.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "glacierfs", "mount", "--foreground", "--quiet",
                *srv.client_args(cache_dir), *extra, vault, str(mnt)]
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         env=child_env(), cwd=REPO)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not mounted(mnt):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mount exited with {self.proc.returncode}:\n{self.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mount not ready after {READY_TIMEOUT} s:\n{self.log()}")
                time.sleep(0.005)
            os.listdir(mnt)
        except BaseException:
            self.close()
            raise
        self.ready_seconds = time.perf_counter() - t0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def close(self) -> None:
        try:
            unmount(self.mnt)
        finally:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait(30)
            unmount(self.mnt)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_uploaded(path: Path, timeout: float = 3600, interval: float = 0.02) -> float:
    """Poll ``user.glacier.state`` until the file is an archive; returns the time it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = os.getxattr(path, "user.glacier.state").decode()
        except OSError:
            state = "?"
        if state in ("cached", "archived"):
            return time.perf_counter()
        if state == "failed":
            raise RuntimeError(f"upload of {path} failed")
        if time.monotonic() > deadline:
            raise RuntimeError(f"upload of {path} not done after {timeout} s (state {state})")
        time.sleep(interval)
