"""Durable local files: directory fsync, unique temporary names, atomic private JSON writes,
regular-file checks. One owner (the mount core and the CLI both use these).

* :func:`fsync_dir`: make a rename/unlink in a directory durable; errors propagate (a commit of
  the mount core that cannot be made durable must say so);
* :func:`fsync_dir_best_effort`: the same, errors ignored (some filesystems refuse a directory
  fsync; a finished download or a JSON state file is still right without it);
* :func:`unique_tmp`: a temporary name next to a file that no other thread or process uses;
* :func:`write_json_atomic`: write JSON to a unique 0600 temporary file in the same directory
  (several threads or processes may write the same file), fsync, rename over the target, fsync
  the directory, so a crash leaves the old or the new file, never a torn one;
* :func:`remove_stale_temps`: delete the temporary files of :func:`write_json_atomic` that a
  kill left behind (call it only while owning the target, e.g. under its lock);
* :func:`check_regular_file`: refuse a FIFO, socket or device with one line before anything
  opens it (opening a FIFO for reading blocks until a writer comes, maybe forever).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
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


_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``path`` durable (needed to survive a crash or reboot).

    Errors propagate: a commit that cannot be made durable must say so.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir_best_effort(path: str | os.PathLike[str]) -> None:
    """fsync a directory (a rename or create in it survives a crash); errors are ignored."""
    with contextlib.suppress(OSError):
        fsync_dir(path)


def unique_tmp(final: Path) -> Path:
    """A temporary name next to ``final`` that no other thread or process uses at the same time."""
    with _counter_lock:
        n = next(_counter)
    return final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.{n}.tmp")


_TEMP_SUFFIX = ".tmp"
_RANDOM_LEN = 8  # tempfile.mkstemp's random part


def _temp_prefix(target: Path) -> str:
    """``.NAME.``, or a hashed stand-in when NAME leaves no room within the 255-byte limit."""
    prefix = f".{target.name}."
    if len(prefix.encode("utf-8", "surrogateescape")) + _RANDOM_LEN + len(_TEMP_SUFFIX) > 255:
        digest = hashlib.sha256(target.name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        prefix = f".glacierfs-tmp-{digest}."
    return prefix


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, mode: int = 0o600) -> None:
    """Write ``data`` as JSON to ``path`` atomically and durably (file ``mode``, default 0600)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=_TEMP_SUFFIX, dir=target.parent)
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
    fsync_dir_best_effort(target.parent)


def remove_stale_temps(path: str | os.PathLike[str]) -> int:
    """Delete the temporary files of :func:`write_json_atomic` for ``path`` (a kill between
    create and rename leaves one); returns how many. Only for a caller that owns ``path``:
    another writer's live temporary file would be taken from under it."""
    target = Path(path)
    prefix = _temp_prefix(target)
    removed = 0
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if (
            name.startswith(prefix)
            and name.endswith(_TEMP_SUFFIX)
            and len(name) == len(prefix) + _RANDOM_LEN + len(_TEMP_SUFFIX)
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


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
