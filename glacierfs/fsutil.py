"""Durable local files: directory fsync, atomic private JSON writes, regular-file checks. One owner.

* :func:`fsync_dir`: make a rename/unlink in a directory durable (best effort: some
  filesystems refuse a directory fsync);
* :func:`write_json_atomic`: write JSON to a 0600 temporary file, fsync, rename over the
  target, fsync the directory, so a crash leaves the old or the new file, never a torn one;
* :func:`check_regular_file`: refuse a FIFO, socket or device with one line before anything
  opens it (opening a FIFO for reading blocks until a writer comes, maybe forever).
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

from glacierfs.errors import NotFoundError, UsageError

log = logging.getLogger(__name__)

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory ``path`` (errors ignored: durability is best effort there)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and durably, mode 0600."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fsync_dir(target.parent)


def check_regular_file(name: str) -> os.stat_result:
    """``os.stat(name)`` of a readable regular file (symlinks followed), else one clear error.

    Missing -> :class:`NotFoundError` (exit 3); a directory, FIFO, socket, device or an
    unreadable file -> :class:`UsageError` (exit 2).
    """
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise NotFoundError(f"{name}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{name}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{name}: is a directory (give files)")
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for test, k in _KINDS if test(st.st_mode)), "of another kind")
        raise UsageError(f"{name}: is {kind}, not a regular file (only regular files are read)")
    if not os.access(name, os.R_OK):
        raise UsageError(f"{name}: permission denied")
    return st
