"""The mount core's vocabulary: :class:`Attr`, :class:`FSError`, path helpers and the
:class:`FSCore` Protocol that :mod:`glacierfs.fs.fuse_adapter` depends on (and nothing more).

Errnos: the core raises a named POSIX answer from :mod:`glacierfs.errors` (``NoEntry``,
``NotPermitted``, ... : :class:`~glacierfs.errors.FSError` subclasses whose errno the one table
:data:`~glacierfs.errors.FS_ERRNOS` gives, as the README's Semantics table documents) or a
:class:`~glacierfs.errors.GlacierFSError` (whose class carries its errno);
:func:`glacierfs.errors.errno_for` is the one function that turns either into the number FUSE
returns. ``FSError`` is re-exported here for the core's ``except FSError``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple, Protocol

from glacierfs.errors import BadName, InvalidArgument, NameTooLong, UsageError
from glacierfs.errors import FSError as FSError  # re-exported: the core catches it as fs.types.FSError

log = logging.getLogger(__name__)

FILE_MODE = 0o644
DIR_MODE = 0o755
HIDDEN_PREFIX = ".fuse_hidden"  # libfuse's name for files removed while open


class Attr(NamedTuple):
    """What ``stat`` shows. ``mtime`` in epoch seconds. A tuple: 100,000 of them are built per listing."""

    is_dir: bool
    size: int = 0
    mtime: float = 0.0


DIR = "dir"  # what a lookup returns for a directory


def split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent or "/", name


def rel(path: str) -> str:
    """'/a/b' -> 'a/b' (the catalog's spelling); '/' -> ''."""
    return path.strip("/")


def undecodable(path: str) -> bool:
    """True when the kernel handed us bytes that are not UTF-8 (mfusepy decodes with surrogateescape)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_name(path: str) -> None:
    """A name that can become an archive description and comes back the same from the catalog.

    Not UTF-8 -> EILSEQ (logged once per call, no traceback); too long -> ENAMETOOLONG;
    control characters -> EINVAL.
    """
    if undecodable(path):
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        log.warning("refused %s: file names must be valid UTF-8 (Glacier descriptions are UTF-8)", shown)
        raise BadName("file names must be UTF-8")
    from glacierfs.codec import encode_description, safe_relpath

    try:
        encode_description(rel(path), time.time())
    except UsageError:
        raise NameTooLong("path too long for an archive description") from None
    if safe_relpath(rel(path), "-") != rel(path):
        # the catalog would show it under another name (control characters are escaped)
        raise InvalidArgument("file names must not contain control characters")


class FSCore(Protocol):
    """What the FUSE adapter calls: paths in, :class:`Attr`/bytes/lists out, errors raised.

    Implemented by :class:`~glacierfs.fs.vaultfs.VaultFS` and
    :class:`~glacierfs.fs.multivault.MultiVaultFS`.
    """

    def start(self) -> None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def getattr(self, path: str) -> Attr: ...
    def readdir(self, path: str) -> list[tuple[str, Attr]]: ...
    def listing_token(self, path: str) -> Any: ...
    def archive_count(self) -> int | None: ...
    def statfs(self) -> dict[str, int]: ...
    def mkdir(self, path: str) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def rename(self, old: str, new: str) -> None: ...
    def link(self, target: str, source: str) -> None: ...
    def symlink(self, target: str, source: str) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def chown(self, path: str, uid: int, gid: int) -> None: ...
    def utimens(self, path: str, mtime: float | None) -> None: ...
    def create(self, path: str, flags: int = os.O_WRONLY) -> int: ...
    def open(self, path: str, flags: int) -> int: ...
    def read(self, fh: int, size: int, offset: int) -> bytes: ...
    def write(self, fh: int, data: bytes, offset: int) -> int: ...
    def write_fd(self, fh: int) -> int: ...
    def write_failed(self, fh: int, code: int) -> None: ...
    def truncate(self, path: str, length: int, fh: int | None = None) -> None: ...
    def flush(self, fh: int) -> None: ...
    def fsync(self, fh: int, datasync: bool = False) -> None: ...
    def release(self, fh: int) -> None: ...
    def getxattr(self, path: str, name: str) -> bytes: ...
    def setxattr(self, path: str, name: str, value: bytes) -> None: ...
    def listxattr(self, path: str) -> list[str]: ...
    def removexattr(self, path: str, name: str) -> None: ...
    def set_invalidator(self, invalidate: Any) -> None: ...
    def notice_changes(self, known: Any) -> None: ...


def statfs_answer() -> dict[str, int]:
    """Glacier has no quota: report a large, constant free space so that tools do not refuse."""
    blocks = 1 << 40
    return {
        "f_bsize": 1 << 20,
        "f_frsize": 4096,
        "f_blocks": blocks,
        "f_bfree": blocks,
        "f_bavail": blocks,
        "f_files": 1 << 32,
        "f_ffree": 1 << 31,
        "f_favail": 1 << 31,
        "f_namemax": 255,
    }
