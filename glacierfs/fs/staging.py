"""Write-back of the mount: files written into it are staged on local disk, committed at close(2)
and uploaded by background workers through the shared :class:`~glacierfs.upload.UploadEngine`.

Layout under the vault's state directory::

    staging/<sid>.data   bytes written into the mount (``sid``: a random id, never the path)
    staging/<sid>.json   the manifest: the file is complete and must be uploaded (path, mtime, generation)

**The commit point is the return of close(2).** FLUSH of the last writer handle fsyncs the
staged bytes, then writes the manifest (unique temporary name, fsync, rename, fsync of the
directory) before it returns. If that fails (ENOSPC, EIO) close(2) returns the error, the file
shows ``failed`` and ``mv`` keeps its source. RELEASE (sent by the kernel after close returned)
only queues the upload.

Crash-point table of the mount (kill -9 or power loss at each point; upload.py has the
engine's own table for the steps inside ``UploadEngine.upload``):

==============================================  ==========================  ===============================
crash point                                     on disk                     at the next mount
==============================================  ==========================  ===============================
writing, close(2) not returned                  <sid>.data, no .json        discarded, one log line: close
                                                                            never returned 0 (mv kept src)
FLUSH: after the data fsync, before the rename  .data + .*.tmp              tmp removed, data discarded
FLUSH: manifest renamed, directory fsynced      .data + .json               queued, uploaded (close returned
(close(2) returns 0 only after this)                                        0 only after this point)
worker: manifest says started, engine running   .json + engine state        resumed with the same key
                                                (key mount:<sid>[.gen])     ``mount:<sid>[.gen]``: no 2nd archive
engine recorded the archive, bytes not moved    .json(started), no state    found by path + size + tree hash
                                                                            in the catalog: no 2nd upload
bytes moved into data/, manifest not removed    .json without .data         manifest dropped (log line)
rename / rewrite during an upload               .json(new generation)       old engine state aborted as an
                                                + old engine state          orphan; the new content uploaded
a replacement: archive made, old not deleted    .json(archived, replaces)   the old archives deleted (the
                                                                            ``replaced`` thread)
==============================================  ==========================  ===============================

A file that replaces archives (``Pending.replaces``: opened with O_TRUNC over an archive, or
renamed onto one) records them in its manifest; they are deleted only after its archive
exists. The steps and their crash points are in :mod:`glacierfs.fs.replace`.

An archive that completed under a name the file no longer has is deleted by the worker; a
crash between that completion and the deletion leaves it in the vault under its old name.

Threading contract
------------------
* FUSE threads call :class:`WriteBack` (create, open, flush, release, rename, unlink, utimens).
* ``upload-N`` worker threads (``upload_workers``) take queued files from :class:`_Schedule`
  and run the engine (network) with no lock held; each thread has its own engine.
* ``orphans`` (one-shot, at start) aborts engine states of files that are gone.
* ``replaced`` (one-shot, at start, only when an earlier run left some) deletes archives that
  were replaced by archives made before a crash (:class:`~glacierfs.fs.replace.Replacer`).
  An upload worker deletes the archives its file replaced itself, with no lock held, after
  the file left the pending table.

Locks: ``WriteBack.lock`` (an RLock) guards the pending table ``_pending`` and every field of
every :class:`Pending`. ``Pending.io`` (one per staged file, an RLock) serializes what changes
the file's identity on disk: manifest writes, the completion (bytes move into the cache), and
the decisions of rename/rewrite/unlink against it. Lock order: ``Pending.io`` ->
``WriteBack.lock`` -> ``_Schedule._cond`` -> the data cache's lock. No lock is held across a
network call; ``WriteBack.lock`` is never held across file I/O (``Pending.io`` is held across
the short manifest write of its own file, never across the data fsync or an upload).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from glacierfs.errors import (
    Busy,
    CredentialsError,
    Exists,
    IOFailure,
    NoEntry,
    NotFoundError,
    NotPermitted,
    UsageError,
)
from glacierfs.fs.datacache import DataCache
from glacierfs.fs.replace import Replacer
from glacierfs.fs.stagedir import Manifest, StagingArea
from glacierfs.fs.types import HIDDEN_PREFIX, FSError, rel, split

log = logging.getLogger(__name__)

KEY_PREFIX = "mount:"
UPLOAD_ATTEMPTS = 4


class Engine(Protocol):
    """What the workers need of :class:`~glacierfs.upload.UploadEngine`."""

    def upload(self, source: Path, archive_path: str, *, mtime: float | None = ..., key: str | None = ...) -> Any: ...
    def abort(self, key: str) -> bool: ...


@dataclass(eq=False)
class Pending:
    """A file written into the mount that is not (yet) an archive. Fields: ``WriteBack.lock``."""

    sid: str
    path: str
    staging: Path
    mtime: float | None = None  # set by utimens; else the staging file's mtime at the commit
    state: str = "writing"  # writing | queued | uploading | failed | done
    writers: int = 0
    unflushed: int = 0  # writer handles never flushed (close() not called yet on them)
    generation: int = 0  # bumped when an upload is superseded (rename, rewrite)
    busy: bool = False  # a worker runs the engine for it
    committed: bool = False  # the manifest describes the current bytes
    dirty: bool = False  # written since the last commit
    write_error: int | None = None  # errno of a failed or short write since the last truncation
    attempts: int = 0
    error: str | None = None
    waiters: int = 0  # fsync calls waiting for this file's archive
    cancelled: bool = False
    started: bool = False
    archive_id: str | None = None
    tree_hash: str | None = None
    final: tuple[int, float] | None = None  # (size, mtime) once committed: the staging file may move away
    replaces: tuple[str, ...] = ()  # archives deleted once this file is an archive (glacierfs.fs.replace)
    done: threading.Event = field(default_factory=threading.Event)
    io: threading.RLock = field(default_factory=threading.RLock)

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.sid}" if self.generation == 0 else f"{KEY_PREFIX}{self.sid}.{self.generation}"

    def manifest(self) -> Manifest:
        return Manifest(self.path, self.mtime, self.generation, self.started, self.state == "failed", self.replaces)


class _Schedule:
    """A delay queue of pending files for the upload workers (one heap, one condition)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Pending]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._closed = False

    def put(self, p: Pending, delay: float = 0.0) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), p))
            self._cond.notify()

    def get(self) -> Pending | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._heap:
                    due = self._heap[0][0] - time.monotonic()
                    if due <= 0:
                        return heapq.heappop(self._heap)[2]
                    self._cond.wait(due)
                else:
                    self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class WriteBack:
    """Staged files of one vault: the pending table, the commit point and the upload workers."""

    def __init__(
        self,
        area: StagingArea,
        cache: DataCache,
        catalog: Any,
        engine_factory: Callable[[], Engine],
        *,
        delete_archive: Callable[[str], None],
        on_archived: Callable[[Any], None],
        workers: int = 2,
        upload_delay: float = 0.5,
        retry_delay: float = 2.0,
    ) -> None:
        self.area = area
        self.cache = cache
        self.catalog = catalog
        self._engine_factory = engine_factory
        self._delete_archive = delete_archive
        self.replacer = Replacer(area, catalog, delete_archive)
        self._left: dict[str, Manifest] = {}  # recovered replacements whose deletes are left to do
        self._on_archived = on_archived
        self._workers = max(1, workers)
        self._upload_delay = upload_delay
        self._retry_delay = retry_delay
        self.lock = threading.RLock()
        self._pending: dict[str, Pending] = {}
        self._schedule = _Schedule()
        self._engines = threading.local()
        self._threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self, read_only: bool) -> None:
        for i in range(self._workers):
            t = threading.Thread(target=self._upload_loop, name=f"upload-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if not read_only:
            threading.Thread(target=self._abort_orphans, name="orphans", daemon=True).start()
            if self._left:
                left, self._left = self._left, {}
                threading.Thread(target=self.replacer.finish_recovered, args=(left,), name="replaced",
                                 daemon=True).start()

    def stop(self, deadline: float) -> None:
        self.stopping.set()
        self._schedule.close()
        with self.lock:
            for p in self._pending.values():
                p.done.set()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def recover(self) -> None:
        """Take over the committed staged files of earlier runs; drop the ones never committed."""
        for sid, m in self.area.recover().items():
            if m.archived is not None:  # a replacement: the new archive exists, the old ones may not be deleted
                if self.area.data(sid).exists():
                    try:
                        self.cache.add(m.archived, self.area.data(sid))
                    except (OSError, ValueError) as exc:
                        log.debug("cache of %s: %s", m.archived, exc)
                self._left[sid] = m
                continue
            if not m.path.startswith("/"):
                log.warning("staging: manifest %s has no path: file not uploaded", sid)
                continue
            p = Pending(sid=sid, path=m.path, staging=self.area.data(sid), mtime=m.mtime, state="queued",
                        generation=m.generation, started=m.started, committed=True, replaces=m.replaces)
            try:
                st = os.stat(p.staging)
                p.final = (st.st_size, p.mtime if p.mtime is not None else st.st_mtime)
            except OSError:
                pass
            with self.lock:
                if m.path in self._pending:
                    log.warning("staging: two staged files for %s; keeping both under distinct names", m.path)
                    p.path = f"{m.path}.{sid[:8]}"
                self._pending[p.path] = p
            log.info("resuming upload of %s", m.path)
            self._schedule.put(p)

    def _abort_orphans(self) -> None:
        """Abort engine states of mount uploads whose staged file is gone (rm'ed, superseded, done)."""
        try:
            uploads = self.catalog.list_uploads()
        except Exception as exc:
            log.debug("cannot list pending uploads: %s", exc)
            return
        with self.lock:
            live = {p.key for p in self._pending.values()}
        for key in uploads:
            if isinstance(key, str) and key.startswith(KEY_PREFIX) and key not in live:
                try:
                    self._engine().abort(key)
                    log.info("aborted orphaned upload %s", key)
                except Exception as exc:
                    log.warning("cannot abort orphaned upload %s: %s", key, exc)

    # ------------------------------------------------------------------ the pending table

    def get(self, path: str) -> Pending | None:
        with self.lock:
            return self._pending.get(path)

    def under(self, prefix: str) -> list[tuple[str, Pending]]:
        with self.lock:
            return [(k, p) for k, p in self._pending.items() if k.startswith(prefix)]

    def has_under(self, prefix: str, direct: bool = False) -> bool:
        with self.lock:
            return any(k.startswith(prefix) and (not direct or "/" not in k[len(prefix):]) for k in self._pending)

    def states(self) -> dict[str, str]:
        with self.lock:
            return {path: p.state for path, p in self._pending.items()}

    def keys(self) -> set[str]:
        with self.lock:
            return {p.key for p in self._pending.values()}

    # ------------------------------------------------------------------ FUSE-side operations

    def create(self, path: str, replaces: tuple[str, ...] = ()) -> tuple[Pending, int]:
        """A new staged file at ``path``; ``replaces``: the archive(s) it supersedes there (O_TRUNC)."""
        sid, staging = self.area.new()
        p = Pending(sid=sid, path=path, staging=staging, writers=1, unflushed=1, dirty=True, replaces=replaces)
        fd = os.open(staging, os.O_RDWR)
        with self.lock:
            if path in self._pending:  # lost a race with another create
                os.close(fd)
                self.area.remove(sid)
                raise Exists()
            self._pending[path] = p
        log.debug("create %s -> staging %s", path, sid)
        return p, fd

    def open_writer(self, p: Pending, truncate: bool) -> int:
        """Another writer (or a rewrite) of a staged file; an upload running for it is superseded."""
        abort_key = None
        with p.io:
            with self.lock:
                if p.cancelled:
                    raise NoEntry()
                if p.state == "done":
                    raise NotPermitted("the file became an archive")
                if p.busy:  # rewriting a file while it uploads: the running upload is superseded
                    abort_key = p.key
                    p.generation += 1
                    p.started = False
                p.state = "writing"
                p.writers += 1
                p.unflushed += 1
                p.committed = False
                p.dirty = True
                p.final = None
                p.error = None
                p.attempts = 0
                p.done.clear()
            try:
                self.area.remove_manifest(p.sid)  # until the next close, a crash discards it
                fd = os.open(p.staging, os.O_RDWR)
                if truncate:
                    os.ftruncate(fd, 0)
                    with self.lock:
                        p.write_error = None
            except OSError:
                with self.lock:
                    p.writers -= 1
                    p.unflushed -= 1
                raise
        if abort_key:
            self._abort_quietly(abort_key)
        return fd

    def flush(self, p: Pending, fd: int, first: bool) -> None:
        """close(2) of a writer handle: the last one commits (see the module docstring)."""
        with self.lock:
            if first:
                p.unflushed -= 1
            last = p.unflushed == 0 and not p.cancelled and p.state == "writing"
            needed = p.dirty or not p.committed
        if not last or not needed or split(p.path)[1].startswith(HIDDEN_PREFIX):
            return
        if p.write_error is not None:
            code = p.write_error
            self._commit_failed(p, OSError(code, os.strerror(code)), "a write into the staged file failed")
            raise FSError(code, f"a write into the staged file failed: {os.strerror(code)}")
        try:
            os.fsync(fd)
        except OSError as exc:
            self._commit_failed(p, exc)
            raise FSError(exc.errno or errno.EIO, f"cannot make the staged bytes durable: {exc}") from None
        self.commit(p)

    def commit(self, p: Pending) -> None:
        """Write the manifest of ``p`` (its bytes fsynced by the caller). FSError on failure (logged)."""
        with p.io:
            with self.lock:
                p.dirty = False
                mtime = p.mtime
            try:
                st = os.stat(p.staging)
            except OSError as exc:
                self._commit_failed(p, exc)
                raise FSError(exc.errno or errno.EIO) from None
            with self.lock:
                if p.mtime is None:
                    p.mtime = st.st_mtime
                p.mtime = float(int(p.mtime if mtime is None else mtime))  # descriptions keep whole seconds
                manifest = p.manifest()
                p.final = (st.st_size, p.mtime)
            try:
                self.area.write_manifest(p.sid, manifest)
            except OSError as exc:
                self._commit_failed(p, exc)
                raise FSError(exc.errno or errno.EIO, f"cannot record the staged file: {exc}") from None
            with self.lock:
                p.committed = True

    def write_failed(self, p: Pending, code: int) -> None:
        """A write into ``p``'s staged file failed: its last close fails and it never uploads."""
        with self.lock:
            first = p.write_error is None
            p.write_error = code
        if first:  # the one error line comes from the close that fails (_commit_failed)
            log.debug("%s: a write into the staged file failed: %s", p.path, os.strerror(code))

    def _commit_failed(self, p: Pending, exc: OSError, what: str = "cannot record the staged file") -> None:
        with self.lock:
            p.state = "failed"
            p.committed = False
            p.error = f"{what}: {exc.strerror or exc}"
            p.done.set()
        log.error("%s: %s (close(2) returned the error; the file is not uploaded: write it again)", p.path, p.error)

    def release(self, p: Pending, flushed: bool) -> None:
        """Last close of a writer handle: the last writer's release queues the upload."""
        with self.lock:
            p.writers -= 1
            if not flushed:
                p.unflushed -= 1
            if p.writers:
                return
            cancelled, busy, state = p.cancelled, p.busy, p.state
            needed = p.dirty or not p.committed
        if cancelled:
            if not busy:
                self.area.remove(p.sid)
            return
        if split(p.path)[1].startswith(HIDDEN_PREFIX):
            self.cancel(p)  # rm'ed while open (libfuse renamed it away): never an archive
            return
        if state == "failed":
            return  # close(2) already reported it; the file stays visible as failed
        if p.write_error is not None:  # the kernel reported it at close(2) and sent no FLUSH
            self._commit_failed(p, OSError(p.write_error, os.strerror(p.write_error)),
                                "a write into the staged file failed")
            return
        if needed:
            try:
                fd = os.open(p.staging, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.commit(p)
            except OSError as exc:
                if not isinstance(exc, FSError):
                    self._commit_failed(p, exc)
                return
        self._queue(p, None)

    def _queue(self, p: Pending, delay: float | None) -> None:
        """Queue ``p`` if it is closed, committed and no worker has it."""
        with self.lock:
            if p.busy or p.writers or p.cancelled or not p.committed or p.state not in ("writing", "queued"):
                return
            p.state = "queued"
            if delay is None:
                delay = 0.0 if p.waiters else self._upload_delay  # someone's fsync is waiting already
        self._schedule.put(p, delay)

    def expedite(self, p: Pending) -> None:
        with self.lock:
            queued = p.state == "queued" and not p.busy
        if queued:
            self._schedule.put(p)

    def set_mtime(self, p: Pending, mtime: float | None) -> None:
        with p.io:
            with self.lock:
                if p.state == "done":
                    raise NotPermitted("archives are immutable")
                if p.busy:
                    raise Busy()
                p.mtime = time.time() if mtime is None else mtime
                if p.final is not None:
                    p.final = (p.final[0], p.mtime)
                recommit = p.committed
            if recommit:
                self.commit(p)

    def truncate(self, p: Pending, length: int) -> None:
        with p.io:
            with self.lock:
                if p.state != "writing":
                    raise NotPermitted("file already closed and queued for upload")
                p.dirty = True
            os.truncate(p.staging, length)

    def cancel(self, p: Pending) -> bool:
        """rm of a staged file; False when it became an archive meanwhile (the caller deletes that)."""
        with p.io:
            with self.lock:
                if p.state == "done":
                    return False
                p.cancelled = True
                if self._pending.get(p.path) is p:
                    del self._pending[p.path]
                busy, writers, key, state = p.busy, p.writers, p.key, p.state
                p.done.set()
        if busy:
            self._abort_quietly(key)  # the worker removes the staging file when upload() returns
        elif writers == 0:
            self.area.remove(p.sid)
        log.info("removed %s before it became an archive (%s)", p.path, state)
        return True

    def rename(self, p: Pending, old: str, new: str, target: Pending | None, replaces: tuple[str, ...] = ()) -> None:
        """Rename a staged file (onto another staged file, which is dropped; onto an archive, ``replaces``).

        The archives the dropped target or the archive at ``new`` would replace are replaced by
        ``p`` now: recorded in its manifest (if it is committed; else at its commit)."""
        if target is not None and target is not p:
            if self.cancel(target):
                replaces = (*replaces, *target.replaces)
            elif target.archive_id is not None:  # it became an archive meanwhile: replace that
                replaces = (*replaces, target.archive_id)
        abort_key = None
        with p.io:
            with self.lock:
                if p.state == "done":
                    raise NotPermitted("the file became an archive")
                if p.cancelled or self._pending.get(old) is not p:
                    raise NoEntry()
                if new in self._pending:
                    raise Exists()
                del self._pending[old]
                p.path = new
                self._pending[new] = p
                p.replaces = tuple(dict.fromkeys((*p.replaces, *replaces)))
                if p.busy:
                    abort_key = p.key
                    p.generation += 1
                    p.started = False
                if p.state == "failed" and p.writers == 0:
                    p.attempts = 0
                    p.error = None
                    p.done.clear()
                recommit = p.committed or (p.state == "failed" and p.writers == 0)
            if recommit:
                with self.lock:
                    if p.state == "failed":
                        p.state = "queued"
                try:
                    self.commit(p)
                except FSError:
                    log.error("rename %s -> %s: the new name could not be recorded; the file is marked failed",
                              old, new)
        if abort_key:
            self._abort_quietly(abort_key)
        self._queue(p, self._upload_delay)

    def wait_uploaded(self, p: Pending) -> None:
        """Block until ``p`` is an archive; EIO when its upload failed, it was removed, or we unmount."""
        with self.lock:
            p.waiters += 1
        try:
            while not p.done.wait(0.5):
                if self.stopping.is_set():
                    raise IOFailure("unmounting")
        finally:
            with self.lock:
                p.waiters -= 1
        with self.lock:
            if p.cancelled:
                raise IOFailure("upload cancelled (file removed)")
            if p.state == "failed":
                raise IOFailure(p.error or "upload failed")
            if p.archive_id is None:
                raise IOFailure("unmounting" if self.stopping.is_set() else "no archive")

    def _abort_quietly(self, key: str) -> None:
        try:
            self._engine().abort(key)
        except Exception as exc:
            log.debug("abort %s: %s", key, exc)

    # ------------------------------------------------------------------ upload workers

    def _engine(self) -> Engine:
        """One engine per thread: engines need not be thread-safe."""
        eng: Engine | None = getattr(self._engines, "engine", None)
        if eng is None:
            eng = self._engine_factory()
            self._engines.engine = eng
        return eng

    def _upload_loop(self) -> None:
        while not self.stopping.is_set():
            p = self._schedule.get()
            if p is None:
                return
            with self.lock:
                if p.cancelled or p.busy or p.state != "queued" or p.writers:
                    continue
                p.busy = True
                p.state = "uploading"
            try:
                self._upload_one(p)
            except Exception as exc:  # never let a worker die: this item fails, the next one runs
                log.exception("upload worker: unexpected error for %s", p.path)
                with self.lock:
                    p.busy = False
                    if p.state == "uploading":
                        p.state = "failed"
                        p.error = f"internal error: {type(exc).__name__}: {exc}"
                        p.done.set()

    def _upload_one(self, p: Pending) -> None:
        with self.lock:
            path, key, mtime, gen, started = p.path, p.key, p.mtime, p.generation, p.started
        archive = None
        error: BaseException | None = None
        try:
            if started and self._engine_state(key) is None:
                archive = self._find_completed(p, path)
            if archive is None and os.stat(p.staging).st_size == 0:
                raise UsageError("empty file: Glacier stores no empty archives")
            if archive is None:
                if not started:
                    with p.io:
                        with self.lock:
                            if p.generation == gen:
                                p.started = True
                        if p.generation == gen:
                            self.commit(p)
                log.info("uploading %s", path)
                archive = self._engine().upload(p.staging, rel(path), mtime=mtime, key=key)
        except Exception as exc:
            error = exc
        if self.stopping.is_set() and archive is None:
            with self.lock:
                p.busy = False
            return  # resumes at the next mount
        with p.io:
            with self.lock:
                superseded = p.cancelled or p.generation != gen
                if not superseded and archive is not None:
                    p.state = "completing"
            if not superseded and archive is not None:
                replaces = self._complete(p, archive)
        if not superseded and archive is not None:
            if replaces:
                try:
                    self.replacer.finish(p.sid, p.path, archive.archive_id, replaces)
                finally:
                    p.done.set()
            return
        if superseded:
            with self.lock:
                p.busy = False
                cancelled = p.cancelled
                if p.state == "uploading" and not cancelled:
                    p.state = "queued"  # renamed meanwhile (not reopened: that made it "writing"): upload again
            if archive is not None:  # it completed although it was removed or renamed meanwhile
                try:
                    self._delete_archive(archive.archive_id)
                    log.info("deleted archive %s of %s: the file changed during its upload", archive.archive_id, path)
                except Exception as exc:
                    log.error("could not delete superseded archive %s: %s", archive.archive_id, exc)
            if cancelled:
                with self.lock:
                    writers = p.writers
                if writers == 0:
                    self.area.remove(p.sid)
                return
            self._queue(p, self._upload_delay)
            return
        self._upload_failed(p, error)

    def _complete(self, p: Pending, archive: Any) -> tuple[str, ...]:
        """The archive exists: its bytes move into the cache, the file leaves the pending table (io
        held). Returns the archives it replaces: the caller deletes them with no lock held."""
        with self.lock:
            replaces = tuple(r for r in p.replaces if r != archive.archive_id)
            manifest = p.manifest()
        if replaces:
            self.replacer.record(p.sid, manifest, archive.archive_id)
        try:
            self.cache.add(archive.archive_id, p.staging)
        except (OSError, ValueError) as exc:
            log.warning("could not keep the bytes of %s in the cache: %s", p.path, exc)
        if not replaces:
            try:
                self.area.remove_manifest(p.sid)
            except OSError as exc:
                log.warning("could not remove the manifest of %s: %s", p.path, exc)
        with self.lock:
            p.archive_id = archive.archive_id
            p.tree_hash = archive.tree_hash
            p.state = "done"
            p.busy = False
            if self._pending.get(p.path) is p:
                del self._pending[p.path]
            if not replaces:
                p.done.set()  # else once the replaced archives are deleted: `sync FILE` sees the whole change
        self._on_archived(archive)
        log.info("uploaded %s as archive %s", p.path, archive.archive_id)
        return replaces

    def _engine_state(self, key: str) -> Any:
        try:
            return self.catalog.get_upload(key)
        except Exception:
            return None

    def _find_completed(self, p: Pending, path: str) -> Any:
        """After a crash between the engine's completion and our bookkeeping: the archive exists."""
        from glacierfs.treehash import tree_hash_file

        try:
            size = os.stat(p.staging).st_size
        except OSError:
            return None
        digest: list[str] = []
        for found in self._same_path(rel(path)):
            if found.archive_id in p.replaces or int(found.size) != size:
                continue  # an archive this file replaces is never taken for its upload
            try:
                if not digest:
                    digest.append(tree_hash_file(str(p.staging)))
            except OSError:
                return None
            if digest[0] == found.tree_hash:
                log.info("%s was already uploaded as %s before the restart", path, found.archive_id)
                return found
        return None

    def _same_path(self, path: str) -> list[Any]:
        """Uploaded archives whose description names ``path``: the one shown there and its variants
        (the archive it replaces may hold the plain name while both exist)."""
        from glacierfs.codec import decode_description, safe_relpath

        found = self.catalog.lookup(path)
        shown = [found] if found is not None and found != "dir" else []
        try:
            entries = self.catalog.listdir(path.rpartition("/")[0])
        except (NotFoundError, OSError):
            entries = []
        for _name, a in entries:
            if a is None or a in shown:
                continue
            if safe_relpath(decode_description(a.description).path, a.archive_id) == path:
                shown.append(a)
        return [a for a in shown if getattr(a, "source", "upload") == "upload"]

    def _upload_failed(self, p: Pending, error: BaseException | None) -> None:
        permanent = isinstance(error, UsageError | CredentialsError | NotFoundError)
        with self.lock:
            p.busy = False
            p.attempts += 1
            retry = not permanent and p.attempts < UPLOAD_ATTEMPTS
            # the engine names its source: show the file's path in the mount, not the staging file
            p.error = str(error).replace(str(p.staging), p.path) if error is not None else "upload failed"
            if p.state == "uploading":
                p.state = "queued" if retry else "failed"
            else:
                retry = False  # reopened meanwhile: its release queues it
            attempts = p.attempts
            failed = p.state == "failed"
        if retry:
            delay = self._retry_delay * (2 ** (attempts - 1))
            log.warning("upload of %s failed (%s); retrying in %.0f s", p.path, p.error, delay)
            self._schedule.put(p, delay)
            return
        if not failed:
            return
        if permanent:
            log.error("upload of %s failed: %s (the file stays in the mount, marked failed: rm it, or write "
                      "it again)", p.path, p.error)
        else:
            log.error("upload of %s failed for good: %s (the file stays staged and is retried at the next "
                      "mount; rm it to drop it)", p.path, p.error)
        with p.io:
            try:
                self.area.write_manifest(p.sid, p.manifest())
            except OSError:
                pass
        p.done.set()  # last: a waiting fsync returns after the failure is logged and recorded
