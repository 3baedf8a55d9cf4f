"""Inventory and retrieval jobs: reattach or start, poll with backoff, verified download.

Glacier jobs take hours and cannot be cancelled, so a job is never started twice for one
need: its id is recorded in the catalog the moment InitiateJob returns (before any
waiting), and jobs started by other tools are found with ListJobs. A re-run after an
interruption therefore reattaches.

Archive downloads go in power-of-two-MiB chunks aligned on the archive's tree, so each
chunk is one node of the tree: its hash is checked against ``x-amz-sha256-tree-hash``
(and its length against Content-Range/Content-Length) and the chunk hashes combine into
the archive's tree hash. Verified chunks are recorded in a sidecar next to the partial
file (``.NAME.glacierfs-part`` + ``.json`` in the target's directory, so the final
``os.replace`` is atomic and nothing is written outside the target directory); a re-run
resumes from them. The whole file is hashed again before it is moved into place.

Job records: ``catalog.put_job`` takes a dict (or a ``JobRecord``) with ``job_id``, ``kind``
(``inventory`` | ``retrieval``), ``archive_id``, ``tier``, ``status``, ``created`` (ISO),
``recorded_at`` (epoch), ``forced`` and ``imported`` (inventory jobs); ``get_job``/``list_jobs``
return :class:`glacierfs.catalog.JobRecord`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

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
from glacierfs.treehash import MiB, TreeHasher, combine, tree_hash_file

log = logging.getLogger(__name__)

INVENTORY = "inventory"
RETRIEVAL = "retrieval"
IN_PROGRESS, SUCCEEDED, FAILED = "InProgress", "Succeeded", "Failed"
MAX_CHUNK = 64 * MiB
JOB_RETENTION = 24 * 3600  # Glacier keeps finished jobs at least this long (reference §4.7)


class NoInventoryYet(NotReadyError):
    """Glacier has not generated the vault's first inventory (404 on InitiateJob)."""


class JobExpired(NotFoundError):
    """A recorded job is gone (expired or never existed on this endpoint)."""


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


@dataclass(frozen=True)
class Downloaded:
    """A verified, complete download."""

    path: Path
    archive_id: str
    size: int
    tree_hash: str
    job_id: str


# --------------------------------------------------------------------------- helpers


def parse_iso(text: str | None) -> float | None:
    """Epoch seconds of a Glacier ISO-8601 date (``2012-03-20T17:03:43.221Z``), None if absent/bad."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}"


def chunk_size_for(size: int, maximum: int = MAX_CHUNK) -> int:
    """Power-of-two MiB chunk: up to ``maximum``, smaller so small archives still split a few ways."""
    chunk = MiB
    while chunk * 2 <= maximum and chunk * 2 * 4 <= size:
        chunk *= 2
    return chunk


def _job_id_of(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        for key in ("jobId", "JobId", "job_id"):
            if result.get(key):
                return str(result[key])
    raise ServiceError(f"InitiateJob returned no job id: {result!r}")


def _header(headers: Any, *names: str) -> str | None:
    """A response header or parsed field by any of its spellings (case-insensitive)."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in dict(headers).items()}
    for name in names:
        value = lower.get(name.lower())
        if value is not None:
            return str(value)
    return None


def _is_no_inventory_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "not yet generated",
            "cannot be initiated yet",
            "initial inventory",
            "no inventory for this vault",
        )
    )


def _is_job_gone(exc: BaseException) -> bool:
    """A 404 about the job itself (expired), not about the vault."""
    text = str(exc).lower()
    return "vault not found" not in text


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def partial_paths(out: Path) -> tuple[Path, Path]:
    """The hidden partial file and its sidecar next to ``out`` (same filesystem: atomic rename).

    ``.NAME.glacierfs-part`` and ``.NAME.glacierfs-part.json``; a hashed name when NAME is
    too long to take the prefix and suffix within the 255-byte name limit.
    """
    name = f".{out.name}.glacierfs-part"
    if len((name + ".json").encode("utf-8", "surrogateescape")) > 255:
        digest = hashlib.sha256(out.name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        name = f".glacierfs-part-{digest}"
    return out.with_name(name), out.with_name(name + ".json")


# Errors raised while reading a response body (connection reset, truncated stream).
class _OutputUnusable(Exception):
    """A parse error of an inventory output, told apart from the catalog's own errors."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _checked(items: Iterator[Any]) -> Iterator[Any]:
    """``items``, with any parse error raised as :class:`_OutputUnusable`."""
    try:
        yield from items
    except (GlacierFSError, ValueError, KeyError, TypeError, *_stream_errors()) as exc:
        raise _OutputUnusable(exc) from exc


def _stream_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, EOFError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errs.append(botocore.exceptions.BotoCoreError)
    with contextlib.suppress(ImportError):
        import urllib3.exceptions

        errs.append(urllib3.exceptions.HTTPError)
    return tuple(errs)


# --------------------------------------------------------------------------- runner


class JobRunner:
    """Inventory and retrieval jobs for one vault.

    ``poll`` is the DescribeJob schedule; ``sleep``/``clock`` are injectable for tests.
    ``chunk_size`` (a power of two MiB) overrides the automatic download chunk size;
    ``attempts`` bounds the fetches of one chunk (or one inventory output) that fail
    verification or break off before :class:`IntegrityError`/:class:`ServiceError`.
    """

    def __init__(
        self,
        glacier: Any,
        catalog: Any,
        vault: str,
        *,
        progress: Progress | None = None,
        poll: Backoff | None = None,
        chunk_size: int | None = None,
        concurrency: int = 2,
        attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if chunk_size is not None and (chunk_size < MiB or chunk_size & (chunk_size - 1)):
            raise UsageError("download chunk size must be a power of two of at least 1 MiB")
        self.glacier = glacier
        self.catalog = catalog
        self.vault = vault
        self.progress = progress or NULL_PROGRESS
        self.poll = poll or Backoff()
        self.chunk_size = chunk_size
        self.concurrency = max(1, concurrency)
        self.attempts = max(1, attempts)
        self.sleep = sleep
        self.clock = clock

    # ------------------------------------------------------------------ job records

    def _record(self, desc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Store (or update) the catalog record of a job from its description."""
        job_id = desc.get("JobId") or desc["job_id"]
        old = found.to_dict() if (found := self.catalog.get_job(job_id)) else {}
        action = desc.get("Action")
        kind = old.get("kind") or (INVENTORY if action == "InventoryRetrieval" else RETRIEVAL)
        rec = {
            "job_id": job_id,
            "kind": kind,
            "archive_id": desc.get("ArchiveId", old.get("archive_id")),
            "tier": desc.get("Tier", old.get("tier")),
            "status": desc.get("StatusCode", old.get("status", IN_PROGRESS)),
            "created": desc.get("CreationDate", old.get("created")),
            "completed": desc.get("CompletionDate", old.get("completed")),
            "size": desc.get("ArchiveSizeInBytes", old.get("size")),
            "recorded_at": old.get("recorded_at", self.clock()),
            "forced": old.get("forced", False),
            "imported": old.get("imported", False),
            "vault": self.vault,
        }
        rec.update(extra)
        if rec != old:
            self.catalog.put_job(rec)
        return rec

    def _describe(self, job_id: str) -> dict[str, Any]:
        """DescribeJob; a job the service no longer knows is forgotten and :class:`JobExpired` raised."""
        try:
            return dict(self.glacier.describe_job(self.vault, job_id))
        except NotFoundError as exc:
            if not _is_job_gone(exc):
                raise
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
        rec = {
            "job_id": job_id,
            "kind": kind,
            "status": IN_PROGRESS,
            "recorded_at": self.clock(),
            "vault": self.vault,
            "imported": False,
            "forced": False,
            "archive_id": None,
            "tier": None,
            "created": None,
        }
        rec.update(extra)
        self.catalog.put_job(rec)  # before anything else: a re-run after a kill reattaches
        log.info("started %s job %s", kind, job_id)
        return rec

    def wait_job(self, job_id: str, what: str, wait: bool = True) -> dict[str, Any]:
        """Poll DescribeJob until the job completes (backoff schedule ``self.poll``).

        ``wait=False`` returns the current description at once. Transient service errors
        while polling are retried a few times, since jobs run for hours.
        """
        delays = self.poll.delays()
        failures = 0
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
            started = parse_iso(desc.get("CreationDate"))
            ago = f", started {fmt_duration(self.clock() - started)} ago" if started else ""
            self.progress.status(f"waiting for {what} job {job_id[:12]}…{ago}")
            self.sleep(next(delays))

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
                except (NotFoundError, NotReadyError) as exc:
                    if _is_no_inventory_error(exc):
                        raise NoInventoryYet(
                            f"vault {self.vault} has no inventory yet (Glacier generates the first one "
                            "about a day after the first upload)"
                        ) from None
                    raise
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
                except JobExpired:
                    raise
                except (GlacierFSError, ValueError, KeyError, TypeError, *_stream_errors()) as exc:
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

    def _spool_output(self, job_id: str, spool: Any, expected: Any) -> tuple[str, str | None]:
        try:
            stream, headers = self.glacier.get_job_output(self.vault, job_id, None)
        except NotFoundError:
            with contextlib.suppress(Exception):
                self.catalog.remove_job(job_id)
            raise JobExpired(f"job {job_id} no longer exists") from None
        sha = hashlib.sha256()
        total = 0
        try:
            while True:
                data = stream.read(1 << 20)
                if not data:
                    break
                sha.update(data)
                spool.write(data)
                total += len(data)
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        length = _header(headers, "content-length", "ContentLength")
        if length is not None and int(length) != total:
            raise IntegrityError(f"inventory output truncated: got {total} of {length} bytes")
        if expected is not None and int(expected) != total:
            raise IntegrityError(f"inventory output is {total} bytes, the job reported {expected}")
        ctype = _header(headers, "content-type", "contentType", "ContentType")
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

        An existing job is reused whatever its tier. Returns the job's description.
        """
        desc = self.find_retrieval_job(archive_id)
        if desc is not None and desc.get("StatusCode") != FAILED:
            return desc
        if desc is not None:  # only failed jobs: forget them and try again
            for old in self.catalog.list_jobs(kind=RETRIEVAL, archive_id=archive_id):
                self.catalog.remove_job(old.job_id)
        result = self.glacier.initiate_retrieval(self.vault, archive_id, tier, None)
        rec = self._started(result, RETRIEVAL, archive_id=archive_id, tier=tier)
        self.progress.status(
            f"started {tier} retrieval job {rec['job_id'][:12]}… for {archive_id[:12]}…"
        )
        try:
            return self._describe(rec["job_id"])
        except ServiceError:
            return {"JobId": rec["job_id"], "StatusCode": IN_PROGRESS, "ArchiveId": archive_id, "Tier": tier}

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
                    desc = self.wait_job(job_id, f"{desc.get('Tier') or tier} retrieval", wait=wait)
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

    # ------------------------------------------------------------------ verified download

    def fetch(self, desc: dict[str, Any], out: Path) -> Downloaded:
        """Download a finished retrieval job's output into ``out``, verified, resumable, atomic."""
        job_id = desc["JobId"]
        archive_id = desc.get("ArchiveId") or ""
        if desc.get("ArchiveSizeInBytes") is None:
            raise ServiceError(f"retrieval job {job_id} reports no archive size")
        size = int(desc["ArchiveSizeInBytes"])
        expected = desc.get("SHA256TreeHash") or desc.get("ArchiveSHA256TreeHash")
        known = self.catalog.get(archive_id) if archive_id else None
        known_hash = getattr(known, "tree_hash", None) if known else None
        if expected and known_hash and known_hash != expected:
            raise IntegrityError(
                f"archive {archive_id}: the job reports tree hash {expected}, the inventory {known_hash}"
            )
        expected = expected or known_hash
        if not expected:
            raise IntegrityError(f"archive {archive_id}: no tree hash to verify the download against")
        if out.is_dir():
            raise UsageError(f"{out} is a directory")
        part, state_path = partial_paths(out)
        chunk = self.chunk_size or chunk_size_for(size)
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StateError(f"another glacierfs process is downloading to {out}") from None
                raise
            try:
                state = self._load_state(state_path, archive_id, size, expected, chunk, fd)
                self._fetch_chunks(job_id, archive_id, fd, size, chunk, state, state_path)
                self._verify_whole(job_id, archive_id, fd, part, size, chunk, expected, state, state_path)
                os.fsync(fd)
                os.replace(part, out)
            except OSError as exc:  # local disk trouble (full, read-only, removed directory)
                raise StateError(f"writing {out}: {exc.strerror or exc}") from None
            _fsync_dir(out.parent)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_path)
        log.info("downloaded archive %s to %s (%d bytes, %s)", archive_id, out, size, expected)
        return Downloaded(path=out, archive_id=archive_id, size=size, tree_hash=expected, job_id=job_id)

    def _load_state(
        self, path: Path, archive_id: str, size: int, tree_hash: str, chunk: int, fd: int
    ) -> dict[str, Any]:
        """The sidecar of a partial download of the same archive, or a fresh one (part truncated)."""
        fresh = {
            "archive_id": archive_id,
            "size": size,
            "tree_hash": tree_hash,
            "chunk_size": chunk,
            "chunks": {},
        }
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = None
        ok = (
            isinstance(state, dict)
            and {k: state.get(k) for k in ("archive_id", "size", "tree_hash", "chunk_size")}
            == {k: fresh[k] for k in ("archive_id", "size", "tree_hash", "chunk_size")}
            and isinstance(state.get("chunks"), dict)
            and os.fstat(fd).st_size == size
        )
        if ok:
            assert isinstance(state, dict)
            log.info(
                "resuming download of %s: %d chunk(s) already verified", archive_id, len(state["chunks"])
            )
            return state
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        _write_json_atomic(path, fresh)
        return fresh

    def _fetch_chunks(
        self,
        job_id: str,
        archive_id: str,
        fd: int,
        size: int,
        chunk: int,
        state: dict[str, Any],
        state_path: Path,
    ) -> None:
        n = max(1, (size + chunk - 1) // chunk) if size else 0
        todo = [i for i in range(n) if str(i) not in state["chunks"]]
        if not todo:
            return
        done_bytes = sum(min(chunk, size - i * chunk) for i in range(n) if str(i) in state["chunks"])
        bar = self.progress.bar(f"download {archive_id[:12]}…", size, initial=done_bytes)
        lock = threading.Lock()

        def one(i: int) -> None:
            start, end = i * chunk, min(size, (i + 1) * chunk) - 1
            digest, confirmed = self._fetch_range(job_id, archive_id, fd, start, end)
            os.fsync(fd)  # the chunk is on disk before the sidecar says so
            with lock:
                state["chunks"][str(i)] = [digest, confirmed]
                _write_json_atomic(state_path, state)
            bar.update(end - start + 1)

        try:
            if self.concurrency == 1 or len(todo) == 1:
                for i in todo:
                    one(i)
            else:
                with ThreadPoolExecutor(self.concurrency, thread_name_prefix="download") as pool:
                    futures = [pool.submit(one, i) for i in todo]
                    try:
                        for f in as_completed(futures):
                            f.result()
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()

    def _fetch_range(self, job_id: str, archive_id: str, fd: int, start: int, end: int) -> tuple[str, bool]:
        """Fetch bytes [start, end] of the job output into ``fd``; returns (tree hash, header-confirmed).

        Checks Content-Range, the length and ``x-amz-sha256-tree-hash``; a failing fetch is
        repeated up to ``attempts`` times.
        """
        length = end - start + 1
        last: BaseException | None = None
        integrity_only = True
        delays = Backoff(0.05, 2.0).delays()
        for attempt in range(1, self.attempts + 1):
            try:
                return self._fetch_range_once(job_id, fd, start, end, length)
            except JobExpired:
                raise
            except NotFoundError:
                raise JobExpired(f"job {job_id} no longer exists") from None
            except IntegrityError as exc:
                last = exc
            except (ServiceError, *_stream_errors()) as exc:
                last = exc
                integrity_only = False
            log.warning(
                "bytes %d-%d of archive %s: attempt %d failed: %s", start, end, archive_id, attempt, last
            )
            self.sleep(next(delays))
        msg = f"bytes {start}-{end} of archive {archive_id} failed {self.attempts} times: {last}"
        raise IntegrityError(msg) if integrity_only else ServiceError(msg)

    def _fetch_range_once(self, job_id: str, fd: int, start: int, end: int, length: int) -> tuple[str, bool]:
        stream, headers = self.glacier.get_job_output(self.vault, job_id, (start, end))
        try:
            crange = _header(headers, "content-range", "contentRange")
            if crange is not None:
                spec = crange.replace("bytes", "").strip().split("/")[0]
                if spec != f"{start}-{end}":
                    raise IntegrityError(f"asked for bytes {start}-{end}, got Content-Range {crange}")
            clen = _header(headers, "content-length", "ContentLength")
            if clen is not None and int(clen) != length:
                raise IntegrityError(f"asked for {length} bytes, got Content-Length {clen}")
            hasher = TreeHasher()
            pos = start
            while pos <= end:
                data = stream.read(min(4 * MiB, end + 1 - pos))
                if not data:
                    break
                hasher.update(data)
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, pos)
                    view = view[written:]
                    pos += written
            if pos != end + 1:
                raise IntegrityError(
                    f"bytes {start}-{end}: the body ended after {pos - start} of {length} bytes"
                )
            if stream.read(1):
                raise IntegrityError(f"bytes {start}-{end}: the body is longer than {length} bytes")
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        digest = hasher.hexdigest()
        claimed = _header(headers, "x-amz-sha256-tree-hash", "checksum")
        if claimed is not None and claimed != digest:
            raise IntegrityError(
                f"bytes {start}-{end}: tree hash {digest} does not match the server's {claimed}"
            )
        return digest, claimed is not None

    def _verify_whole(
        self,
        job_id: str,
        archive_id: str,
        fd: int,
        part: Path,
        size: int,
        chunk: int,
        expected: str,
        state: dict[str, Any],
        state_path: Path,
    ) -> None:
        """Combine the chunk hashes and hash the file on disk; re-fetch what does not match, once."""
        for round_ in range(2):
            n = max(1, (size + chunk - 1) // chunk) if size else 0
            hashes = [state["chunks"][str(i)][0] for i in range(n)] if n else []
            combined = combine(hashes) if hashes else hashlib.sha256(b"").hexdigest()
            if combined != expected:
                # Chunks without a server checksum cannot be told apart: fetch them all again.
                bad = [k for k, (_, confirmed) in state["chunks"].items() if not confirmed] or list(
                    state["chunks"]
                )
            else:
                os.fsync(fd)
                on_disk = tree_hash_file(part) if size else hashlib.sha256(b"").hexdigest()
                if on_disk == expected:
                    return
                bad = []
                for i in range(n):
                    s = i * chunk
                    if (
                        tree_hash_file(part, start=s, length=min(chunk, size - s))
                        != state["chunks"][str(i)][0]
                    ):
                        bad.append(str(i))
                if not bad:
                    bad = list(state["chunks"])
            if round_ == 1:
                break
            log.warning(
                "archive %s: %d chunk(s) failed the whole-file check; fetching them again",
                archive_id,
                len(bad),
            )
            for k in bad:
                state["chunks"].pop(k, None)
            _write_json_atomic(state_path, state)
            self._fetch_chunks(job_id, archive_id, fd, size, chunk, state, state_path)
        raise IntegrityError(f"archive {archive_id}: downloaded data does not match tree hash {expected}")
