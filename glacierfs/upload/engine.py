"""Upload engine: multipart uploads with parallel, verified parts and durable, resumable state.

Every upload of a non-empty file is a multipart upload, even a file smaller than one part.
Why: a single-request UploadArchive is not idempotent. If the process dies after the
service stored the archive but before we recorded it, nothing can tell (the inventory lags
by up to a day) whether re-sending would create a second archive. A multipart upload is
idempotent at every step: parts overwrite, ListParts shows what arrived, and a repeated
CompleteMultipartUpload returns the same archive id. The price is two extra requests per
small file. ``UploadEngine(single_request=True)`` restores UploadArchive for files of at
most one part, for callers that prefer fewer requests over that guarantee (its crash
window is handled as described below, with a warning).

Part size, reading, hashing and sending parts: see ``parts.py``. The server's tree hash of
each part must equal ours (else retried, then IntegrityError). The archive tree hash sent at
Complete is ``combine(part hashes)``; the service's echo of it is checked by the client layer.

Threading contract
    ``upload``/``abort`` run on the caller's thread (the *main* thread of this upload), which
    owns the :class:`~glacierfs.upload.state.UploadState`, the stats and every catalog write.
    Part workers (``part-N``, ``connections_for`` threads per upload: up to 8) only read the file
    (``os.pread`` on a read-only descriptor) and send one part each; their results come back
    through futures and are folded into the state by the main thread. Verification workers
    (``verify-N``) and the re-hash (``treehash-N``, one per core) only hash ranges. No lock is
    shared between threads; an engine is used by one thread at a time (the mount keeps one per
    worker thread). Across processes the per-key owner lock (``lock.py``) makes the key's state
    single-writer.

One owner per upload
    ``upload(key)`` takes the key's flock (``<vault state dir>/locks/``) without waiting
    *before* reading the saved state and holds it until the archive is recorded or the call
    fails. A second run meanwhile (another process, or another engine) gets one ConflictError
    line (exit 9) naming the owner; it never waits (an upload can take hours), and never
    guesses from pids. A dead owner's lock dies with it, so its state is resumed.

State (catalog ``put_upload(key, UploadState)``, key defaults to the file's real path): see
``state.py``; the identity is (size, mtime_ns, ctime_ns, inode, device).

Crash points and what the next run with the same key does (re-run = resume):

====================================  =====================================================
Crash (SIGKILL, power loss) ...        On the next run
====================================  =====================================================
while another run owns the key        The other run's lock is held: this run is refused
                                      (ConflictError) until the owner ends or dies.
before state "initiating" is written  Nothing recorded, nothing on the server: fresh start
                                      (an open upload of this very file, found on the
                                      service, is adopted only if provably ours, below).
after "initiating", before/while      The Initiate may have made an upload we never learnt
Initiate returns                      the id of. It holds none of our parts, so it cannot be
                                      told from another file's upload with the same
                                      description: it is logged and left alone (it costs
                                      nothing and expires), never aborted. Fresh Initiate.
after Initiate, state "uploading"     ListParts (all pages). Each listed part is verified
(any number of parts done)            against a fresh tree hash of that range of the local
                                      file; only missing or mismatching parts are sent (parts
                                      that were in flight). Upload id unknown (expired after
                                      24 h idle, aborted) -> warning, fresh upload.
state lost, upload still open on the  Adopted only when no other local state names it, it
service (cache dir deleted)           holds >= 1 part and every part matches the file's
                                      part tree hashes (same description and part size);
                                      otherwise left alone and a fresh upload is started.
file changed since (size, mtime_ns,   Warning; the old upload (ours: its id is in our state)
ctime_ns, inode, device differ)       is aborted and the state dropped; fresh upload.
file changed during the upload        Before Complete the file is hashed again in one pass:
                                      identity or hash differs from the parts sent -> our
                                      upload is aborted, warning, uploaded again (at most
                                      CHANGE_RESTARTS times, then StateError). Never mixes
                                      old and new bytes.
after state "completing", before or   Complete is sent again. It is idempotent: the same
after Complete reached the service    archive id comes back, no second archive is made.
after Complete, before the archive    Same as above (Complete again, same id). If the
is recorded in the catalog            service no longer knows the upload id (completed long
                                      ago, or expired): the catalog is searched for an
                                      inventory archive with the same tree hash, size and
                                      description and adopted; otherwise StateError: we
                                      never upload again on a guess (its hint: a fresh
                                      inventory, then ``abort --upload-id``).
after the archive is recorded, before The archive id from Complete is already in the
the state is removed                  catalog: it is reused, not added twice.
after the state is removed, before    Nothing to resume: the lock file is stale but unlocked
the lock is released                  (the kernel released it); the next run takes it.
single request (opt-in) "sending"     The earlier request may or may not have stored the
                                      archive. A catalog archive with the same tree hash,
                                      size and description (from an inventory) is adopted;
                                      otherwise the file is sent again with a warning that a
                                      duplicate may exist.
====================================  =====================================================

The part records in the state are advisory (ListParts is the authority on resume), so
writes during the part phase are coalesced to at most one per ``STATE_INTERVAL`` seconds
plus one at the end of the phase; all status transitions are written immediately.
"""

from __future__ import annotations

import logging
import os
import stat as _stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from glacierfs.client import FileSlice, Glacier
from glacierfs.errors import IntegrityError, NotFoundError, ServiceError, StateError, UsageError
from glacierfs.progress import NULL_PROGRESS, Bar, Progress
from glacierfs.timeutil import now_iso, parse_iso
from glacierfs.treehash import MiB, combine, is_valid_part_size, tree_hash_file
from glacierfs.upload.lock import UploadLock
from glacierfs.upload.parts import (
    MAX_PARTS,
    PartJob,
    choose_part_size,
    connections_for,
    hash_and_body,
    send_part,
    verify_server_parts,
)
from glacierfs.upload.state import Identity, UnreadableState, UploadState

if TYPE_CHECKING:
    from glacierfs.catalog.records import Archive

log = logging.getLogger(__name__)

STATE_INTERVAL = 0.25  # seconds between coalesced state writes during the part phase
CHANGE_RESTARTS = 2  # a file that changes during its upload is uploaded again at most this often

_identity = Identity.of  # module-level so a test can make it coarse (no ctime)


class UploadCatalog(Protocol):
    """What the engine needs of :class:`glacierfs.catalog.Catalog`."""

    @property
    def state_dir(self) -> Path: ...
    def get_upload(self, key: str) -> UploadState | None: ...
    def put_upload(self, key: str, state: UploadState) -> None: ...
    def remove_upload(self, key: str) -> None: ...
    def list_uploads(self) -> dict[str, UploadState]: ...
    def iter_archives(self, batch: int = 2000) -> Iterator[Archive]: ...
    def lookup(self, path: str) -> Archive | Literal["dir"] | None: ...
    def get(self, archive_id: str, include_deleted: bool = False) -> Archive | None: ...
    def add_uploaded(
        self,
        archive: Archive | None = None,
        *,
        archive_id: str | None = None,
        path: str | None = None,
        size: int | None = None,
        tree_hash: str | None = None,
        creation_date: str | None = None,
        mtime: float | None = None,
        description: str | None = None,
    ) -> Archive: ...


class _Changed(Exception):
    """The file changed while it was uploaded; the upload was dropped and can start again."""


@dataclass
class UploadStats:
    """What the last :meth:`UploadEngine.upload` did (tests and benchmarks read it)."""

    size: int = 0
    part_size: int = 0
    parts_total: int = 0
    parts_sent: int = 0
    parts_reused: int = 0  # already on the server (resume), verified against the file
    bytes_sent: int = 0
    part_retries: int = 0
    resumed: bool = False
    restarted: str | None = None  # why an earlier upload was dropped
    single_request: bool = False
    orphans_left: int = 0  # open uploads an interrupted Initiate may have left (not provably ours)
    upload_id: str | None = None
    sent_indices: list[int] = field(default_factory=list)


def _check_description(description: str) -> str:
    description = description.lstrip(" ")  # the service strips leading spaces (multipart)
    if len(description) > 1024:
        raise UsageError(f"archive description is {len(description)} characters; Glacier allows 1024")
    bad = [c for c in description if not (0x20 <= ord(c) <= 0x7E)]
    if bad:
        raise UsageError(f"archive description has a character Glacier refuses: {bad[0]!r} (printable ASCII only)")
    return description


class UploadEngine:
    """Uploads files to one vault; see the module docstring for the resume guarantees."""

    def __init__(
        self,
        glacier: Glacier,
        catalog: UploadCatalog,
        vault: str,
        *,
        part_size: int | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
        single_request: bool = False,
        part_attempts: int = 3,
        lock_dir: Path | None = None,
        stop: threading.Event | None = None,
        rehash: bool = True,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        if part_size is not None:
            choose_part_size(MiB, part_size)  # validate now, with the clear message
        settings = getattr(glacier, "settings", None)
        pool = getattr(settings, "max_pool_connections", None)
        self._pool = pool
        if pool and concurrency is not None and concurrency > pool:
            # more threads than pooled connections would open and drop a connection per part
            log.warning("concurrency %d limited to the %d pooled connections", concurrency, pool)
            concurrency = pool
        self.glacier = glacier
        self.catalog = catalog
        self.vault = vault
        self.part_size = part_size
        self.concurrency = concurrency  # None: default_concurrency() of each file
        self.progress = progress or NULL_PROGRESS
        self.single_request = single_request
        self.part_attempts = max(1, part_attempts)
        self._lock_dir = Path(lock_dir) if lock_dir is not None else None
        # Set by another thread (Ctrl-C of `upload FILE...`, `sync`): no new part is sent, the
        # parts in flight finish, and upload() raises StateError; the state stays resumable.
        self.stop = stop
        # Hash the whole file again before Complete (see _check_unchanged). The mount turns it
        # off for its staged files: only the mount writes them, and a write during the upload
        # supersedes it (its upload is aborted, an archive it made anyway is deleted), so the
        # pass only costs time on the path to the archive (~0.4 s per GiB on 2 free cores).
        self.rehash = rehash
        self.last_stats = UploadStats()
        self._last_save = 0.0
        # Test hook: called in the main thread after each part is recorded (index, stats).
        self.on_part: Callable[[int, UploadStats], None] | None = None

    # ------------------------------------------------------------------ public API

    def pending(self) -> dict[str, UploadState]:
        """Pending (unfinished) uploads of this vault, by key."""
        return dict(self.catalog.list_uploads())

    def abort(self, key: str) -> bool:
        """Abort the pending upload ``key`` on the server (if any) and forget it.

        ConflictError while a live process is uploading it (its owner lock is held).
        """
        with self._lock(key, key):
            try:
                state = self.catalog.get_upload(key)
                upload_id = state.upload_id if state is not None else None
            except UnreadableState as exc:
                state, upload_id = None, exc.upload_id
                if upload_id is None:
                    self.catalog.remove_upload(key)
                    return True
            if state is None and upload_id is None:
                return False
            if upload_id:
                try:
                    self.glacier.abort_multipart(self.vault, upload_id)
                except NotFoundError:
                    log.info("upload %s was already gone on the server", upload_id[:16])
            self.catalog.remove_upload(key)
            return True

    def lock_dir(self) -> Path:
        """Where the per-key owner locks live: ``locks/`` in the vault's state directory."""
        if self._lock_dir is None:
            self._lock_dir = Path(self.catalog.state_dir) / "locks"
        return self._lock_dir

    def _lock(self, key: str, what: str) -> UploadLock:
        lock = UploadLock(self.lock_dir(), key)
        lock.acquire(what)
        return lock

    def upload(
        self,
        source: Path,
        archive_path: str,
        *,
        mtime: float | None = None,
        description: str | None = None,
        key: str | None = None,
    ) -> Archive:
        """Upload ``source`` as ``archive_path`` (resuming ``key``'s pending upload); returns the Archive.

        The key's owner lock is held for the whole call: while another process (or engine)
        uploads the same key, ConflictError at once. A file that changes during its upload is
        uploaded again (with a warning), at most ``CHANGE_RESTARTS`` times, then StateError.
        """
        source = Path(source)
        key = key or os.path.realpath(source)
        with self._lock(key, str(source)):
            for attempt in range(CHANGE_RESTARTS + 1):
                try:
                    return self._upload_once(key, source, archive_path, mtime, description)
                except _Changed as exc:
                    if attempt >= CHANGE_RESTARTS:
                        raise StateError(
                            f"{exc} {attempt + 1} times; run the upload again once it stays unchanged"
                        ) from None
                    log.warning("%s; uploading it again", exc)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ orchestration

    def _upload_once(
        self, key: str, source: Path, archive_path: str, mtime: float | None, description: str | None
    ) -> Archive:
        try:
            fd = os.open(source, os.O_RDONLY)
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if not _stat.S_ISREG(st.st_mode):
                raise UsageError(f"{source}: not a regular file")
            if st.st_size == 0:
                raise UsageError(f"{source}: empty file; Glacier does not store empty archives")
            mtime = st.st_mtime if mtime is None else mtime
            if description is None:
                from glacierfs.codec import encode_description

                description = encode_description(archive_path, mtime)
            description = _check_description(description)
            self.last_stats = stats = UploadStats(size=st.st_size)
            return self._upload(key, source, fd, st, archive_path, mtime, description, stats)
        finally:
            os.close(fd)

    def _upload(
        self, key: str, source: Path, fd: int, st: os.stat_result, archive_path: str,
        mtime: float, description: str, stats: UploadStats,
    ) -> Archive:
        identity = _identity(st)
        try:
            state = self.catalog.get_upload(key)
        except UnreadableState as exc:
            log.warning("%s; restarting the upload", exc)
            stats.restarted = str(exc)
            self._drop(key, exc.upload_id, completing=False)
            state = None
        if state is not None:
            reason = None
            if state.identity != identity:
                reason = f"{source} changed since its upload was interrupted"
            elif state.archive_path != archive_path or state.description != description:
                reason = f"{source} is now uploaded as {archive_path!r} with another description"
            if reason:
                self._restart(key, state, reason, stats)
                state = None
        if state is not None:
            stats.resumed = True
            archive = self._resume(key, source, fd, state, stats)
            if archive is not None:
                return archive
            # _resume dropped the state (upload id gone): start over
        else:
            done = self._already_uploaded(source, st.st_size, description)
            if done is not None:
                return done
        state = UploadState(
            source=str(source),
            archive_path=archive_path,
            description=description,
            mtime=mtime,
            identity=identity,
            size=st.st_size,
            part_size=choose_part_size(st.st_size, self.part_size),
            created=time.time(),
        )
        if self.single_request and st.st_size <= state.part_size:
            return self._single(key, source, fd, state, stats)
        return self._multipart_fresh(key, source, fd, state, stats)

    def _save(self, key: str, state: UploadState, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < STATE_INTERVAL:
            return
        state.updated = time.time()
        self.catalog.put_upload(key, state)
        self._last_save = now

    def _restart(self, key: str, state: UploadState, reason: str, stats: UploadStats) -> None:
        log.warning("%s; restarting the upload", reason)
        stats.restarted = reason
        self._drop(key, state.upload_id, completing=state.status == "completing")

    def _drop(self, key: str, upload_id: str | None, completing: bool) -> None:
        """Forget ``key``'s state, aborting its upload (ours: its id is in our state) unless completing."""
        if upload_id and not completing:
            try:
                self.glacier.abort_multipart(self.vault, upload_id)
            except NotFoundError:
                pass
        elif upload_id:
            log.warning("the interrupted upload %s may have completed already; it is not aborted", upload_id[:16])
        self.catalog.remove_upload(key)

    # ------------------------------------------------------------------ multipart

    def _already_uploaded(self, source: Path, size: int, description: str) -> Archive | None:
        """The catalog's archive with this exact description, size and the file's tree hash, if any.

        Re-running ``glacierfs upload`` after an interruption names every file again, including
        those that finished (and were recorded) before the interruption: they must not become a
        second archive. Only the archive holding the description's display path is checked (the
        newest one with that path), so this costs one catalog lookup, plus one hash of the file
        when name, description and size all match.
        """
        from glacierfs.codec import decode_description, safe_relpath

        try:
            hit = self.catalog.lookup(safe_relpath(decode_description(description).path, "-"))
        except (AttributeError, NotFoundError):
            return None
        if hit is None or hit == "dir" or hit.description != description or hit.size != size or not hit.tree_hash:
            return None
        if tree_hash_file(source) != hit.tree_hash:
            return None
        log.warning("%s is already archive %s (same description, size and tree hash); not uploading it again",
                    source, hit.archive_id)
        return hit

    def _adopt_open_upload(self, key: str, source: Path, fd: int, state: UploadState, stats: UploadStats) -> Archive | None:
        """Resume an open upload of this very file found on the service when our state of it is gone.

        The local state can be lost (cache directory deleted or rebuilt after corruption) while
        the service still holds the upload with its parts; starting over would leave it behind
        (and re-send every part). An open upload is taken over only when it is provably this
        file's: same description and part size, no other local state names it, it holds at
        least one part, and *every* part it holds has the length and tree hash of that range
        of the local file. Another file with the same path and mtime (a different directory, a
        different machine) fails that test and its upload is left alone: never stolen, never
        aborted. Returns None when nothing qualifies.
        """
        try:
            uploads = self.glacier.list_uploads(self.vault)
        except ServiceError as exc:
            log.debug("cannot list open uploads (%s); starting a new one", exc)
            return None
        owned = self._ids_owned_elsewhere(key)
        matching = [
            up for up in uploads
            if up.get("MultipartUploadId")
            and up["MultipartUploadId"] not in owned
            and (up.get("ArchiveDescription") or "") == state.description
            and self._adoptable_part_size(int(up.get("PartSizeInBytes") or 0), state)
        ]
        for up in sorted(matching, key=lambda u: str(u.get("CreationDate") or ""), reverse=True):
            upload_id = str(up["MultipartUploadId"])
            try:
                listing = self.glacier.list_parts(self.vault, upload_id)
            except NotFoundError:
                continue
            part_size = int(listing.get("PartSizeInBytes") or 0)
            if part_size != int(up.get("PartSizeInBytes") or 0):
                continue
            job = PartJob(key, source, fd, state.size, part_size)
            done = verify_server_parts(job, listing.get("Parts") or [], self.progress, strict=True)
            if not done:
                log.info("open upload %s has our description but is not %s; leaving it alone", upload_id[:16], source)
                continue
            log.warning(
                "resuming upload %s of %s found on the service (its local state was lost; its %d parts"
                " are this file's)", upload_id[:16], source, len(done),
            )
            stats.resumed = True
            stats.upload_id = upload_id
            stats.parts_reused = len(done)
            state.upload_id, state.status, state.part_size = upload_id, "uploading", part_size
            self._save(key, state)
            return self._finish(job, state, done, stats)
        return None

    def _adoptable_part_size(self, part_size: int, state: UploadState) -> bool:
        """An open upload's part size we can resume with: the one asked for (``--part-size``), or
        without one any valid size that fits the file (the upload keeps the part size it began
        with, e.g. a 1 MiB upload left by a version whose default that was)."""
        if self.part_size is not None:
            return part_size == state.part_size
        return is_valid_part_size(part_size) and part_size * MAX_PARTS >= state.size

    def _ids_owned_elsewhere(self, key: str) -> set[str]:
        """Upload ids other local states own (another key, maybe a live process): never adopted."""
        try:
            states = self.catalog.list_uploads()
        except StateError as exc:  # the adoption is an optimization; a failing listing only skips it
            log.debug("cannot list local upload states: %s", exc)
            return set()
        return {st.upload_id for k, st in states.items() if k != key and st.upload_id}

    def _multipart_fresh(self, key: str, source: Path, fd: int, state: UploadState, stats: UploadStats) -> Archive:
        adopted = self._adopt_open_upload(key, source, fd, state, stats)
        if adopted is not None:
            return adopted
        state.upload_id, state.status, state.parts, state.bytes_done, state.tree_hash = None, "initiating", {}, 0, None
        self._save(key, state)  # "initiating": a re-run knows an Initiate may have happened
        upload_id, retried = self.glacier.initiate_multipart_ex(self.vault, state.part_size, state.description)
        state.upload_id, state.status = upload_id, "uploading"
        self._save(key, state)
        stats.upload_id = upload_id
        if retried:
            # botocore retried the Initiate: an earlier attempt may have created an upload.
            self._note_orphans(state, keep=upload_id, stats=stats)
        job = PartJob(key, source, fd, state.size, state.part_size)
        return self._finish(job, state, {}, stats)

    def _note_orphans(self, state: UploadState, keep: str | None, stats: UploadStats) -> None:
        """Log the open uploads an interrupted or retried Initiate of this state may have created.

        They are *not* aborted: an upload with our description and part size but none of our
        parts cannot be told from another file's upload with the same path and mtime (another
        directory, another machine) that is just starting. An empty upload holds no data and
        costs nothing; the service drops it after a day without activity.
        """
        since = state.created - 120
        try:
            uploads = self.glacier.list_uploads(self.vault)
        except ServiceError as exc:
            log.debug("cannot list open uploads (%s)", exc)
            return
        owned = self._ids_owned_elsewhere("")
        for up in uploads:
            uid = up.get("MultipartUploadId")
            if not uid or uid == keep or uid in owned:
                continue
            if (up.get("ArchiveDescription") or "") != state.description:
                continue
            if int(up.get("PartSizeInBytes") or 0) != state.part_size:
                continue
            created = parse_iso(str(up.get("CreationDate") or ""))
            if created is not None and created < since:
                continue
            log.info("open upload %s may be left by an interrupted start; not provably ours, left alone", uid[:16])
            stats.orphans_left += 1

    def _resume(self, key: str, source: Path, fd: int, state: UploadState, stats: UploadStats) -> Archive | None:
        if state.status == "sending":
            return self._resume_single(key, source, fd, state, stats)
        upload_id = state.upload_id
        if not upload_id:  # "initiating": died around Initiate
            self._note_orphans(state, keep=None, stats=stats)
            self.catalog.remove_upload(key)
            return None
        stats.upload_id = upload_id
        job = PartJob(key, source, fd, state.size, state.part_size)
        if state.status == "completing":
            return self._complete(job, state, stats)
        try:
            listing = self.glacier.list_parts(self.vault, upload_id)
        except NotFoundError:
            reason = f"the service no longer knows upload {upload_id[:16]}... of {source} (expired or aborted)"
            log.warning("%s; starting a new upload", reason)
            stats.restarted = reason
            self.catalog.remove_upload(key)
            return None
        if int(listing.get("PartSizeInBytes") or state.part_size) != state.part_size:
            self._restart(key, state, f"upload {upload_id[:16]}... has an unexpected part size", stats)
            return None
        done = verify_server_parts(job, listing.get("Parts") or [], self.progress)
        stats.parts_reused = len(done)
        return self._finish(job, state, done, stats)

    def _finish(self, job: PartJob, state: UploadState, done: dict[int, str], stats: UploadStats) -> Archive:
        """Send every part not in ``done``, then Complete (which checks the file first)."""
        state.parts = dict(sorted(done.items()))
        state.bytes_done = sum(job.bounds(i)[1] for i in done)
        stats.part_size = job.part_size
        stats.parts_total = job.nparts
        self._save(job.key, state)
        todo = deque(i for i in range(job.nparts) if i not in done)
        bar = self.progress.bar(f"upload {job.source.name}", job.size)
        bar.update(state.bytes_done)
        try:
            self._send_parts(job, state, todo, stats, bar)
        finally:
            bar.close()
            self._save(job.key, state)
        return self._complete(job, state, stats)

    def _send_parts(self, job: PartJob, state: UploadState, todo: deque[int], stats: UploadStats, bar: Bar) -> None:
        upload_id = state.upload_id
        assert upload_id is not None
        error: BaseException | None = None
        connections = connections_for(job, self.concurrency, self._pool)
        with ThreadPoolExecutor(max_workers=connections, thread_name_prefix="part") as pool:
            inflight: dict[Future[tuple[str, int]], int] = {}
            try:
                while todo or inflight:
                    if error is None and self.stop is not None and self.stop.is_set():
                        error = StateError(f"the upload of {job.source} was stopped; run the command again to resume it")
                    while todo and error is None and len(inflight) < connections:
                        index = todo.popleft()
                        fut = pool.submit(send_part, self.glacier, self.vault, upload_id, job, index, self.part_attempts)
                        inflight[fut] = index
                    if not inflight:
                        break
                    finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        index = inflight.pop(fut)
                        try:
                            tree, retries = fut.result()
                        except BaseException as exc:
                            error = error or exc
                            continue
                        length = job.bounds(index)[1]
                        state.parts[index] = tree
                        state.bytes_done += length
                        stats.parts_sent += 1
                        stats.bytes_sent += length
                        stats.part_retries += retries
                        stats.sent_indices.append(index)
                        bar.update(length)
                        if self.on_part is not None:
                            self.on_part(index, stats)
                    self._save(job.key, state, force=False)
            except BaseException:
                for fut in inflight:
                    fut.cancel()
                raise
        if error is not None:
            raise error

    def _check_unchanged(self, job: PartJob, state: UploadState, stats: UploadStats, tree: str) -> None:
        """The bytes sent must be the file we identified: never complete a changed file.

        The identity (size, mtime, ctime, inode, device) of the open file and of the path must
        be the one recorded, and (``rehash``) the file, read again in one sequential pass, must
        hash to ``tree`` (the combined part hashes): that catches a rewrite the identity cannot
        see (coarse timestamps, a write racing the stat). Otherwise the upload is dropped and
        :class:`_Changed` raised (``upload`` starts again).
        """

        def unchanged() -> bool:
            try:
                path_identity = _identity(os.stat(job.source))
            except OSError:
                return False
            return _identity(os.fstat(job.fd)) == state.identity == path_identity

        reason = None
        if not unchanged():
            reason = f"{job.source} changed while it was uploaded"
        elif self.rehash:
            try:
                # after the last part was read (it cannot overlap the upload), on every core
                whole = tree_hash_file(job.source)
            except OSError as exc:
                whole = f"unreadable ({exc.strerror})"
            if not unchanged():
                reason = f"{job.source} changed while it was uploaded"
            elif whole != tree:
                reason = (
                    f"{job.source} changed while it was uploaded (its bytes now hash to {whole[:16]}...,"
                    f" the parts sent to {tree[:16]}...)"
                )
        if reason is not None:
            stats.restarted = reason
            self._drop(job.key, state.upload_id, completing=False)
            raise _Changed(reason)

    def _complete(self, job: PartJob, state: UploadState, stats: UploadStats) -> Archive:
        upload_id = state.upload_id
        assert upload_id is not None
        if state.status == "completing" and state.tree_hash:
            tree = state.tree_hash
        else:
            hashes = [state.parts.get(i) for i in range(job.nparts)]
            present = [h for h in hashes if h is not None]
            if len(present) != len(hashes):
                raise StateError(
                    f"upload state of {job.source} lost part hashes; abort the upload, then upload the file again",
                    hint=self._abort_hint(upload_id),
                )
            tree = combine(present)
            self._check_unchanged(job, state, stats, tree)
            state.tree_hash, state.status = tree, "completing"
            self._save(job.key, state)
        try:
            archive_id, _location = self.glacier.complete_multipart(self.vault, upload_id, job.size, tree)
        except IntegrityError as exc:
            if getattr(exc, "code", None) is None:
                raise  # our check of the service's answer (the archive may exist): resume completes again
            # The service refused: the parts it holds do not make our tree hash (a part it had
            # acknowledged is missing or different). Repeating Complete would fail forever; check
            # the parts it really holds against the file and send what is missing, once.
            if job.rechecked:
                raise IntegrityError(
                    f"{exc}; the parts were checked and sent again and it still fails: abort the upload"
                    f" of {job.source}, then upload it again",
                    hint=self._abort_hint(upload_id),
                ) from None
            job.rechecked = True
            log.warning("%s; checking the parts the service holds and sending the missing ones", exc)
            state.status, state.tree_hash = "uploading", None
            self._save(job.key, state)
            listing = self.glacier.list_parts(self.vault, upload_id)
            done = verify_server_parts(job, listing.get("Parts") or [], self.progress)
            stats.parts_reused = len(done)
            return self._finish(job, state, done, stats)
        except NotFoundError:
            adopted = self._adopt_from_catalog(job.key, state)
            if adopted is not None:
                return adopted
            raise StateError(
                f"the upload of {job.source} was completed earlier or has expired (upload id "
                f"{upload_id[:16]}... unknown to the service); Glacier cannot tell which until "
                "its next inventory: fetch one, forget the upload, then upload the file again (an "
                "archive the inventory lists is not uploaded twice)",
                hints=(("inventory", "-f", "-v", self.vault), self._abort_hint(upload_id)),
            ) from None
        return self._record(job.key, state, archive_id, tree)

    def _abort_hint(self, upload_id: str) -> tuple[str, ...]:
        """``glacierfs abort`` of this upload by id: it works for any key (a CLI file, sync, mount)."""
        return ("abort", "-v", self.vault, f"--upload-id={upload_id}")

    # ------------------------------------------------------------------ single request (opt-in)

    def _single(self, key: str, source: Path, fd: int, state: UploadState, stats: UploadStats) -> Archive:
        stats.single_request = True
        hasher, body = hash_and_body(fd, 0, state.size)
        state.status = "sending"
        state.tree_hash = tree = hasher.hexdigest()
        self._save(key, state)
        try:
            if _identity(os.fstat(fd)) != state.identity:
                self.catalog.remove_upload(key)
                raise _Changed(f"{source} changed while it was read")
            archive_id, _ = self.glacier.upload_archive(
                self.vault, body, tree, state.description, content_sha256=hasher.linear_hexdigest()
            )
        finally:
            if isinstance(body, FileSlice):
                body.close()
        stats.parts_total = stats.parts_sent = 1
        stats.bytes_sent = state.size
        stats.part_size = state.part_size
        return self._record(key, state, archive_id, tree)

    def _resume_single(self, key: str, source: Path, fd: int, state: UploadState, stats: UploadStats) -> Archive:
        adopted = self._adopt_from_catalog(key, state)
        if adopted is not None:
            return adopted
        log.warning(
            "an earlier single-request upload of %s was interrupted and may have stored it already; "
            "sending it again (a duplicate archive may exist until deleted)",
            source,
        )
        return self._single(key, source, fd, state, stats)

    # ------------------------------------------------------------------ catalog

    def _adopt_from_catalog(self, key: str, state: UploadState) -> Archive | None:
        """An inventory archive identical to this upload (same tree hash, size, description)."""
        if not state.tree_hash:
            return None
        for archive in self.catalog.iter_archives():
            if (
                archive.tree_hash == state.tree_hash
                and archive.size == state.size
                and archive.description == state.description
            ):
                log.warning("archive %s already holds %s; not uploading it again", archive.archive_id, state.source)
                self.catalog.remove_upload(key)
                return archive
        return None

    def _record(self, key: str, state: UploadState, archive_id: str, tree: str) -> Archive:
        """Make the archive visible in the catalog, then forget the pending state (in that order)."""
        archive = self.catalog.get(archive_id)
        if archive is None:
            archive = self.catalog.add_uploaded(
                archive_id=archive_id,
                path=state.archive_path,
                size=state.size,
                creation_date=now_iso(),
                mtime=state.mtime,
                tree_hash=tree,
                description=state.description,
            )
        self.catalog.remove_upload(key)
        return archive
