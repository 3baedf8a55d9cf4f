"""The local Glacier-compatible server (``glacierfs serve``).

Threading contract: :class:`ServerHandle` starts two daemon threads, ``glacierfs-serve``
(``serve_forever``, which spawns one thread per connection, see :mod:`.httpd`) and
``glacierfs-ticker`` (``store.periodic()`` every ``TICK`` s, until ``_stop`` is set).
``_stop`` (an Event) is set by ``shutdown()`` only; poll it lock-free with ``stopped``
(never call ``Event`` methods from a signal handler). ``shutdown()`` is called by one thread
(the owner). Lock order of the store: see :mod:`.store`.

It shares nothing with the client side of glacierfs but :mod:`glacierfs.treehash`.

Modules, one concern each: :mod:`.store` (state rules, SQLite metadata), :mod:`.bodies`
(byte files), :mod:`.inventory` (inventory output rendering), :mod:`.httpd` (server and
router), :mod:`.request` (request plumbing), :mod:`.wire` (wire format and parsers),
:mod:`.ops_vaults`, :mod:`.ops_archives`, :mod:`.ops_jobs` (operations), :mod:`.admin`
(``--admin`` hooks), :mod:`.pacing` (``--bandwidth``), :mod:`.ids`, :mod:`.clock`,
:mod:`.faults`, :mod:`.hold` (``--hold``), :mod:`.sigv4`, :mod:`.command` (CLI).

:func:`start_server` runs it in-process: it takes an exclusive ``flock`` on
``DATA_DIR/.lock`` (a second server on the same dir gets :class:`DataDirInUse`), writes
``DATA_DIR/server.json`` (``{"url", "pid"}``) while it runs, and runs a ticker thread that
completes due jobs, applies retention and takes the periodic inventory snapshots.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `glacierfs upload` (via `serve`'s parser) needs none of it
    from .httpd import GlacierHTTPServer
    from .store import Store

log = logging.getLogger(__name__)

__all__ = ["DataDirInUse", "ServerHandle", "start_server"]

TICK = 0.5
MAX_LATENCY = 60.0


class DataDirInUse(Exception):
    """Another server holds the data dir's lock."""


class ServerHandle:
    """A running server: ``url``, ``store``, ``shutdown()`` (idempotent); usable as a context manager."""

    def __init__(self, httpd: GlacierHTTPServer, store: Store, data_dir: Path, lock_fd: int) -> None:
        self.httpd = httpd
        self.store = store
        self.data_dir = data_dir
        self.url = httpd.url
        self._lock_fd = lock_fd
        self._stop = threading.Event()
        self._done = False
        self._serve = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="glacierfs-serve", daemon=True)
        self._ticker = threading.Thread(target=self._tick, name="glacierfs-ticker", daemon=True)

    def _start(self) -> None:
        self._serve.start()
        self._ticker.start()

    def _tick(self) -> None:
        from .store import is_disk_full

        full = False
        while not self._stop.wait(TICK):
            try:
                self.store.periodic()
                full = False
            except Exception as exc:
                if not is_disk_full(exc):
                    log.exception("periodic work failed")
                elif not full:  # one line when the data dir fills up, not one per tick
                    full = True
                    log.warning("periodic work postponed: the data dir is full: %s", exc)

    @property
    def stopped(self) -> bool:
        """Whether shutdown has begun (lock-free: safe to poll from anywhere)."""
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until shutdown (returns True) or ``timeout``."""
        return self._stop.wait(timeout)

    def shutdown(self) -> None:
        if self._done:
            return
        self._done = True
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.options.holds.release(drop=True)  # held requests end without effect
        self.httpd.close_connections()
        self.httpd.server_close()
        self._ticker.join(timeout=10)
        self.store.close()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "server.json").unlink()
        os.close(self._lock_fd)  # releases the flock
        log.info("server on %s stopped", self.url)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        other = ""
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((data_dir / "server.json").read_text())
            other = f" (pid {info.get('pid')}, {info.get('url')})"
        raise DataDirInUse(f"data dir {data_dir} is in use by another glacierfs server{other}") from None
    return fd


def start_server(
    data_dir: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    job_delay: float = 5.0,
    inventory_interval: float = 60.0,
    faults: str | dict[str, float] | None = None,
    faults_ops: set[str] | None = None,
    seed: int | None = None,
    verify_content_sha256: bool = True,
    omit_nulls: bool = False,
    loose_checksums: bool = False,
    strict_range_checksum: bool = False,
    short_pages: bool = False,
    body_timeout: float = 60.0,
    slow_seconds: float = 2.0,
    sigv4_keys: tuple[str, str] | None = None,
    account: str = "012345678901",
    region: str = "us-east-1",
    admin: bool = False,
    latency: float = 0.0,
    bandwidth: float | None = None,
    hold: set[str] | None = None,
    hold_seconds: float = 300.0,
    **unknown: Any,
) -> ServerHandle:
    """Start a server on ``data_dir`` in background threads and return its handle.

    Raises :class:`DataDirInUse`, ``OSError`` (data dir or port unusable), ``sqlite3.Error``
    (corrupt metadata) or ``ValueError`` (bad fault spec). ``job_delay`` 0 completes jobs
    inside InitiateJob; ``inventory_interval`` (default 60 s) is the snapshot schedule of
    changed vaults. ``admin`` enables the ``/_admin/`` endpoints (off by default, as
    ``serve --admin``). ``latency`` (seconds) holds every response back; ``bandwidth`` (bytes/s)
    caps each connection's transfer. ``hold`` (operation names) holds their requests before they
take effect until ``/_admin/release`` or ``hold_seconds`` (:mod:`.hold`). ``loose_checksums`` is accepted for compatibility: the
    API reference's MiB rule is now the default, ``strict_range_checksum`` selects the dev
    guide's tree-hash rule. Options mirror ``glacierfs serve``'s (see :mod:`.command`).
    """
    if unknown:
        raise TypeError(f"unknown server options: {', '.join(sorted(unknown))}")
    if not (math.isfinite(latency) and 0 <= latency <= MAX_LATENCY):
        raise ValueError(f"latency must be 0-{MAX_LATENCY:g} seconds, not {latency!r}")
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive number of bytes per second, not {bandwidth!r}")
    root = Path(data_dir).absolute()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    from .faults import FaultPlan, parse_spec
    from .hold import Holds
    from .httpd import GlacierHTTPServer
    from .sigv4 import SigV4Verifier
    from .store import Settings, Store
    from .wire import Options

    fractions = parse_spec(faults) if isinstance(faults, str) or faults is None else dict(faults)
    lock_fd = _lock(root)
    try:
        store = Store(root, Settings(account=account, region=region, job_delay=job_delay,
                                     inventory_interval=inventory_interval), seed=seed)
        options = Options(
            verify_content_sha256=verify_content_sha256, omit_nulls=omit_nulls,
            strict_range_checksum=strict_range_checksum and not loose_checksums, admin=admin,
            latency=latency, bandwidth=bandwidth, holds=Holds(hold, hold_seconds),
            short_pages=short_pages, body_timeout=body_timeout, faults=FaultPlan(fractions, seed, faults_ops, slow_seconds),
            sigv4=SigV4Verifier(*sigv4_keys, region=region) if sigv4_keys else None,
        )
        try:
            httpd = GlacierHTTPServer((host, port), store, options)
        except BaseException:
            store.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise
    handle = ServerHandle(httpd, store, root, lock_fd)
    info = root / "server.json"
    tmp = root / "server.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": handle.url, "pid": os.getpid()}, f)
    os.replace(tmp, info)
    handle._start()
    log.info("serving %s on %s", root, handle.url)
    return handle
