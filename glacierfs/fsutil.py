"""Durable small-file helpers shared by the modules that keep local state.

``write_json_atomic`` writes to a unique temporary name in the same directory (several
threads or processes may write the same file), fsyncs it and renames it over the target, so a
reader sees the old or the new content, never a mix; ``fsync_dir`` makes a rename durable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (a rename or create in it survives a crash); errors are ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` atomically and durably (file ``mode``, default 0600)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
