"""The peak RSS of one command, measured without the test process's own memory in it.

``os.wait4(pid).ru_maxrss`` of a child started by the pytest process is not the child's peak:
Linux records the high-water mark of the memory image an ``exec`` replaces (the fork or vfork
copy of the parent) in the same counter, so a command started from a pytest worker that has
grown to 200 MiB reads at least 200 MiB, whatever the command itself uses. Here the command is
started by a small fresh interpreter (``python -I -S``, a few MiB) that forks, execs it, reaps
it with ``wait4`` and writes ``ru_maxrss`` to a file: the reading is the command's peak or the
launcher's few MiB, whichever is larger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Measured", "run_measured"]

_LAUNCHER = r"""
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}\n")
"""


@dataclass(frozen=True)
class Measured:
    returncode: int
    peak_rss: int  # bytes


def run_measured(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: IO[str], stderr: IO[str],
    result_file: Path, timeout: float,
) -> Measured:
    """Run ``argv`` to its end under the launcher; its exit code and peak RSS in bytes."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result_file), *argv],
        cwd=cwd, env=dict(env), stdout=stdout, stderr=stderr, start_new_session=True,
    )
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # the launcher's session: the command dies with it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, f"launcher exit {proc.returncode}"
    rc, maxrss_kib = (int(x) for x in result_file.read_text().split())
    return Measured(rc, maxrss_kib * 1024)
