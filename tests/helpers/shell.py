"""A user's shell for hint tests: command lines run through ``bash -c`` and the hints they print."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cli import Cli

VENV_BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 120.0  # one CLI command of these tests (they finish in seconds)


class Shell:
    """Runs command lines through ``bash -c`` in one directory and environment (a user's shell)."""

    def __init__(self, cwd: Path, server=None) -> None:
        self.cwd = cwd
        self.server = server
        env = Cli.env()
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        self.env = env

    def run(self, line: str, complete_jobs: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``line``; with ``complete_jobs``, complete the server's jobs while it runs (it waits on them)."""
        proc = subprocess.Popen(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            if complete_jobs:
                deadline = time.monotonic() + COMMAND_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline:
                    self.server.complete_jobs()
                    try:
                        proc.wait(timeout=0.2)
                    except subprocess.TimeoutExpired:
                        pass
            out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert "Traceback" not in err, f"$ {line}\n{err}"
        return subprocess.CompletedProcess(line, proc.returncode, out, err)


def hints_in(stderr: str) -> list[str]:
    """The commands the CLI told the user to run: whatever follows ``run: `` up to the end of its line."""
    return [line.split("run: ", 1)[1] for line in stderr.splitlines() if "run: " in line]


def one_hint(res: subprocess.CompletedProcess[str]) -> str:
    found = hints_in(res.stderr)
    assert len(found) == 1, f"$ {res.args}\n{res.stderr}"
    assert found[0].startswith("glacierfs "), found[0]
    return found[0]
