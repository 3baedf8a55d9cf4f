"""Directory listings for readdirplus: the open-directory table, packed listings reused while the
core's listing token is unchanged (built once at a time per directory, bounded by their total
entries), the prefetch of the root after mounting, and :class:`StatPacker`.

A :class:`Listing` is compact because a directory of 100,000 archives is listed whole: its names
in one NUL-separated buffer and its ``stat`` structs in another (``struct.pack_into``, the
layout :class:`StatPacker` reads from the adapter's ctypes ``stat``, so this module needs no
FUSE import), handed to libfuse's filler as addresses. About 160 bytes an entry (a 144-byte
``stat`` and the name) where a ``(bytes, ctypes stat)`` tuple per entry held ~400.

Threading contract
------------------
FUSE threads call :meth:`Listings.opendir`, :meth:`entries`, :meth:`releasedir`; one
``prefetch`` thread builds the root listing once after mounting; one ``notice`` thread asks the
core once a second to invalidate kernel entries that another process removed. ``_lock`` guards ``_dirs``,
``_next``, ``_cached`` and ``_building``; it is a leaf lock and is never held while a listing is
built (catalog query + packing): a directory being built has an Event in ``_building`` and a
second reader waits for that build instead of doing its own. A :class:`Listing` is never
changed once built: the cache and any number of open handles share it without a lock.
"""

from __future__ import annotations

import ctypes
import logging
import stat
import struct
import threading
from array import array
from collections import OrderedDict
from typing import Any

from glacierfs.errors import BadHandle, NotADirectory
from glacierfs.fs.types import DIR_MODE, FILE_MODE, Attr, FSCore

log = logging.getLogger(__name__)

MAX_CACHED_ENTRIES = 200_000  # bound of the reused directory listings (about 32 MiB)
BUILD_WAIT = 60.0
WATCH_INTERVAL = 1.0
BLKSIZE = 1 << 20  # cp and friends size their buffers after st_blksize: fewer, larger writes



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
            length: int = getattr(ctype, "_length_")  # noqa: B009 - ctypes metadata
            names += [f"{name}[{i}]" for i in range(length)]
            codes += getattr(ctype, "_type_")._type_ * length  # noqa: B009
        else:
            names.append(name)
            codes += ctype._type_
    return names, codes


class StatPacker:
    """Builds ``struct_type`` (a ctypes ``stat``) instances from :class:`Attr` in one ``struct.pack``."""

    def __init__(self, struct_type: Any, uid: int, gid: int) -> None:
        self._type = struct_type
        names, codes = _flatten(struct_type)
        self._struct = struct.Struct("@" + codes)
        if self._struct.size != ctypes.sizeof(struct_type):  # pragma: no cover - exotic ABI
            raise ValueError("stat layout not understood")
        idx = {n: i for i, n in enumerate(names)}
        self._times = [idx[f"{k}.{f}"] for k in ("st_atimespec", "st_mtimespec", "st_ctimespec")
                       for f in ("tv_sec", "tv_nsec")]
        self._size, self._blocks = idx["st_size"], idx["st_blocks"]
        base = [0] * len(names)
        base[idx["st_uid"]] = uid
        base[idx["st_gid"]] = gid
        base[idx["st_blksize"]] = BLKSIZE
        self._file = list(base)
        self._file[idx["st_mode"]] = stat.S_IFREG | FILE_MODE
        self._file[idx["st_nlink"]] = 1
        self._dir = list(base)
        self._dir[idx["st_mode"]] = stat.S_IFDIR | DIR_MODE
        self._dir[idx["st_nlink"]] = 2

    @property
    def size(self) -> int:
        """Bytes of one ``stat`` struct."""
        return self._struct.size

    def values(self, a: Attr) -> list[int]:
        v = list(self._dir if a.is_dir else self._file)
        v[self._size] = a.size
        v[self._blocks] = (a.size + 511) // 512
        sec, nsec = divmod(int(a.mtime * 1e9), 10**9)
        t = self._times
        v[t[0]] = v[t[2]] = v[t[4]] = sec
        v[t[1]] = v[t[3]] = v[t[5]] = nsec
        return v

    def pack(self, a: Attr) -> Any:
        """One ctypes ``stat`` of ``a``."""
        return self._type.from_buffer_copy(self._struct.pack(*self.values(a)))

    def pack_all(self, attrs: list[Attr]) -> bytearray:
        """The ``stat`` structs of ``attrs``, back to back."""
        size = self._struct.size
        buf = bytearray(size * len(attrs))
        pack_into, values = self._struct.pack_into, self.values
        for i, a in enumerate(attrs):
            pack_into(buf, i * size, *values(a))
        return buf

    def mode_at(self, buf: bytearray, i: int) -> int:
        """``st_mode`` of the ``i``-th struct of a :meth:`pack_all` buffer."""
        return int(self._type.from_buffer(buf, i * self._struct.size).st_mode)


class Listing:
    """One directory's entries ('.' and '..' first) as two buffers libfuse reads in place.

    ``name_address(i)``/``stat_address(i)`` point into buffers exported to ctypes, so they can
    neither move nor be resized while this object lives (the caller keeps it during the fill).
    Names never hold NUL (the codec shows a control character as ``%XX``): it ends each one.
    """

    __slots__ = ("_name_base", "_name_view", "_names", "_size", "_starts", "_stat_base", "_stat_view", "_stats")

    def __init__(self, names: list[bytes], stats: bytearray, size: int) -> None:
        self._names = bytearray(b"\0".join(names) + b"\0")
        starts = array("L", [0]) * len(names)
        pos = 0
        for i, name in enumerate(names):
            starts[i] = pos
            pos += len(name) + 1
        self._starts = starts
        self._stats = stats
        self._size = size
        self._name_view = (ctypes.c_char * len(self._names)).from_buffer(self._names)
        self._stat_view = (ctypes.c_char * len(stats)).from_buffer(stats)  # never empty: '.' and '..'
        self._name_base = ctypes.addressof(self._name_view)
        self._stat_base = ctypes.addressof(self._stat_view)

    def __len__(self) -> int:
        return len(self._starts)

    def name_address(self, i: int) -> int:
        return self._name_base + self._starts[i]

    def stat_address(self, i: int) -> int:
        return self._stat_base + i * self._size

    def name(self, i: int) -> bytes:
        start = self._starts[i]
        return bytes(self._names[start:self._names.index(0, start)])

    def names(self) -> list[bytes]:
        return bytes(self._names[:-1]).split(b"\0")

    @property
    def stats(self) -> bytearray:
        return self._stats

    def nbytes(self) -> int:
        """What the buffers hold (for tests and the cache bound)."""
        return len(self._names) + len(self._starts) * self._starts.itemsize + len(self._stats)


class Listings:
    """Open directories of the mount and their packed listings."""

    def __init__(self, core: FSCore, packer: StatPacker) -> None:
        self._core = core
        self._packer = packer
        self._lock = threading.Lock()
        self._dirs: dict[int, tuple[str, Listing | None]] = {}
        self._next = 1
        self._cached: OrderedDict[str, tuple[Any, Listing]] = OrderedDict()
        self._building: dict[str, threading.Event] = {}
        self._stopping = threading.Event()

    def opendir(self, path: str) -> int:
        if not self._core.getattr(path).is_dir:

            raise NotADirectory()
        with self._lock:
            fh = self._next
            self._next += 1
            self._dirs[fh] = (path, None)
        return fh

    def releasedir(self, fh: int) -> None:
        with self._lock:
            self._dirs.pop(fh, None)

    def entries(self, fh: int, offset: int) -> Listing:
        """The directory snapshot of this handle, taken at offset 0 (so rewinddir refreshes)."""

        with self._lock:
            path, entries = self._dirs.get(fh, (None, None))
        if path is None:
            raise BadHandle()
        if entries is None or offset == 0:
            entries = self.build(path)
            with self._lock:
                if fh in self._dirs:
                    self._dirs[fh] = (path, entries)
        return entries

    def known_listings(self) -> list[tuple[str, list[str]]]:
        """(directory, names) of the reused listings: what the kernel may have cached entries for."""
        with self._lock:
            items = [(d, e) for d, (_, e) in self._cached.items()]
        return [(d, [name.decode("utf-8", "surrogateescape") for name in e.names()[2:]]) for d, e in items]

    def build(self, path: str) -> Listing:
        """Packed entries of ``path``: reused while the core's listing token is unchanged, built
        once at a time per directory (a second reader waits for the first build)."""
        token = self._core.listing_token(path)
        if token is None:
            return self._pack_listing(path)
        while True:
            with self._lock:
                cached = self._cached.get(path)
                if cached is not None and cached[0] == token:
                    self._cached.move_to_end(path)
                    return cached[1]
                building = self._building.get(path)
                if building is None:
                    building = self._building[path] = threading.Event()
                    break
            building.wait(BUILD_WAIT)
        try:
            entries = self._pack_listing(path)
            if len(entries) > MAX_CACHED_ENTRIES:
                return entries  # too big to keep: memory matters more than a second listing
            with self._lock:
                self._cached[path] = (token, entries)
                self._cached.move_to_end(path)
                total = sum(len(e) for _, e in self._cached.values())
                while total > MAX_CACHED_ENTRIES and len(self._cached) > 1:
                    _, (_, dropped) = self._cached.popitem(last=False)
                    total -= len(dropped)
            return entries
        finally:
            with self._lock:
                self._building.pop(path, None)
            building.set()

    def _pack_listing(self, path: str) -> Listing:
        listed = self._core.readdir(path)
        dir_attr = Attr(True)
        names = [b".", b".."]
        names += [name.encode("utf-8", "surrogateescape") for name, _ in listed]
        attrs = [dir_attr, dir_attr]
        attrs += [a for _, a in listed]
        del listed
        return Listing(names, self._packer.pack_all(attrs), self._packer.size)

    def watch(self, interval: float = WATCH_INTERVAL) -> None:
        """Start the ``notice`` thread: every ``interval`` the core compares its catalog token and
        drops kernel entries of listed paths another process removed (never from a FUSE thread:
        an invalidation inside a request on the same directory would deadlock in the kernel)."""
        threading.Thread(target=self._watch, args=(interval,), name="notice", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _watch(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self._core.notice_changes(self.known_listings)
            except Exception as exc:
                log.debug("notice of catalog changes failed: %s", exc)

    def prefetch(self, path: str = "/") -> None:
        """Build ``path``'s listing in the background, so that the first ``ls -l`` finds it ready."""
        threading.Thread(target=self._prefetch, args=(path,), name="prefetch", daemon=True).start()

    def _prefetch(self, path: str) -> None:
        try:
            count = self._core.archive_count()
            if count is not None and count > MAX_CACHED_ENTRIES:
                return
            self.build(path)
        except Exception as exc:
            log.debug("prefetch of %s failed: %s", path, exc)
