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

Part size: the smallest power-of-two MiB that keeps the file within 10,000 parts, or the
requested ``part_size`` when that is larger (a requested size that is too small is raised
with a warning; one that is not 1 MiB x 2^k up to 4 GiB is a UsageError).

Per part: the part is read once (``os.pread``), its tree hash and SHA-256 computed in one
pass, then sent with both precomputed (botocore does not re-read it). Parts up to
``BUFFER_LIMIT`` are sent from that buffer; larger parts are streamed from a
:class:`~glacierfs.client.FileSlice` after a hashing pass, so memory stays at about
``concurrency x min(part size, BUFFER_LIMIT)``. The server's tree hash of each part must
equal ours (else retried, then IntegrityError). The archive tree hash sent at Complete is
``combine(part hashes)``; the service's echo of it is checked by the client layer.

State (catalog ``put_upload(key, state)``, key defaults to the file's real path)::

    source, archive_path, description, mtime, identity {size, mtime_ns, ino, dev},
    size, part_size, upload_id, parts {"index": tree hash}, bytes_done, tree_hash,
    status: initiating | uploading | completing | sending, created, updated, pid, host

Crash points and what the next run with the same key does (re-run = resume):

====================================  =====================================================
Crash (SIGKILL, power loss) ...        On the next run
====================================  =====================================================
before state "initiating" is written  Nothing recorded, nothing on the server: fresh start.
after "initiating", before/while      ListMultipartUploads: open uploads with our exact
Initiate returns                      description and part size created since the state was
                                      written are orphans of this upload and are aborted;
                                      then a fresh Initiate. No archive can exist yet.
after Initiate, state "uploading"     ListParts (all pages). Each listed part is verified
(any number of parts done)            against a fresh tree hash of that range of the local
                                      file; only missing or mismatching parts are sent (parts
                                      that were in flight). Upload id unknown (expired after
                                      24 h idle, aborted) -> warning, fresh upload.
file changed since (size, mtime_ns,   Warning; the old upload is aborted and the state
inode, device differ)                 dropped; fresh upload. Never mixes old and new bytes.
after state "completing", before or   Complete is sent again. It is idempotent: the same
after Complete reached the service    archive id comes back, no second archive is made.
after Complete, before the archive    Same as above (Complete again, same id). If the
is recorded in the catalog            service no longer knows the upload id (completed long
                                      ago, or expired): the catalog is searched for an
                                      inventory archive with the same tree hash, size and
                                      description and adopted; otherwise StateError: we
                                      never upload again on a guess (``glacierfs abort``
                                      forgets the state, after checking an inventory).
after the archive is recorded, before The archive id from Complete is already in the
the state is removed                  catalog: it is reused, not added twice.
single request (opt-in) "sending"     The earlier request may or may not have stored the
                                      archive. A catalog archive with the same tree hash,
                                      size and description (from an inventory) is adopted;
                                      otherwise the file is sent again with a warning that a
                                      duplicate may exist.
====================================  =====================================================

The part records in the state are advisory (ListParts is the authority on resume), so
writes during the part phase are coalesced to at most one per ``STATE_INTERVAL`` seconds
plus one at the end of the phase; all status transitions are written immediately.
A live process uploading the same key on this host is refused (StateError).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import logging
import os
import socket
import stat as _stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glacierfs.client import FileSlice, Glacier
from glacierfs.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    ServiceError,
    StateError,
    UsageError,
)
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.treehash import (
    MiB,
    TreeHasher,
    combine,
    default_workers,
    is_valid_part_size,
    part_size_for,
    tree_hash_file,
)

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
BUFFER_LIMIT = 8 * MiB  # parts up to this size are read into memory once; larger ones stream
STATE_INTERVAL = 0.25  # seconds between coalesced state writes during the part phase
READ_CHUNK = 4 * MiB
CHANGE_RESTARTS = 2  # a file that changes during its upload is uploaded again at most this often


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


def choose_part_size(size: int, requested: int | None = None) -> int:
    """The part size for ``size`` bytes: the smallest valid one, or ``requested`` if larger."""
    if requested is not None and not is_valid_part_size(requested):
        raise UsageError(
            f"invalid part size {requested} bytes: it must be 1 MiB times a power of two, "
            "from 1 MiB to 4 GiB (1M, 2M, 4M, ... 4096M)"
        )
    try:
        needed = part_size_for(size, MiB, MAX_PARTS)
    except ValueError:
        raise UsageError(f"{size} bytes is larger than Glacier's largest archive (10,000 parts of 4 GiB)") from None
    if requested is None:
        return needed
    if requested < needed:
        log.warning(
            "part size %d MiB would need more than %d parts for %d bytes; using %d MiB",
            requested // MiB, MAX_PARTS, size, needed // MiB,
        )
        return needed
    return requested


def _identity(st: os.stat_result) -> dict[str, int]:
    # ctime too: an in-place rewrite that puts the mtime back still moves the ctime
    return {
        "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino, "dev": st.st_dev,
    }


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _check_description(description: str) -> str:
    description = description.lstrip(" ")  # the service strips leading spaces (multipart)
    if len(description) > 1024:
        raise UsageError(f"archive description is {len(description)} characters; Glacier allows 1024")
    bad = [c for c in description if not (0x20 <= ord(c) <= 0x7E)]
    if bad:
        raise UsageError(f"archive description has a character Glacier refuses: {bad[0]!r} (printable ASCII only)")
    return description


def _state_usable(state: Any) -> bool:
    """Whether a saved state has what resuming needs (else it is dropped with a warning)."""
    if not isinstance(state, dict):
        return False
    try:
        ok = (
            isinstance(state["identity"], dict)
            and int(state["size"]) > 0
            and is_valid_part_size(int(state["part_size"]))
            and isinstance(state["parts"], dict)
            and isinstance(state["description"], str)
            and state["status"] in ("initiating", "uploading", "completing", "sending")
            and isinstance(state.get("created", 0.0), int | float)
        )
    except (KeyError, TypeError, ValueError):
        return False
    return ok


class UploadLock:
    """The cross-process owner lock of one upload key (``fcntl.flock`` on a per-key lock file).

    The lock file is ``<lock dir>/<sha256(key)[:32]>.lock`` (0600, in a 0700 directory). It is
    taken without waiting *before* the saved state is read and held until the upload is
    recorded (or fails), so it covers "look for state" -> "state written" and marks the live
    owner for the whole upload. The kernel drops it when its holder dies, however it dies, so
    a dead owner's upload is simply resumed by the next run; no pid is guessed. The holder
    writes its pid and host into the file for the refusal message only. On release the file is
    unlinked while still locked; a process that locked the unlinked inode notices (the path no
    longer names its inode) and retries, so two holders can never coexist.
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = Path(directory)
        self.key = key
        self.path = self.directory / (hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".lock")
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock now or raise ConflictError naming the live owner (``what`` names the file)."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the upload lock directory {self.directory}: {exc.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StateError(f"cannot open the upload lock {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise ConflictError(
                    f"{what} is being uploaded by {owner}; wait for it to finish (or stop it), then run the upload again"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise StateError(f"cannot lock {self.path}: {exc.strerror}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder unlinked it as we locked it: take the new file
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still locked: nobody can take this inode for a new upload
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> UploadLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Job:
    """One upload in flight: the open file and the numbers every part needs."""

    def __init__(self, key: str, source: Path, fd: int, size: int, part_size: int, state: dict) -> None:
        self.key = key
        self.source = source
        self.fd = fd
        self.size = size
        self.part_size = part_size
        self.state = state
        self.nparts = max(1, -(-size // part_size))
        self.rechecked = False  # the parts were checked again after the service refused Complete

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.part_size
        return start, min(self.part_size, self.size - start)


class UploadEngine:
    """Uploads files to one vault; see the module docstring for the resume guarantees."""

    def __init__(
        self,
        glacier: Glacier,
        catalog: Any,
        vault: str,
        *,
        part_size: int | None = None,
        concurrency: int = 4,
        progress: Progress | None = None,
        single_request: bool = False,
        part_attempts: int = 3,
        lock_dir: Path | None = None,
    ) -> None:
        if concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        if part_size is not None:
            choose_part_size(MiB, part_size)  # validate now, with the clear message
        settings = getattr(glacier, "settings", None)
        pool = getattr(settings, "max_pool_connections", None)
        if pool and concurrency > pool:
            # more threads than pooled connections would open and drop a connection per part
            log.warning("concurrency %d limited to the %d pooled connections", concurrency, pool)
            concurrency = pool
        self.glacier = glacier
        self.catalog = catalog
        self.vault = vault
        self.part_size = part_size
        self.concurrency = concurrency
        self.progress = progress or NULL_PROGRESS
        self.single_request = single_request
        self.part_attempts = max(1, part_attempts)
        self._lock_dir = Path(lock_dir) if lock_dir is not None else None
        self.last_stats = UploadStats()
        self._last_save = 0.0
        # Test hook: called in the main thread after each part is recorded (index, stats).
        self.on_part: Callable[[int, UploadStats], None] | None = None

    # ------------------------------------------------------------------ public API

    def pending(self) -> dict[str, dict]:
        """Pending (unfinished) uploads of this vault, by key."""
        return dict(self.catalog.list_uploads())

    def abort(self, key: str) -> bool:
        """Abort the pending upload ``key`` on the server (if any) and forget it.

        ConflictError while a live process is uploading it (its owner lock is held).
        """
        with self._lock(key, key):
            state = self.catalog.get_upload(key)
            if state is None:
                return False
            upload_id = state.get("upload_id") if isinstance(state, dict) else None
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
    ) -> Any:
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

    def _upload_once(
        self, key: str, source: Path, archive_path: str, mtime: float | None, description: str | None
    ) -> Any:
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

    # ------------------------------------------------------------------ orchestration

    def _upload(
        self, key: str, source: Path, fd: int, st: os.stat_result, archive_path: str,
        mtime: float, description: str, stats: UploadStats,
    ) -> Any:
        identity = _identity(st)
        state = self.catalog.get_upload(key)
        if state is not None:
            reason = None
            if not _state_usable(state):
                reason = f"the saved upload state of {source} is unreadable"
            elif state.get("identity") != identity:
                reason = f"{source} changed since its upload was interrupted"
            elif state.get("archive_path") != archive_path or state.get("description") != description:
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
        part_size = choose_part_size(st.st_size, self.part_size)
        state = {
            "source": str(source),
            "archive_path": archive_path,
            "description": description,
            "mtime": mtime,
            "identity": identity,
            "size": st.st_size,
            "part_size": part_size,
            "upload_id": None,
            "parts": {},
            "bytes_done": 0,
            "tree_hash": None,
            "status": "initiating",
            "created": time.time(),
        }
        if self.single_request and st.st_size <= part_size:
            return self._single(key, source, fd, state, stats)
        return self._multipart_fresh(key, source, fd, state, stats)

    def _save(self, key: str, state: dict, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < STATE_INTERVAL:
            return
        state["updated"] = time.time()
        self.catalog.put_upload(key, state)
        self._last_save = now

    def _restart(self, key: str, state: dict, reason: str, stats: UploadStats) -> None:
        log.warning("%s; restarting the upload", reason)
        stats.restarted = reason
        self._drop(key, state)

    def _drop(self, key: str, state: Any) -> None:
        """Forget ``key``'s state, aborting its upload (ours: its id is in our state) unless completing."""
        upload_id = state.get("upload_id") if isinstance(state, dict) else None
        if upload_id and state.get("status") != "completing":
            try:
                self.glacier.abort_multipart(self.vault, upload_id)
            except NotFoundError:
                pass
        elif upload_id:
            log.warning("the interrupted upload %s may have completed already; it is not aborted", upload_id[:16])
        self.catalog.remove_upload(key)

    # ------------------------------------------------------------------ multipart

    def _already_uploaded(self, source: Path, size: int, description: str) -> Any | None:
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
        if (
            getattr(hit, "description", None) != description
            or getattr(hit, "size", None) != size
            or not getattr(hit, "tree_hash", None)
        ):
            return None
        if tree_hash_file(source) != hit.tree_hash:
            return None
        log.warning("%s is already archive %s (same description, size and tree hash); not uploading it again",
                    source, hit.archive_id)
        return hit

    def _adopt_open_upload(self, key: str, source: Path, fd: int, state: dict, stats: UploadStats) -> Any | None:
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
            and (up.get("ArchiveDescription") or "") == state["description"]
            and int(up.get("PartSizeInBytes") or 0) == state["part_size"]
        ]
        job = _Job(key, source, fd, state["size"], state["part_size"], state)
        for up in sorted(matching, key=lambda u: str(u.get("CreationDate") or ""), reverse=True):
            upload_id = up["MultipartUploadId"]
            try:
                listing = self.glacier.list_parts(self.vault, upload_id)
            except NotFoundError:
                continue
            if int(listing.get("PartSizeInBytes") or 0) != state["part_size"]:
                continue
            done = self._verify_server_parts(job, listing.get("Parts") or [], stats, strict=True)
            if not done:
                log.info("open upload %s has our description but is not %s; leaving it alone", upload_id[:16], source)
                continue
            log.warning(
                "resuming upload %s of %s found on the service (its local state was lost; its %d parts"
                " are this file's)", upload_id[:16], source, len(done),
            )
            stats.resumed = True
            stats.upload_id = upload_id
            state.update(upload_id=upload_id, status="uploading")
            self._save(key, state)
            return self._finish(job, done, stats)
        return None

    def _ids_owned_elsewhere(self, key: str) -> set[str]:
        """Upload ids other local states own (another key, maybe a live process): never adopted."""
        try:
            states = self.catalog.list_uploads()
        except Exception as exc:  # the adoption is an optimization; a failing listing only skips it
            log.debug("cannot list local upload states: %s", exc)
            return set()
        return {
            str(st["upload_id"]) for k, st in states.items()
            if k != key and isinstance(st, dict) and st.get("upload_id")
        }

    def _multipart_fresh(self, key: str, source: Path, fd: int, state: dict, stats: UploadStats) -> Any:
        adopted = self._adopt_open_upload(key, source, fd, state, stats)
        if adopted is not None:
            return adopted
        state.update(upload_id=None, status="initiating", parts={}, bytes_done=0, tree_hash=None)
        self._save(key, state)  # "initiating": a re-run knows an Initiate may have happened
        upload_id, retried = self.glacier.initiate_multipart_ex(self.vault, state["part_size"], state["description"])
        state["upload_id"] = upload_id
        state["status"] = "uploading"
        self._save(key, state)
        stats.upload_id = upload_id
        if retried:
            # botocore retried the Initiate: an earlier attempt may have created an upload.
            self._note_orphans(state, keep=upload_id, stats=stats)
        job = _Job(key, source, fd, state["size"], state["part_size"], state)
        return self._finish(job, {}, stats)

    def _note_orphans(self, state: dict, keep: str | None, stats: UploadStats) -> None:
        """Log the open uploads an interrupted or retried Initiate of this state may have created.

        They are *not* aborted: an upload with our description and part size but none of our
        parts cannot be told from another file's upload with the same path and mtime (another
        directory, another machine) that is just starting. An empty upload holds no data and
        costs nothing; the service drops it after a day without activity.
        """
        since = _dt.datetime.fromtimestamp(state["created"] - 120, _dt.UTC)
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
            if (up.get("ArchiveDescription") or "") != state["description"]:
                continue
            if int(up.get("PartSizeInBytes") or 0) != state["part_size"]:
                continue
            created = _parse_date(up.get("CreationDate"))
            if created is not None and created < since:
                continue
            log.info("open upload %s may be left by an interrupted start; not provably ours, left alone", uid[:16])
            stats.orphans_left += 1

    def _resume(self, key: str, source: Path, fd: int, state: dict, stats: UploadStats) -> Any | None:
        status = state.get("status")
        upload_id = state.get("upload_id")
        if status == "sending":
            return self._resume_single(key, source, fd, state, stats)
        if not upload_id:  # "initiating": died around Initiate
            self._note_orphans(state, keep=None, stats=stats)
            self.catalog.remove_upload(key)
            return None
        stats.upload_id = upload_id
        job = _Job(key, source, fd, state["size"], state["part_size"], state)
        if status == "completing":
            return self._complete(job, stats)
        try:
            listing = self.glacier.list_parts(self.vault, upload_id)
        except NotFoundError:
            reason = f"the service no longer knows upload {upload_id[:16]}... of {source} (expired or aborted)"
            log.warning("%s; starting a new upload", reason)
            stats.restarted = reason
            self.catalog.remove_upload(key)
            return None
        if int(listing.get("PartSizeInBytes") or state["part_size"]) != state["part_size"]:
            self._restart(key, state, f"upload {upload_id[:16]}... has an unexpected part size", stats)
            return None
        done = self._verify_server_parts(job, listing.get("Parts") or [], stats)
        return self._finish(job, done, stats)

    def _verify_server_parts(
        self, job: _Job, parts: list[dict], stats: UploadStats, strict: bool = False
    ) -> dict[int, str]:
        """Parts the server holds whose hash equals the local file's: {index: tree hash}.

        ``strict`` (adopting an upload not known to be ours): {} unless *every* part matches.
        """
        candidates: dict[int, str] = {}
        for part in parts:
            try:
                a, b = (int(x) for x in str(part.get("RangeInBytes", "")).split("-"))
            except ValueError:
                if strict:
                    return {}
                continue
            index, rem = divmod(a, job.part_size)
            if rem or index >= job.nparts or b - a + 1 != job.bounds(index)[1] or not part.get("SHA256TreeHash"):
                if strict:
                    return {}
                continue  # wrong place or length: re-send (overwrites it)
            candidates[index] = str(part["SHA256TreeHash"]).lower()
        if not candidates:
            return {}
        total = sum(job.bounds(i)[1] for i in candidates)
        bar = self.progress.bar(f"verifying {job.source.name}", total)
        done: dict[int, str] = {}
        try:
            workers = min(default_workers(), len(candidates))

            def local_hash(index: int) -> str:
                start, length = job.bounds(index)
                h = tree_hash_file(job.source, start, length, workers=1, segment=max(job.part_size, MiB))
                bar.update(length)
                return h

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
                for index, local in zip(candidates, pool.map(local_hash, candidates), strict=True):
                    if local == candidates[index]:
                        done[index] = local
                    elif strict:
                        return {}
                    else:
                        log.warning("part %d on the server differs from the file; sending it again", index)
        finally:
            bar.close()
        stats.parts_reused = len(done)
        return done

    def _finish(self, job: _Job, done: dict[int, str], stats: UploadStats) -> Any:
        """Send every part not in ``done``, then Complete."""
        state = job.state
        state["parts"] = {str(i): h for i, h in sorted(done.items())}
        state["bytes_done"] = sum(job.bounds(i)[1] for i in done)
        stats.part_size = job.part_size
        stats.parts_total = job.nparts
        self._save(job.key, state)
        todo = deque(i for i in range(job.nparts) if i not in done)
        bar = self.progress.bar(f"upload {job.source.name}", job.size)
        bar.update(state["bytes_done"])
        try:
            self._send_parts(job, todo, stats, bar)
        finally:
            bar.close()
            self._save(job.key, state)
        return self._complete(job, stats)  # which checks the file is unchanged first

    def _check_unchanged(self, job: _Job, stats: UploadStats, tree: str) -> None:
        """The bytes sent must be the file we identified: never complete a changed file.

        The identity (size, mtime, ctime, inode, device) of the open file and of the path must
        be the one recorded, and the file, read again in one sequential pass, must hash to
        ``tree`` (the combined part hashes): that catches a rewrite the identity cannot see
        (coarse timestamps, a write racing the stat). Otherwise the
        upload is dropped and :class:`_Changed` raised (``upload`` starts again).
        """
        state = job.state
        reason = None

        def path_identity() -> dict[str, int] | None:
            try:
                return _identity(os.stat(job.source))
            except OSError:
                return None

        if _identity(os.fstat(job.fd)) != state["identity"] or path_identity() != state["identity"]:
            reason = f"{job.source} changed while it was uploaded"
        else:
            try:
                whole = tree_hash_file(job.source, workers=1)
            except OSError as exc:
                whole = f"unreadable ({exc.strerror})"
            if path_identity() != state["identity"] or _identity(os.fstat(job.fd)) != state["identity"]:
                reason = f"{job.source} changed while it was uploaded"
            elif whole != tree:
                reason = f"{job.source} changed while it was uploaded (its bytes now hash to {whole[:16]}..., the parts sent to {tree[:16]}...)"
        if reason is not None:
            stats.restarted = reason
            self._drop(job.key, state)
            raise _Changed(reason)

    def _send_parts(self, job: _Job, todo: deque[int], stats: UploadStats, bar: Any) -> None:
        state = job.state
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="part") as pool:
            inflight: dict[Future[tuple[str, int]], int] = {}
            try:
                while todo or inflight:
                    while todo and error is None and len(inflight) < self.concurrency:
                        index = todo.popleft()
                        inflight[pool.submit(self._send_part, job, index)] = index
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
                        state["parts"][str(index)] = tree
                        state["bytes_done"] += length
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

    def _send_part(self, job: _Job, index: int) -> tuple[str, int]:
        """Read, hash and send one part (worker thread); returns (tree hash, retries used)."""
        start, length = job.bounds(index)
        end = start + length - 1
        for attempt in range(self.part_attempts):
            try:
                hasher, body = _hash_and_body(job.fd, start, length)
                tree = hasher.hexdigest()
                try:
                    echoed = self.glacier.upload_part(
                        self.vault, job.state["upload_id"], body, start, end, tree,
                        content_sha256=hasher.linear_hexdigest(),
                    )
                finally:
                    if isinstance(body, FileSlice):
                        body.close()
                if echoed is not None and echoed.lower() != tree:
                    raise IntegrityError(
                        f"part {index} of {job.source}: the service computed tree hash {echoed}, we sent {tree}"
                    )
                return tree, attempt
            except (ServiceError, IntegrityError) as exc:
                if attempt + 1 >= self.part_attempts:
                    raise
                log.warning("part %d of %s failed (%s); retrying", index, job.source, exc)
                time.sleep(min(0.5 * 2**attempt, 4.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _complete(self, job: _Job, stats: UploadStats) -> Any:
        state = job.state
        hashes = [state["parts"].get(str(i)) for i in range(job.nparts)]
        if state.get("status") == "completing" and state.get("tree_hash"):
            tree = state["tree_hash"]
        else:
            if any(h is None for h in hashes):
                raise StateError(f"upload state of {job.source} lost part hashes; run `glacierfs abort` and upload again")
            tree = combine(hashes)  # type: ignore[arg-type]
            self._check_unchanged(job, stats, tree)
            state["tree_hash"] = tree
            state["status"] = "completing"
            self._save(job.key, state)
        try:
            archive_id, _location = self.glacier.complete_multipart(self.vault, state["upload_id"], job.size, tree)
        except IntegrityError as exc:
            if getattr(exc, "code", None) is None:
                raise  # our check of the service's answer (the archive may exist): resume completes again
            # The service refused: the parts it holds do not make our tree hash (a part it had
            # acknowledged is missing or different). Repeating Complete would fail forever; check
            # the parts it really holds against the file and send what is missing, once.
            if job.rechecked:
                raise IntegrityError(
                    f"{exc}; the parts were checked and sent again and it still fails: run "
                    f"`glacierfs abort` on {job.source} and upload it again"
                ) from None
            job.rechecked = True
            log.warning("%s; checking the parts the service holds and sending the missing ones", exc)
            state["status"] = "uploading"
            state["tree_hash"] = None
            self._save(job.key, state)
            listing = self.glacier.list_parts(self.vault, state["upload_id"])
            done = self._verify_server_parts(job, listing.get("Parts") or [], stats)
            return self._finish(job, done, stats)
        except NotFoundError:
            adopted = self._adopt_from_catalog(job.key, state)
            if adopted is not None:
                return adopted
            raise StateError(
                f"the upload of {job.source} was completed earlier or has expired (upload id "
                f"{state['upload_id'][:16]}... unknown to the service); Glacier cannot tell which until "
                "its next inventory. Check an inventory, then `glacierfs abort` the file to forget it "
                "before uploading it again"
            ) from None
        return self._record(job.key, state, archive_id, tree)

    # ------------------------------------------------------------------ single request (opt-in)

    def _single(self, key: str, source: Path, fd: int, state: dict, stats: UploadStats) -> Any:
        stats.single_request = True
        hasher, body = _hash_and_body(fd, 0, state["size"])
        state["status"] = "sending"
        state["tree_hash"] = tree = hasher.hexdigest()
        self._save(key, state)
        try:
            if _identity(os.fstat(fd)) != state["identity"]:
                self.catalog.remove_upload(key)
                raise _Changed(f"{source} changed while it was read")
            archive_id, _ = self.glacier.upload_archive(
                self.vault, body, tree, state["description"], content_sha256=hasher.linear_hexdigest()
            )
        finally:
            if isinstance(body, FileSlice):
                body.close()
        stats.parts_total = stats.parts_sent = 1
        stats.bytes_sent = state["size"]
        stats.part_size = state["part_size"]
        return self._record(key, state, archive_id, tree)

    def _resume_single(self, key: str, source: Path, fd: int, state: dict, stats: UploadStats) -> Any:
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

    def _adopt_from_catalog(self, key: str, state: dict) -> Any | None:
        """An inventory archive identical to this upload (same tree hash, size, description)."""
        tree = state.get("tree_hash")
        if not tree:
            return None
        for archive in self.catalog.iter_archives():
            if (
                getattr(archive, "tree_hash", None) == tree
                and getattr(archive, "size", None) == state["size"]
                and getattr(archive, "description", None) == state["description"]
            ):
                log.warning("archive %s already holds %s; not uploading it again", archive.archive_id, state["source"])
                self.catalog.remove_upload(key)
                return archive
        return None

    def _record(self, key: str, state: dict, archive_id: str, tree: str) -> Any:
        """Make the archive visible in the catalog, then forget the pending state (in that order)."""
        archive = self.catalog.get(archive_id)
        if archive is None:
            archive = self.catalog.add_uploaded(
                archive_id=archive_id,
                path=state["archive_path"],
                size=state["size"],
                creation_date=_now_iso(),
                mtime=state["mtime"],
                tree_hash=tree,
                description=state["description"],
            )
        self.catalog.remove_upload(key)
        return archive


def _hash_and_body(fd: int, start: int, length: int) -> tuple[TreeHasher, bytes | FileSlice]:
    """Tree hash + SHA-256 of a file range in one read, and the body to send it with.

    Up to ``BUFFER_LIMIT`` the bytes read are the body (read once); larger ranges are
    hashed in chunks and sent from a :class:`FileSlice` (memory stays bounded).
    """
    hasher = TreeHasher(linear=True)
    if length <= BUFFER_LIMIT:
        data = _pread_exact(fd, start, length)
        hasher.update(data)
        return hasher, data
    pos, end = start, start + length
    while pos < end:
        chunk = _pread_exact(fd, pos, min(READ_CHUNK, end - pos))
        hasher.update(chunk)
        pos += len(chunk)
    return hasher, FileSlice(fd, start, length)


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` (IntegrityError if the file is shorter now)."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise IntegrityError(f"file shrank while being uploaded (ends before offset {offset + length})")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _parse_date(value: Any) -> _dt.datetime | None:
    if not value:
        return None
    if isinstance(value, _dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=_dt.UTC)
    try:
        return _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


__all__ = ["BUFFER_LIMIT", "UploadEngine", "UploadStats", "choose_part_size"]
