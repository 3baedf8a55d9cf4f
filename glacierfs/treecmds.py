"""CLI adapter of the whole-tree commands: sync, check, restore, import-journal, wait.

``register(sub, common)`` adds the sub-parsers (cli.py calls it); each command builds a
context with :func:`_open` (the one place that reaches the client-command context: connection,
catalogs, job runners) and hands the work to :mod:`glacierfs.tree`. Output goes to stdout as
plain lines; errors are raised as :class:`~glacierfs.errors.GlacierFSError` for ``cli.main``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glacierfs.errors import GlacierFSError, UsageError

log = logging.getLogger(__name__)

TIERS = ("Expedited", "Standard", "Bulk")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[Any]:
    """The client context (``.glacier``, ``.catalog(vault)``, ``.runner(vault)``, ``.progress``)."""
    from glacierfs.context import open_context

    with open_context(args) as ctx:
        yield ctx


def _vault(args: argparse.Namespace) -> str:
    from glacierfs.client import validate_vault_name

    return validate_vault_name(args.vault)


def _failed(errors: list[tuple[str, GlacierFSError]], what: str) -> None:
    """Print each failure as one line, then raise one error carrying the first failure's exit code."""
    if not errors:
        return
    for key, exc in errors:
        print(f"glacierfs: {what} {key}: {exc}", file=sys.stderr)
    first = errors[0][1]
    err = GlacierFSError(f"{len(errors)} {what} operation(s) failed (listed above); run the command again to retry")
    err.exit_code = first.exit_code
    raise err


# --------------------------------------------------------------------------- sync


def cmd_sync(args: argparse.Namespace) -> int:
    from glacierfs.tree.sync import dry_run_result, plan_sync, run_sync

    vault = _vault(args)
    if args.jobs < 1 or (args.concurrency is not None and args.concurrency < 1):
        raise UsageError("--jobs and --concurrency must be at least 1")
    part_size = None
    if args.part_size:
        from glacierfs.sizes import parse_size

        part_size = parse_size(args.part_size)
    root = Path(args.dir)
    with _open(args) as ctx:
        catalog = ctx.catalog(vault)
        plan = plan_sync(
            catalog, root, prefix=args.prefix, replace_modified=args.replace_modified,
            delete_removed=args.delete_removed, excludes=args.exclude,
        )
        for rel, reason in plan.skipped:
            log.warning("skipped %s: %s", rel, reason)
        if args.dry_run:
            _out(dry_run_result(plan, _out).summary(dry_run=True))
            return 0

        stop = threading.Event()

        def engine() -> Any:
            from glacierfs.upload import UploadEngine

            return UploadEngine(ctx.glacier, catalog, vault, part_size=part_size, concurrency=args.concurrency,
                                stop=stop)

        result = run_sync(
            plan, vault=vault, glacier=ctx.glacier, catalog=catalog, engine_factory=engine,
            jobs=args.jobs, progress=ctx.progress, emit=_out, stop=stop,
        )
        _out(result.summary())
        _failed(result.errors, "sync")
    return 0


# --------------------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    """``<status>\t<path>`` per path (--json: an array); exit 1 when anything is not ok."""
    import json
    from dataclasses import asdict

    from glacierfs.tree.check import check_tree

    vault = _vault(args)
    with _open(args) as ctx:
        report = check_tree(ctx.catalog(vault), Path(args.dir), prefix=args.prefix, excludes=args.exclude)
    for rel, reason in report.skipped:
        print(f"glacierfs: skipped {rel}: {reason}", file=sys.stderr)
    if args.json:
        json.dump([asdict(e) for e in report.entries], sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        for e in report.entries:
            _out(f"{e.status}\t{e.path}")
    counts = report.counts()
    print("check: " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + (f", {len(report.skipped)} skipped" if report.skipped else ""), file=sys.stderr)
    return 0 if report.clean else 1


# --------------------------------------------------------------------------- restore


def cmd_restore(args: argparse.Namespace) -> int:
    from glacierfs.tree.pricing import load_prices
    from glacierfs.tree.restore import (
        PlanSummary,
        Restorer,
        describe_plan,
        not_ready_error,
        plan_items,
        plan_restore,
        select,
        sweep_jobs,
    )

    vault = _vault(args)
    if args.max_jobs is not None and args.max_jobs < 1:
        raise UsageError("--max-jobs must be at least 1")
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    max_bph = None
    if args.max_bytes_per_hour:
        from glacierfs.sizes import parse_size

        max_bph = parse_size(args.max_bytes_per_hour) or None
    prices = load_prices(args.prices) if args.dry_run else None
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {args.output}: not a directory")
    with _open(args) as ctx:
        catalog = ctx.catalog(vault)
        archives = select(catalog, args.paths)
        if args.dry_run:  # one streaming pass: no list of a million items
            assert prices is not None
            summary = PlanSummary.of(plan_items(archives, out_dir), sweep_jobs(ctx.glacier, vault))
            for line in describe_plan(summary, prices, args.tier, args.max_jobs, max_bph):
                _out(line)
            return 0
        plan = plan_restore(archives, out_dir, ctx.glacier, vault)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
        restorer = Restorer(
            plan, vault=vault, glacier=ctx.glacier, runner_factory=lambda: ctx.runner(vault),
            tier=args.tier, max_jobs=args.max_jobs, max_bytes_per_hour=max_bph, parallel=args.parallel,
            poll=(0.2, 1.0) if ctx.is_local else (30.0, 300.0), progress=ctx.progress, emit=_out,
        )
        result = restorer.run(wait=not args.no_wait)
    _out(result.summary())
    for item in plan.of("conflict"):
        print(f"glacierfs: restore {item.archive.path}: {item.target} exists and differs; not overwritten",
              file=sys.stderr)
    _failed(result.errors, "restore")
    if result.remaining:
        raise not_ready_error(result)
    if result.conflicts:
        from glacierfs.errors import ConflictError

        raise ConflictError(f"{result.conflicts} file(s) in the way were not overwritten (listed above)")
    return 0


# --------------------------------------------------------------------------- import-journal


def cmd_import_journal(args: argparse.Namespace) -> int:
    from glacierfs.tree.journal import import_journal, read_journal

    vault = _vault(args)
    journal = read_journal(Path(args.journal), skip_broken=args.skip_broken)  # whole file checked first
    with _open(args) as ctx:
        result = import_journal(ctx.catalog(vault), journal)
    _out(result.summary())
    return 0


# --------------------------------------------------------------------------- wait


def cmd_wait(args: argparse.Namespace) -> int:
    from glacierfs.tree.wait import wait_until_done

    vault = _vault(args)
    if getattr(args, "timeout", None) is not None and args.timeout < 0:
        raise UsageError("--timeout must be >= 0")
    with _open(args) as ctx:
        wait_until_done(
            ctx.catalog(vault), ctx.glacier, vault, args.paths, timeout=getattr(args, "timeout", None),
            poll=(0.2, 1.0) if ctx.is_local else (5.0, 60.0), progress=ctx.progress,
        )
    return 0


def _tier(value: str) -> str:
    for t in TIERS:
        if value.lower() == t.lower():
            return t
    raise argparse.ArgumentTypeError(f"invalid tier {value!r} (choose from {', '.join(TIERS)})")


# --------------------------------------------------------------------------- registration


def _vault_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--vault", required=True, help="vault name")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add sync, check, restore, import-journal and wait to the top-level sub-parsers."""
    p = sub.add_parser(
        "sync",
        parents=[copy.deepcopy(common)],
        help="upload the files of a directory that the vault lacks",
        description=(
            "Upload the files of DIR that are not in the vault, as PREFIX/relative/path. "
            "Prints one line per change ('uploaded P', 'replaced P', 'deleted P') and a summary. "
            "A second run right after does nothing; a run killed at any point and run again "
            "reaches the same end state without a duplicate archive."
        ),
    )
    _vault_arg(p)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--prefix", metavar="P", help="vault directory to sync into (default: the root)")
    p.add_argument("--replace-modified", action="store_true",
                   help="upload files whose size or mtime (and then tree hash) differ; the old archive "
                        "is deleted only after the new one exists")
    p.add_argument("--delete-removed", action="store_true", help="delete archives whose file is gone")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip matching files/directories (a name at any depth, or a path if it has '/')")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--jobs", type=int, default=4, metavar="N", help="files in flight at once (4)")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="parallel parts per file (default: as glacierfs upload, up to 8)")
    p.add_argument("--part-size", metavar="SIZE", help="multipart part size: 1M, 64MiB, 1G or bytes")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser(
        "check",
        parents=[copy.deepcopy(common)],
        help="compare a local tree with the vault by tree hash",
        description=(
            "Print '<status><TAB><path>' for every path under DIR and under PREFIX in the vault: ok, "
            "changed (tree hash differs), missing (in the vault, not on disk), new (on disk, not in the "
            "vault). Local tree hashes use all cores; the vault's come from the catalog (no retrieval). "
            "Exit status 1 when anything is not ok."
        ),
    )
    _vault_arg(p)
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--prefix", metavar="P", help="vault directory DIR corresponds to (default: the root)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="as for sync")
    p.add_argument("--json", action="store_true", help="print a JSON array of {path, status, hashes, archive_id}")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "restore",
        parents=[copy.deepcopy(common)],
        help="retrieve many archives into a directory (batched jobs, priced plan)",
        description=(
            "Retrieve the archives PATHs and GLOBs select (a directory: everything below it; none: the "
            "whole vault) into DIR at their vault paths, with their mtimes and modes from the umask, "
            "verified and moved in atomically. Running or finished jobs are reused; new ones start in "
            "batches within --max-jobs and --max-bytes-per-hour. Re-running continues and starts no job "
            "twice. --dry-run prints count, bytes, estimated cost per tier and the expected wait."
        ),
    )
    _vault_arg(p)
    p.add_argument("paths", nargs="*", metavar="PATH|GLOB")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to restore into (created)")
    p.add_argument("--tier", type=_tier, default="Standard", help="Expedited, Standard (default) or Bulk")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its cost, start nothing")
    p.add_argument("--max-jobs", type=int, default=1000, metavar="N",
                   help="retrieval jobs in flight at once (1000)")
    p.add_argument("--max-bytes-per-hour", metavar="SIZE",
                   help="bytes of retrieval jobs started per rolling hour (e.g. 10G; default unlimited)")
    p.add_argument("--no-wait", action="store_true",
                   help="start what the limits allow, download what is ready, exit 8 if anything remains")
    p.add_argument("--parallel", type=int, default=8, metavar="N", help="files downloaded at once (8)")
    p.add_argument("--prices", metavar="FILE",
                   help="JSON price table overriding the built-in one (env GLACIERFS_PRICES; see README)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "import-journal",
        parents=[copy.deepcopy(common)],
        help="read an mt-aws-glacier journal into the catalog (no inventory job)",
        description=(
            "Record the archives of an mt-aws-glacier journal (versions 0, A, B, C) in the vault's "
            "catalog, so the mount, sync and restore see them at once; the next inventory reconciles "
            "as usual. A broken line is reported with its number and nothing is imported."
        ),
    )
    _vault_arg(p)
    p.add_argument("journal", metavar="JOURNAL")
    p.add_argument("--skip-broken", action="store_true", help="skip (and log) broken lines instead of refusing")
    p.set_defaults(func=cmd_import_journal)

    p = sub.add_parser(
        "wait",
        parents=[copy.deepcopy(common)],
        help="return when the uploads and retrievals under PATHs are done",
        description=(
            "Block until no upload is pending (CLI, sync or a mount's queue), no replaced archive of a "
            "mount is still to be deleted, and no retrieval job is running for an archive under the PATHs (default: the whole vault). Exit 8 after --timeout."
        ),
    )
    _vault_arg(p)
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.set_defaults(func=cmd_wait)
