"""Small durable-file helpers of the mount core (fsync of a directory, unique temporary names)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (needed to survive a crash or reboot).

    Errors propagate: a commit that cannot be made durable must say so.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unique_tmp(final: Path) -> Path:
    """A temporary name next to ``final`` that no other thread or process uses at the same time."""
    with _counter_lock:
        n = next(_counter)
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.{n}.tmp")
