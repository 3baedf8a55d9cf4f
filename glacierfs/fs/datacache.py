"""Bounded local cache of archive bytes (LRU), under the vault's state directory::

    data/<archive_id>           complete, verified archive bytes (uploaded from here or retrieved)
    data/.evicted/<archive_id>  empty marker: these bytes were here and were evicted; a remount
                                does not fetch them again from a retrieval job unless asked

Staged files (:mod:`glacierfs.fs.staging`) count towards the size bound through the
``staged_bytes`` callable but are never evicted; only ``data/`` entries are, least recently
used first. The bound is applied at construction (``--cache-size`` holds from the mount's start).

Threading: called from FUSE threads, the upload workers and the retrieval worker. One lock
(``_lock``) guards ``_lru`` and ``_data_bytes``; file I/O (unlink, rename, stat) happens outside it.
It takes no other lock, so any caller may hold its own lock while calling in (lock order: any -> here).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from glacierfs.fsutil import fsync_dir

log = logging.getLogger(__name__)


def valid_archive_id(archive_id: str) -> bool:
    """An id we may use as a file name (the server's ids are validated before they reach here)."""
    return bool(archive_id) and "/" not in archive_id and "\0" not in archive_id and archive_id not in (".", "..") \
        and not archive_id.startswith(".") and len(archive_id) <= 1024


class DataCache:
    """Cached archive bytes under ``root/data``, bounded by ``max_bytes`` (with the staged bytes)."""

    def __init__(self, root: Path, max_bytes: int, staged_bytes: Callable[[], int] | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.data_dir = self.root / "data"
        self.evicted_dir = self.data_dir / ".evicted"
        for d in (self.root, self.data_dir, self.evicted_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.staged_bytes: Callable[[], int] = staged_bytes or (lambda: 0)
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # archive_id -> size, oldest first
        self._data_bytes = 0
        self._scan()

    def _scan(self) -> None:
        entries: list[tuple[float, str, int]] = []
        for entry in os.scandir(self.data_dir):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue  # a partial download (resumed by the jobs module) or the markers, not an entry
            st = entry.stat(follow_symlinks=False)
            entries.append((st.st_mtime, entry.name, st.st_size))
        entries.sort()
        for _, name, size in entries:
            self._lru[name] = size
            self._data_bytes += size

    def path_for(self, archive_id: str) -> Path:
        """Where the bytes of ``archive_id`` live (or will live) in the cache."""
        if not valid_archive_id(archive_id):
            raise ValueError(f"bad archive id {archive_id!r}")
        return self.data_dir / archive_id

    def has(self, archive_id: str) -> bool:
        """Complete bytes are cached (checked on disk too: someone may have cleaned the directory)."""
        with self._lock:
            if archive_id not in self._lru:
                return False
        if os.path.exists(self.data_dir / archive_id):
            return True
        with self._lock:
            size = self._lru.pop(archive_id, None)
            if size is not None:
                self._data_bytes -= size
        return False

    def touch(self, archive_id: str) -> None:
        """Mark ``archive_id`` as recently used (memory and file mtime, so the order survives restarts)."""
        with self._lock:
            if archive_id not in self._lru:
                return
            self._lru.move_to_end(archive_id)
        try:
            os.utime(self.path_for(archive_id))
        except OSError:
            pass

    def add(self, archive_id: str, source: Path | None = None) -> Path:
        """Register complete bytes for ``archive_id``: moved from ``source`` or already at ``path_for``.

        Evicts least recently used entries to stay under the bound (the new entry itself is
        kept even if it alone exceeds it: it was just asked for).
        """
        dest = self.path_for(archive_id)
        if source is not None and Path(source) != dest:
            os.replace(source, dest)
            fsync_dir(self.data_dir)
        size = dest.stat().st_size
        with self._lock:
            old = self._lru.pop(archive_id, None)
            if old is not None:
                self._data_bytes -= old
            self._lru[archive_id] = size
            self._data_bytes += size
        try:
            os.unlink(self.evicted_dir / archive_id)
        except OSError:
            pass
        self.evict(keep=archive_id)
        return dest

    def discard(self, archive_id: str) -> None:
        """Forget cached bytes (the archive was deleted, or its bytes are damaged)."""
        with self._lock:
            size = self._lru.pop(archive_id, None)
            if size is not None:
                self._data_bytes -= size
        if not valid_archive_id(archive_id):
            return
        for p in (self.data_dir / archive_id, self.evicted_dir / archive_id):
            try:
                os.unlink(p)
            except OSError:
                pass

    def was_evicted(self, archive_id: str) -> bool:
        """These bytes were cached here and evicted (so a remount does not download them again)."""
        return valid_archive_id(archive_id) and os.path.exists(self.evicted_dir / archive_id)

    def usage(self) -> int:
        """Bytes counted against the bound: cached archives plus staged files."""
        with self._lock:
            data = self._data_bytes
        return data + self.staged_bytes()

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop least recently used archives until usage fits; staged files are never dropped.

        Readers that have a cached file open keep reading it (unlink of an open file is safe).
        Without ``keep`` (at mount start) nothing is spared; with it, ``keep`` and the newest entry are.
        """
        evicted: list[str] = []
        staged = self.staged_bytes()
        with self._lock:
            newest = next(reversed(self._lru), None) if keep is not None else None
            for victim in list(self._lru):
                if self._data_bytes + staged <= self.max_bytes:
                    break
                if victim in (keep, newest):
                    continue  # the entry just added was wanted right now
                self._data_bytes -= self._lru.pop(victim)
                evicted.append(victim)
        for victim in evicted:
            try:
                (self.evicted_dir / victim).touch()
                os.unlink(self.path_for(victim))
            except OSError:
                pass
        if evicted:
            log.info("cache: evicted %d archive(s) to stay under %d bytes: %s", len(evicted), self.max_bytes,
                     ", ".join(v[:12] + "…" for v in evicted[:5]) + (" …" if len(evicted) > 5 else ""))
        return evicted

    def cached_ids(self) -> list[str]:
        with self._lock:
            return list(self._lru)
