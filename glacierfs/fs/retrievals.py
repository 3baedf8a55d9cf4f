"""Retrievals of the mount: start (single-flight per archive), follow and download retrieval jobs
into the data cache; and the first inventory of a vault never inventoried here.

A retrieval is started only when someone asks (``setfattr -n user.glacier.retrieve``, or an open
with ``--auto-retrieve``). Each job started is logged. Two limits keep a tree walk from starting
hundreds of jobs: ``setfattr`` on a directory (:meth:`Retrievals.start_tree`) starts jobs for
its uncached archives only while fewer than ``tree_max`` (``--retrieve-max-jobs``) retrievals
run in this mount and, with ``tree_max_bytes_per_hour`` (``--retrieve-max-bytes-per-hour``), while
the archives of the directory retrievals started here in the last hour stay within that many bytes
(the rule of ``restore --max-bytes-per-hour``: one archive bigger than the limit is started alone
when the hour's window is empty); ``--auto-retrieve`` (:meth:`Retrievals.auto_start`) starts at most
``auto_max`` (``--auto-retrieve-max``) jobs per hour, beyond that the read gets EAGAIN as for
any uncached file and the log says the cap was hit. At mount start, jobs recorded in the catalog are followed only for
archives whose bytes were never cached here; bytes that were cached and evicted are not fetched
again until someone asks (each download is billed).

Threading contract
------------------
* FUSE threads call :meth:`Retrievals.start`, :meth:`Retrievals.start_tree`,
  :meth:`Retrievals.auto_start` and :meth:`Retrievals.state`.
* ``retrievals`` (one thread) polls due jobs and downloads finished ones into the cache
  through :class:`~glacierfs.jobs.JobRunner` (network, no lock held).
* ``reattach`` (one-shot at start) and ``inventory`` (until the first inventory is imported).

``Retrievals._lock`` guards ``_table``, the fields of every :class:`Retrieval`, the hourly windows
``_auto_started`` and ``_tree_bytes`` and ``_capped``; it is a leaf
lock (nothing else is taken while holding it) and is never held across a network call. A
retrieval being started is in the table as ``starting`` before the job is asked for, so a
second ask for the same archive within this process joins it (the cross-process guard lives
in ``JobRunner.retrieval``). Any exception from one archive is logged and marks that archive
``failed``; the worker goes on with the others.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from glacierfs.errors import GlacierFSError, NotReadyError
from glacierfs.fs.datacache import DataCache

log = logging.getLogger(__name__)


def _estimate(tier: str, count: int, size: int) -> str:
    """``, about $0.01, ready in 5 h-12 h``: the price table of ``glacierfs restore`` (list prices
    or ``$GLACIERFS_PRICES``); '' when nothing started or the table cannot be read."""
    from glacierfs.errors import UsageError
    from glacierfs.tree.pricing import fmt_hours, load_prices

    if not count:
        return ""
    try:
        prices = load_prices()
        p = prices.tiers[tier]
    except (UsageError, KeyError) as exc:
        log.debug("price table: %s", exc)
        return ""
    return (f", about {prices.cost(tier, count, size):.2f} {prices.currency}, ready in "
            f"{fmt_hours(p.hours_min)}-{fmt_hours(p.hours_max)}")


class Runner(Protocol):
    """What the mount needs of :class:`~glacierfs.jobs.JobRunner`."""

    def retrieval(self, archive_id: str, tier: str = ...) -> Any: ...
    def download(self, archive_id: str, out: Any, tier: str = ..., wait: bool = ...) -> Any: ...
    def inventory(self, force: bool = ..., wait: bool = ...) -> Any: ...


@dataclass(eq=False)
class Retrieval:
    archive_id: str
    tier: str
    next_check: float = 0.0
    checks: int = 0
    starting: bool = True
    error: str | None = None


class Retrievals:
    """Retrieval jobs of one vault, downloaded into ``cache`` by one background thread."""

    def __init__(
        self,
        runner: Runner,
        catalog: Any,
        vault: str,
        cache: DataCache,
        *,
        on_cached: Callable[[str], None],
        on_inventory: Callable[[], None],
        poll_interval: float = 2.0,
        max_poll_interval: float = 300.0,
        auto_max: int = 10,
        tree_max: int = 100,
        tree_max_bytes_per_hour: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.auto_max = max(0, auto_max)
        self.tree_max = max(1, tree_max)
        self.tree_max_bytes_per_hour = tree_max_bytes_per_hour or None  # None: unlimited
        self.clock = clock  # the hourly windows' time (a test moves it)
        self._tree_bytes: deque[tuple[float, int]] = deque()  # (time, size) of directory retrievals this hour
        self._auto_started: deque[float] = deque()  # monotonic times of auto-retrievals this hour
        self._capped = [0, -1e9]  # reads refused by the auto cap since the last log line, its time
        self.catalog = catalog
        self.vault = vault
        self.cache = cache
        self._on_cached = on_cached
        self._on_inventory = on_inventory
        self._poll_interval = poll_interval
        self._max_poll_interval = max_poll_interval
        self._lock = threading.Lock()
        self._table: dict[str, Retrieval] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start_threads(self) -> None:
        for target, name in ((self._loop, "retrievals"), (self._reattach, "reattach")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if getattr(self.catalog, "inventory_date", "") is None:
            t = threading.Thread(target=self._first_inventory, name="inventory", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, deadline: float) -> None:
        self._stopping.set()
        self._wake.set()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ asks

    def start(self, archive_id: str, tier: str) -> bool:
        """Start (or join) the retrieval of ``archive_id``; False when one is already running here."""
        with self._lock:
            r = self._table.get(archive_id)
            if r is not None and r.error is None:
                return False
            r = self._table[archive_id] = Retrieval(archive_id, tier, time.monotonic())
        try:
            self.runner.retrieval(archive_id, tier)
        except BaseException:
            with self._lock:
                if self._table.get(archive_id) is r:
                    del self._table[archive_id]
            raise
        with self._lock:
            r.starting = False
        self._wake.set()
        return True

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for r in self._table.values() if r.error is None)

    def start_tree(self, prefix: str, tier: str, shown: str) -> int:
        """Retrieve the archives below directory ``prefix`` that are not cached and not being
        retrieved, while fewer than ``tree_max`` retrievals run here and within the hourly byte
        budget; returns the jobs started."""
        room = self.tree_max - self.in_flight()
        limit = self.tree_max_bytes_per_hour
        now = self.clock()
        candidates: list[tuple[str, str, int]] = []
        cached = running = over = over_bytes = 0
        for path, archive_id, size, _mtime, _th in self.catalog.iter_entries(prefix):
            if self.cache.has(archive_id):
                cached += 1
            elif self.running(archive_id):
                running += 1
            else:
                candidates.append((path, archive_id, int(size)))
        todo: list[tuple[str, str, int]] = []
        with self._lock:  # the hour's bytes are reserved before the jobs start: two setfattr share one budget
            while self._tree_bytes and self._tree_bytes[0][0] <= now - 3600:
                self._tree_bytes.popleft()
            window = sum(size for _t, size in self._tree_bytes)
            for path, archive_id, size in candidates:
                if len(todo) >= room:
                    over += 1
                elif limit is not None and (over_bytes or (window and window + size > limit)):
                    over_bytes += 1
                else:
                    todo.append((path, archive_id, size))
                    window += size
                    self._tree_bytes.append((now, size))
        started = failed = started_bytes = 0
        for path, archive_id, size in todo:
            try:
                new = self.start(archive_id, tier)
            except (GlacierFSError, OSError) as exc:
                failed += 1
                new = False
                log.error("/%s: retrieval (%s) not started: %s", path, tier, exc)
            else:
                if new:
                    started += 1
                    started_bytes += size
                    log.info("retrieval (%s) started for /%s (%s)", tier, path, archive_id)
                    continue
                running += 1
            with self._lock:  # not started by this call: its bytes are not spent
                try:
                    self._tree_bytes.remove((now, size))
                except ValueError:
                    pass
        log.info("%s: %d retrieval job(s) started (%d bytes%s), %d already running, %d cached, %d failed to start",
                 shown, started, started_bytes, _estimate(tier, started, started_bytes), running, cached, failed)
        if over:
            log.warning("%s: %d archive(s) not retrieved yet: at most %d retrievals run at a time "
                        "(--retrieve-max-jobs); set the attribute again once some are cached", shown, over,
                        self.tree_max)
        if over_bytes:
            log.warning("%s: %d archive(s) not retrieved yet: directory retrievals of at most %d bytes start per "
                        "hour (--retrieve-max-bytes-per-hour); set the attribute again later", shown, over_bytes,
                        limit)
        return started

    def auto_start(self, archive_id: str, tier: str, shown: str) -> bool:
        """``--auto-retrieve``: start a job for an uncached archive being read, within the hourly cap."""
        now = time.monotonic()
        with self._lock:
            r = self._table.get(archive_id)
            if r is not None and r.error is None:
                return False  # running already: nothing to start, nothing counted
            while self._auto_started and self._auto_started[0] <= now - 3600:
                self._auto_started.popleft()
            allowed = len(self._auto_started) < self.auto_max
            if allowed:
                self._auto_started.append(now)
                count = len(self._auto_started)
            else:
                self._capped[0] += 1
                refused, tell = self._capped[0], now - self._capped[1] >= 60
                if tell:
                    self._capped[:] = [0, now]
        if not allowed:
            if tell:
                log.warning("%s is not cached: not retrieved, the --auto-retrieve cap of %d job(s) per hour is "
                            "reached (%d read(s) refused); retrieve it with: setfattr -n user.glacier.retrieve "
                            "-v %s %s", shown, self.auto_max, refused, tier, shlex.quote(shown))
            return False
        try:
            new = self.start(archive_id, tier)
        except Exception as exc:
            new = False
            log.warning("%s: auto-retrieve failed: %s", shown, getattr(exc, "strerror", None) or exc)
        if new:
            log.warning("%s is not cached: started a %s retrieval (--auto-retrieve, job %d of at most %d this "
                        "hour)", shown, tier, count, self.auto_max)
            return True
        with self._lock:  # joined one started meanwhile, or failed: the hour's budget is not spent
            try:
                self._auto_started.remove(now)
            except ValueError:
                pass
        return False

    def state(self, archive_id: str) -> str | None:
        """``retrieving`` | ``failed`` | None (no retrieval known here)."""
        with self._lock:
            r = self._table.get(archive_id)
            if r is None:
                return None
            return "failed" if r.error else "retrieving"

    def running(self, archive_id: str) -> bool:
        return self.state(archive_id) == "retrieving"

    def forget(self, archive_id: str) -> None:
        with self._lock:
            self._table.pop(archive_id, None)

    # ------------------------------------------------------------------ threads

    def _reattach(self) -> None:
        """Follow retrieval jobs started before (a previous mount, ``glacierfs download``) for archives
        never cached here: evicted bytes wait until someone asks again."""
        try:
            jobs = self.catalog.list_jobs(kind="retrieval")
        except Exception as exc:
            log.debug("cannot list jobs: %s", exc)
            return
        followed = evicted = 0
        for job in jobs or []:
            archive_id, status = job.archive_id, job.status
            if not isinstance(archive_id, str) or status == "Failed" or self.cache.has(archive_id):
                continue
            if self.cache.was_evicted(archive_id):
                evicted += 1
                continue
            try:
                if self.catalog.get(archive_id) is None:
                    continue
            except Exception:
                continue
            tier = job.tier or "Standard"
            with self._lock:
                self._table.setdefault(archive_id, Retrieval(archive_id, str(tier), time.monotonic(), starting=False))
            followed += 1
        log.info("reattached %d retrieval job(s)%s", followed,
                 f"; {evicted} of evicted archive(s) not downloaded again until asked" if evicted else "")
        self._wake.set()

    def _first_inventory(self) -> None:
        """A vault never inventoried here: join or start an inventory job and import it when done
        (hours on AWS); until then the mount shows what was uploaded from this machine."""
        delay = self._poll_interval
        told = False
        while not self._stopping.wait(0 if not told else delay):
            try:
                stats = self.runner.inventory(wait=False)
            except NotReadyError as exc:  # Glacier has no inventory for this vault yet
                if not told:
                    log.info("%s", exc)
            except Exception as exc:
                log.warning("inventory of %s: %s (will retry)", self.vault, exc)
            else:
                if stats is not None or self.catalog.inventory_date is not None:
                    self._on_inventory()
                    log.info("imported the inventory of %s", self.vault)
                    return
                if not told:
                    log.info("inventory job for %s running; its archives appear when it completes", self.vault)
            told = True
            delay = min(self._max_poll_interval, delay * 1.5)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                due = [r for r in self._table.values() if r.error is None and not r.starting and r.next_check <= now]
            for r in due:
                if self._stopping.is_set():
                    return
                try:
                    self._check(r)
                except Exception as exc:  # one archive's trouble never stops the others
                    log.error("retrieval of %s failed: %s: %s", r.archive_id, type(exc).__name__, exc)
                    with self._lock:
                        r.error = f"{type(exc).__name__}: {exc}"

    def _check(self, r: Retrieval) -> None:
        out = self.cache.path_for(r.archive_id)
        try:
            self.runner.download(r.archive_id, out, tier=r.tier, wait=False)
        except NotReadyError:
            with self._lock:
                r.checks += 1
                r.next_check = time.monotonic() + min(
                    self._max_poll_interval, self._poll_interval * 1.5 ** min(r.checks, 30))
            return
        except GlacierFSError as exc:
            with self._lock:
                r.error = str(exc)
            log.error("retrieval of %s failed: %s", r.archive_id, exc)
            return
        except OSError as exc:
            with self._lock:
                r.checks += 1
                r.next_check = time.monotonic() + self._max_poll_interval
            log.warning("retrieval of %s: %s (will retry)", r.archive_id, exc)
            return
        self.cache.add(r.archive_id)
        with self._lock:
            self._table.pop(r.archive_id, None)
        self._on_cached(r.archive_id)
        log.info("retrieved archive %s into the cache", r.archive_id)
