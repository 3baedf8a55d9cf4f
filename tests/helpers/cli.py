"""The real ``glacierfs`` command in a subprocess (``python -m glacierfs ... --endpoint-url URL
--cache-dir DIR``): :class:`Cli` runs it and asserts no traceback reached stderr, :class:`Result`
is what it printed, :func:`write` makes a deterministic input file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

__all__ = ["REPO", "Cli", "Result", "write"]


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\n[exit {self.returncode}]\n{self.stdout}\n--- stderr\n{self.stderr}"


class Cli:
    """Runs ``glacierfs COMMAND ... --endpoint-url URL --cache-dir DIR`` in a subprocess."""

    def __init__(self, url: str | None, cache_dir: Path, cwd: Path) -> None:
        self.url = url
        self.cache_dir = cache_dir
        self.cwd = cwd

    def argv(self, args: Sequence[str], connect: bool = True) -> list[str]:
        extra = ["--cache-dir", str(self.cache_dir)]
        if connect and self.url:
            extra += ["--endpoint-url", self.url]
        return [sys.executable, "-m", "glacierfs", *args, *extra]

    @staticmethod
    def env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "GLACIERFS_CACHE_DIR"}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def __call__(
        self,
        *args: str,
        code: int | None = 0,
        timeout: float = 180,
        connect: bool = True,
        env: dict[str, str | None] | None = None,
    ) -> Result:
        argv = self.argv(args, connect)
        run_env = self.env()
        for k, v in (env or {}).items():
            if v is None:
                run_env.pop(k, None)
            else:
                run_env[k] = v
        proc = subprocess.run(
            argv, cwd=self.cwd, env=run_env, capture_output=True, text=True, timeout=timeout, check=False
        )
        res = Result(argv[3:], proc.returncode, proc.stdout, proc.stderr)
        if code is not None:
            assert res.returncode == code, str(res)
        assert "Traceback" not in res.stderr, str(res)
        return res

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(args),
            cwd=self.cwd,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def error(
        self,
        code: int,
        *args: str,
        match: str,
        env: dict[str, str | None] | None = None,
        connect: bool = True,
    ) -> Result:
        """Run a command that must fail with ``code`` and one error line containing ``match``."""
        res = self(*args, code=code, env=env, connect=connect)
        err = [line for line in res.stderr.splitlines() if line.startswith("glacierfs: error: ")]
        assert len(err) == 1, str(res)
        assert match in err[0], str(res)
        return res


def write(path: Path, size: int, seed: int = 0) -> bytes:
    data = bytes((i * 13 + seed + i // 1021) % 256 for i in range(size))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data
