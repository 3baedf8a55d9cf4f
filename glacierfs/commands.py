"""The client commands: treehash, upload, abort, inventory, delete, download, vaults, status.

Each command builds a :class:`Context` from the common options (connection, cache dir,
progress), does its work through the library modules and prints script-friendly lines on
stdout. Output formats (stable, one record per line, fields separated as shown):

* ``treehash``:   ``<tree hash>  <FILE>`` (like ``sha256sum``)
* ``upload``:     ``<archive id>  <tree hash>  <size>  <archive path>``
* ``download``:   ``<archive id>  <tree hash>  <size>  <output file>``
* ``inventory``:  ``<path>\\t<size>\\t<creation date>\\t<archive id>`` sorted by path;
  ``--json`` prints a JSON array of objects instead
* ``vaults``:     ``<name>\\t<archives>\\t<size>\\t<last inventory date or ->``
* ``delete``:     ``deleted <archive id>  <path>``
* ``status``:     human-readable sections; ``--json`` prints one JSON object

Library code raises :class:`~glacierfs.errors.GlacierFSError`; ``cli.main`` turns it into
one line on stderr and the exit code, so nothing here prints errors or tracebacks.
Imports of the library modules are deferred into the commands so that registering the
parser (``glacierfs --help``, the mount's parser) stays cheap and never fails.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import posixpath
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glacierfs.errors import ConflictError, NotFoundError, NotReadyError, UsageError
from glacierfs.progress import NULL_PROGRESS, Progress

if TYPE_CHECKING:  # pragma: no cover
    from glacierfs.catalog import Catalog, JobRecord
    from glacierfs.jobs import JobRunner
    from glacierfs.upload.state import UploadState

log = logging.getLogger(__name__)

TIERS = ("Expedited", "Standard", "Bulk")
VAULT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


# --------------------------------------------------------------------------- helpers


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/glacierfs`` or ``~/.cache/glacierfs``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glacierfs"


def cache_root_for(args: argparse.Namespace) -> Path:
    """The cache root from ``--cache-dir``/``GLACIERFS_CACHE_DIR`` or the default, created 0700."""
    root = Path(getattr(args, "cache_dir", None) or default_cache_root()).expanduser()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create cache directory {root}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise UsageError(f"cache directory {root} is not a directory")
    return root.resolve()


def check_vault_name(name: str) -> str:
    if not VAULT_NAME.fullmatch(name or ""):
        raise UsageError(f"invalid vault name {name!r}: use 1-255 characters from A-Z a-z 0-9 _ . -")
    return name


def normalize_archive_path(path: str) -> str:
    """Archive path for a FILE argument, normalized the way GNU tar names members.

    The leading ``/`` is stripped, everything up to and including the last ``..``
    component is removed (tar's "Removing leading `../'") and ``.``/empty components are
    dropped: ``/home/me/a.txt`` -> ``home/me/a.txt``, ``../x/./y`` -> ``x/y``,
    ``dir/../dir/b`` -> ``dir/b``. The result never escapes the vault root.
    """
    parts = path.replace(os.sep, "/").split("/")
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index("..") :]
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise UsageError(f"{path!r} does not name a file")
    return "/".join(parts)


def normalize_lookup_path(path: str) -> str:
    """A PATH argument as the catalog spells paths: relative, '/'-separated, normalized."""
    norm = posixpath.normpath("/" + path.replace(os.sep, "/")).lstrip("/")
    return norm


def parse_size(text: str) -> int:
    """``1M``, ``64MiB``, ``1G``, plain bytes -> int (delegates to :mod:`glacierfs.sizes`)."""
    from glacierfs import sizes

    fn = getattr(sizes, "parse_size", None)
    if fn is None:  # pragma: no cover - contract names it parse_size
        raise UsageError("size parsing is unavailable")
    return int(fn(text))


def fmt_ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """Everything a command needs, built once from the common options.

    ``close()`` (or leaving the ``with`` block) stops an embedded ``--local`` server.
    """

    args: argparse.Namespace
    glacier: Any
    region: str
    endpoint_url: str | None
    endpoint_id: str
    cache_root: Path
    progress: Progress
    _cleanup: Callable[[], None] | None = None
    _catalogs: dict[str, Catalog] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """Local endpoints complete jobs in seconds: poll them faster."""
        from glacierfs.local import is_local_endpoint

        return self.endpoint_id.startswith("local:") or is_local_endpoint(self.endpoint_url)

    def catalog(self, vault: str) -> Catalog:
        if vault not in self._catalogs:
            from glacierfs.catalog import Catalog

            self._catalogs[vault] = Catalog.open(self.cache_root, self.endpoint_id, self.region, vault)
        return self._catalogs[vault]

    def runner(self, vault: str) -> JobRunner:
        from glacierfs.jobs import Backoff, JobRunner

        poll = Backoff.local() if self.is_local else Backoff()
        return JobRunner(self.glacier, self.catalog(vault), vault, progress=self.progress, poll=poll)

    def close(self) -> None:
        for cat in self._catalogs.values():
            closer = getattr(cat, "close", None)
            if closer:
                with contextlib.suppress(Exception):
                    closer()
        self._catalogs.clear()
        if self._cleanup:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()


def make_progress(args: argparse.Namespace) -> Progress:
    return Progress(quiet=bool(getattr(args, "quiet", False)))


@contextlib.contextmanager
def open_context(args: argparse.Namespace) -> Iterator[Context]:
    """Resolve the endpoint (maybe starting an embedded server), build the client and cache."""
    from glacierfs.client import ConnectionSettings, make_glacier
    from glacierfs.local import default_region, resolve_endpoint

    cache_root = cache_root_for(args)
    endpoint_url, endpoint_id, extra, cleanup = resolve_endpoint(args)
    try:
        region = getattr(args, "region", None) or default_region(getattr(args, "profile", None))
        settings = ConnectionSettings(
            endpoint_url=endpoint_url,
            region=region,
            profile=getattr(args, "profile", None),
            access_key=extra.get("access_key", getattr(args, "access_key", None)),
            secret_key=extra.get("secret_key", getattr(args, "secret_key", None)),
            max_attempts=extra.get("max_attempts"),
        )
        glacier = make_glacier(settings)
        ctx = Context(
            args=args,
            glacier=glacier,
            region=region,
            endpoint_url=endpoint_url,
            endpoint_id=endpoint_id,
            cache_root=cache_root,
            progress=make_progress(args),
            _cleanup=cleanup,
        )
    except BaseException:
        if cleanup:
            cleanup()
        raise
    try:
        yield ctx
    finally:
        ctx.close()


# --------------------------------------------------------------------------- treehash


def cmd_treehash(args: argparse.Namespace) -> int:
    """Print ``<tree hash>  <FILE>`` per file; all files are checked before hashing any."""
    from glacierfs.treehash import tree_hash_file

    files = _existing_files(args.files)
    progress = make_progress(args)
    for name, size in files:
        shown = progress if size >= 64 << 20 else NULL_PROGRESS  # small files hash in a blink
        with shown.bar(f"treehash {name}", size) as bar:
            try:
                digest = tree_hash_file(name, progress=bar.update)
            except OSError as exc:
                raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
        _out(f"{digest}  {name}")
    return 0


def _existing_files(names: list[str]) -> list[tuple[str, int]]:
    files = []
    for name in names:
        try:
            st = os.stat(name)
        except FileNotFoundError:
            raise UsageError(f"{name}: no such file") from None
        except OSError as exc:
            raise UsageError(f"{name}: {exc.strerror or exc}") from None
        if os.path.isdir(name):
            raise UsageError(f"{name}: is a directory (give files)")
        if not os.access(name, os.R_OK):
            raise UsageError(f"{name}: permission denied")
        files.append((name, st.st_size))
    return files


# --------------------------------------------------------------------------- upload / abort


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload each FILE; re-running the same command resumes (state keyed by the file's real path).

    The archive path is FILE as given, normalized like GNU tar (see
    :func:`normalize_archive_path`) and stored in the mt2 description with the file's mtime. With
    ``--description`` the text is sent as-is (compatibility with the original script).
    """
    from glacierfs.upload import UploadEngine

    vault = check_vault_name(args.vault)
    part_size = parse_size(args.part_size) if args.part_size else None
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.description is not None and len(args.files) > 1:
        raise UsageError("--description applies to one FILE; upload the files one by one")
    files = _existing_files(args.files)
    with open_context(args) as ctx:
        engine = UploadEngine(
            ctx.glacier,
            ctx.catalog(vault),
            vault,
            part_size=part_size,
            concurrency=args.concurrency,
            progress=ctx.progress,
            single_request=args.single_request,
        )
        for name, _size in files:
            archive_path = normalize_archive_path(name)
            archive = engine.upload(
                Path(name),
                archive_path,
                mtime=os.stat(name).st_mtime,
                description=args.description,
                key=os.path.realpath(name),
            )
            _out(f"{archive.archive_id}  {archive.tree_hash}  {archive.size}  {archive.path}")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    """Abort FILE's pending upload (found by the file's real path) and forget it."""
    from glacierfs.upload import UploadEngine

    vault = check_vault_name(args.vault)
    key = os.path.realpath(args.file)
    with open_context(args) as ctx:
        engine = UploadEngine(ctx.glacier, ctx.catalog(vault), vault, progress=ctx.progress)
        if not engine.abort(key) and not _abort_on_service(ctx, vault, args.file):
            raise NotFoundError(f"no pending upload of {args.file} to vault {vault}")
        _out(f"aborted {args.file}")
    return 0


def _abort_on_service(ctx: Context, vault: str, name: str) -> int:
    """Abort the open uploads of FILE that the service holds although no local state knows them.

    The local state of a pending upload can be lost (cache directory deleted or rebuilt); the
    service keeps the upload (and its parts) until it expires. They are recognized by the
    description ``upload`` gives FILE (archive path and mtime). Returns how many were aborted.
    """
    from glacierfs.codec import encode_description

    try:
        description = encode_description(normalize_archive_path(name), os.stat(name).st_mtime).lstrip(" ")
    except (OSError, UsageError):
        return 0
    aborted = 0
    for up in ctx.glacier.list_uploads(vault):
        if up.get("ArchiveDescription") == description and up.get("MultipartUploadId"):
            try:
                ctx.glacier.abort_multipart(vault, up["MultipartUploadId"])
            except NotFoundError:
                continue
            log.warning("aborted upload %s of %s found on the service (no local state knew it)",
                        up["MultipartUploadId"][:16], name)
            aborted += 1
    return aborted


# --------------------------------------------------------------------------- inventory


def archive_record(a: Any) -> dict[str, Any]:
    return {
        "path": a.path,
        "size": a.size,
        "creation_date": a.creation_date,
        "mtime": a.mtime,
        "archive_id": a.archive_id,
        "tree_hash": a.tree_hash,
        "description": a.description,
        "source": a.source,
    }


def print_listing(catalog: Catalog, as_json: bool) -> int:
    archives = sorted(catalog.iter_archives(), key=lambda a: a.path)
    if as_json:
        json.dump([archive_record(a) for a in archives], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for a in archives:
            _out(f"{a.path}\t{a.size}\t{a.creation_date}\t{a.archive_id}")
    return len(archives)


def cmd_inventory(args: argparse.Namespace) -> int:
    """List the vault, refreshing the catalog from an inventory job when needed.

    Without ``-f`` the last inventory in the local catalog is shown (merged with what
    was uploaded/deleted from here); only when there is none is an inventory job joined
    or started. ``-f`` fetches a fresh inventory: it joins an inventory job that is still
    running (its output is the snapshot current when it completes, as a new job's would
    be) or the finished, not yet imported job that an interrupted ``-f`` started;
    otherwise it starts a new job. Job ids are recorded before waiting, so re-running
    after an interruption reattaches instead of starting a second job.
    """
    from glacierfs.jobs import NoInventoryYet

    vault = check_vault_name(args.vault)
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        runner = ctx.runner(vault)
        try:
            runner.inventory(force=args.force, wait=True)
        except NoInventoryYet as exc:
            count = print_listing(catalog, args.json)
            sys.stdout.flush()
            raise NotReadyError(
                f"{exc}; {count} archive(s) uploaded from here are listed from the local catalog"
            ) from None
        print_listing(catalog, args.json)
    return 0


# --------------------------------------------------------------------------- delete / download


def resolve_archive(catalog: Catalog, vault: str, path: str) -> Any:
    """The catalog archive at PATH; several archives claiming PATH is an error listing them."""
    norm = normalize_lookup_path(path)
    if not norm:
        raise UsageError(f"{path!r} is the vault root, not an archive")
    hit = catalog.lookup(norm)
    if hit == "dir":
        raise UsageError(f"{path} is a directory in vault {vault}, not an archive")
    if hit is not None:
        return hit
    # Not a displayed path: maybe the original (decoded) path of archives shown under variant names.
    from glacierfs.codec import decode_description, safe_relpath

    candidates = []
    for a in catalog.iter_archives():
        decoded = decode_description(a.description or "")
        if decoded.path is not None and safe_relpath(decoded.path, a.archive_id) == norm:
            candidates.append(a)
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        ids = ", ".join(f"{a.archive_id} ({a.path})" for a in candidates)
        raise ConflictError(f"{path} is ambiguous in vault {vault}; use -a with one of: {ids}")
    hint = "" if catalog.inventory_date else f" (no inventory yet: run glacierfs inventory -v {vault})"
    raise NotFoundError(f"no archive {path} in vault {vault}{hint}")


def cmd_delete(args: argparse.Namespace) -> int:
    vault = check_vault_name(args.vault)
    if (args.archive_id is None) == (args.path is None):
        raise UsageError("give either -a ARCHIVE_ID or PATH")
    if args.archive_id is not None and not args.archive_id.strip():
        raise UsageError("empty archive id")
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        if args.archive_id is not None:
            archive_id = args.archive_id
            known = catalog.get(archive_id)
            path = known.path if known else "-"
        else:
            archive = resolve_archive(catalog, vault, args.path)
            archive_id, path = archive.archive_id, archive.path
        ctx.glacier.delete_archive(vault, archive_id)
        catalog.mark_deleted(archive_id)
        _out(f"deleted {archive_id}  {path}")
    return 0


def download_target(out: str | None, archive_path: str) -> tuple[Path, bool]:
    """Where a download goes, and whether an existing file there may be replaced.

    Only the *basename* of the archive's safe path is ever used (in ``-o DIR`` or the
    current directory), so a hostile description cannot place bytes elsewhere. ``-o FILE``
    names the file exactly and replaces it; an existing file at a derived name is kept.
    """
    base = posixpath.basename(archive_path)
    if base in ("", ".", "..") or "/" in base or "\0" in base:
        raise UsageError(f"archive path {archive_path!r} gives no usable file name; use -o FILE")
    if out is None:
        return Path.cwd() / base, False
    target = Path(out)
    if target.is_dir():
        return target / base, False
    if not target.parent.is_dir():
        raise UsageError(f"{out}: directory {target.parent} does not exist")
    return target, True


def cmd_download(args: argparse.Namespace) -> int:
    """Download one archive (reusing a running or finished retrieval job), verified and atomic."""
    from glacierfs.codec import safe_relpath

    vault = check_vault_name(args.vault)
    if (args.archive_id is None) == (args.path is None):
        raise UsageError("give either -a ARCHIVE_ID or PATH")
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        if args.archive_id is not None:
            archive_id = args.archive_id
            known = catalog.get(archive_id)
            archive_path = known.path if known else safe_relpath(None, archive_id)
        else:
            archive = resolve_archive(catalog, vault, args.path)
            archive_id, archive_path = archive.archive_id, archive.path
        target, replace = download_target(args.output, archive_path)
        if target.exists() and not replace:
            raise ConflictError(f"{target} already exists; remove it or choose another name with -o")
        if target.exists() and target.is_dir():
            raise UsageError(f"{target} is a directory")
        runner = ctx.runner(vault)
        result = runner.download_verified(archive_id, target, tier=args.tier, wait=not args.no_wait)
        _out(f"{archive_id}  {result.tree_hash}  {result.size}  {result.path}")
    return 0


# --------------------------------------------------------------------------- vaults


def cmd_vaults_list(args: argparse.Namespace) -> int:
    with open_context(args) as ctx:
        vaults = ctx.glacier.list_vaults()
        if getattr(args, "json", False):
            json.dump(vaults, sys.stdout, indent=1, default=str)
            sys.stdout.write("\n")
            return 0
        for v in vaults:
            _out(
                f"{v.get('VaultName')}\t{v.get('NumberOfArchives') or 0}\t{v.get('SizeInBytes') or 0}\t"
                f"{v.get('LastInventoryDate') or '-'}"
            )
    return 0


def cmd_vaults_create(args: argparse.Namespace) -> int:
    name = check_vault_name(args.name)
    with open_context(args) as ctx:
        ctx.glacier.create_vault(name)
        _out(f"created {name}")
    return 0


def cmd_vaults_delete(args: argparse.Namespace) -> int:
    name = check_vault_name(args.name)
    with open_context(args) as ctx:
        ctx.glacier.delete_vault(name)
        _out(f"deleted {name}")
    return 0


# --------------------------------------------------------------------------- status


def vault_status(ctx: Context, vault: str) -> dict[str, Any]:
    catalog = ctx.catalog(vault)
    uploads = catalog.list_uploads()
    jobs = [j for j in catalog.list_jobs() if _job_is_current(j)]
    return {
        "vault": vault,
        "inventory_date": catalog.inventory_date,
        "inventory_age": catalog.inventory_age(),
        "pending_uploads": [{"key": k, **_upload_summary(v)} for k, v in sorted(uploads.items())],
        "jobs": [_job_summary(j) for j in jobs],
    }


def _upload_summary(state: UploadState) -> dict[str, Any]:
    return {"path": state.archive_path, "size": state.size, "done": state.bytes_done, "upload_id": state.upload_id}


def _job_is_current(job: JobRecord, now: float | None = None) -> bool:
    """Running, or finished recently enough that its output may still be fetched (24 h)."""
    from glacierfs.jobs import JOB_RETENTION, parse_iso

    now = time.time() if now is None else now
    if job.status == "InProgress":
        return True
    done = parse_iso(job.completed) or job.recorded_at or 0
    return now - float(done) < JOB_RETENTION


def _job_summary(job: JobRecord) -> dict[str, Any]:
    return {
        k: getattr(job, k) for k in ("job_id", "kind", "archive_id", "tier", "status", "created", "forced", "imported")
    }


def _known_vaults(ctx: Context) -> list[str]:
    from glacierfs import catalog as catalog_mod

    fn = getattr(catalog_mod, "list_vaults", None) or getattr(catalog_mod.Catalog, "list_vaults", None)
    if fn is not None:
        try:
            return sorted(fn(ctx.cache_root, ctx.endpoint_id, ctx.region))
        except TypeError:  # pragma: no cover
            pass
    return sorted(v.get("VaultName") for v in ctx.glacier.list_vaults())


def cmd_status(args: argparse.Namespace) -> int:
    """Pending uploads, jobs in flight and catalog age; ``--wait`` until no upload is pending."""
    vault = check_vault_name(args.vault) if args.vault else None
    with open_context(args) as ctx:
        vaults = [vault] if vault else _known_vaults(ctx)
        if args.wait:
            _wait_uploads(ctx, vaults, args)
        report = [vault_status(ctx, v) for v in vaults]
        if args.json:
            json.dump(report if vault is None else report[0], sys.stdout, indent=1, default=str)
            sys.stdout.write("\n")
            return 0
        for st in report:
            _out(
                f"vault {st['vault']}: inventory {st['inventory_date'] or 'none'}"
                f" (age {fmt_ago(st['inventory_age'])})"
            )
            for up in st["pending_uploads"]:
                pct = ""
                if up["size"] and up["done"] is not None:
                    pct = f" {100 * up['done'] // max(1, up['size'])}%"
                _out(f"  upload pending: {up['path'] or up['key']} ({up['size']} bytes{pct})")
            for job in st["jobs"]:
                what = job.get("kind", "job") + (f" {job['archive_id']}" if job.get("archive_id") else "")
                _out(f"  job {job.get('status', '?')}: {what} {job.get('job_id')}")
    return 0


def _wait_uploads(ctx: Context, vaults: list[str], args: argparse.Namespace) -> None:
    delay = 0.2 if ctx.is_local else 1.0
    while True:
        pending = sum(len(ctx.catalog(v).list_uploads()) for v in vaults)
        if not pending:
            return
        ctx.progress.status(f"waiting for {pending} pending upload(s)")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


# --------------------------------------------------------------------------- registration


def _vault_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--vault", required=True, help="vault name")


def _archive_or_path(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-a",
        "--archive-id",
        metavar="ARCHIVE_ID",
        help="archive id; ids that start with '-' need '=': -a=-xyz",
    )
    p.add_argument("path", nargs="?", metavar="PATH", help="path of the archive as `inventory` lists it")


def _tier(value: str) -> str:
    for t in TIERS:
        if value.lower() == t.lower():
            return t
    raise argparse.ArgumentTypeError(f"invalid tier {value!r} (choose from {', '.join(TIERS)})")


def _nested_common(common_factory: Callable[[], argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """A copy of the common options whose defaults do not overwrite the parent's values.

    argparse copies every sub-parser default into the namespace, so ``vaults --region X
    create N`` would lose ``--region`` if ``create`` had ordinary defaults.
    """
    p = common_factory()
    for action in p._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS
    return p


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the client commands to the top-level sub-parsers (``common``: the shared options).

    Each command gets a private deep copy of ``common``: argparse shares the parent's action
    objects, so a later sub-parser that redefines a common option with
    ``conflict_handler="resolve"`` would otherwise strip it from every command.
    """
    p = sub.add_parser(
        "treehash",
        parents=[copy.deepcopy(common)],
        help="print the Glacier tree hash of files",
        description="Print '<tree hash>  <FILE>' for each FILE, like sha256sum.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_treehash)

    p = sub.add_parser(
        "upload",
        parents=[copy.deepcopy(common)],
        help="upload files (re-run to resume)",
        description=(
            "Upload each FILE as one archive and print '<archive id>  <tree hash>  <size>  <path>'. "
            "The archive path is FILE as given, normalized like GNU tar (leading '/' stripped, "
            "everything up to the last '..' removed, '.' dropped), stored as an mt2 description with the mtime; --description sends its "
            "text as-is instead. Re-running the same command after an interruption resumes."
        ),
    )
    _vault_arg(p)
    p.add_argument("--part-size", metavar="SIZE", help="multipart part size: 1M, 64MiB, 1G or bytes")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="parallel part uploads (4)")
    p.add_argument("--description", metavar="TEXT", help="archive description sent as-is")
    p.add_argument(
        "--single-request",
        action="store_true",
        help="send files of at most one part as one UploadArchive (1 request instead of 3); a crash "
        "in the instant after the service stored it can then leave a duplicate archive, which is "
        "why the default is a multipart upload for every file",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("abort", parents=[copy.deepcopy(common)], help="abort a file's pending upload and forget it")
    _vault_arg(p)
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_abort)

    p = sub.add_parser(
        "inventory",
        parents=[copy.deepcopy(common)],
        help="list a vault (from the catalog, or via an inventory job)",
        description=(
            "Print one line per archive: path<TAB>size<TAB>creation date<TAB>archive id, sorted by "
            "path (--json: a JSON array). Without -f the local catalog's last inventory is shown; "
            "an inventory job is joined or started only when there is none. -f fetches a fresh "
            "inventory: it joins an inventory job still running (its output is the snapshot current "
            "at completion) or the finished, not yet imported job of an interrupted -f; otherwise "
            "it starts a new job. Job ids are recorded before waiting, so an interrupted run "
            "reattaches when re-run. Exit status 8 when the vault has no inventory yet."
        ),
    )
    _vault_arg(p)
    p.add_argument("-f", "--force", action="store_true", help="fetch a fresh inventory (see above)")
    p.add_argument("--json", action="store_true", help="print a JSON array of archives")
    p.set_defaults(func=cmd_inventory)

    p = sub.add_parser(
        "delete",
        parents=[copy.deepcopy(common)],
        help="delete an archive by id or path",
        description="Delete one archive, by -a ARCHIVE_ID (ids starting with '-': -a=-xyz) or by PATH.",
    )
    _vault_arg(p)
    _archive_or_path(p)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "download",
        parents=[copy.deepcopy(common)],
        help="retrieve an archive (job, wait, verified resumable download)",
        description=(
            "Reuse a running or finished retrieval job for the archive or start one, wait, then "
            "download it in tree-hash-aligned verified ranges, resuming a partial download; the "
            "file is verified whole and moved into place atomically (a running or finished job is "
            "reused whatever its tier). Output: OUT if -o names a "
            "file (replaced), else the archive's base name in -o DIR or the current directory "
            "(never replaced). Prints '<archive id>  <tree hash>  <size>  <file>'."
        ),
    )
    _vault_arg(p)
    _archive_or_path(p)
    p.add_argument("-o", "--output", metavar="OUT", help="output file or existing directory")
    p.add_argument("--tier", type=_tier, default="Standard", help="Expedited, Standard (default) or Bulk")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="do not wait for the retrieval job: start or check it and exit 8 if not ready",
    )
    p.set_defaults(func=cmd_download)

    p = sub.add_parser(
        "vaults",
        parents=[copy.deepcopy(common)],
        help="list, create or delete vaults",
        description="Without a sub-command: list vaults as name<TAB>archives<TAB>bytes<TAB>last inventory.",
    )
    p.add_argument("--json", action="store_true", help="print the ListVaults records as JSON")
    p.set_defaults(func=cmd_vaults_list)
    vsub = p.add_subparsers(dest="vaults_command", metavar="SUBCOMMAND")
    nested = _nested_common(lambda: copy.deepcopy(common))
    q = vsub.add_parser("create", parents=[nested], help="create a vault")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_vaults_create)
    q = vsub.add_parser("delete", parents=[nested], help="delete an empty vault")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_vaults_delete)
    q = vsub.add_parser("list", parents=[nested], help="list vaults (the default)")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    q.set_defaults(func=cmd_vaults_list)

    p = sub.add_parser(
        "status",
        parents=[copy.deepcopy(common)],
        help="pending uploads, jobs in flight, catalog age",
        description="Show pending uploads with progress, jobs in flight and the age of the catalog.",
    )
    p.add_argument("-v", "--vault", help="only this vault (default: every vault known locally)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", action="store_true", help="return when no upload is pending")
    p.set_defaults(func=cmd_status)
