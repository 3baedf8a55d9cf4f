"""A ``glacierfs serve`` subprocess for integration tests (used through conftest fixtures).

``GlacierServer(data_dir, *extra_args)`` starts
``python -m glacierfs serve --port 0 --data-dir D --job-delay 0 --inventory-interval 3600 --admin``
plus ``extra_args`` (later arguments win, so ``--job-delay 5`` overrides), waits for the
``listening on`` line and offers boto3 clients and the admin hooks (signed with the server's
``--access-key``/``--secret-key`` when it runs with ``--verify-sigv4``; ``admin=False`` starts it
without the hooks). ``stop()`` (SIGTERM)
and ``kill()`` (SIGKILL) are safe to call twice; ``restart()`` starts again on the same dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import REPO

START_TIMEOUT = 30.0


class GlacierServer:
    """One server process on ``data_dir``; ``url`` is set while it runs."""

    def __init__(self, data_dir: str | os.PathLike[str], *extra_args: str, start: bool = True,
                 admin: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.with_admin = admin
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.server.log"
        if start:
            self.start()

    # -- process control ---------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "glacierfs", "serve", "--port", "0", "--data-dir", str(self.data_dir),
            "--job-delay", "0", "--inventory-interval", "3600", "--verbose", *(["--admin"] if self.with_admin else []),
            *self.extra_args,
        ]

    def _arg(self, name: str) -> str | None:
        args = self.extra_args
        values = [args[i + 1] for i in range(len(args) - 1) if args[i] == name]
        return values[-1] if values else None

    def start(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("server already running")
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=env)
        log.close()
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(START_TIMEOUT)
        text = line[0].decode().strip() if line else ""
        if not text.startswith("listening on "):
            self.kill()
            raise RuntimeError(f"server did not start (first line {text!r}); log:\n{self.log()}")
        self.url = text.removeprefix("listening on ")
        return self.url

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL if it does not exit in ``timeout``); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no clean shutdown at all."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.url = None

    def restart(self, *, kill: bool = False) -> str:
        self.kill() if kill else self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    # -- clients -----------------------------------------------------------------------
    def client(self, max_attempts: int = 1, **config: Any) -> Any:
        """A boto3 glacier client for this server (region us-east-1); extra botocore Config kwargs.

        ``max_attempts`` is the *total* number of attempts (botocore's ``total_max_attempts``):
        the default 1 means no retries, so injected faults surface as errors.
        """
        import boto3
        from botocore.config import Config

        settings: dict[str, Any] = {
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60,
        }
        settings.update(config)
        cfg = Config(**settings)
        return boto3.client("glacier", region_name="us-east-1", endpoint_url=self.url, config=cfg)

    def admin(self, path: str, method: str = "POST", body: dict | None = None) -> dict:
        """Call ``/_admin/<path>`` and return its JSON answer."""
        data = json.dumps(body).encode() if body is not None else b""
        url = f"{self.url}/_admin/{path.lstrip('/')}"
        headers: dict[str, str] = {}
        if "--verify-sigv4" in self.extra_args:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials

            signed = AWSRequest(method=method, url=url, data=data)
            creds = Credentials(self._arg("--access-key") or "", self._arg("--secret-key") or "")
            SigV4Auth(creds, "glacier", "us-east-1").add_auth(signed)
            headers = dict(signed.headers.items())
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")

    def snapshot(self, vault: str) -> dict:
        """Take the vault's inventory snapshot now (even if it never had a write)."""
        return self.admin(f"vaults/{vault}/inventory")

    def complete_jobs(self, job_id: str | None = None, status: str = "Succeeded") -> list[str]:
        """Complete every in-progress job now (or just ``job_id``), as ``status`` (Succeeded or Failed)."""
        from urllib.parse import urlencode

        q = {"status": status} | ({"job_id": job_id} if job_id else {})
        return self.admin(f"jobs/complete?{urlencode(q)}")["completed"]

    def advance(self, seconds: float) -> dict:
        """Move the server's virtual clock forward (jobs, retention and inventory schedule follow)."""
        return self.admin(f"clock/advance?seconds={seconds}")

    def populate(self, vault: str, count: int, size: int = 1024, descriptions: list[str] | None = None,
                 snapshot: bool = False) -> list[str] | None:
        """Add ``count`` archives with generated bodies (no upload); returns their ids if ≤1000."""
        body: dict[str, Any] = {"count": count, "size": size, "snapshot": snapshot}
        if descriptions:
            body["descriptions"] = descriptions
        return self.admin(f"vaults/{vault}/populate", body=body)["archive_ids"]

    def __enter__(self) -> GlacierServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def error_of(exc: Any) -> tuple[int, str, str]:
    """(HTTP status, error code, message) of a botocore ClientError (or a pytest ExceptionInfo of one)."""
    err = getattr(exc, "value", exc).response
    return err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"], err["Error"]["Message"]
