"""Local bytes of a mounted vault: staging files for writes and a bounded LRU cache of archives.

Layout under the vault's state directory (one per endpoint/region/vault)::

    staging/<id>.data   bytes written into the mount, kept until the archive exists
    staging/<id>.json   manifest written at the last close: only files with one are uploaded
    data/<archive_id>   complete, verified archive bytes (uploaded from here or retrieved)

A staging file without a manifest is a copy that was cut off (crash, kill -9 before the last
close): it is discarded at the next mount, so a partial copy never becomes an archive. A staging
file whose manifest is unreadable was closed (its bytes may be the only copy): it is moved to
``lost+found/`` with an error line in the log, never deleted. Staging
files count towards the size bound but are never evicted; only ``data/`` entries are, least
recently used first. Thread-safe: one lock guards the LRU bookkeeping, file I/O happens outside it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (needed to survive a reboot)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataCache:
    """Staging files and cached archive bytes under ``root``, bounded by ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.staging_dir = self.root / "staging"
        self.data_dir = self.root / "data"
        for d in (self.root, self.staging_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # archive_id -> size, oldest first
        self._data_bytes = 0
        self._scan()

    def _scan(self) -> None:
        entries: list[tuple[float, str, int]] = []
        for entry in os.scandir(self.data_dir):
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith("."):
                continue  # a partial download (resumed by the jobs module), not an entry
            st = entry.stat(follow_symlinks=False)
            entries.append((st.st_mtime, entry.name, st.st_size))
        entries.sort()
        for _, name, size in entries:
            self._lru[name] = size
            self._data_bytes += size

    # ---------------------------------------------------------------- cached archives

    def path_for(self, archive_id: str) -> Path:
        """Where the bytes of ``archive_id`` live (or will live) in the cache."""
        if "/" in archive_id or archive_id in ("", ".", ".."):
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
            _fsync_dir(self.data_dir)
        size = dest.stat().st_size
        with self._lock:
            old = self._lru.pop(archive_id, None)
            if old is not None:
                self._data_bytes -= old
            self._lru[archive_id] = size
            self._data_bytes += size
        self.evict(keep=archive_id)
        return dest

    def discard(self, archive_id: str) -> None:
        """Forget cached bytes (the archive was deleted)."""
        with self._lock:
            size = self._lru.pop(archive_id, None)
            if size is not None:
                self._data_bytes -= size
        try:
            os.unlink(self.path_for(archive_id))
        except OSError:
            pass

    def staging_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.staging_dir):
            if entry.name.endswith(".data"):
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass
        return total

    def usage(self) -> int:
        """Bytes counted against the bound: cached archives plus staging files."""
        with self._lock:
            data = self._data_bytes
        return data + self.staging_bytes()

    def evict(self, keep: str | None = None) -> list[str]:
        """Drop least recently used archives until usage fits; staging files are never dropped.

        Readers that have a cached file open keep reading it (unlink of an open file is safe).
        """
        evicted: list[str] = []
        staged = self.staging_bytes()
        with self._lock:
            newest = next(reversed(self._lru), None)
            for victim in list(self._lru):
                if self._data_bytes + staged <= self.max_bytes:
                    break
                if victim in (keep, newest):
                    continue  # the entry just added was wanted right now
                self._data_bytes -= self._lru.pop(victim)
                evicted.append(victim)
        for victim in evicted:
            try:
                os.unlink(self.path_for(victim))
            except OSError:
                pass
            log.info("cache: evicted archive %s (cache size %d bytes)", victim, self.max_bytes)
        return evicted

    def cached_ids(self) -> list[str]:
        with self._lock:
            return list(self._lru)

    # ---------------------------------------------------------------- staging

    def new_staging(self) -> tuple[str, Path]:
        """A fresh, empty staging file (0600) and its id."""
        sid = uuid.uuid4().hex
        path = self.staging_dir / f"{sid}.data"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.close(fd)
        return sid, path

    def staging_path(self, sid: str) -> Path:
        return self.staging_dir / f"{sid}.data"

    def manifest_path(self, sid: str) -> Path:
        return self.staging_dir / f"{sid}.json"

    def write_manifest(self, sid: str, manifest: dict[str, Any]) -> None:
        """Durably record that staging file ``sid`` is complete and must be uploaded.

        The data file is fsync'ed first, then the manifest is written to a temporary name,
        fsync'ed and renamed, then the directory is fsync'ed: after a crash either the
        manifest is absent (the copy is discarded) or it and all the bytes are there.
        """
        data = self.staging_path(sid)
        fd = os.open(data, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.manifest_path(sid)
        tmp = final.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        try:
            os.write(fd, json.dumps(manifest, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(self.staging_dir)

    def remove_manifest(self, sid: str) -> None:
        try:
            os.unlink(self.manifest_path(sid))
        except FileNotFoundError:
            pass
        _fsync_dir(self.staging_dir)

    def remove_staging(self, sid: str) -> None:
        """Forget a staging file and its manifest (upload aborted, or file discarded)."""
        for p in (self.manifest_path(sid), self.staging_path(sid)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        _fsync_dir(self.staging_dir)

    def _keep_unreadable(self, sid: str) -> Path:
        """Move a staged file whose manifest is unreadable (and the manifest) to ``lost+found/``."""
        lost = self.root / "lost+found"
        lost.mkdir(exist_ok=True, mode=0o700)
        target = lost / f"{sid}.data"
        for suffix in (".data", ".json"):
            try:
                os.replace(self.staging_dir / f"{sid}{suffix}", lost / f"{sid}{suffix}")
            except OSError as exc:
                if suffix == ".data":
                    log.warning("staging: could not move %s.data to %s (%s)", sid, lost, exc)
                    return self.staging_path(sid)
        _fsync_dir(lost)
        return target

    def recover(self) -> dict[str, dict[str, Any]]:
        """At mount start: manifests of complete staged files; unreleased staging files are deleted."""
        manifests: dict[str, dict[str, Any]] = {}
        kept: set[str] = set()
        names = {e.name for e in os.scandir(self.staging_dir)}
        for name in sorted(names):
            if name.endswith(".json.tmp"):
                os.unlink(self.staging_dir / name)
                continue
            if not name.endswith(".json"):
                continue
            sid = name[: -len(".json")]
            if f"{sid}.data" not in names:
                log.warning("staging: manifest %s without data: dropped", name)
                os.unlink(self.staging_dir / name)
                continue
            try:
                manifest = json.loads((self.staging_dir / name).read_text())
                if not isinstance(manifest, dict):
                    raise ValueError("not a JSON object")
                manifests[sid] = manifest
            except (OSError, ValueError) as exc:
                # The file was closed (it has a manifest): its bytes may be the only copy. Keep them.
                kept.add(sid)
                where = self._keep_unreadable(sid)
                log.error(
                    "staging: unreadable manifest %s (%s): the file's bytes are kept in %s, not uploaded; "
                    "copy them back into the mount to upload them",
                    name, exc, where,
                )
        for name in names:
            if name.endswith(".data") and name[: -len(".data")] not in manifests.keys() | kept:
                log.warning(
                    "staging: discarding %s: its copy was cut off before the file was closed", name
                )
                try:
                    os.unlink(self.staging_dir / name)
                except OSError:
                    pass
        return manifests
