"""Thin mfusepy adapter: translates FUSE callbacks to the core (:mod:`glacierfs.vfs`). Nothing else.

Rules (see ../shared/reference/fuse-notes.md):

* ``use_ns = True``: times are integer nanoseconds;
* only ``_``-prefixed attributes on the Operations object (any public attribute named like a
  FUSE operation would become that callback);
* errors are mapped in one place, :func:`_errors`: :class:`~glacierfs.vfs.FSError` and
  ``OSError`` keep their errno, :class:`~glacierfs.errors.GlacierFSError` goes through
  ``errno_for``, anything else is logged and becomes EIO (never EINVAL, never ENOSYS);
* worker threads start in ``init`` (after daemonizing), stop in ``destroy``;
* readdir hands libfuse full attributes with real offsets (readdirplus), so ``ls -l`` of a
  large directory needs no per-file getattr; :class:`_FUSE` fills them (mfusepy 3.1 only
  passes the file type on).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")

import mfusepy

from glacierfs.vfs import Attr, FSError, errno_of

log = logging.getLogger(__name__)

FUSE_FILL_DIR_PLUS = 1 << 1
FUSE_READDIR_PLUS = 1 << 0
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
BLKSIZE = 1 << 20  # cp and friends size their buffers after st_blksize: fewer, larger writes
# The catalog changes only through this process (or through the CLI, which then shows up at
# the next lookup after the timeout): long kernel caching keeps `ls -l` of big directories fast.
DEFAULT_OPTIONS = {"attr_timeout": "3600", "entry_timeout": "3600", "negative_timeout": "0"}
if (mfusepy.fuse_version_major, mfusepy.fuse_version_minor) >= (3, 12):
    # fsync blocks its FUSE thread until the archive exists: with libfuse's default of 10
    # threads, ten waiting `sync FILE` would freeze every other operation on the mount
    DEFAULT_OPTIONS["max_threads"] = "64"

_QUIET = {errno.ENOENT, errno.ENODATA, errno.EOPNOTSUPP, errno.EEXIST, errno.ENOTEMPTY}
MAX_CACHED_ENTRIES = 200_000  # bound of the reused directory listings (about 50 MiB)


def _flatten(struct_type: Any) -> tuple[list[str], str]:
    """Field names and struct codes of a ctypes Structure, nested structs and arrays flattened."""
    names: list[str] = []
    codes = ""
    for name, ctype in struct_type._fields_[:]:
        if isinstance(ctype, type) and issubclass(ctype, ctypes.Structure):
            sub_names, sub_codes = _flatten(ctype)
            names += [f"{name}.{n}" for n in sub_names]
            codes += sub_codes
        elif isinstance(ctype, type) and issubclass(ctype, ctypes.Array):
            names += [f"{name}[{i}]" for i in range(ctype._length_)]
            codes += ctype._type_._type_ * ctype._length_
        else:
            names.append(name)
            codes += ctype._type_
    return names, codes


class StatPacker:
    """Builds ``c_stat`` structs in one ``struct.pack`` (readdirplus of 100,000 entries needs it fast)."""

    def __init__(self, uid: int, gid: int) -> None:
        names, codes = _flatten(mfusepy.c_stat)
        self._struct = struct.Struct("@" + codes)
        if self._struct.size != ctypes.sizeof(mfusepy.c_stat):  # pragma: no cover - exotic ABI
            raise ValueError("c_stat layout not understood")
        self._idx = {n: i for i, n in enumerate(names)}
        self._times = [self._idx[f"{k}.{f}"] for k in ("st_atimespec", "st_mtimespec", "st_ctimespec")
                       for f in ("tv_sec", "tv_nsec")]
        self._size, self._blocks = self._idx["st_size"], self._idx["st_blocks"]
        base = [0] * len(names)
        base[self._idx["st_uid"]] = uid
        base[self._idx["st_gid"]] = gid
        base[self._idx["st_blksize"]] = BLKSIZE
        self._file = list(base)
        self._file[self._idx["st_mode"]] = stat.S_IFREG | 0o644
        self._file[self._idx["st_nlink"]] = 1
        self._dir = list(base)
        self._dir[self._idx["st_mode"]] = stat.S_IFDIR | 0o755
        self._dir[self._idx["st_nlink"]] = 2

    def pack(self, a: Attr) -> Any:
        v = list(self._dir if a.is_dir else self._file)
        v[self._size] = a.size
        v[self._blocks] = (a.size + 511) // 512
        sec, nsec = divmod(int(a.mtime * 1e9), 10**9)
        t = self._times
        v[t[0]] = v[t[2]] = v[t[4]] = sec
        v[t[1]] = v[t[3]] = v[t[5]] = nsec
        return mfusepy.c_stat.from_buffer_copy(self._struct.pack(*v))


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one place that turns core exceptions into errnos."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except OSError as exc:  # FSError included
            code = errno_of(exc)
            if code not in _QUIET:
                log.debug("%s%r: %s", fn.__name__, args[1:2], exc)
            raise mfusepy.FuseOSError(code) from None
        except Exception as exc:
            code = errno_of(exc)
            if code == errno.EIO and not hasattr(exc, "exit_code"):
                log.exception("%s%r: unexpected error, returning EIO", fn.__name__, args[1:2])
            else:
                log.warning("%s %s: %s", fn.__name__, args[1] if len(args) > 1 else "", exc)
            raise mfusepy.FuseOSError(code) from None

    return wrapper


class GlacierOperations(mfusepy.Operations):
    """FUSE callbacks over a core object with the :class:`~glacierfs.vfs.VaultFS` interface."""

    use_ns = True

    def __init__(self, core: Any) -> None:
        self._core = core
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._dirs: dict[int, tuple[str, list[tuple[bytes, Any]] | None]] = {}
        self._dir_lock = threading.Lock()
        self._next_dir = 1
        self._packer = StatPacker(self._uid, self._gid)
        # packed listings of directories without files being written, reused while the core's
        # listing token is unchanged: a warm `ls -l` of 100,000 archives skips catalog and packing
        self._listings: OrderedDict[str, tuple[Any, list[tuple[bytes, Any]]]] = OrderedDict()
        self._building: dict[str, threading.Event] = {}

    # ------------------------------------------------------------------ helpers

    def _stat(self, a: Attr) -> dict[str, Any]:
        ns = int(a.mtime * 1e9)
        if a.is_dir:
            mode, nlink = stat.S_IFDIR | 0o755, 2
        else:
            mode, nlink = stat.S_IFREG | 0o644, 1
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_size": a.size,
            "st_blocks": (a.size + 511) // 512,
            "st_blksize": BLKSIZE,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_atime": ns,
            "st_mtime": ns,
            "st_ctime": ns,
        }

    # ------------------------------------------------------------------ lifecycle

    def init(self, path: str) -> None:
        self._core.start()
        threading.Thread(target=self._prefetch_root, name="prefetch", daemon=True).start()
        log.info("mounted")

    def destroy(self, path: str) -> None:
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
        a = self._core.getattr(path)
        if not a.is_dir:
            raise FSError(errno.ENOTDIR)
        with self._dir_lock:
            fh = self._next_dir
            self._next_dir += 1
            self._dirs[fh] = (path, None)
        return fh

    @_errors
    def releasedir(self, path: str, fh: int) -> int:
        with self._dir_lock:
            self._dirs.pop(fh, None)
        return 0

    def _listing(self, fh: int, offset: int) -> list[tuple[bytes, Any]]:
        """The directory snapshot of this handle, taken at offset 0 (so rewinddir refreshes)."""
        with self._dir_lock:
            path, entries = self._dirs.get(fh, (None, None))
        if path is None:
            raise FSError(errno.EBADF)
        if entries is None or offset == 0:
            entries = self._build_listing(path)
            with self._dir_lock:
                if fh in self._dirs:
                    self._dirs[fh] = (path, entries)
        return entries

    def _build_listing(self, path: str) -> list[tuple[bytes, Any]]:
        """Packed entries of ``path``: reused while the core's listing token is unchanged, built
        once at a time per directory (a second reader waits for the first build)."""
        token_of = getattr(self._core, "listing_token", None)
        token = token_of(path) if token_of else None
        if token is None:
            return self._pack_listing(path)
        while True:
            with self._dir_lock:
                cached = self._listings.get(path)
                if cached is not None and cached[0] == token:
                    self._listings.move_to_end(path)
                    return cached[1]
                building = self._building.get(path)
                if building is None:
                    building = self._building[path] = threading.Event()
                    break
            building.wait(60)
        try:
            entries = self._pack_listing(path)
            if len(entries) > MAX_CACHED_ENTRIES:
                return entries  # too big to keep: memory matters more than a second listing
            with self._dir_lock:
                self._listings[path] = (token, entries)
                self._listings.move_to_end(path)
                total = sum(len(e) for _, e in self._listings.values())
                while total > MAX_CACHED_ENTRIES and len(self._listings) > 1:
                    _, (_, dropped) = self._listings.popitem(last=False)
                    total -= len(dropped)
            return entries
        finally:
            with self._dir_lock:
                self._building.pop(path, None)
            building.set()

    def _pack_listing(self, path: str) -> list[tuple[bytes, Any]]:
        pack = self._packer.pack
        dirst = pack(Attr(True))
        entries = [(b".", dirst), (b"..", dirst)]
        entries.extend((name.encode("utf-8", "surrogateescape"), pack(a)) for name, a in self._core.readdir(path))
        return entries

    def _prefetch_root(self) -> None:
        """Build the root listing right after mounting, so that the first `ls -l` finds it ready."""
        try:
            count = getattr(self._core, "archive_count", None)
            if count is not None and (count() or 0) > MAX_CACHED_ENTRIES:
                return
            self._build_listing("/")
        except Exception as exc:
            log.debug("prefetch of / failed: %s", exc)

    @_errors
    def readdir_with_offset(self, path: str, offset: int, fh: int) -> Iterator[tuple[str, dict[str, Any], int]]:
        """Used by mfusepy's own readdir path (libfuse2); libfuse3 goes through :meth:`_FUSE.readdir_fuse_3`."""
        entries = self._listing(fh, offset)
        return (
            (name.decode("utf-8", "surrogateescape"), {"st_mode": st.st_mode}, i + 1)
            for i, (name, st) in enumerate(entries[offset:], start=offset)
        )

    @_errors
    def _entries(self, fh: int, offset: int) -> list[tuple[bytes, Any]]:
        return self._listing(fh, offset)

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
        raise FSError(errno.EINVAL)

    @_errors
    def mknod(self, path: str, mode: int, dev: int) -> int:
        raise FSError(errno.EPERM)

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


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE with readdirplus: full attributes with real offsets reach libfuse
    (mfusepy 3.1 only passes the file type on). (libfuse 3.14's high-level API does not pass
    ``cache_readdir`` on, so listings are cached here instead.)"""

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        fill = FUSE_FILL_DIR_PLUS if flags & FUSE_READDIR_PLUS else 0
        entries = self.operations._entries(fip.contents.fh, offset)
        for i in range(offset, len(entries)):
            name, st = entries[i]
            if filler(buf, name, st, i + 1, fill if i >= 2 else 0) != 0:
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


def run(core: Any, mountpoint: str, *, fsname: str, options: dict[str, Any] | None = None) -> None:
    """Mount ``core`` on ``mountpoint`` and serve until unmounted (foreground, multithreaded)."""
    opts: dict[str, Any] = dict(DEFAULT_OPTIONS)
    opts.update(options or {})
    opts.setdefault("fsname", fsname)
    opts.setdefault("subtype", "glacierfs")
    ro = opts.pop("ro", False)
    if ro:
        opts["ro"] = True
    started = time.monotonic()
    log.debug("mounting %s on %s with %s", fsname, mountpoint, opts)
    if mfusepy.fuse_version_major != 3:
        log.warning("libfuse %d loaded: install fuse3 for readdirplus and large writes", mfusepy.fuse_version_major)
    _FUSE(GlacierOperations(core), mountpoint, foreground=True, **opts)
    log.info("unmounted %s after %.0f s", mountpoint, time.monotonic() - started)
