"""The export run: paced retrieval jobs, transfers, progress, ``--delete-source``.

The scheduler (the calling thread) walks the selection lazily (memory O(``max_jobs``), not
O(vault)): each archive not yet done is checked in S3 (HEAD, a few at a time), then gets a
retrieval job - the one this store recorded, else a live one the service listed at the start
(one ListJobs per run: started by another tool, ``glacierfs download`` or a run killed before it
recorded the id), else a new one, recorded in the catalog too - as long as at most ``max_jobs`` archives
hold a job and the jobs started in the last hour stay within ``max_bytes_per_hour``. A finished
job whose output would expire (24 h after completion) before it can be read (less than
``EXPIRY_MARGIN`` plus the read time left) is replaced by a new job, which AWS does not charge
again while the output is still staged; one that expired mid-read is replaced and the upload
resumes where it stopped. Finished jobs go to ``concurrency`` transfer threads
(:class:`~glacierfs.export.stream.ArchiveStreamer`).

Threading: the scheduler (calling) thread owns every field of :class:`ExportRun` (summary,
manifest writes, the waiting list) except ``counters`` (:class:`~glacierfs.export.stream.Counters`,
its own lock). Three pools do the I/O and hand results back through futures that only the
scheduler reads: ``checks`` (HEAD of the next archives), ``calls`` (InitiateJob/DescribeJob for a
batch of archives; they touch only the state store, which has its own lock, and pop from
``_listed``, an atomic dict operation) and ``transfer`` (``streamer.export``, one archive each).
``_claimed`` (the archives whose S3 claim this run holds, :mod:`~glacierfs.export.claims`) and
``_taken_over`` are guarded by ``_claimed_lock``: the checks pool adds, the scheduler reads, renews
(every ``CLAIM_RENEW``, through the checks pool) and removes finished archives. ``_claims_now``
(the claims that existed when the run started) is written once before the pools start. No lock
is held while another is taken.

Claims and lost state: an archive whose claim an earlier run of our owner left (its cache dir
gone) or that we took over is re-checked as that run would have known it: HEAD of the key (in
``_check``, before and after claiming), its multipart uploads (aborted: we hold the claim), and
its retrieval job (the ListJobs of ``_discover`` finds a live one, reused like any other).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any, Protocol

from glacierfs.errors import CredentialsError, GlacierFSError, NotFoundError, StateError
from glacierfs.export.claims import CLAIM_RENEW, Claims, Holder
from glacierfs.export.manifest import Manifest, NoManifest
from glacierfs.export.plan import ASSUMED_THROUGHPUT, ExportItem
from glacierfs.export.state import ExportState
from glacierfs.export.stream import ArchiveStreamer, Counters, Exported, JobGone
from glacierfs.progress import Progress

log = logging.getLogger(__name__)

OUTPUT_LIFETIME = 24 * 3600.0
EXPIRY_MARGIN = 5 * 3600.0  # as AWS's own migration solution
CHECK_BATCH = 32
SUCCEEDED, FAILED = "Succeeded", "Failed"
REPORT_EVERY = 5.0


class Jobs(Protocol):
    """The JobRunner calls the exporter makes (DescribeJob; single-flight job start, recorded in the catalog)."""

    def wait_job(self, job_id: str, what: str, wait: bool = True) -> dict[str, Any]: ...
    def retrieval_once(
        self, archive_id: str, tier: str, usable: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[dict[str, Any], bool]: ...


class GlacierOps(Protocol):
    def delete_archive(self, vault: str, archive_id: str) -> None: ...
    def list_jobs(self, vault: str) -> list[dict[str, Any]]: ...


class CatalogOps(Protocol):
    def mark_deleted(self, archive_id: str, when: float | None = None) -> None: ...
    def put_job(self, job: Any) -> None: ...


@dataclass
class Options:
    tier: str = "Bulk"
    max_jobs: int = 100
    max_bytes_per_hour: int | None = None
    delete_source: bool = False
    concurrency: int = 2
    job_restarts: int = 3
    check_workers: int = 8


@dataclass
class _Waiting:
    """An archive whose job is not finished yet; polled at ``next_poll`` on its own backoff."""

    item: ExportItem
    job_id: str
    next_poll: float
    delays: Iterator[float]


@dataclass
class Summary:
    exported: int = 0
    present: int = 0
    deleted: int = 0
    failed: int = 0
    pending: int = 0
    busy: int = 0  # claimed by another exporter (export.claims): skipped
    taken_over: int = 0  # claims of other owners taken over (--take-over-claims-older-than)
    first_error: str | None = None
    first_busy: str | None = None


def parse_iso(text: str | None) -> float | None:
    from datetime import datetime

    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _rank(desc: dict[str, Any]) -> tuple[int, str]:
    """Finished jobs first (the latest), then running ones (the oldest: done first)."""
    if desc.get("StatusCode") == SUCCEEDED:
        return (2, str(desc.get("CompletionDate") or ""))
    created = str(desc.get("CreationDate") or "")
    return (1, "".join(chr(0x10FFFF - ord(c)) for c in created))


def output_expiring(desc: dict[str, Any], size: int, now: float) -> bool:
    """True if a finished job's output expires before ``size`` bytes can be read (with the margin)."""
    if desc.get("StatusCode") != SUCCEEDED:
        return False
    completed = parse_iso(desc.get("CompletionDate"))
    if completed is None:
        return False
    left = completed + OUTPUT_LIFETIME - now
    return left < EXPIRY_MARGIN + size / ASSUMED_THROUGHPUT


class ExportRun:
    def __init__(
        self,
        *,
        glacier: GlacierOps,
        jobs: Jobs,
        catalog: CatalogOps,
        vault: str,
        streamer: ArchiveStreamer,
        state: ExportState,
        options: Options,
        progress: Progress,
        manifest: Manifest | NoManifest,
        out: Callable[[str], None],
        poll: Callable[[], Iterator[float]],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        claims: Claims | None = None,
    ) -> None:
        self.glacier = glacier
        self.claims = claims
        self.jobs = jobs
        self.catalog = catalog
        self.vault = vault
        self.streamer = streamer
        self.state = state
        self.options = options
        self.progress = progress
        self.manifest = manifest
        self.out = out
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.counters: Counters = streamer.counters
        self.summary = Summary()
        self.restarts: dict[str, int] = {}
        self.total = 0
        self.total_bytes = 0
        self.done_bytes = 0
        self.started = clock()
        self.last_report = 0.0
        self.ready = 0
        self.waiting = 0
        self._waiting: list[_Waiting] = []
        self._listed: dict[str, dict[str, Any]] = {}
        self._claimed: set[str] = set()  # archives whose claim this run holds (checks pool adds)
        self._taken_over = 0
        self._claimed_lock = threading.Lock()
        self._claims_now: set[str] = set()
        self._next_renew = clock() + CLAIM_RENEW

    # ------------------------------------------------------------------ the loop

    def run(self, items: Iterable[ExportItem], total: int, total_bytes: int) -> Summary:
        self.total, self.total_bytes = total, total_bytes
        self._waiting = []
        self._discover()
        if self.claims is not None:
            self._claims_now = self.claims.existing()
        transfers: dict[Future[Exported], ExportItem] = {}
        held: ExportItem | None = None
        exhausted = False
        checks = ThreadPoolExecutor(self.options.check_workers, thread_name_prefix="export-check")
        calls = ThreadPoolExecutor(self.options.check_workers, thread_name_prefix="export-jobs")
        pool = ThreadPoolExecutor(max(1, self.options.concurrency), thread_name_prefix="export-transfer")
        source = self._todo(items, checks)
        delays = self.poll()
        budget = self.options.max_bytes_per_hour
        try:
            while True:
                now = self.clock()
                # 1. start (or find) jobs for the next archives, within --max-jobs and the hourly budget
                batch: list[ExportItem] = []
                used = self.state.bytes_charged_since(now - 3600) if budget else 0
                while not exhausted and len(self._waiting) + len(transfers) + len(batch) < self.options.max_jobs:
                    item = held or next(source, None)
                    held = None
                    if item is None:
                        exhausted = True
                        break
                    if budget and used and used + item.size > budget:
                        held = item  # over the hourly byte budget: wait for the window to move
                        break
                    used += item.size
                    batch.append(item)
                for item, (job_id, exc) in zip(batch, calls.map(self._job_or_error, batch), strict=True):
                    if job_id:
                        self._waiting.append(_Waiting(item, job_id, now, self.poll()))
                    else:
                        self._failed(item, exc or GlacierFSError("no retrieval job"))
                # 2. poll the jobs that are due
                due = [w for w in self._waiting if w.next_poll <= now]
                verdicts = list(calls.map(lambda w: self._job_verdict(w.item, w.job_id), due))
                for w, (verdict, err) in zip(due, verdicts, strict=True):
                    if verdict == "running":
                        w.next_poll = now + next(w.delays)
                        continue
                    self._waiting.remove(w)
                    if verdict == "ready":
                        transfers[pool.submit(self.streamer.export, w.item, w.job_id, True)] = w.item
                    elif verdict == "gone":
                        new = self._restart(w.item)
                        if new:
                            self._waiting.append(_Waiting(w.item, new, now, self.poll()))
                    else:
                        self._failed(w.item, GlacierFSError(err))
                # 3. results of the transfers
                for f in [f for f in transfers if f.done()]:
                    self._transfer_done(transfers.pop(f), f)
                if self.claims is not None and now >= self._next_renew:
                    self._renew(checks)
                self.ready, self.waiting = len(transfers), len(self._waiting)
                self._report()
                if exhausted and not self._waiting and not transfers and held is None:
                    break
                # 4. wait for the next thing to do
                if batch or due:
                    delays = self.poll()
                timeout = next(delays)
                if self._waiting:
                    timeout = min(timeout, max(0.0, min(w.next_poll for w in self._waiting) - self.clock()))
                if self.claims is not None:
                    timeout = min(timeout, max(0.0, self._next_renew - self.clock()))
                if transfers:
                    wait(list(transfers), timeout=max(timeout, 0.01), return_when=FIRST_COMPLETED)
                elif timeout > 0:
                    self.sleep(timeout)
        except BaseException:
            for f in transfers:
                f.cancel()
            self.summary.pending += len(self._waiting) + len(transfers) + (held is not None)
            for item in [*(w.item for w in self._waiting), *transfers.values()]:
                self.manifest.write(item, "pending")
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            calls.shutdown(wait=True, cancel_futures=True)
            checks.shutdown(wait=True, cancel_futures=True)
        self._report(force=True)
        with self._claimed_lock:
            self.summary.taken_over = self._taken_over
        return self.summary

    # ------------------------------------------------------------------ selection -> todo

    def _todo(self, items: Iterable[ExportItem], checks: ThreadPoolExecutor) -> Iterator[ExportItem]:
        """The archives that need a job; those done or present in S3 are finished here, without a job."""
        it = iter(items)
        while True:
            batch = list(islice(it, CHECK_BATCH))
            if not batch:
                return
            states = [self.state.get(i.archive_id) for i in batch]
            # An archive keeps the key its state recorded (its object or open upload is there), even
            # if a newer inventory gave its name to another archive: never two objects for one archive.
            batch = [i if s is None or s.key == i.key else replace(i, key=s.key)
                     for i, s in zip(batch, states, strict=True)]
            futures: list[Future[bool | Holder] | None] = [
                None if (s is not None and s.status in ("done", "deleted") and s.key == i.key)
                else checks.submit(self._check, i, s is not None)
                for i, s in zip(batch, states, strict=True)
            ]
            for item, fut in zip(batch, futures, strict=True):
                if fut is None:
                    self._finished(item, "present")
                    continue
                try:
                    present = fut.result()
                except CredentialsError:
                    raise
                except GlacierFSError as exc:
                    self._failed(item, exc)
                    continue
                if isinstance(present, Holder):
                    self._busy(item, present)
                elif present:
                    self.state.finish(item.archive_id, item.key, item.size)
                    self._finished(item, "present")
                else:
                    yield item

    def _check(self, item: ExportItem, known: bool) -> bool | Holder:
        """True if the object is in S3; else claim the archive: False (ours now) or the claim's holder.

        Runs in the ``checks`` pool. HEAD again after claiming: the holder before us may have
        finished and released its claim between our first HEAD and our claim. A present object
        whose archive our state knows, or had a claim when the run started, may have a claim of
        ours left (a kill after the object was written): released if so. A claim with an earlier
        holder (continued or taken over) has the multipart uploads on its key aborted: that
        holder's, which our state cannot know.
        """
        if self.streamer.present(item):
            if self.claims is not None and (known or item.archive_id in self._claims_now):
                self.claims.release_if_ours(item.archive_id)
            return True
        if self.claims is None:
            return False
        got = self.claims.acquire(item.archive_id)
        if isinstance(got, Holder):
            return got
        with self._claimed_lock:
            self._claimed.add(item.archive_id)
            if got.taken_over:
                self._taken_over += 1
        if self.streamer.present(item):
            self.claims.release(item.archive_id)
            return True
        if got.previous is not None:
            self.streamer.abort_strays(item)
        return False

    def _renew(self, checks: ThreadPoolExecutor) -> None:
        """Rewrite the claims this run holds (so no take-over finds them stale); an archive whose claim
        was taken over while it waited for its job is left to the new holder (``busy``)."""
        assert self.claims is not None
        self._next_renew = self.clock() + CLAIM_RENEW
        with self._claimed_lock:
            held = sorted(self._claimed)

        def renew(aid: str) -> Holder | None:
            try:
                return self.claims.renew(aid) if self.claims is not None else None
            except CredentialsError:
                raise
            except GlacierFSError as exc:
                log.warning("archive %s: renewing its claim failed (%s); trying again later", aid, exc)
                return None

        lost = {aid: h for aid, h in zip(held, checks.map(renew, held), strict=True) if h is not None}
        for w in [w for w in self._waiting if w.item.archive_id in lost]:
            self._waiting.remove(w)
            self._forget(w.item.archive_id)
            self._busy(w.item, lost[w.item.archive_id])

    def _forget(self, archive_id: str) -> None:
        with self._claimed_lock:
            self._claimed.discard(archive_id)

    def _busy(self, item: ExportItem, holder: Holder) -> None:
        assert self.claims is not None
        log.warning("archive %s: skipped, another exporter claimed it (%s: %s)",
                    item.archive_id, self.claims.where(item.archive_id), holder.describe())
        self.summary.busy += 1
        self.summary.first_busy = self.summary.first_busy or self.claims.where(item.archive_id)
        self.manifest.write(item, "busy")
        self.out(f"busy  {item.archive_id}  s3://{self.streamer.bucket}/{item.key}")

    # ------------------------------------------------------------------ jobs

    def _describe(self, job_id: str) -> dict[str, Any] | None:
        try:
            return self.jobs.wait_job(job_id, "retrieval", wait=False)
        except NotFoundError:
            return None

    def _job_or_error(self, item: ExportItem) -> tuple[str | None, GlacierFSError | None]:
        """(job id, None) or (None, the error); runs in the ``calls`` pool."""
        try:
            return self._ensure_job(item), None
        except CredentialsError:
            raise
        except GlacierFSError as exc:
            return None, exc

    def _discover(self) -> None:
        """One ListJobs at the start: the live whole-archive retrieval jobs, best per archive.

        This is how a job started by a killed run (before its id was recorded), by another tool
        or by ``glacierfs download`` is reused instead of starting a second one; a per-archive
        lookup would cost a ListJobs per archive.
        """
        best: dict[str, dict[str, Any]] = {}
        for desc in self.glacier.list_jobs(self.vault):
            desc = dict(desc)
            aid = desc.get("ArchiveId")
            if desc.get("Action") != "ArchiveRetrieval" or not aid or desc.get("StatusCode") == FAILED:
                continue
            rng, size = desc.get("RetrievalByteRange"), desc.get("ArchiveSizeInBytes")
            if rng and size is not None and rng != f"0-{int(size) - 1}":
                continue  # a partial retrieval is no use for the whole object
            old = best.get(aid)
            if old is None or _rank(desc) > _rank(old):
                best[aid] = desc
        self._listed = best

    def _ensure_job(self, item: ExportItem, fresh: bool = False) -> str:
        aid = item.archive_id
        now = self.clock()
        rec = self.state.get(aid)
        stale: dict[str, Any] | None = None
        if rec and rec.job_id and not fresh:
            desc = self._describe(rec.job_id)
            if desc is not None and desc.get("StatusCode") != FAILED:
                if not output_expiring(desc, item.size, now):
                    return rec.job_id
                stale = desc
            self.state.clear_job(aid)
        if not fresh and stale is None:
            desc = self._listed.pop(aid, None)
            if desc is not None:
                if not output_expiring(desc, item.size, now):
                    self.state.set_job(aid, item.key, item.size, desc["JobId"], charged=False)
                    log.info("archive %s: reusing retrieval job %s", aid, desc["JobId"])
                    return str(desc["JobId"])
                stale = desc
        if stale is not None or fresh:
            # The output is (or was just) staged: AWS does not charge the retrieval again, so no budget.
            job_id, _ = self._start(item, "the previous output expires too soon")
            self.state.set_job(aid, item.key, item.size, job_id, charged=False)
            return job_id
        job_id, started = self._start(item, "")
        self.state.set_job(aid, item.key, item.size, job_id, charged=started)
        return job_id

    def _start(self, item: ExportItem, why: str) -> tuple[str, bool]:
        """(job id, started now): through the JobRunner's single-flight path, recorded in the catalog.

        A mount's retrieve, ``download`` or ``restore`` of the same archive running at the same
        time (same state dir) holds the per-archive lock while it starts its job; this finds
        that job in the catalog instead of starting a second one.
        """
        def usable(desc: dict[str, Any]) -> bool:
            return not output_expiring(desc, item.size, self.clock())

        desc, started = self.jobs.retrieval_once(item.archive_id, self.options.tier, usable)
        job_id = str(desc["JobId"])
        if started:
            log.info("archive %s: started %s retrieval job %s%s", item.archive_id, self.options.tier, job_id,
                     f" ({why})" if why else "")
        else:
            log.info("archive %s: reusing retrieval job %s that another glacierfs process started", item.archive_id,
                     job_id)
        return job_id, started

    def _job_verdict(self, item: ExportItem, job_id: str) -> tuple[str, str]:
        """``ready`` | ``running`` | ``gone`` (expired, or expires too soon) | ``failed``, and why; any thread."""
        try:
            desc = self._describe(job_id)
        except CredentialsError:
            raise
        except GlacierFSError as exc:
            log.warning("archive %s: polling job %s failed (%s); trying again", item.archive_id, job_id, exc)
            return "running", ""
        if desc is None:
            return "gone", ""
        status = desc.get("StatusCode")
        if status == SUCCEEDED:
            return ("gone", "") if output_expiring(desc, item.size, self.clock()) else ("ready", "")
        if status == FAILED:
            self.state.clear_job(item.archive_id)
            return "failed", f"retrieval job {job_id} failed: {desc.get('StatusMessage') or 'no reason given'}"
        return "running", ""

    def _restart(self, item: ExportItem) -> str | None:
        n = self.restarts.get(item.archive_id, 0) + 1
        self.restarts[item.archive_id] = n
        if n > self.options.job_restarts:
            self._failed(item, GlacierFSError(f"its retrieval jobs expired {n - 1} times before it was read"))
            return None
        log.warning("archive %s: the retrieval job's output expired or expires too soon; starting a new job",
                    item.archive_id)
        try:
            return self._ensure_job(item, fresh=True)
        except CredentialsError:
            raise
        except GlacierFSError as exc:
            self._failed(item, exc)
            return None

    # ------------------------------------------------------------------ results

    def _transfer_done(self, item: ExportItem, fut: Future[Exported]) -> None:
        try:
            result = fut.result()
        except JobGone:
            self.state.clear_job(item.archive_id)
            new = self._restart(item)
            if new:
                # Back into the queue through a new job; the S3 upload resumes from its recorded parts.
                self._waiting.append(_Waiting(item, new, self.clock(), self.poll()))
            return
        except (CredentialsError, StateError):
            raise
        except GlacierFSError as exc:
            self._failed(item, exc)
            return
        self._finished(item, result.status)

    def _finished(self, item: ExportItem, status: str) -> None:
        if self.options.delete_source:
            try:
                self._delete_source(item)
            except CredentialsError:
                raise
            except GlacierFSError as exc:
                self._failed(item, exc, verified=True)
                return
            status = "deleted"
        if status == "exported":
            self.summary.exported += 1
        elif status == "present":
            self.summary.present += 1
        else:
            self.summary.deleted += 1
        self.done_bytes += item.size
        self._forget(item.archive_id)
        self.manifest.write(item, status)
        self.out(f"{status}  {item.archive_id}  s3://{self.streamer.bucket}/{item.key}")

    def _delete_source(self, item: ExportItem) -> None:
        """Delete the archive, only after HEAD shows its object (size, archive id, tree hash)."""
        self.streamer.verify(item)
        try:
            self.glacier.delete_archive(self.vault, item.archive_id)
        except NotFoundError:
            log.info("archive %s was already deleted", item.archive_id)
        self.catalog.mark_deleted(item.archive_id)
        self.state.finish(item.archive_id, item.key, item.size, status="deleted")

    def _failed(self, item: ExportItem, exc: BaseException, verified: bool = False) -> None:
        msg = f"archive {item.archive_id} ({item.key}): {exc}"
        log.warning("%s", msg)
        if not verified:
            self.state.fail(item.archive_id, item.key, item.size, str(exc))
        with self._claimed_lock:
            ours = item.archive_id in self._claimed
            self._claimed.discard(item.archive_id)
        if self.claims is not None and ours:
            try:  # let another exporter try it; our state keeps the failure for our re-run
                self.claims.give_up(item.archive_id)
            except GlacierFSError as err:
                log.warning("archive %s: its claim stays (%s)", item.archive_id, err)
        self.summary.failed += 1
        self.summary.first_error = self.summary.first_error or msg
        self.manifest.write(item, "failed")

    def _report(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_report < REPORT_EVERY:
            return
        self.last_report = now
        s = self.summary
        done = s.exported + s.present + s.deleted
        with self.counters.lock:
            sent = self.counters.bytes_sent
        elapsed = max(1e-6, now - self.started)
        rate = sent / elapsed
        left = max(0, self.total_bytes - self.done_bytes)
        eta = f", ETA {_fmt_s(left / rate)}" if rate > 0 and left else ""
        self.progress.status(
            f"export: {done}/{self.total} archives done, {self.ready} ready, {self.waiting} waiting for jobs, "
            f"{s.failed} failed; {_fmt_b(self.done_bytes)} of {_fmt_b(self.total_bytes)}, {_fmt_b(rate)}/s{eta}"
        )


def _fmt_b(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _fmt_s(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}"
