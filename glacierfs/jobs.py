"""Inventory and retrieval jobs: reattach or start, poll with backoff, inventory import.

Glacier jobs take hours and cannot be cancelled, so a job is never started twice for one
need: its id is recorded in the catalog the moment InitiateJob returns (before any
waiting), and jobs started by other tools are found with ListJobs. A re-run after an
interruption therefore reattaches. Retrievals are single-flight per archive: "look for a
job" to "job recorded" runs under a per-archive lock (a ``threading.Lock`` in this process and
an ``flock`` on a lock file in the vault's state dir across processes), so concurrent asks
(threads of the mount, a mount and a ``download``) start one job.

The verified, resumable download of a finished job is :mod:`glacierfs.download`.

Job records: :class:`glacierfs.catalog.JobRecord` (``job_id``, ``kind`` (``inventory`` |
``retrieval``), ``archive_id``, ``tier``, ``status``, ``created`` (ISO), ``completed``, ``size``,
``recorded_at`` (epoch), ``forced`` and ``imported`` (inventory jobs), ``vault``);
``catalog.put_job`` takes one or its dict, ``get_job``/``list_jobs`` return them.

Threading contract: a JobRunner holds no mutable state of its own; its methods may run in
several threads at once (the mount's retrieval workers). The catalog serializes its own
writes. :class:`_ArchiveLocks` guards the find-then-start section per archive: its
``_guard`` protects only the ``_held`` table (never held while waiting or doing I/O); the
per-archive lock is taken first, the flock second, and both are held across the ListJobs /
InitiateJob calls of that one archive (that is the point) but nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Protocol

from glacierfs.catalog.records import JobRecord
from glacierfs.client import JobNotFoundError, NoInventoryError, checked_id
from glacierfs.download import (
    MAX_CHUNK,
    Deadlines,
    Downloaded,
    Downloader,
    JobExpired,
    TransferTimeout,
    chunk_size_for,
    header,
    header_int,
    partial_paths,
    read_body,
    stream_errors,
)
from glacierfs.errors import (
    GlacierFSError,
    IntegrityError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    StateError,
    UsageError,
)
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.timeutil import fmt_duration, parse_iso

log = logging.getLogger(__name__)

__all__ = [
    "FAILED",
    "INVENTORY",
    "IN_PROGRESS",
    "JOB_RETENTION",
    "MAX_CHUNK",
    "RETRIEVAL",
    "SUCCEEDED",
    "Backoff",
    "Deadlines",
    "Downloaded",
    "JobExpired",
    "JobRecord",
    "JobRunner",
    "NoInventoryYet",
    "chunk_size_for",
    "fmt_duration",
    "parse_iso",
    "partial_paths",
]

INVENTORY = "inventory"
RETRIEVAL = "retrieval"
IN_PROGRESS, SUCCEEDED, FAILED = "InProgress", "Succeeded", "Failed"
JOB_RETENTION = 24 * 3600  # Glacier keeps finished jobs at least this long (reference §4.7)
INVENTORY_SLACK = 64 * 1024  # an inventory body may exceed its declared size by this much (+1%)
INVENTORY_CAP = 64 << 30  # an inventory whose size nothing declares is refused beyond this
LOCK_BUCKETS = 256  # retrieval lock files per vault (archives hash into them)
LOCK_WAIT = 600.0  # seconds to wait for another process's find-then-start of the same archive


class JobsGlacier(Protocol):
    """The part of :class:`glacierfs.client.Glacier` that jobs use (tests pass a double)."""

    def list_jobs(self, vault: str) -> list[dict[str, Any]]: ...
    def describe_job(self, vault: str, job_id: str) -> dict[str, Any]: ...
    def initiate_inventory(self, vault: str, fmt: str = ...) -> str: ...
    def initiate_retrieval(
        self, vault: str, archive_id: str, tier: str = ..., byte_range: tuple[int, int] | str | None = ...
    ) -> str: ...
    def get_job_output(
        self, vault: str, job_id: str, byte_range: tuple[int, int] | str | None = ...
    ) -> tuple[Any, dict[str, Any]]: ...


class JobsCatalog(Protocol):
    """The part of :class:`glacierfs.catalog.Catalog` that jobs use: job records (a dict or a
    :class:`JobRecord` in, :class:`JobRecord` out), archive lookups and the inventory import."""

    @property
    def inventory_date(self) -> str | None: ...
    def get(self, archive_id: str) -> Any: ...
    def put_job(self, job: Mapping[str, Any]) -> None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def list_jobs(self, kind: str | None = ..., archive_id: str | None = ...) -> list[JobRecord]: ...
    def remove_job(self, job_id: str) -> None: ...
    def import_inventory(self, items: Iterable[Any], inventory_date: str) -> Any: ...


class NoInventoryYet(NotReadyError):
    """Glacier has not generated the vault's first inventory (404 on InitiateJob)."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential poll schedule (seconds). ``Backoff.local()`` for local servers."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    @classmethod
    def local(cls) -> Backoff:
        return cls(initial=0.1, maximum=1.0, factor=1.5)

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(self.maximum, delay * self.factor)


# --------------------------------------------------------------------------- helpers


def _job_id_of(result: Any) -> str:
    if isinstance(result, dict):
        for key in ("jobId", "JobId", "job_id"):
            if result.get(key):
                result = result[key]
                break
    if isinstance(result, str):
        return checked_id(result, "job id", "InitiateJob")
    raise ServiceError("InitiateJob returned no job id")


_PARSE_ERRORS: tuple[type[BaseException], ...] = (GlacierFSError, ValueError, KeyError, TypeError, *stream_errors())


class _OutputUnusable(Exception):
    """A parse error of an inventory output, told apart from the catalog's own errors."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _checked(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, with any parse error raised as :class:`_OutputUnusable`."""
    try:
        yield from items
    except _PARSE_ERRORS as exc:
        raise _OutputUnusable(exc) from exc


class _ArchiveLocks:
    """Per-archive mutual exclusion within this process and, with a directory, across processes."""

    _guard: ClassVar[threading.Lock] = threading.Lock()  # guards _held only
    # (scope, archive id) -> (its lock, number of threads using or waiting for it)
    _held: ClassVar[dict[tuple[str, str], tuple[threading.Lock, int]]] = {}

    def __init__(self, directory: Path | None, scope: str, wait: float = LOCK_WAIT) -> None:
        self.directory = directory
        self.scope = scope
        self.wait = wait

    @contextlib.contextmanager
    def hold(self, archive_id: str) -> Iterator[None]:
        key = (self.scope, archive_id)
        with self._guard:
            lock, users = self._held.get(key, (threading.Lock(), 0))
            self._held[key] = (lock, users + 1)
        try:
            if not lock.acquire(timeout=self.wait):
                raise StateError(f"another thread kept starting a retrieval of {archive_id} for {self.wait:g} s")
            try:
                with self._flock(archive_id):
                    yield
            finally:
                lock.release()
        finally:
            with self._guard:
                lock, users = self._held[key]
                if users <= 1:
                    del self._held[key]
                else:
                    self._held[key] = (lock, users - 1)

    @contextlib.contextmanager
    def _flock(self, archive_id: str) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        bucket = hashlib.sha256(archive_id.encode("utf-8", "surrogateescape")).hexdigest()[:2]
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.directory / f"retrieval-{bucket}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot create a lock in {self.directory}: {exc.strerror or exc}") from None
        try:
            deadline = time.monotonic() + self.wait
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise StateError(f"cannot lock {self.directory}: {exc.strerror or exc}") from None
                if time.monotonic() > deadline:
                    raise StateError(
                        f"another glacierfs process kept starting a retrieval of {archive_id} for {self.wait:g} s"
                    )
                time.sleep(delay)  # a short poll of the lock
                delay = min(0.2, delay * 2)
            yield
        finally:
            os.close(fd)  # releases the flock


def _lock_dir(catalog: Any) -> Path | None:
    """``<vault state dir>/locks`` for a catalog kept in ``<vault state dir>/catalog``."""
    directory = getattr(catalog, "directory", None)
    return Path(directory).parent / "locks" if isinstance(directory, str | os.PathLike) else None


# --------------------------------------------------------------------------- runner


class JobRunner:
    """Inventory and retrieval jobs for one vault.

    ``poll`` is the DescribeJob schedule; ``sleep``/``clock`` are injectable for tests.
    ``chunk_size`` (a power of two MiB) overrides the automatic download chunk size;
    ``attempts`` bounds the fetches of one chunk (or one inventory output) that fail
    verification or break off before :class:`IntegrityError`/:class:`ServiceError`;
    ``deadlines`` bound every wait (a job's completion, one body). ``lock_dir`` holds the
    cross-process retrieval locks (default: ``locks/`` next to the catalog's directory).
    """

    def __init__(
        self,
        glacier: JobsGlacier,
        catalog: JobsCatalog,
        vault: str,
        *,
        progress: Progress | None = None,
        poll: Backoff | None = None,
        chunk_size: int | None = None,
        concurrency: int | None = None,
        attempts: int = 5,
        deadlines: Deadlines | None = None,
        lock_dir: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chunk_size is not None and (chunk_size < 1 << 20 or chunk_size & (chunk_size - 1)):
            raise UsageError("download chunk size must be a power of two of at least 1 MiB")
        self.glacier = glacier
        self.catalog = catalog
        self.vault = vault
        self.progress = progress or NULL_PROGRESS
        self.poll = poll or Backoff()
        self.chunk_size = chunk_size
        self.concurrency = None if concurrency is None else max(1, concurrency)  # None: per archive
        self.attempts = max(1, attempts)
        self.deadlines = deadlines or Deadlines()
        self.sleep = sleep
        self.clock = clock
        directory = lock_dir if lock_dir is not None else _lock_dir(catalog)
        self._locks = _ArchiveLocks(directory, str(directory) if directory else f"catalog-{id(catalog)}:{vault}")

    def _downloader(self) -> Downloader:
        """A :class:`Downloader` with this runner's current settings (tests change them)."""
        return Downloader(
            self.glacier,
            self.catalog,
            self.vault,
            progress=self.progress,
            chunk_size=self.chunk_size,
            concurrency=self.concurrency,
            attempts=self.attempts,
            deadlines=self.deadlines,
            sleep=self.sleep,
        )

    # ------------------------------------------------------------------ job records

    def _record(self, desc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Store (or update) the catalog record of a job from its description."""
        job_id = desc.get("JobId") or desc["job_id"]
        old = found.to_dict() if (found := self.catalog.get_job(job_id)) else {}
        action = desc.get("Action")
        kind = old.get("kind") or (INVENTORY if action == "InventoryRetrieval" else RETRIEVAL)
        rec = JobRecord(
            job_id=job_id,
            kind=kind,
            vault=self.vault,
            archive_id=desc.get("ArchiveId", old.get("archive_id")),
            tier=desc.get("Tier", old.get("tier")),
            status=desc.get("StatusCode", old.get("status", IN_PROGRESS)),
            created=desc.get("CreationDate", old.get("created")),
            completed=desc.get("CompletionDate", old.get("completed")),
            size=desc.get("ArchiveSizeInBytes", old.get("size")),
            recorded_at=old.get("recorded_at", self.clock()),
            forced=old.get("forced", False),
            imported=old.get("imported", False),
        ).to_dict()
        rec.update(extra)
        if rec != old:
            self.catalog.put_job(rec)
        return rec

    def _describe(self, job_id: str) -> dict[str, Any]:
        """DescribeJob; a job the service no longer knows is forgotten and :class:`JobExpired` raised."""
        try:
            return dict(self.glacier.describe_job(self.vault, job_id))
        except JobNotFoundError:
            log.info("job %s is gone (expired); forgetting it", job_id)
            with contextlib.suppress(Exception):
                self.catalog.remove_job(job_id)
            raise JobExpired(f"job {job_id} no longer exists") from None

    def _recorded(self, kind: str, archive_id: str | None = None) -> list[dict[str, Any]]:
        """Live descriptions of the jobs recorded for ``kind`` (expired ones are forgotten)."""
        jobs = []
        records = (
            self.catalog.list_jobs(kind=kind, archive_id=archive_id)
            if archive_id
            else self.catalog.list_jobs(kind=kind)
        )
        for rec in records:
            try:
                desc = self._describe(rec.job_id)
            except JobExpired:
                continue
            self._record(desc)
            jobs.append(desc)
        return jobs

    def _listed(self, action: str, archive_id: str | None = None) -> list[dict[str, Any]]:
        """Jobs the service lists (also those started by other tools), minus failed ones."""
        out = []
        for desc in self.glacier.list_jobs(self.vault):
            desc = dict(desc)
            if desc.get("Action") != action or desc.get("StatusCode") == FAILED:
                continue
            if archive_id is not None and desc.get("ArchiveId") != archive_id:
                continue
            out.append(desc)
        return out

    def _started(self, desc_or_id: Any, kind: str, **extra: Any) -> dict[str, Any]:
        job_id = _job_id_of(desc_or_id)
        rec = JobRecord(job_id=job_id, kind=kind, vault=self.vault, recorded_at=self.clock()).to_dict()
        rec.update(extra)
        self.catalog.put_job(rec)  # before anything else: a re-run after a kill reattaches
        log.info("started %s job %s", kind, job_id)
        return rec

    def wait_job(
        self, job_id: str, what: str, wait: bool = True, known: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Poll DescribeJob until the job completes (backoff schedule ``self.poll``).

        ``wait=False`` returns the current description at once. Transient service errors
        while polling are retried a few times, since jobs run for hours. ``known``: a
        description just fetched (still running): say so and wait before the first poll.
        """
        delays = self.poll.delays()
        failures = 0
        give_up = time.monotonic() + self.deadlines.job_wait
        if wait and known is not None and known.get("StatusCode") == IN_PROGRESS:
            self.progress.status(f"waiting for {what} job {job_id[:12]}…{self._ago(known)}")
            self.sleep(max(0.0, min(next(delays), give_up - time.monotonic())))
        while True:
            try:
                desc = self._describe(job_id)
                failures = 0
            except ServiceError as exc:
                failures += 1
                if failures > self.attempts:
                    raise
                log.warning("polling job %s failed (%s); retrying", job_id, exc)
                self.sleep(next(delays))
                continue
            self._record(desc)
            if desc.get("Completed") or desc.get("StatusCode") in (SUCCEEDED, FAILED) or not wait:
                return desc
            if time.monotonic() >= give_up:
                raise NotReadyError(
                    f"gave up waiting for {what} job {job_id} after {self.deadlines.job_wait:g} s;"
                    " re-run the command to reattach to it"
                )
            self.progress.status(f"waiting for {what} job {job_id[:12]}…{self._ago(desc)}")
            self.sleep(max(0.0, min(next(delays), give_up - time.monotonic())))

    def _ago(self, desc: dict[str, Any]) -> str:
        started = parse_iso(desc.get("CreationDate"))
        return f", started {fmt_duration(self.clock() - started)} ago" if started else ""

    # ------------------------------------------------------------------ inventory

    def _whole_inventory(self, desc: dict[str, Any]) -> bool:
        params = desc.get("InventoryRetrievalParameters") or {}
        return not any(params.get(k) for k in ("StartDate", "EndDate", "Limit", "Marker"))

    def find_inventory_job(self, force: bool = False) -> dict[str, Any] | None:
        """The inventory job to use instead of starting one, or None.

        Without ``force``: the newest finished job (recorded or listed), else a running one.
        With ``force``: a running job (recorded or listed: its output will be the snapshot
        current when it completes, the same a new job would return), or a finished job a
        glacierfs run started and never imported (an interrupted ``-f``).
        """
        recorded = [d for d in self._recorded(INVENTORY) if d.get("StatusCode") != FAILED]
        ids = {d["JobId"] for d in recorded}
        listed = [d for d in self._listed("InventoryRetrieval") if d["JobId"] not in ids]
        candidates = [d for d in recorded + listed if self._whole_inventory(d)]
        done = [d for d in candidates if d.get("StatusCode") == SUCCEEDED]
        running = [d for d in candidates if d.get("StatusCode") == IN_PROGRESS]
        if force:
            unimported = []
            for d in done:
                rec = self.catalog.get_job(d["JobId"])
                if rec is not None and not rec.imported:
                    unimported.append(d)
            done = unimported
        if done:
            return max(done, key=lambda d: d.get("CompletionDate") or d.get("CreationDate") or "")
        if running:
            return min(running, key=lambda d: d.get("CreationDate") or "")
        return None

    def inventory(self, force: bool = False, wait: bool = True) -> Any:
        """Bring the catalog up to date with a vault inventory; returns ImportStats or None.

        Without ``force`` and with an inventory already in the catalog, nothing is done
        (None). Otherwise a job is chosen by :meth:`find_inventory_job` or started (and
        recorded before waiting), waited for, and its output streamed into the catalog.
        ``wait=False`` returns None while the job runs. Raises :class:`NoInventoryYet`
        when Glacier has no inventory for the vault yet.
        """
        if not force and self.catalog.inventory_date is not None:
            return None
        for _ in range(3):  # a job may expire between choosing it and fetching its output
            desc = self.find_inventory_job(force)
            if desc is not None:
                self._record(
                    desc, forced=force or bool((rec := self.catalog.get_job(desc["JobId"])) and rec.forced)
                )
                job_id = desc["JobId"]
                log.info("reattaching to inventory job %s (%s)", job_id, desc.get("StatusCode"))
            else:
                try:
                    result = self.glacier.initiate_inventory(self.vault, "JSON")
                except NoInventoryError:
                    raise NoInventoryYet(
                            f"vault {self.vault} has no inventory yet (Glacier generates the first one "
                            "about a day after the first upload)"
                        ) from None
                job_id = self._started(result, INVENTORY, forced=force)["job_id"]
                self.progress.status(f"started inventory job {job_id[:12]}…")
            try:
                desc = self.wait_job(job_id, "inventory", wait=wait)
                if desc.get("StatusCode") == IN_PROGRESS:
                    return None
                if desc.get("StatusCode") == FAILED:
                    with contextlib.suppress(Exception):
                        self.catalog.remove_job(job_id)
                    raise ServiceError(
                        f"inventory job {job_id} failed: {desc.get('StatusMessage') or 'no reason given'}"
                    )
                stats = self._import_inventory(desc)
            except JobExpired:
                continue
            self._record(desc, imported=True)
            self._prune_inventory_jobs(keep=job_id)
            return stats
        raise ServiceError("inventory jobs keep expiring before their output can be fetched")

    def _prune_inventory_jobs(self, keep: str) -> None:
        """Forget imported or expired inventory jobs other than ``keep``: they are of no more use."""
        now = self.clock()
        for rec in self.catalog.list_jobs(kind=INVENTORY):
            if rec.job_id == keep:
                continue
            if rec.imported or now - (rec.recorded_at or now) > 2 * JOB_RETENTION:
                self.catalog.remove_job(rec.job_id)

    def _import_inventory(self, desc: dict[str, Any]) -> Any:
        """Fetch a finished inventory job's output to a spool file and import it.

        The output has no checksum, so it is fetched until its length matches what the job
        reports and a second fetch gives the same bytes; then it is parsed once, straight into
        :meth:`Catalog.import_inventory`, which checks every item and leaves the catalog
        unchanged when one is malformed (that output is then fetched again). Parsing it to
        check it first cost a full extra parse per fetch: ~10 s each for 1,000,000 archives.
        """
        from glacierfs.inventory import parse_inventory

        job_id = desc["JobId"]
        expected = desc.get("InventorySizeInBytes")
        last_err: BaseException | None = None
        previous: str | None = None
        for attempt in range(1, self.attempts + 2):
            with tempfile.TemporaryFile(prefix="glacierfs-inventory-") as spool:
                try:
                    digest, ctype = self._spool_output(job_id, spool, expected)
                except (JobExpired, TransferTimeout, StateError):
                    raise
                except _PARSE_ERRORS as exc:
                    if isinstance(exc, NotFoundError):
                        raise
                    last_err = exc
                    log.warning("inventory output of job %s unusable (attempt %d): %s", job_id, attempt, exc)
                    previous = None
                    continue
                if previous != digest:
                    previous = digest
                    continue
                try:
                    spool.seek(0)
                    header, items = parse_inventory(spool, ctype)
                    first = list(_checked(itertools.islice(items, 1)))  # the header fields before the list
                    date = header.get("InventoryDate") if isinstance(header, dict) else None
                    if not date:
                        # the date comes after the list, or there is none: parse it all first
                        for _ in _checked(items):
                            pass
                        date = header.get("InventoryDate") if isinstance(header, dict) else None
                        if not date:
                            # CSV output (e.g. a job another tool started) carries no date. The job's
                            # initiation date is no later than the snapshot it returns, and an older
                            # date is the safe side of the catalog's rules: our recent uploads stay
                            # visible and our deletions stay hidden a little longer, never the reverse.
                            date = desc.get("CreationDate")
                            log.info("inventory output of job %s has no date; using the job's %s", job_id, date)
                        if not date:
                            last_err = IntegrityError("inventory output has no InventoryDate")
                            continue
                        spool.seek(0)
                        header, items = parse_inventory(spool, ctype)
                        first = []
                    stats = self.catalog.import_inventory(itertools.chain(first, _checked(items)), date)
                except _OutputUnusable as exc:
                    last_err = exc.cause
                    log.warning("inventory output of job %s unusable (attempt %d): %s", job_id, attempt, last_err)
                    previous = None
                    continue
                log.info("imported inventory of %s dated %s", self.vault, date)
                return stats
        raise IntegrityError(f"the output of inventory job {job_id} could not be fetched intact: {last_err}")

    def _spool_output(self, job_id: str, spool: IO[bytes], expected: Any) -> tuple[str, str | None]:
        """Fetch a job's whole output into ``spool``; returns (SHA-256, content type).

        The body may not exceed the declared size (the job's, else Content-Length) by more
        than a little slack, and must fit the spool's free space; every read is bounded in
        time (:class:`Deadlines`).
        """
        try:
            stream, headers = self.glacier.get_job_output(self.vault, job_id, None)
        except JobNotFoundError:
            with contextlib.suppress(Exception):
                self.catalog.remove_job(job_id)
            raise JobExpired(f"job {job_id} no longer exists") from None
        sha = hashlib.sha256()
        what = f"output of inventory job {job_id}"
        try:
            length = header_int(headers, "content-length", "ContentLength")
            declared = int(expected) if expected is not None else length
            limit = INVENTORY_CAP if declared is None else declared + INVENTORY_SLACK + declared // 100
            _check_room(spool, limit if declared is not None else 0, what)

            def sink(data: bytes) -> None:
                sha.update(data)
                spool.write(data)

            total = read_body(stream, sink, limit=limit, what=what, deadlines=self.deadlines, expected=declared)
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        if length is not None and length != total:
            raise IntegrityError(f"inventory output truncated: got {total} of {length} bytes")
        if expected is not None and int(expected) != total:
            raise IntegrityError(f"inventory output is {total} bytes, the job reported {expected}")
        ctype = header(headers, "content-type", "contentType", "ContentType")
        return sha.hexdigest(), ctype

    # ------------------------------------------------------------------ retrieval

    @staticmethod
    def _whole_archive(desc: dict[str, Any]) -> bool:
        rng, size = desc.get("RetrievalByteRange"), desc.get("ArchiveSizeInBytes")
        return not rng or size is None or rng == f"0-{int(size) - 1}"

    def find_retrieval_job(self, archive_id: str, discover: bool = True) -> dict[str, Any] | None:
        """The best live whole-archive retrieval job for ``archive_id`` (finished first), or None.

        Recorded jobs are checked first; ListJobs (jobs of other tools) only if none is usable.
        A failed job is returned only when nothing better exists (so callers can report it).
        """
        recorded = [d for d in self._recorded(RETRIEVAL, archive_id) if self._whole_archive(d)]
        usable = [d for d in recorded if d.get("StatusCode") != FAILED]
        if not usable and discover:
            ids = {d["JobId"] for d in recorded}
            usable = [
                d
                for d in self._listed("ArchiveRetrieval", archive_id)
                if d["JobId"] not in ids and self._whole_archive(d)
            ]
            for d in usable:
                self._record(d)
        done = [d for d in usable if d.get("StatusCode") == SUCCEEDED]
        if done:
            return max(done, key=lambda d: d.get("CompletionDate") or "")
        running = [d for d in usable if d.get("StatusCode") == IN_PROGRESS]
        if running:
            return min(running, key=lambda d: d.get("CreationDate") or "")
        failed = [d for d in recorded if d.get("StatusCode") == FAILED]
        return failed[-1] if failed else None

    def retrieval(self, archive_id: str, tier: str = "Standard") -> dict[str, Any]:
        """Reuse a running or finished retrieval job for the archive, or start one (no waiting).

        An existing job is reused whatever its tier. Returns the job's description. Single-flight:
        concurrent calls for one archive (threads, processes sharing the state dir) start one job.
        """
        with self._locks.hold(archive_id):
            return self._retrieval_locked(archive_id, tier)

    def _retrieval_locked(self, archive_id: str, tier: str) -> dict[str, Any]:
        desc = self.find_retrieval_job(archive_id)
        if desc is not None and desc.get("StatusCode") != FAILED:
            return desc
        if desc is not None:  # only failed jobs: forget them and try again
            for old in self.catalog.list_jobs(kind=RETRIEVAL, archive_id=archive_id):
                self.catalog.remove_job(old.job_id)
        return self._initiate(archive_id, tier)

    def _initiate(self, archive_id: str, tier: str) -> dict[str, Any]:
        """InitiateJob, recorded at once; its description (held lock: the caller's)."""
        result = self.glacier.initiate_retrieval(self.vault, archive_id, tier, None)
        rec = self._started(result, RETRIEVAL, archive_id=archive_id, tier=tier)
        self.progress.status(f"started {tier} retrieval job {rec['job_id'][:12]}… for {archive_id[:12]}…")
        try:
            return self._describe(rec["job_id"])
        except ServiceError:
            return {"JobId": rec["job_id"], "StatusCode": IN_PROGRESS, "ArchiveId": archive_id, "Tier": tier}

    def start_retrieval(self, archive_id: str, tier: str = "Standard") -> dict[str, Any]:
        """:meth:`retrieval_once` for ``restore``, which swept ListJobs once for all archives."""
        return self.retrieval_once(archive_id, tier)[0]

    def retrieval_once(
        self, archive_id: str, tier: str, usable: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[dict[str, Any], bool]:
        """(job description, started now): a recorded live job ``usable`` accepts, else a new job.

        Under the per-archive lock, so a mount's retrieve, ``download``, ``restore`` and
        ``export`` of one archive at once start one job: whoever comes second finds the job
        the first recorded in the catalog (no ListJobs: callers that want one swept it already).
        ``usable`` lets ``export`` refuse a finished job whose output expires too soon.
        """
        with self._locks.hold(archive_id):
            live = [
                d for d in self._recorded(RETRIEVAL, archive_id)
                if self._whole_archive(d) and d.get("StatusCode") != FAILED and (usable is None or usable(d))
            ]
            done = [d for d in live if d.get("StatusCode") == SUCCEEDED]
            if done or live:  # the latest finished one, else the oldest running one
                return (max(done, key=lambda d: d.get("CompletionDate") or "") if done
                        else min(live, key=lambda d: d.get("CreationDate") or "")), False
            return self._initiate(archive_id, tier), True

    def retrieval_state(self, archive_id: str) -> str:
        """``none`` | ``in_progress`` | ``ready`` | ``failed``, without starting or waiting for anything."""
        desc = self.find_retrieval_job(archive_id)
        if desc is None:
            return "none"
        return {SUCCEEDED: "ready", FAILED: "failed"}.get(desc.get("StatusCode") or "", "in_progress")

    def fetch_if_ready(self, archive_id: str, out: Path) -> Path | None:
        """Download the archive if a finished retrieval job exists; None (nothing started) otherwise."""
        desc = self.find_retrieval_job(archive_id)
        if desc is None or desc.get("StatusCode") != SUCCEEDED:
            return None
        try:
            return self.fetch(desc, Path(out)).path
        except JobExpired:
            return None

    def download(self, archive_id: str, out: Path, tier: str = "Standard", wait: bool = True) -> Path:
        """Retrieve ``archive_id`` into ``out`` (see :meth:`download_verified`); returns ``out``."""
        return self.download_verified(archive_id, out, tier=tier, wait=wait).path

    def download_verified(
        self, archive_id: str, out: Path, tier: str = "Standard", wait: bool = True
    ) -> Downloaded:
        """Reuse or start a retrieval job, wait for it (``wait``), download verified and atomically.

        Without ``wait`` a job that is not finished raises :class:`NotReadyError`.
        """
        out = Path(out)
        for _ in range(3):
            desc = self.retrieval(archive_id, tier)
            job_id = desc["JobId"]
            if desc.get("StatusCode") != SUCCEEDED:
                try:
                    desc = self.wait_job(job_id, f"{desc.get('Tier') or tier} retrieval", wait=wait, known=desc)
                except JobExpired:
                    continue
            status = desc.get("StatusCode")
            if status == IN_PROGRESS:
                started = parse_iso(desc.get("CreationDate"))
                ago = f", started {fmt_duration(self.clock() - started)} ago" if started else ""
                raise NotReadyError(f"retrieval job {job_id} for archive {archive_id} is still running{ago}")
            if status == FAILED:
                raise ServiceError(
                    f"retrieval job {job_id} for archive {archive_id} failed: "
                    f"{desc.get('StatusMessage') or 'no reason given'}"
                )
            try:
                return self.fetch(desc, out)
            except JobExpired:
                continue
        raise ServiceError(f"retrieval jobs for archive {archive_id} keep expiring before download")

    def fetch(self, desc: dict[str, Any], out: Path) -> Downloaded:
        """Download a finished retrieval job's output into ``out``, verified, resumable, atomic
        (:meth:`glacierfs.download.Downloader.fetch`)."""
        return self._downloader().fetch(desc, Path(out))


def _check_room(spool: IO[bytes], need: int, what: str) -> None:
    """Refuse a spool of ``need`` bytes on a filesystem without that much free space."""
    if need <= 0:
        return
    try:
        st = os.fstatvfs(spool.fileno())
        free = st.f_bavail * st.f_frsize
    except (OSError, AttributeError, ValueError):
        return
    if free < need:
        raise StateError(
            f"{what}: {need} bytes do not fit in the {free} bytes free in {tempfile.gettempdir()} (set TMPDIR)"
        )

