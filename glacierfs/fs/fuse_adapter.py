"""Thin mfusepy adapter: translates FUSE callbacks to the core (:class:`~glacierfs.fs.types.FSCore`).

Translation only: paths, stat dicts, errnos. Rules (see docs on FUSE in ARCHITECTURE.md):

* ``use_ns = True``: times are integer nanoseconds;
* only ``_``-prefixed attributes on the Operations object (any public attribute named like a
  FUSE operation would become that callback);
* errnos come from :func:`glacierfs.errors.errno_for` (the one table); anything that is not a
  :class:`~glacierfs.errors.GlacierFSError` or ``OSError`` is logged with its traceback once and
  becomes EIO (never EINVAL, never ENOSYS);
* worker threads start in ``init`` (after daemonizing), stop in ``destroy``;
* readdir hands libfuse full attributes with real offsets (readdirplus) from
  :class:`~glacierfs.fs.listing_cache.Listings`, so ``ls -l`` of a large directory needs no
  per-file getattr.

Threading: libfuse calls in on its worker threads; this module keeps no state of its own but
the ``struct fuse`` pointer (written once in ``init``), used to invalidate kernel entries.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy

from glacierfs.errors import GlacierFSError, InvalidArgument, NotPermitted, errno_for
from glacierfs.fs.listing_cache import BLKSIZE, Listing, Listings, StatPacker
from glacierfs.fs.types import DIR_MODE, FILE_MODE, Attr, FSCore

log = logging.getLogger(__name__)

_BUF_FD_AT = (1 << 1) | (1 << 2)  # FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK: a descriptor, written at .pos


class _BufVec1(ctypes.Structure):
    """``struct fuse_bufvec`` of one buffer as C lays it out (``buf[1]`` is inline, not a pointer)."""

    _fields_ = [("count", ctypes.c_size_t), ("idx", ctypes.c_size_t), ("off", ctypes.c_size_t),
                ("buf", mfusepy.fuse_buf)]


_buf_size = mfusepy._libfuse.fuse_buf_size
_buf_size.argtypes = [ctypes.c_void_p]
_buf_size.restype = ctypes.c_size_t
_buf_copy = mfusepy._libfuse.fuse_buf_copy
_buf_copy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
_buf_copy.restype = ctypes.c_ssize_t

FUSE_FILL_DIR_PLUS = 1 << 1
FUSE_READDIR_PLUS = 1 << 0
# libfuse's fuse_fill_dir_t with the name and stat as plain addresses: a Listing's buffers are
# handed over in place (mfusepy's prototype would want a bytes and a ctypes stat per entry)
_FILL_AT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, mfusepy.c_off_t,
                            ctypes.c_int)
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
# Long kernel caching keeps `ls -l` of big directories fast; entries another process removes
# are invalidated by the core (VaultFS.notice_changes) through fuse_invalidate_path.
DEFAULT_OPTIONS = {"attr_timeout": "3600", "entry_timeout": "3600", "negative_timeout": "0"}
if (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 12):
    # fsync blocks its FUSE thread until the archive exists: with libfuse's default of 10
    # threads, ten waiting `sync FILE` would freeze every other operation on the mount
    DEFAULT_OPTIONS["max_threads"] = "64"

_QUIET = {errno.ENOENT, errno.ENODATA, errno.EOPNOTSUPP, errno.EEXIST, errno.ENOTEMPTY, errno.EAGAIN}


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Exceptions from the core -> FuseOSError(errno_for(exc))."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except OSError as exc:  # FSError included
            code = errno_for(exc)
            if code not in _QUIET:
                log.debug("%s%r: %s", fn.__name__, args[1:2], exc)
            raise mfusepy.FuseOSError(code) from None
        except GlacierFSError as exc:
            log.warning("%s %s: %s", fn.__name__, args[1] if len(args) > 1 else "", exc)
            raise mfusepy.FuseOSError(errno_for(exc)) from None
        except Exception:
            log.exception("%s%r: unexpected error, returning EIO", fn.__name__, args[1:2])
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapper


class GlacierOperations(mfusepy.Operations):
    """FUSE callbacks over an :class:`FSCore`."""

    use_ns = True

    def __init__(self, core: FSCore) -> None:
        self._core = core
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._packer = StatPacker(mfusepy.c_stat, self._uid, self._gid)
        self._listings = Listings(core, self._packer)
        self._fuse_ptr: int | None = None

    def _stat(self, a: Attr) -> dict[str, Any]:
        ns = int(a.mtime * 1e9)
        if a.is_dir:
            mode, nlink = stat.S_IFDIR | DIR_MODE, 2
        else:
            mode, nlink = stat.S_IFREG | FILE_MODE, 1
        return {
            "st_mode": mode, "st_nlink": nlink, "st_size": a.size, "st_blocks": (a.size + 511) // 512,
            "st_blksize": BLKSIZE, "st_uid": self._uid, "st_gid": self._gid,
            "st_atime": ns, "st_mtime": ns, "st_ctime": ns,
        }

    def _invalidate(self, path: str) -> None:
        ptr = self._fuse_ptr
        invalidate = getattr(mfusepy._libfuse, "fuse_invalidate_path", None)  # libfuse >= 3.1
        if ptr and invalidate is not None:
            invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            invalidate.restype = ctypes.c_int
            invalidate(ptr, path.encode("utf-8", "surrogateescape"))

    # ------------------------------------------------------------------ lifecycle

    def init(self, path: str) -> None:
        try:
            self._fuse_ptr = mfusepy._libfuse.fuse_get_context().contents.fuse
        except Exception:  # pragma: no cover - exotic libfuse
            self._fuse_ptr = None
        self._core.set_invalidator(self._invalidate)
        self._core.start()
        self._listings.prefetch("/")
        self._listings.watch()
        log.info("mounted")

    def destroy(self, path: str) -> None:
        self._listings.stop()
        try:
            self._core.stop()
        except Exception:
            log.exception("error while stopping")

    # ------------------------------------------------------------------ metadata

    @_errors
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        return self._stat(self._core.getattr(path))

    @_errors
    def statfs(self, path: str) -> dict[str, int]:
        return self._core.statfs()

    @_errors
    def opendir(self, path: str) -> int:
        return self._listings.opendir(path)

    @_errors
    def releasedir(self, path: str, fh: int) -> int:
        self._listings.releasedir(fh)
        return 0

    @_errors
    def readdir_with_offset(self, path: str, offset: int, fh: int) -> Iterator[tuple[str, dict[str, Any], int]]:
        """Used by mfusepy's own readdir path (libfuse2); libfuse3 goes through :meth:`_FUSE.readdir_fuse_3`."""
        listing = self._listings.entries(fh, offset)
        mode = self._packer.mode_at
        return (
            (listing.name(i).decode("utf-8", "surrogateescape"), {"st_mode": mode(listing.stats, i)}, i + 1)
            for i in range(offset, len(listing))
        )

    @_errors
    def _entries(self, fh: int, offset: int) -> Listing:
        return self._listings.entries(fh, offset)

    @_errors
    def mkdir(self, path: str, mode: int) -> int:
        self._core.mkdir(path)
        return 0

    @_errors
    def rmdir(self, path: str) -> int:
        self._core.rmdir(path)
        return 0

    @_errors
    def unlink(self, path: str) -> int:
        self._core.unlink(path)
        return 0

    @_errors
    def rename(self, old: str, new: str) -> int:
        self._core.rename(old, new)
        return 0

    @_errors
    def link(self, target: str, source: str) -> int:
        self._core.link(target, source)
        return 0

    @_errors
    def symlink(self, target: str, source: str) -> int:
        self._core.symlink(target, source)
        return 0

    @_errors
    def readlink(self, path: str) -> str:
        self._core.getattr(path)
        raise InvalidArgument()

    @_errors
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise NotPermitted()

    @_errors
    def chmod(self, path: str, mode: int) -> int:
        self._core.chmod(path, mode)
        return 0

    @_errors
    def chown(self, path: str, uid: int, gid: int) -> int:
        self._core.chown(path, uid, gid)
        return 0

    @_errors
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            mtime: float | None = None
        else:
            ns = int(times[1])
            if (ns - UTIME_OMIT) % 10**9 == 0:
                return 0
            mtime = None if (ns - UTIME_NOW) % 10**9 == 0 else ns / 1e9
        self._core.utimens(path, mtime)
        return 0

    # ------------------------------------------------------------------ files

    @_errors
    def create(self, path: str, mode: int, flags: int) -> int:
        return self._core.create(path, flags)

    @_errors
    def open(self, path: str, flags: int) -> int:
        return self._core.open(path, flags)

    @_errors
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self._core.read(fh, size, offset)

    @_errors
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self._core.write(fh, data, offset)

    @_errors
    def write_buf(self, path: str, buf: Any, offset: int, fh: int) -> int:
        """WRITE without a Python copy: libfuse moves the bytes into the staged file itself.

        ``fuse_buf_copy`` (the GIL released for the call) splices from the kernel's pipe or
        copies from libfuse's buffer straight to the staged descriptor at ``offset``; the
        plain ``write`` made a ``bytes`` of every request first (measured: ~10% of the mount's
        CPU for a cp into it, docs/performance.md). A short copy is returned as a short write;
        a failed one (nothing copied) as its errno. Either marks the file failed in the core
        (its last close(2) fails, it is never uploaded: a ``cp`` that died on ENOSPC must not
        leave a truncated archive behind).
        """
        fd = self._core.write_fd(fh)
        size = _buf_size(buf)
        dst = _BufVec1(1, 0, 0, mfusepy.fuse_buf(size=size, flags=_BUF_FD_AT, mem=None, fd=fd, pos=offset))
        done = _buf_copy(ctypes.byref(dst), buf, 0)
        if done < 0:
            self._core.write_failed(fh, -done)
            raise mfusepy.FuseOSError(-done)
        if done < size:
            self._core.write_failed(fh, errno.EIO)
        return int(done)

    @_errors
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._core.truncate(path, length, fh)
        return 0

    @_errors
    def flush(self, path: str, fh: int) -> int:
        self._core.flush(fh)
        return 0

    @_errors
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._core.fsync(fh, bool(datasync))
        return 0

    @_errors
    def release(self, path: str, fh: int) -> int:
        self._core.release(fh)
        return 0

    # ------------------------------------------------------------------ xattrs

    @_errors
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self._core.getxattr(path, name)

    @_errors
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self._core.setxattr(path, name, value)
        return 0

    @_errors
    def listxattr(self, path: str) -> list[str]:
        return self._core.listxattr(path)

    @_errors
    def removexattr(self, path: str, name: str) -> int:
        self._core.removexattr(path, name)
        return 0


def _direct_if_write_only(fi: Any) -> None:
    """A descriptor opened O_WRONLY writes past the kernel's page cache (FOPEN_DIRECT_IO).

    Each write(2) of a ``cp`` into the mount is a synchronous WRITE either way (the writeback
    cache is off); without the page cache the kernel no longer copies the bytes into pages of
    its own first: libfuse reads them straight from the writer's buffer, and the written file
    does not occupy the page cache twice (the mount's pages and the staged file's). Measured:
    ``cp`` of 1 GiB, median of 5 alternating runs, 1.90 s -> 1.17 s (local cp + sync 0.95 s);
    the bench's row, with every copy kept, did not move (docs/performance.md, issue 14).
    Only O_WRONLY: such a descriptor can never be mmap'ed (mmap needs read access), and
    MAP_SHARED of a direct-I/O descriptor is refused by the kernel (ENODEV); O_RDWR keeps the
    page cache, so shared writable mappings still work. Reads never bypass it.
    """
    if fi.flags & os.O_ACCMODE == os.O_WRONLY:
        fi.direct_io = 1


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with readdirplus: full attributes with real offsets reach libfuse
    (mfusepy 3.1 only passes the file type on). (libfuse 3.14's high-level API does not pass
    ``cache_readdir`` on, so listings are cached in the core instead.)"""

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        ret: int = super().create(path, mode, fip)
        _direct_if_write_only(fip.contents)
        return ret

    def open(self, path: bytes, fip: Any) -> int:
        ret: int = super().open(path, fip)
        _direct_if_write_only(fip.contents)
        return ret

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        fill = FUSE_FILL_DIR_PLUS if flags & FUSE_READDIR_PLUS else 0
        listing = self.operations._entries(fip.contents.fh, offset)
        filler_at = ctypes.cast(filler, _FILL_AT)
        name_at, stat_at = listing.name_address, listing.stat_address
        for i in range(offset, len(listing)):  # `listing` stays referenced: its buffers cannot move
            if filler_at(buf, name_at(i), stat_at(i), i + 1, fill if i >= 2 else 0) != 0:
                break
        return 0


def parse_options(text: str | None) -> dict[str, Any]:
    """``-o a=b,c`` -> ``{"a": "b", "c": True}``."""
    out: dict[str, Any] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        out[key] = value if sep else True
    return out


def run(core: FSCore, mountpoint: str, *, fsname: str, options: dict[str, Any] | None = None) -> None:
    """Mount ``core`` on ``mountpoint`` and serve until unmounted (foreground, multithreaded).

    A read-only mount is enforced by the core (EROFS), not by the kernel's ``ro`` flag, so that
    ``setfattr -n user.glacier.retrieve`` keeps working; an explicit ``-o ro`` is passed on.
    """
    opts: dict[str, Any] = dict(DEFAULT_OPTIONS)
    opts.update(options or {})
    opts.setdefault("fsname", fsname)
    opts.setdefault("subtype", "glacierfs")
    started = time.monotonic()
    log.debug("mounting %s on %s with %s", fsname, mountpoint, opts)
    if mfusepy.fuse_version_major != 3:
        log.warning("libfuse %d loaded: install fuse3 for readdirplus and large writes", mfusepy.fuse_version_major)
    _FUSE(GlacierOperations(core), mountpoint, foreground=True, **opts)
    log.info("unmounted %s after %.0f s", mountpoint, time.monotonic() - started)
