"""``glacierfs restore``: retrieve many archives into a directory, in batches, within limits.

Selection (:func:`select`): nothing selects the whole vault; a PATH that is a directory in
the catalog selects everything below it, a file selects that archive; a GLOB (``*`` and
``?`` within one path component, ``**`` across components, ``[...]``) selects the archives
whose path, or one of whose parent directories, it matches.

Files land at ``DIR/<display path>`` (the catalog's safe, unique path: never outside DIR,
same names in different folders never collide), with the mtime of the archive (from its
description, else its creation date) and mode ``0666 & ~umask``. Each is downloaded verified
(:meth:`JobRunner.fetch`) into a hidden staging file next to its target
(``.NAME.glacierfs-restore``), given its mtime and mode, then renamed into place: a target
either does not exist or is complete.

Plan (:func:`plan_restore`): every selected archive is *done* (the target exists with the
archive's size and whole-second mtime: a re-run skips it), a *conflict* (another file is
there: skipped and reported, never overwritten), *staged* (a complete staging file from an
interrupted run: its tree hash is checked and it is moved in) or *to do*. One ListJobs sweep
finds the live retrieval jobs (of any tool, any tier) per archive, so existing jobs are
reused and counted as costing nothing more.

Run (:class:`Restorer`): each round sweeps ListJobs once, hands the archives whose job has
succeeded to the download pool and starts jobs (through :meth:`JobRunner.retrieval`, which
records each job id before anything else) for archives that have none, keeping at most
``max_jobs`` jobs in flight (started and not yet downloaded) and the bytes of retrieval jobs
created in the last hour within ``max_bytes_per_hour`` (a single archive bigger than the
limit is started alone). A job whose output expired (24 h) is started again. ``wait=False``
does one round and raises NotReadyError if archives remain. A re-run finds its jobs again by
the sweep: no job is started twice.

Threading contract: the main thread owns the plan, the job map, the counters and stdout; it
sweeps, starts jobs and collects results. A pool of ``parallel`` download threads each run
one :func:`_download` (its own JobRunner from ``runner_factory``, the file's staging and
target paths, nothing shared but the thread-safe Glacier client and catalog) and return an
outcome; no locks are needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import posixpath
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from glacierfs.errors import GlacierFSError, NotFoundError, NotReadyError, ServiceError, UsageError
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.tree.pricing import TIERS, PriceTable, expected_wait, fmt_hours
from glacierfs.tree.scan import ArchiveLike

log = logging.getLogger(__name__)

SUCCEEDED, IN_PROGRESS, FAILED = "Succeeded", "InProgress", "Failed"
JOB_RETENTION = 24 * 3600
DEFAULT_MAX_JOBS = 1000
MAX_STARTS = 3  # jobs one run starts for an archive whose jobs keep failing or expiring

State = Literal["done", "conflict", "staged", "todo"]


class RestoreCatalog(Protocol):
    def iter_archives(self) -> Iterator[ArchiveLike]: ...
    def lookup(self, path: str) -> Any: ...


class Lister(Protocol):
    def list_jobs(self, vault: str) -> list[dict[str, Any]]: ...


class Runner(Protocol):
    def retrieval(self, archive_id: str, tier: str = "Standard") -> dict[str, Any]: ...
    def wait_job(self, job_id: str, what: str, wait: bool = True) -> dict[str, Any]: ...
    def fetch(self, desc: dict[str, Any], out: Path) -> Any: ...


# --------------------------------------------------------------------------- selection


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex matching the path or any path below it."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body[:1] in "!^":
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("(?:" + "".join(out) + ")(?:/.*)?", re.DOTALL)


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


@dataclass(frozen=True, slots=True)
class Entry:
    """What restore needs of an archive (a light row: plans of 1,000,000 archives stay fast)."""

    path: str
    archive_id: str
    size: int
    mtime: float
    tree_hash: str


def _entries(catalog: RestoreCatalog, prefix: str) -> Iterator[Entry]:
    """Archives below directory ``prefix`` ('' = all), from the catalog's fast query when it has one."""
    fast = getattr(catalog, "iter_entries", None)
    if fast is not None:
        for row in fast(prefix):
            yield Entry(*row)
        return
    head = prefix + "/" if prefix else ""
    for a in catalog.iter_archives():
        if a.path.startswith(head):
            yield Entry(a.path, a.archive_id, a.size, a.mtime, a.tree_hash)


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard component (where to start looking)."""
    parts = pattern.split("/")
    base = []
    for comp in parts[:-1]:
        if _is_glob(comp):
            break
        base.append(comp)
    return "/".join(base)


def select(catalog: RestoreCatalog, patterns: list[str]) -> Iterator[Entry]:
    """The archives PATHs/GLOBs select (all with none), each once; NotFoundError for a PATH or GLOB that
    selects nothing (raised before anything is yielded for PATHs, at the end for GLOBs)."""
    roots: list[str] = []
    globs: list[tuple[str, str, re.Pattern[str]]] = []
    exact: list[Entry] = []
    for raw in patterns or [""]:
        norm = posixpath.normpath("/" + raw.replace(os.sep, "/")).lstrip("/")
        if not norm:
            roots.append("")
        elif _is_glob(norm):
            globs.append((raw, _glob_base(norm), glob_regex(norm)))
        else:
            hit = catalog.lookup(norm)
            if hit == "dir":
                roots.append(norm)
            elif hit is None:
                raise NotFoundError(f"no archive or directory {raw} in the vault")
            else:
                exact.append(Entry(hit.path, hit.archive_id, hit.size, hit.mtime, hit.tree_hash))
    return _select(catalog, roots, globs, exact)


def _select(catalog: RestoreCatalog, roots: list[str], globs: list[tuple[str, str, re.Pattern[str]]],
            exact: list[Entry]) -> Iterator[Entry]:
    seen: set[str] = set()
    multi = len(roots) + len(globs) + len(exact) > 1

    def fresh(e: Entry) -> bool:
        if not multi:
            return True
        if e.archive_id in seen:
            return False
        seen.add(e.archive_id)
        return True

    for e in exact:
        if fresh(e):
            yield e
    if "" in roots:
        roots = [""]
    elif roots:  # a root inside another root is covered by it
        roots = [r for r in roots if not any(r != o and r.startswith(o + "/") for o in roots)]
    for r in dict.fromkeys(roots):
        for e in _entries(catalog, r):
            if fresh(e):
                yield e
    for raw, base, rx in globs:
        hit = False
        for e in _entries(catalog, base):
            if rx.fullmatch(e.path):
                hit = True
                if fresh(e):
                    yield e
        if not hit:
            raise NotFoundError(f"nothing in the vault matches {raw}")


# --------------------------------------------------------------------------- plan


def staging_path(target: Path) -> Path:
    name = f".{target.name}.glacierfs-restore"
    if len(name.encode("utf-8", "surrogateescape")) > 200:  # room for the download's own part suffix
        name = ".glacierfs-restore-" + hashlib.sha256(target.name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return target.with_name(name)


@dataclass(slots=True)
class Item:
    archive: Entry
    target_str: str
    state: State = "todo"

    @property
    def target(self) -> Path:
        return Path(self.target_str)

    @property
    def staging(self) -> Path:
        return staging_path(self.target)

    @property
    def archive_id(self) -> str:
        return self.archive.archive_id


def _target_state(a: Entry, target: str) -> State:
    import stat as _stat

    try:
        st = os.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        return "conflict"
    else:
        if _stat.S_ISREG(st.st_mode) and st.st_size == a.size and int(st.st_mtime // 1) == int(a.mtime // 1):
            return "done"
        return "conflict"
    try:
        if os.stat(staging_path(Path(target))).st_size == a.size:
            return "staged"
    except OSError:
        pass
    return "todo"


@dataclass
class JobSweep:
    """What one ListJobs says: the best live whole-archive retrieval job per archive, and recent starts."""

    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent: list[tuple[float, int]] = field(default_factory=list)  # (created epoch, size) of retrieval jobs

    def bytes_since(self, since: float) -> int:
        return sum(size for created, size in self.recent if created >= since)


def _epoch(text: Any) -> float | None:
    from datetime import datetime

    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def sweep_jobs(glacier: Lister, vault: str) -> JobSweep:
    out = JobSweep()
    for d in glacier.list_jobs(vault):
        if d.get("Action") != "ArchiveRetrieval":
            continue
        created = _epoch(d.get("CreationDate"))
        size = int(d.get("ArchiveSizeInBytes") or 0)
        if created is not None:
            out.recent.append((created, size))
        status = d.get("StatusCode")
        rng = d.get("RetrievalByteRange")
        if status == FAILED or (rng and size and rng != f"0-{size - 1}"):
            continue
        aid = d.get("ArchiveId")
        if not aid:
            continue
        cur = out.best.get(aid)
        if cur is None or _better(d, cur):
            out.best[aid] = dict(d)
    return out


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ra, rb = a.get("StatusCode") == SUCCEEDED, b.get("StatusCode") == SUCCEEDED
    if ra != rb:
        return ra
    if ra:
        return str(a.get("CompletionDate") or "") > str(b.get("CompletionDate") or "")
    return str(a.get("CreationDate") or "") < str(b.get("CreationDate") or "")


@dataclass
class RestorePlan:
    items: list[Item]
    jobs: JobSweep

    def of(self, state: State) -> list[Item]:
        return [i for i in self.items if i.state == state]

    def needing_jobs(self) -> list[Item]:
        return [i for i in self.of("todo") if i.archive_id not in self.jobs.best]


def plan_items(archives: Iterable[Entry], out_dir: Path) -> Iterator[Item]:
    """Each archive's state in ``out_dir`` (a stat only where its directory exists)."""
    root = os.path.abspath(out_dir)
    dirs: dict[str, bool] = {}
    for a in archives:
        rel = a.path
        if rel.startswith("/") or "/../" in f"/{rel}/" or "/./" in f"/{rel}/":  # safe paths never are
            raise UsageError(f"archive path {rel!r} would leave {root}")
        target = f"{root}/{rel}"
        parent = target.rpartition("/")[0]
        exists = dirs.get(parent)
        if exists is None:
            exists = dirs[parent] = os.path.isdir(parent)
        yield Item(a, target, _target_state(a, target) if exists else "todo")


def plan_restore(archives: Iterable[Entry], out_dir: Path, glacier: Lister, vault: str) -> RestorePlan:
    return RestorePlan(list(plan_items(archives, out_dir)), sweep_jobs(glacier, vault))


@dataclass
class PlanSummary:
    """Counts and bytes of a plan, computed in one streaming pass (``--dry-run`` of huge vaults)."""

    selected: int = 0
    selected_bytes: int = 0
    done: int = 0
    conflicts: int = 0
    todo: int = 0
    todo_bytes: int = 0
    need_jobs: int = 0
    need_bytes: int = 0

    @classmethod
    def of(cls, items: Iterable[Item], jobs: JobSweep) -> PlanSummary:
        s = cls()
        best = jobs.best
        for i in items:
            size = i.archive.size
            s.selected += 1
            s.selected_bytes += size
            if i.state == "done":
                s.done += 1
            elif i.state == "conflict":
                s.conflicts += 1
            else:
                s.todo += 1
                s.todo_bytes += size
                if i.archive.archive_id not in best:
                    s.need_jobs += 1
                    s.need_bytes += size
        return s


def describe_plan(s: PlanSummary, prices: PriceTable, tier: str, max_jobs: int | None,
                  max_bytes_per_hour: int | None) -> list[str]:
    """The ``--dry-run`` lines: counts, bytes, cost per tier, expected wait."""
    lines = [
        f"restore plan: {s.selected} archive(s), {s.selected_bytes} bytes selected",
        f"  already restored: {s.done}; in the way (skipped): {s.conflicts};"
        f" to download: {s.todo} ({s.todo_bytes} bytes)",
        f"  retrieval jobs: {s.todo - s.need_jobs} reused (running or finished), {s.need_jobs} to start"
        f" ({s.need_bytes} bytes)",
        f"  limits: at most {max_jobs or 'unlimited'} job(s) in flight,"
        f" {str(max_bytes_per_hour) + ' bytes' if max_bytes_per_hour else 'unlimited'} per hour",
        f"  estimated cost of the jobs to start ({prices.currency}; {prices.source}):",
    ]
    for t in TIERS:
        p = prices.tiers[t]
        _first, last = expected_wait(p, s.need_jobs, s.need_bytes, max_jobs, max_bytes_per_hour)
        mark = "*" if t == tier else " "
        wait_text = (f"first files after {fmt_hours(p.hours_min)}-{fmt_hours(p.hours_max)},"
                     f" all within ~{fmt_hours(last)}") if s.need_jobs else "nothing to wait for"
        cost = prices.cost(t, s.need_jobs, s.need_bytes)
        lines.append(f"  {mark} {t:<9} {cost:12.4f} {prices.currency}   {wait_text}")
    return lines


# --------------------------------------------------------------------------- run


@dataclass
class Outcome:
    item: Item
    status: Literal["restored", "expired", "not-ready", "failed"]
    error: GlacierFSError | None = None
    desc: dict[str, Any] | None = None


@dataclass
class RestoreResult:
    restored: int = 0
    already: int = 0
    conflicts: int = 0
    started: int = 0
    reused: int = 0
    bytes: int = 0
    remaining: int = 0
    errors: list[tuple[str, GlacierFSError]] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"restore: {self.restored} restored, {self.already} already here, {self.conflicts} in the way,"
                f" {len(self.errors)} failed; {self.bytes} bytes; jobs: {self.started} started,"
                f" {self.reused} reused")
        if self.remaining:
            text += f"; {self.remaining} not ready yet"
        return text


def _finalize(item: Item, mode: int) -> None:
    """Give the verified staging file its mtime and mode, then move it into place."""
    staging = item.staging
    os.utime(staging, (item.archive.mtime, item.archive.mtime))
    os.chmod(staging, mode)
    os.replace(staging, item.target)
    with contextlib.suppress(OSError):
        fd = os.open(item.target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _download(item: Item, job_id: str, runner: Runner, mode: int) -> Outcome:
    """Worker thread: refresh the job, fetch it verified into the staging file, move it in."""
    try:
        desc = runner.wait_job(job_id, "retrieval", wait=False)
        if desc.get("StatusCode") != SUCCEEDED:
            return Outcome(item, "not-ready", desc=desc)
        try:
            item.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {item.target.parent}: {exc.strerror or exc}") from None
        runner.fetch(desc, item.staging)
        _finalize(item, mode)
        return Outcome(item, "restored")
    except NotFoundError:  # the job (or its output) expired: start it again
        return Outcome(item, "expired")
    except GlacierFSError as exc:
        return Outcome(item, "failed", exc)
    except OSError as exc:
        return Outcome(item, "failed", GlacierFSError(f"writing {item.target}: {exc.strerror or exc}"))


def _drop_partial(staging: Path) -> None:
    """The download's sidecar left when a run died between its final rename and the cleanup."""
    from glacierfs.jobs import partial_paths

    for p in partial_paths(staging):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _finish_staged(item: Item, mode: int) -> bool:
    """A complete staging file of an interrupted run: moved in if its tree hash is the archive's."""
    from glacierfs.treehash import tree_hash_file

    try:
        if tree_hash_file(item.staging) == item.archive.tree_hash:
            _drop_partial(item.staging)
            _finalize(item, mode)
            return True
        os.unlink(item.staging)
    except OSError as exc:
        log.warning("cannot use the staged %s (%s); downloading it again", item.staging, exc.strerror or exc)
    return False


class Restorer:
    """Runs a :class:`RestorePlan` (see the module docstring)."""

    def __init__(
        self,
        plan: RestorePlan,
        *,
        vault: str,
        glacier: Lister,
        runner_factory: Callable[[], Runner],
        tier: str = "Standard",
        max_jobs: int | None = DEFAULT_MAX_JOBS,
        max_bytes_per_hour: int | None = None,
        parallel: int = 4,
        poll: tuple[float, float] = (30.0, 300.0),
        progress: Progress = NULL_PROGRESS,
        emit: Callable[[str], None] = print,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.vault = vault
        self.glacier = glacier
        self.runner_factory = runner_factory
        self.tier = tier
        self.max_jobs = max_jobs
        self.max_bytes_per_hour = max_bytes_per_hour
        self.parallel = max(1, parallel)
        self.poll = poll
        self.progress = progress
        self.emit = emit
        self.clock = clock
        umask = os.umask(0)
        os.umask(umask)
        self.mode = 0o666 & ~umask
        self._starts: dict[str, int] = {}  # jobs started per archive in this run

    def run(self, wait: bool = True) -> RestoreResult:
        plan = self.plan
        res = RestoreResult(already=len(plan.of("done")), conflicts=len(plan.of("conflict")))
        for item in plan.of("conflict"):
            log.warning("%s is in the way (another file); not overwritten", item.target)
        todo: dict[str, Item] = {}
        for item in plan.of("staged"):
            if _finish_staged(item, self.mode):
                self._restored(item, res)
            else:
                item.state = "todo"
        for item in plan.of("todo"):
            todo[item.archive_id] = item
        jobs = plan.jobs
        res.reused = sum(1 for aid in todo if aid in jobs.best)
        downloading: dict[Future[Outcome], str] = {}
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="restore")
        delay = self.poll[0]

        def ready() -> list[str]:
            busy = set(downloading.values())
            return [aid for aid in todo
                    if aid not in busy and jobs.best.get(aid, {}).get("StatusCode") == SUCCEEDED]

        try:
            first = True
            while todo:
                if not first and not ready():
                    jobs = sweep_jobs(self.glacier, self.vault)  # one ListJobs for every archive
                first = False
                for aid in ready()[: self.parallel - len(downloading)]:
                    job_id = jobs.best[aid]["JobId"]
                    fut = pool.submit(_download, todo[aid], job_id, self.runner_factory(), self.mode)
                    downloading[fut] = aid
                self._start_jobs(todo, jobs, res)
                running = sum(1 for aid in todo if jobs.best.get(aid, {}).get("StatusCode") == IN_PROGRESS)
                self.progress.status(
                    f"restore: jobs {len(todo) - running}/{len(todo)} ready; files {res.restored + res.already}"
                    f"/{len(plan.items)}, {res.bytes} bytes done"
                )
                waiting = ready()
                if not wait and not downloading and not waiting:
                    break
                if waiting and len(downloading) < self.parallel:
                    continue
                timeout = delay if (running or not downloading) else None
                done, _ = wait_futures(downloading, timeout)
                for fut in done:
                    aid = downloading.pop(fut)
                    out = fut.result()
                    if out.status == "restored":
                        todo.pop(aid)
                        self._restored(out.item, res)
                    elif out.status == "failed":
                        todo.pop(aid)
                        assert out.error is not None
                        res.errors.append((out.item.archive.path, out.error))
                    elif out.status == "expired":
                        jobs.best.pop(aid, None)
                    elif out.desc is not None:
                        jobs.best[aid] = out.desc
                delay = self.poll[0] if done else min(self.poll[1], delay * 1.5)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        res.remaining = len(todo)
        return res

    def _restored(self, item: Item, res: RestoreResult) -> None:
        res.restored += 1
        res.bytes += item.archive.size
        self.emit(f"restored {item.archive.path}")

    def _start_jobs(self, todo: dict[str, Item], jobs: JobSweep, res: RestoreResult) -> None:
        """Start jobs for archives without one, within ``max_jobs`` in flight and the hourly byte limit."""
        in_flight = sum(1 for aid in todo if aid in jobs.best)
        window = jobs.bytes_since(self.clock() - 3600) if self.max_bytes_per_hour else 0
        for aid, item in list(todo.items()):
            if aid in jobs.best:
                continue
            if self._starts.get(aid, 0) >= MAX_STARTS:  # its jobs failed or vanished: give up on it
                todo.pop(aid)
                res.errors.append((item.archive.path, ServiceError(
                    f"{MAX_STARTS} retrieval jobs for archive {aid} failed or expired before the download")))
                continue
            if self.max_jobs is not None and in_flight >= self.max_jobs:
                return
            size = item.archive.size
            if self.max_bytes_per_hour and window and window + size > self.max_bytes_per_hour:
                return
            runner = self.runner_factory()
            # start_retrieval (no per-archive ListJobs: this round's sweep found no job) if available
            start = getattr(runner, "start_retrieval", None) or runner.retrieval
            desc = start(aid, self.tier)
            jobs.best[aid] = desc
            self._starts[aid] = self._starts.get(aid, 0) + 1
            created = _epoch(desc.get("CreationDate")) or self.clock()
            jobs.recent.append((created, size))
            window += size
            in_flight += 1
            res.started += 1
            log.info("started a %s retrieval job for %s", self.tier, item.archive.path)


def wait_futures(futures: dict[Future[Outcome], str], timeout: float | None) -> tuple[set[Future[Outcome]], Any]:
    if not futures:
        if timeout:
            time.sleep(timeout)
        return set(), set()
    return wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)


def not_ready_error(res: RestoreResult) -> NotReadyError:
    return NotReadyError(
        f"{res.remaining} archive(s) are not retrieved yet (jobs running or waiting for the limits); "
        "run the same restore again later to continue"
    )
