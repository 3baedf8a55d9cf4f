"""`glacierfs serve` and signals (issue 10 item 5): any number of SIGTERM/SIGINT, however close
together, ends the server within a few seconds (the handler only sets a flag and wakes the main loop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.glacier_server import REPO

TRIALS = 20  # the old handler deadlocked in about 1 run in 6
EXIT_WITHIN = 5.0
START_TIMEOUT = 30.0


def _start(data_dir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "glacierfs", "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(START_TIMEOUT)
    if not line or not line[0].startswith(b"listening on "):
        proc.kill()
        proc.wait()
        raise AssertionError(f"serve did not start: {line!r}")
    return proc


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM, signal.SIGINT)])
def test_repeated_signals_end_serve_quickly(tmp_path: Path, signals):
    trials = TRIALS if signals == (signal.SIGTERM, signal.SIGTERM) else 3
    for trial in range(trials):
        proc = _start(tmp_path / f"d{trial}")
        try:
            for i, sig in enumerate(signals):  # spread over 0-9 ms: the same signal twice in a row coalesces
                if i:
                    time.sleep((trial % 10) / 1000)
                os.kill(proc.pid, sig)
            try:
                code = proc.wait(EXIT_WITHIN)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"trial {trial}: serve still running {EXIT_WITHIN} s after {signals}") from None
            assert code == 0, f"trial {trial}: exit status {code}"
            assert not (tmp_path / f"d{trial}" / "server.json").exists()  # a clean shutdown
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()
