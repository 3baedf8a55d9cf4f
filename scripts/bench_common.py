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


def back_free_memory(nbytes: int) -> float:
    """Touch and free ``nbytes`` of anonymous memory, so the next allocations find host-backed pages.

    Why: this bench's VMs (virtio-balloon free page reporting) hand free guest pages back to the
    host, and the first touch of such a page costs a host fault: touching 1 GiB of fresh memory
    took 3.4 s, of just-freed memory 0.7 s. Whichever contender allocated fresh pages first
    (the mount's staged file, the server's stored copy, a local ``cp``) paid up to ~3 ms per MiB
    more than the next one, which decided rows by their order (docs/performance.md, "Host faults
    of fresh memory"). Called before each timed run of both contenders alike; returns seconds.
    """
    import mmap

    t0 = time.perf_counter()
    try:
        with open("/proc/meminfo") as f:
            avail = int(next(line.split()[1] for line in f if line.startswith("MemAvailable"))) * 1024
    except (OSError, StopIteration, ValueError):
        avail = 0
    nbytes = min(nbytes, avail // 4)
    if nbytes >= MiB:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
        m = mmap.mmap(-1, nbytes, flags=flags)
        if not getattr(mmap, "MAP_POPULATE", 0):
            for off in range(0, nbytes, mmap.PAGESIZE):
                m[off] = 1
        m.close()
    return time.perf_counter() - t0


def file_size(quick: bool) -> int:
    return 64 * MiB if quick else 1024 * MiB


def size_label(size: int) -> str:
    return f"{size // (1 << 30)} GiB" if size >= 1 << 30 else f"{size // MiB} MiB"
