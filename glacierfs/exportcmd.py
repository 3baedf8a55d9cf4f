"""``glacierfs export``: move a vault's archives into S3 objects (see README, "Export to S3").

This module is the command-line adapter only: it parses the options, opens the context
(Glacier client, catalog, job runner), makes sure the catalog has an inventory, computes the
plan and either prints it (``--dry-run``) or hands the selection to
:class:`glacierfs.export.run.ExportRun`. Output: one line per archive on stdout,
``<status>  <archive id>  s3://BUCKET/KEY`` (status ``exported``, ``present`` or ``deleted``);
failures are warnings on stderr and the exit status is non-zero when any archive failed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from glacierfs.errors import GlacierFSError, NotReadyError, UsageError

log = logging.getLogger(__name__)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _state_dir(catalog: Any) -> Path:
    """``<vault dir>/export``: next to the vault's catalog directory."""
    return Path(catalog.directory).parent / "export"


def cmd_export(args: argparse.Namespace) -> int:
    from glacierfs.context import open_context
    from glacierfs.export.claims import claim_owner
    from glacierfs.export.manifest import Manifest, NoManifest
    from glacierfs.export.plan import (
        MIN_PART,
        Plan,
        Prices,
        Selection,
        Shard,
        dry_run_lines,
        estimate,
        item_for,
        normalize_patterns,
        select,
    )
    from glacierfs.export.s3 import Destination, S3Settings, make_s3
    from glacierfs.names import check_vault_name
    from glacierfs.sizes import parse_size

    vault = check_vault_name(args.vault)
    dest = Destination.parse(args.destination)
    shard = Shard.parse(args.shard)
    selection = Selection(normalize_patterns(args.select), shard)
    prices = Prices().with_overrides(args.price)
    if args.max_jobs < 1:
        raise UsageError("--max-jobs must be at least 1")
    if args.concurrency < 1 or args.parts_in_flight < 1:
        raise UsageError("--concurrency and --parts-in-flight must be at least 1")
    max_bph = parse_size(args.max_bytes_per_hour) if args.max_bytes_per_hour else None
    min_part = parse_size(args.part_size) if args.part_size else MIN_PART
    if min_part < 8 << 20 or min_part & (min_part - 1):
        raise UsageError("--part-size must be a power of two of at least 8MiB")
    args.take_over_seconds = _take_over(args.take_over_claims_older_than)
    claim_owner(args.claim_owner, args.shard, "")  # a bad NAME is refused before anything starts

    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        runner = ctx.runner(vault)
        if catalog.inventory_date is None:
            ctx.progress.status(f"the catalog of {vault} has no inventory yet: fetching one")
            runner.inventory(wait=True)
        plan = Plan(args.tier, args.storage_class, dest.prefix, min_part=min_part, now=time.time())
        manifest: Manifest | NoManifest = Manifest(Path(args.manifest)) if args.manifest else NoManifest()
        try:
            if args.dry_run:
                if args.manifest or not hasattr(catalog, "iter_summary"):
                    for archive in select(catalog.iter_archives(), selection):
                        plan.add(archive.size, archive.creation_date)
                        if args.manifest:
                            manifest.write(item_for(archive, dest.prefix), "planned")
                else:
                    plan.add_all(catalog.iter_summary(paths=bool(selection.patterns)), selection)
                est = estimate(plan, prices, args.max_jobs, max_bph)
                for line in dry_run_lines(plan, est, delete_source=args.delete_source, dest=str(dest), shard=shard):
                    _out(line)
                return 0
            if hasattr(catalog, "iter_summary"):
                plan.add_all(catalog.iter_summary(paths=bool(selection.patterns)), selection)
            else:
                for archive in select(catalog.iter_archives(), selection):
                    plan.add(archive.size, archive.creation_date)
            s3 = make_s3(S3Settings(args.s3_endpoint_url, args.s3_region, args.s3_profile))
            s3.check_bucket(dest.bucket)
            return _run(args, ctx, vault, catalog, runner, s3, dest, selection, plan, manifest, max_bph, min_part)
        finally:
            manifest.close()


def _run(args: argparse.Namespace, ctx: Any, vault: str, catalog: Any, runner: Any, s3: Any, dest: Any,
         selection: Any, plan: Any, manifest: Any, max_bph: int | None, min_part: int) -> int:
    from glacierfs.export.claims import Claims, claim_owner
    from glacierfs.export.plan import item_for, select
    from glacierfs.export.run import ExportRun, Options
    from glacierfs.export.state import ExportState
    from glacierfs.export.stream import ArchiveStreamer

    _mmap_large_buffers()
    state_dir = _state_dir(catalog)
    state = ExportState.open(state_dir, f"{args.s3_endpoint_url or 'aws'}|{dest.bucket}|{dest.prefix}")
    try:
        state.claim(f"shard {selection.shard}" if selection.shard else "all")
    except BaseException:
        state.close()
        raise
    spool = state_dir / "spool"
    spool.mkdir(mode=0o700, exist_ok=True)
    try:
        slots = threading.BoundedSemaphore(args.parts_in_flight)
        owner, note = claim_owner(args.claim_owner, args.shard, state.owner())
        if note:
            log.warning("%s", note)
        log.info("claims of this run: owner %s", owner)
        claims = Claims(s3, dest.bucket, dest.prefix, owner, take_over_after=args.take_over_seconds)
        streamer = ArchiveStreamer(
            ctx.glacier, vault, s3, dest.bucket, state, storage_class=args.storage_class, slots=slots,
            parts_in_flight=args.parts_in_flight, min_part=min_part, spool_dir=spool, claims=claims,
        )
        run = ExportRun(
            glacier=ctx.glacier, jobs=runner, catalog=catalog, vault=vault, streamer=streamer, state=state,
            options=Options(tier=args.tier, max_jobs=args.max_jobs, max_bytes_per_hour=max_bph,
                            delete_source=args.delete_source, concurrency=args.concurrency),
            progress=ctx.progress, manifest=manifest, out=_out, poll=runner.poll.delays, claims=claims,
        )
        items = (item_for(a, dest.prefix) for a in select(catalog.iter_archives(), selection))
        summary = run.run(items, plan.archives, plan.bytes)
    finally:
        state.close()
    if not args.quiet:
        print(
            f"glacierfs: export: {summary.exported} exported, {summary.present} already present, "
            f"{summary.deleted} source archive(s) deleted, {summary.failed} failed"
            + (f", {summary.busy} claimed by another exporter" if summary.busy else "")
            + (f", {summary.taken_over} claim(s) taken over" if summary.taken_over else ""),
            file=sys.stderr,
        )
    if summary.failed:
        raise GlacierFSError(
            f"{summary.failed} archive(s) failed, first: {summary.first_error}; re-run the command to retry them"
        )
    if summary.busy:
        raise NotReadyError(
            f"{summary.busy} archive(s) are being exported by another exporter (first claim: {summary.first_busy}); "
            "re-run later to check them; claims whose exporter will not come back: "
            "--take-over-claims-older-than DURATION"
        )
    return 0


def _take_over(text: str | None) -> float | None:
    """``--take-over-claims-older-than`` in seconds; at least MIN_TAKE_OVER (live claims are renewed well within)."""
    from glacierfs.export.claims import CLAIM_RENEW, MIN_TAKE_OVER
    from glacierfs.timeutil import parse_duration

    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds < MIN_TAKE_OVER:
        raise UsageError(
            f"--take-over-claims-older-than {text}: must be at least {_span(MIN_TAKE_OVER)} (a live "
            f"exporter renews its claims every {_span(CLAIM_RENEW)})"
        )
    return seconds


def _span(seconds: float) -> str:
    """``1h``, ``15min``, ``1.5s``: as --take-over-claims-older-than takes it."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}min"
    return f"{seconds:g}s"


def _mmap_large_buffers() -> None:
    """Have glibc mmap every buffer of 256 KiB or more (so free() returns it to the OS).

    The run reads and sends 1 MiB chunks from a dozen threads; with glibc's sliding mmap
    threshold those land in per-thread arenas that keep them after free. A fixed threshold
    keeps RSS near the part buffers' bound, and at most two arenas suffice for threads that
    mostly wait on sockets. Measured for one 1 GiB archive (tests/test_export.py, on a loaded
    machine): 97 MiB with neither, 85 MiB with the threshold, 83 MiB with both. (Readings of
    200+ MiB in earlier parallel test runs were the pytest worker's own size, counted in the
    child's ``ru_maxrss`` by exec: tests/helpers/peakrss.py.) No-op where there is no glibc.
    """
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 << 10)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    from glacierfs.export.plan import TIERS
    from glacierfs.export.s3 import STORAGE_CLASSES

    p = sub.add_parser(
        "export",
        parents=[copy.deepcopy(common)],
        help="copy a vault's archives into S3 objects (streamed, verified, resumable)",
        description=(
            "Copy every archive of VAULT (or the --select'ed ones, or one --shard) into s3://BUCKET[/PREFIX]: "
            "one object per archive at PREFIX/<decoded path>, streamed from retrieval jobs into S3 "
            "multipart parts, tree-hash and checksum verified. Re-running continues; objects already in "
            "S3 are skipped. Prints '<status>  <archive id>  s3://BUCKET/KEY' per archive."
        ),
    )
    p.add_argument("-v", "--vault", required=True, help="vault name")
    p.add_argument("destination", metavar="s3://BUCKET[/PREFIX]")
    p.add_argument("--storage-class", choices=STORAGE_CLASSES, default="DEEP_ARCHIVE", type=str.upper,
                   help="S3 storage class of the objects (DEEP_ARCHIVE)")
    p.add_argument("--tier", choices=TIERS, default="Bulk", help="retrieval tier of the jobs (Bulk)")
    p.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (an S3-compatible server)")
    p.add_argument("--s3-region", metavar="R", help="S3 region (default: from the AWS config, else us-east-1)")
    p.add_argument("--s3-profile", metavar="P", help="AWS profile for S3 (default: the standard chain)")
    p.add_argument("--select", action="append", metavar="PATH|GLOB",
                   help="export only PATH (and what is below it) or the paths matching GLOB; repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan: archives, bytes, costs and expected duration; change nothing")
    p.add_argument("--max-jobs", type=int, default=100, metavar="N",
                   help="at most N archives hold a retrieval job at once (100)")
    p.add_argument("--max-bytes-per-hour", metavar="SIZE", help="start jobs for at most SIZE bytes per hour")
    p.add_argument("--shard", metavar="K/N", help="export only shard K of N (archive id hash); auto/N reads "
                   "K from AWS_BATCH_JOB_ARRAY_INDEX or JOB_COMPLETION_INDEX")
    p.add_argument("--claim-owner", metavar="NAME",
                   help="the owner named in this run's claims; a run with the same owner continues them (default: "
                   "env GLACIERFS_CLAIM_OWNER, else under --shard auto/N aws-batch:$AWS_BATCH_JOB_ID, else this "
                   "cache dir's id)")
    p.add_argument("--take-over-claims-older-than", metavar="DURATION",
                   help="take over claims of other owners not renewed for DURATION (e.g. 6h; at least 1h): "
                   "their exporters will not come back")
    p.add_argument("--manifest", metavar="FILE", help="write a CSV: archive id, tree hash, size, key, status")
    p.add_argument("--delete-source", action="store_true",
                   help="delete each archive once its object is verified in S3")
    p.add_argument("--concurrency", type=int, default=2, metavar="N", help="archives in transfer at once (2)")
    p.add_argument("--parts-in-flight", type=int, default=4, metavar="N",
                   help="part buffers alive at once, all archives together (4): memory/disk bound")
    p.add_argument("--part-size", metavar="SIZE", help="smallest S3 part (power of two, >= 8MiB; 16MiB)")
    p.add_argument("--price", action="append", metavar="NAME=USD", help="override a price of the dry run")
    p.set_defaults(func=cmd_export)
