"""``glacierfs status``: pending uploads, current jobs by archive path and catalog age per vault.

Output: human-readable sections (``vault V: inventory DATE (age A)``, ``  upload pending: ...``,
``  replace pending: PATH (deletes archive ID[, new archive ID])``,
``  job STATUS: KIND PATH (TIER, started T ago)``); ``--json`` prints one JSON object (an array
of them without ``-v``). Finished jobs are counted in a note; ``--all`` lists them too.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from glacierfs import hints
from glacierfs.context import Context, open_context
from glacierfs.names import check_vault_name
from glacierfs.output import note as _note
from glacierfs.output import out as _out
from glacierfs.progress import end_status
from glacierfs.text import shown
from glacierfs.timeutil import fmt_ago

if TYPE_CHECKING:  # pragma: no cover
    from glacierfs.catalog import Catalog, JobRecord
    from glacierfs.upload.state import UploadState


def vault_status(ctx: Context, vault: str, all_jobs: bool = False) -> dict[str, Any]:
    """Pending uploads, current jobs (every recorded job with ``all_jobs``) and catalog age."""
    from glacierfs.fs.stagedir import pending_replacements

    catalog = ctx.catalog(vault)
    uploads = catalog.list_uploads()
    replacing = sorted(pending_replacements(catalog.state_dir), key=lambda m: m.path)
    jobs = catalog.list_jobs()
    shown_jobs = [j for j in jobs if all_jobs or _job_is_current(j)]
    return {
        "vault": vault,
        "inventory_date": catalog.inventory_date,
        "inventory_age": catalog.inventory_age(),
        "pending_uploads": [{"key": k, **_upload_summary(v)} for k, v in sorted(uploads.items())],
        # a mount's replacements whose old archives are not deleted yet (new archive: None until made)
        "pending_replacements": [{"path": m.path.lstrip("/"), "replaces": list(m.replaces), "new_archive": m.archived}
                                 for m in replacing],
        "jobs": [_job_summary(catalog, j) for j in shown_jobs],
        "finished_jobs_not_shown": len(jobs) - len(shown_jobs),
    }


def _upload_summary(state: UploadState) -> dict[str, Any]:
    return {"path": state.archive_path, "size": state.size, "done": state.bytes_done, "upload_id": state.upload_id}


def _job_is_current(job: JobRecord) -> bool:
    """Still running, or an inventory finished and not imported yet (its listing is still to come).

    Finished retrievals and imported inventories are history: ``status --all`` shows them.
    """
    from glacierfs.jobs import IN_PROGRESS, INVENTORY, SUCCEEDED

    if job.status == IN_PROGRESS:
        return True
    return job.kind == INVENTORY and job.status == SUCCEEDED and not job.imported


def _job_summary(catalog: Catalog, job: JobRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: getattr(job, k)
        for k in ("job_id", "kind", "archive_id", "tier", "status", "created", "completed", "recorded_at",
                  "forced", "imported")
    }
    archive_id = job.archive_id
    known = catalog.get(archive_id, include_deleted=True) if archive_id else None
    out["path"] = known.path if known else None
    return out


def _job_line(job: dict[str, Any]) -> str:
    from glacierfs.timeutil import fmt_duration, parse_iso

    what = str(job.get("kind") or "job")
    if job.get("path"):
        what += f" {shown(job['path'])}"
    elif job.get("archive_id"):
        what += f" archive {shown(job['archive_id'])}"
    details = [shown(job["tier"])] if job.get("tier") else []
    started = parse_iso(job.get("created")) or job.get("recorded_at")  # recorded when we started it
    if isinstance(started, int | float):
        details.append(f"started {fmt_duration(time.time() - started)} ago")
    extra = f" ({', '.join(details)})" if details else ""
    return f"  job {shown(job.get('status') or '?')}: {what}{extra}"


def cmd_status(args: argparse.Namespace) -> int:
    """Pending uploads, current jobs by path and catalog age; ``--wait`` until no upload is pending."""
    vault = check_vault_name(args.vault) if args.vault else None
    with open_context(args) as ctx:
        vaults = [vault] if vault else ctx.known_vaults()
        if args.wait:
            _wait_uploads(ctx, vaults)
        report = [vault_status(ctx, v, all_jobs=args.all) for v in vaults]
        if args.json:
            end_status()
            json.dump(report if vault is None else report[0], sys.stdout, indent=1, default=str)
            sys.stdout.write("\n")
            return 0
        hidden = 0
        for st in report:
            _out(
                f"vault {st['vault']}: inventory {shown(st['inventory_date'] or 'none')}"
                f" (age {fmt_ago(st['inventory_age'])})"
            )
            for up in st["pending_uploads"]:
                pct = ""
                if up["size"] and up["done"] is not None:
                    pct = f" {100 * up['done'] // max(1, up['size'])}%"
                _out(f"  upload pending: {shown(up['path'] or up['key'])} ({up['size']} bytes{pct})")
            for rep in st["pending_replacements"]:
                new = f", new archive {shown(rep['new_archive'])}" if rep["new_archive"] else ""
                _out(f"  replace pending: {shown(rep['path'])} (deletes archive {shown(', '.join(rep['replaces']))}{new})")
            for job in st["jobs"]:
                _out(_job_line(job))
            hidden += st["finished_jobs_not_shown"]
        if hidden:
            words = ["status", "--all"] + (["-v", vault] if vault else [])
            _note(f"{hidden} finished job(s) not listed; to list them, run: {shown(hints.command(args, *words))}")
    return 0


def _wait_uploads(ctx: Context, vaults: list[str]) -> None:
    delay = 0.2 if ctx.is_local else 1.0
    while True:
        from glacierfs.fs.stagedir import pending_replacements

        pending = sum(len(ctx.catalog(v).list_uploads()) for v in vaults)
        replacing = sum(len(pending_replacements(ctx.catalog(v).state_dir)) for v in vaults)
        if not pending and not replacing:
            return
        ctx.progress.status(f"waiting for {pending} pending upload(s), {replacing} replaced archive delete(s)")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add ``status`` to the top-level sub-parsers."""

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[copy.deepcopy(common)], help=help, description=description)

    p = add(
        "status",
        "pending uploads, current jobs, catalog age",
        "Show per vault the catalog's inventory date and age, pending uploads with progress and "
        "the current jobs (running, or an inventory not imported yet) by archive path. Finished "
        "jobs are counted in a note; --all lists them too.",
    )
    p.add_argument("-v", "--vault", help="only this vault (default: every vault with a catalog here)")
    p.add_argument("--json", action="store_true", help="print one object (an array of them without -v) as JSON (default: text lines)")
    p.add_argument("--all", action="store_true", help="also list finished jobs (default: current jobs only)")
    p.add_argument("--wait", action="store_true", help="first wait until no upload (nor a mount's delete of a replaced archive) is pending (default: off)")
    p.set_defaults(func=cmd_status)
