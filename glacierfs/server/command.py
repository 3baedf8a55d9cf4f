"""``glacierfs serve``: run the local Glacier-compatible server until SIGINT/SIGTERM.

Threading contract: the main thread owns the signals. Their handler only sets a flag (the
wakeup fd makes the main loop's ``select`` return at once); the main loop then calls
``ServerHandle.shutdown()``. The handler takes no lock, so any number of signals, however
close together, end the server within a few seconds.

The first line on stdout (flushed) is ``listening on http://HOST:PORT``; the access log
goes to stderr (INFO with ``--verbose``). Bad input - a bad port, an unusable data dir, a
bad fault spec, a data dir held by another server - is one line on stderr and exit
status 2 (usage) or 1, never a traceback.

This module imports nothing of the client side: errors are printed here, not raised as
``GlacierFSError``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import select
import signal
import sqlite3
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "~/.local/share/glacierfs/server"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: must be 0-65535")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: not a number of seconds") from None
    if value < 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be a finite number >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: must be > 0")
    return value


def _latency(text: str) -> float:
    value = _seconds(text)
    if value > 60:
        raise argparse.ArgumentTypeError(f"invalid latency {text!r}: at most 60 seconds")
    return value


RATE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _rate(text: str) -> float:
    """``10M`` / ``10MiB`` / ``10MB/s`` -> 10 MiB per second (units are binary, like --part-size)."""
    m = RATE.match(text)
    value = float(m.group(1)) * UNITS[m.group(2).lower()] if m else 0.0
    if not m or value < 1:
        raise argparse.ArgumentTypeError(f"invalid rate {text!r}: expected bytes per second like 500K, 10M, 1G")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the local Glacier-compatible server",
        description="Run a local server speaking the Amazon Glacier vault REST API (for tests and --local).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port (default 0: pick a free one)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"state directory (default {DEFAULT_DATA_DIR})")
    p.add_argument("--job-delay", type=_seconds, default=5.0, metavar="SECONDS",
                   help="jobs complete this long after initiation (default 5; 0 = at once)")
    p.add_argument("--inventory-interval", type=_positive_seconds, default=60.0, metavar="SECONDS",
                   help="take inventory snapshots of changed vaults this often (default 60)")
    p.add_argument("--faults", metavar="SPEC", default=None,
                   help="inject faults as KIND=FRACTION,...; kinds: 500, throttle (400 ThrottlingException),"
                        " 408, reset (connection reset), corrupt (GetJobOutput bytes flipped, hash kept),"
                        " closed (400 NoLongerSupportedException), capacity (503"
                        " InsufficientCapacityException on Expedited archive retrievals), policy (400"
                        " PolicyEnforcedException on Standard archive retrievals), slow (response held"
                        " back --slow-seconds); e.g. 500=0.05,throttle=0.05,reset=0.02,slow=0.1")
    p.add_argument("--faults-ops", metavar="OPS", default=None,
                   help="comma-separated operation names the faults apply to (default all)")
    p.add_argument("--slow-seconds", type=_seconds, default=2.0, metavar="SECONDS",
                   help="how long a 'slow' fault holds a response back (default 2)")
    p.add_argument("--hold", metavar="OPS", default=None,
                   help="hold every request of these operations (comma-separated) before it takes effect,"
                        " until POST /_admin/release (needs --admin) or --hold-seconds (default none held)")
    p.add_argument("--hold-seconds", type=_positive_seconds, default=300.0, metavar="SECONDS",
                   help="a held request goes on by itself after this long (default 300)")
    p.add_argument("--seed", type=int, default=None, help="seed for ids and faults (reproducible runs)")
    p.add_argument("--omit-nulls", action="store_true", help="leave null fields out of responses")
    p.add_argument("--strict-range-checksum", action="store_true",
                   help="send GetJobOutput hashes only for tree-hash aligned ranges (the dev guide's rule;"
                        " default: the API reference's rule, any range on MiB boundaries)")
    p.add_argument("--loose-checksums", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--admin", action="store_true",
                   help="enable the /_admin/ test hooks (clock, job completion, snapshots, populate);"
                        " signed like any request under --verify-sigv4")
    p.add_argument("--latency", type=_latency, default=0.0, metavar="SECONDS",
                   help="hold every response back this long (models a WAN round trip; default 0)")
    p.add_argument("--bandwidth", type=_rate, default=None, metavar="RATE",
                   help="cap each connection's transfer at RATE bytes/s (e.g. 10M = 10 MiB/s; default none)")
    p.add_argument("--short-pages", action="store_true",
                   help="List* pages that have more after them hold one item less than the limit")
    p.add_argument("--no-content-sha256-check", action="store_true",
                   help="do not check x-amz-content-sha256 against upload bodies")
    p.add_argument("--body-timeout", type=_positive_seconds, default=60.0, metavar="SECONDS",
                   help="a request body silent this long fails with 408 (default 60)")
    p.add_argument("--verify-sigv4", action="store_true", help="check SigV4 signatures (needs the keys below)")
    p.add_argument("--access-key", default=None, help="access key id accepted with --verify-sigv4")
    p.add_argument("--secret-key", default=None, help="secret key accepted with --verify-sigv4")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    p.set_defaults(func=run)


def _fail(message: str, code: int = 1) -> int:
    print(f"glacierfs serve: error: {message}", file=sys.stderr, flush=True)
    return code


def run(args: argparse.Namespace) -> int:
    from . import DataDirInUse, start_server
    from .faults import FaultSpecError, parse_ops, parse_spec

    if args.verbose or getattr(args, "debug", False):
        logging.getLogger("glacierfs.server").setLevel(logging.INFO)
        root = logging.getLogger()
        if root.level > logging.INFO:
            for h in root.handlers:
                h.setLevel(logging.NOTSET)
            root.setLevel(logging.INFO)
            for noisy in ("botocore", "boto3", "urllib3"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        faults = parse_spec(args.faults)
    except FaultSpecError as exc:
        return _fail(f"--faults: {exc}", 2)
    try:
        ops = parse_ops(args.faults_ops)
    except FaultSpecError as exc:
        return _fail(f"--faults-ops: {exc}", 2)
    try:
        hold = parse_ops(args.hold)
    except FaultSpecError as exc:
        return _fail(f"--hold: {exc}", 2)
    keys = None
    if args.verify_sigv4:
        access = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            return _fail("--verify-sigv4 needs --access-key and --secret-key (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)", 2)
        keys = (access, secret)
    # Signals only set a flag; the wakeup fd makes the main loop's select return at once. The handler
    # takes no lock (Event.set() in a handler deadlocks when the signal lands while the main thread
    # holds that Event's lock), so any number of SIGTERM/SIGINT, however close, ends the server.
    stopping = False
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    data_dir = Path(os.path.expanduser(args.data_dir))
    if data_dir.exists() and not data_dir.is_dir():
        return _fail(f"--data-dir {data_dir}: not a directory", 2)
    try:
        handle = start_server(
            data_dir, host=args.host, port=args.port, job_delay=args.job_delay,
            inventory_interval=args.inventory_interval, faults=faults, faults_ops=ops, seed=args.seed,
            verify_content_sha256=not args.no_content_sha256_check, omit_nulls=args.omit_nulls,
            strict_range_checksum=args.strict_range_checksum, short_pages=args.short_pages,
            body_timeout=args.body_timeout, slow_seconds=args.slow_seconds, sigv4_keys=keys, admin=args.admin,
            hold=hold, hold_seconds=args.hold_seconds,
            latency=args.latency, bandwidth=args.bandwidth,
        )
    except DataDirInUse as exc:
        return _fail(str(exc))
    except sqlite3.Error as exc:
        return _fail(f"--data-dir {data_dir}: cannot open the metadata database: {exc}")
    except PermissionError as exc:
        return _fail(f"--data-dir {data_dir}: {exc.strerror or exc}", 2)
    except OSError as exc:
        where = f"{args.host}:{args.port}" if exc.filename is None else str(exc.filename)
        return _fail(f"cannot start on {where}: {exc.strerror or exc}")

    print(f"listening on {handle.url}", flush=True)
    try:
        while not stopping and not handle.stopped:
            with contextlib.suppress(InterruptedError):
                select.select([wake_r], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 64)
    finally:
        handle.shutdown()
        os.close(wake_r)
        os.close(wake_w)
    return 0
