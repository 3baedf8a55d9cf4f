"""What every benchmark module of scripts/bench shares: the row, test files, timing helpers."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass
class Row:
    name: str
    measured: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None = None  # None: no target, or not judged (quick mode)
    note: str = ""


def judged(quick: bool, ok: bool) -> bool | None:
    return None if quick else ok


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_file(path: Path, size: int) -> Path:
    """A file of incompressible bytes (reused when it already has the size)."""
    if path.exists() and path.stat().st_size == size:
        return path
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def warm_page_cache(path: Path) -> None:
    """Read the file once so that every contender reads it from the page cache alike."""
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def file_size(quick: bool) -> int:
    return 64 * MiB if quick else 1024 * MiB


def size_label(size: int) -> str:
    return f"{size // (1 << 30)} GiB" if size >= 1 << 30 else f"{size // MiB} MiB"
