"""The client commands: treehash, upload, abort, inventory, delete, download, vaults (status: statuscmd).

Each command builds a :class:`~glacierfs.context.Context` from the common options
(connection, cache dir, progress), does its work through the library modules and prints
script-friendly lines on stdout. Output formats (stable, one record per line, fields
separated as shown; every field that came from a server is passed through
:func:`~glacierfs.text.shown`, so control characters appear escaped):

* ``treehash``:   ``<tree hash>  <FILE>`` (like ``sha256sum``)
* ``upload``:     ``<archive id>  <tree hash>  <size>  <archive path>``
* ``download``:   ``<archive id>  <tree hash>  <size>  <output file>``; ``--no-wait`` while
  the job runs: ``pending <archive id>  <job id>  <tier>`` (exit 0)
* ``inventory``:  ``<path>\\t<size>\\t<creation date>\\t<archive id>`` sorted by path;
  ``--json`` prints a JSON array of objects instead
* ``vaults``:     ``<name>\\t<archives>\\t<size>\\t<last inventory date or ->``
* ``delete``:     ``deleted <archive id>  <path>``; ``--unlisted`` for an id the catalog does
  not know: ``delete sent <archive id>  -``
* ``status``:     human-readable sections; ``--json`` prints one JSON object

Notes that are not errors (no inventory yet, a job still running) go to stderr as
``glacierfs: <line>``, with a command to run built by :mod:`glacierfs.hints`. Library code
raises :class:`~glacierfs.errors.GlacierFSError`; ``cli.main`` turns it into one line on
stderr and the exit code, so nothing here prints errors or tracebacks. Imports of the
library modules are deferred into the commands so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import posixpath
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glacierfs import hints
from glacierfs.context import Context, make_progress, open_context
from glacierfs.errors import ConflictError, GlacierFSError, NotFoundError, NotReadyError, UsageError
from glacierfs.names import (
    DEFAULT_TIER,
    TIERS,
    check_vault_name,
    normalize_archive_path,
    normalize_lookup_path,
)
from glacierfs.options import tier_type
from glacierfs.output import note as _note
from glacierfs.output import out as _out
from glacierfs.progress import NULL_PROGRESS, end_status
from glacierfs.sizes import parse_size
from glacierfs.text import shown

if TYPE_CHECKING:  # pragma: no cover
    from glacierfs.catalog import Archive, Catalog

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- treehash


def cmd_treehash(args: argparse.Namespace) -> int:
    """Print ``<tree hash>  <FILE>`` per file; all files are checked before hashing any."""
    from glacierfs.treehash import tree_hash_file

    files = _existing_files(args.files)
    progress = make_progress(args)
    for name, size in files:
        display = progress if size >= 64 << 20 else NULL_PROGRESS  # small files hash in a blink
        with display.bar(f"treehash {name}", size) as bar:
            try:
                digest = tree_hash_file(name, progress=bar.update)
            except OSError as exc:
                raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
        _out(f"{digest}  {shown(name)}")
    return 0


def _existing_files(names: list[str]) -> list[tuple[str, int]]:
    """``(name, size)`` of each FILE, all checked before any is read (regular files only)."""
    from glacierfs.fsutil import check_regular_file

    return [(name, check_regular_file(name).st_size) for name in names]


def _unreadable_files(names: list[str]) -> list[GlacierFSError]:
    """The errors of the FILEs that are not readable regular files (checked without reading them)."""
    from glacierfs.fsutil import check_regular_file

    errors = []
    for name in names:
        try:
            check_regular_file(name)
        except GlacierFSError as exc:
            errors.append(exc)
    return errors


# --------------------------------------------------------------------------- upload / abort


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload each FILE, ``--jobs`` files in flight; re-running the same command resumes (state
    keyed by each file's real path).

    The archive path is FILE as given, normalized like GNU tar (see
    :func:`normalize_archive_path`) and stored in the mt2 description with the file's mtime. With
    ``--description`` the text is sent as-is (compatibility with the original script). One line
    per FILE in argument order; a FILE that fails prints one error line at its place and the
    others go on; the exit status is then the first failure's. An error every file would meet
    (credentials, missing vault) stops the command at once.
    """
    from glacierfs.upload import UploadEngine
    from glacierfs.upload.batch import FileItem, upload_files

    vault = check_vault_name(args.vault)
    part_size = parse_size(args.part_size) if args.part_size else None
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.description is not None and len(args.files) > 1:
        raise UsageError("--description applies to one FILE; upload the files one by one")
    if part_size is not None:
        from glacierfs.upload import choose_part_size

        choose_part_size(1, part_size)  # a bad --part-size is one usage error, not one per file
    items = [FileItem(name, normalize_archive_path(name), args.description) for name in args.files]
    unreadable = _unreadable_files(args.files)
    if len(unreadable) == len(items):  # nothing to upload: say so without asking the service anything
        if len(items) == 1:
            raise unreadable[0]
        for exc in unreadable:
            _error(exc, args)
        return unreadable[0].exit_code
    first_failure = 0
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        together = min(args.jobs, len(items))
        # one file at a time shows its own progress bar; several share one bar (by files' bytes)
        per_file = ctx.progress if together == 1 else NULL_PROGRESS
        total = ctx.progress.bar("upload", _total_size(args.files)) if together > 1 else None

        def engine(stop: threading.Event) -> UploadEngine:
            return UploadEngine(ctx.glacier, catalog, vault, part_size=part_size, concurrency=args.concurrency,
                                progress=per_file, single_request=args.single_request, stop=stop)

        outcomes = upload_files(items, engine, together)
        try:
            for out in outcomes:
                if out.error is not None:
                    if out.fatal or len(items) == 1:
                        raise out.error
                    _error(out.error, args)
                    first_failure = first_failure or out.error.exit_code
                    continue
                archive = out.archive
                assert archive is not None
                if total is not None:
                    total.update(archive.size)
                _out(f"{shown(archive.archive_id)}  {archive.tree_hash}  {archive.size}  {shown(archive.path)}")
        finally:
            outcomes.close()  # after a fatal error: the files not started are cancelled
            if total is not None:
                total.close()
    return first_failure


def _total_size(names: list[str]) -> int:
    """The bytes the FILEs hold (for the progress bar; a FILE that cannot be stat'ed counts 0)."""
    total = 0
    for name in names:
        with contextlib.suppress(OSError):
            total += os.stat(name).st_size
    return total


def _error(exc: GlacierFSError, args: argparse.Namespace) -> None:
    """One error line on stderr for one item of a command that goes on with the others."""
    end_status()
    sys.stdout.flush()
    print(f"glacierfs: {shown(hints.error_line(exc, args))}", file=sys.stderr)


def cmd_abort(args: argparse.Namespace) -> int:
    """Abort FILE's pending upload (found by the file's real path) and forget it; or one upload by id.

    Without local state, FILE's open uploads on the service are aborted only when provably its
    (:mod:`glacierfs.upload.orphans`); each one left gets one line with the command that aborts
    it by id. ``--upload-id ID`` aborts that upload (the user's explicit choice) and forgets every
    local state naming it.
    """
    from glacierfs.upload import UploadEngine

    vault = check_vault_name(args.vault)
    if (args.file is None) == (args.upload_id is None):
        raise UsageError("give either FILE or --upload-id ID")
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        engine = UploadEngine(ctx.glacier, catalog, vault, progress=ctx.progress)
        if args.upload_id is not None:
            _abort_by_id(ctx, engine, vault, args.upload_id)
            _out(f"aborted upload {shown(args.upload_id)}")
            return 0
        key = os.path.realpath(args.file)
        if not engine.abort(key):
            aborted, left = _abort_on_service(ctx, vault, args.file, key)
            if not aborted:
                why = f" ({left} open upload(s) with its description left alone, named above)" if left else ""
                raise NotFoundError(f"no pending upload of {args.file} to vault {vault}{why}")
        _out(f"aborted {shown(args.file)}")
    return 0


def _abort_by_id(ctx: Context, engine: Any, vault: str, upload_id: str) -> None:
    """Abort ``upload_id``: through each local state naming it (its owner lock), else on the service."""
    keys = [k for k, st in engine.pending().items() if st.upload_id == upload_id]
    for key in keys:
        engine.abort(key)
    if keys:
        return
    try:  # Glacier accepts an abort of an upload aborted a while ago: ask whether it is open first
        ctx.glacier.list_parts(vault, upload_id)
        ctx.glacier.abort_multipart(vault, upload_id)
    except NotFoundError:
        raise NotFoundError(f"no open upload {shown(upload_id)} in vault {vault}") from None


def _abort_on_service(ctx: Context, vault: str, name: str, key: str) -> tuple[int, int]:
    """Abort FILE's open uploads that the service holds although no local state knows them.

    The local state of a pending upload can be lost (cache directory deleted or rebuilt); the
    service keeps the upload (and its parts) until it expires. They are found by the
    description ``upload`` gives FILE (archive path and mtime), which does not prove they are
    FILE's: only those provably FILE's are aborted; for each other one, one line says why it
    was left and how to abort it by id. Returns how many were aborted and how many left.
    """
    from glacierfs.codec import encode_description
    from glacierfs.upload.orphans import open_uploads_of

    try:
        description = encode_description(normalize_archive_path(name), os.stat(name).st_mtime).lstrip(" ")
    except (OSError, UsageError):
        return 0, 0
    owned = {st.upload_id for k, st in ctx.catalog(vault).list_uploads().items() if k != key and st.upload_id}
    aborted = left = 0
    for up in open_uploads_of(ctx.glacier, vault, Path(name), description, owned, ctx.progress):
        if not up.ours:
            again = hints.command(ctx.args, "abort", "-v", vault, f"--upload-id={up.upload_id}")
            log.warning("left open upload %s alone: it has the description of %s, but %s; if it is yours, run: %s",
                        shown(up.upload_id), shown(name), up.why, shown(again))
            left += 1
            continue
        try:
            ctx.glacier.abort_multipart(vault, up.upload_id)
        except NotFoundError:
            continue
        log.warning("aborted upload %s of %s found on the service (no local state knew it; %s)",
                    shown(up.upload_id[:16]), shown(name), up.why)
        aborted += 1
    return aborted, left


# --------------------------------------------------------------------------- inventory

#: When a vault's first inventory can be had (the service makes it, not us).
FIRST_INVENTORY_LOCAL = "the local server makes a vault's first inventory within about a minute of its first upload"
FIRST_INVENTORY_AWS = "Glacier makes a vault's first inventory about a day after its first upload"


def archive_record(a: Archive) -> dict[str, Any]:
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
    """The catalog's archives sorted by path (``--json``: JSON, escaped by the encoder)."""
    archives = sorted(catalog.iter_archives(), key=lambda a: a.path)
    end_status()
    if as_json:
        json.dump([archive_record(a) for a in archives], sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for a in archives:
            _out(f"{shown(a.path)}\t{a.size}\t{shown(a.creation_date)}\t{shown(a.archive_id)}")
    return len(archives)


def cmd_inventory(args: argparse.Namespace) -> int:
    """List the vault, refreshing the catalog from an inventory job when needed.

    Without ``-f`` the last inventory in the local catalog is shown (merged with what
    was uploaded/deleted from here); only when there is none is an inventory job joined
    or started. If Glacier has no inventory of the vault yet, what the catalog knows is
    listed, a note on stderr says when the first one can be had, and the exit status is 0.
    ``-f`` fetches a fresh inventory: it joins an inventory job that is still running or
    the finished, not yet imported job of an interrupted ``-f``; otherwise it starts a new
    job (exit 8 when there is no inventory yet: the fresh listing asked for cannot be had).
    Job ids are recorded before waiting, so re-running after an interruption reattaches.
    """
    from glacierfs.jobs import NoInventoryYet

    vault = check_vault_name(args.vault)
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        runner = ctx.runner(vault)
        try:
            runner.inventory(force=args.force, wait=True)
        except NoInventoryYet:
            count = print_listing(catalog, args.json)
            when = FIRST_INVENTORY_LOCAL if ctx.is_local else FIRST_INVENTORY_AWS
            again = hints.command(args, "inventory", "-v", vault)
            line = (
                f"vault {vault} has no inventory yet ({count} archive(s) known from this machine are"
                f" listed); {when}; then run: {again}"
            )
            if args.force:
                raise NotReadyError(line) from None
            _note(line)
            return 0
        print_listing(catalog, args.json)
    return 0


# --------------------------------------------------------------------------- delete / download


def resolve_archive(ctx: Context, catalog: Catalog, vault: str, path: str) -> Archive:
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
        ids = ", ".join(f"{shown(a.archive_id)} ({shown(a.path)})" for a in candidates)
        raise ConflictError(f"{path} is ambiguous in vault {vault}; use -a with one of: {ids}")
    hint = "" if catalog.inventory_date else (
        f"; the catalog has no inventory yet, to get one run: {hints.command(ctx.args, 'inventory', '-v', vault)}"
    )
    raise NotFoundError(f"no archive {path} in vault {vault}{hint}")


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete one archive the catalog knows (by id or path); ``--unlisted`` for any id.

    Glacier answers a DeleteArchive for an id it does not hold with success (the operation
    is idempotent), so "deleted" could be a lie. The archive is looked up in the catalog
    first: unknown or already deleted ids are refused (exit 3) unless ``--unlisted``, which
    sends the delete and says that the service does not tell whether it existed.
    """
    vault = check_vault_name(args.vault)
    if (args.archive_id is None) == (args.path is None):
        raise UsageError("give either -a ARCHIVE_ID or PATH")
    if args.archive_id is not None and not args.archive_id.strip():
        raise UsageError("empty archive id")
    with open_context(args) as ctx:
        catalog = ctx.catalog(vault)
        path: str | None
        if args.path is not None:
            archive = resolve_archive(ctx, catalog, vault, args.path)
            archive_id, path = archive.archive_id, archive.path
        else:
            archive_id = str(args.archive_id)
            known = catalog.get(archive_id)
            if known is None and not args.unlisted:
                ctx.glacier.describe_vault(vault)  # a missing vault says so (exit 3) before the catalog does
                gone = catalog.get(archive_id, include_deleted=True) is not None
                why = "was already deleted from here" if gone else "is not in the catalog"
                refresh = hints.command(args, "inventory", "-f", "-v", vault)
                raise NotFoundError(
                    f"archive {shown(archive_id)} {why} of vault {vault}; Glacier accepts a delete of any id "
                    "without saying whether it existed, so nothing was sent; add --unlisted to send it "
                    f"anyway, or refresh the catalog, run: {refresh}"
                )
            path = known.path if known is not None else None
        ctx.glacier.delete_archive(vault, archive_id)
        catalog.mark_deleted(archive_id)
        if path is None:
            _out(f"delete sent {shown(archive_id)}  -")
            _note(
                f"archive {shown(archive_id)} is not in the catalog of vault {vault}; Glacier accepted the delete, "
                "which it does for any id: the next inventory shows whether it existed"
            )
        else:
            _out(f"deleted {shown(archive_id)}  {shown(path)}")
    return 0


def download_target(out: str | None, archive_path: str) -> tuple[Path, bool]:
    """Where a download goes, and whether an existing file there may be replaced.

    Only the *basename* of the archive's safe path is ever used (in ``-o DIR`` or the
    current directory), so a hostile description cannot place bytes elsewhere. ``-o FILE``
    names the file exactly and replaces it; an existing file at a derived name is kept.
    """
    base = posixpath.basename(archive_path)
    if base in ("", ".", "..") or "/" in base or "\0" in base:
        raise UsageError(f"archive path {shown(archive_path)!r} gives no usable file name; use -o FILE")
    if out is None:
        return Path.cwd() / base, False
    target = Path(out)
    if out.endswith(("/", os.sep)) and not target.exists():  # -o DIR/ names a directory: create it
        try:
            target.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"cannot create directory {out}: {exc.strerror or exc}") from None
    if target.is_dir():
        return target / base, False
    if not target.parent.is_dir():
        raise UsageError(f"{out}: directory {target.parent} does not exist")
    return target, True


def cmd_download(args: argparse.Namespace) -> int:
    """Download one archive (reusing a running or finished retrieval job), verified and atomic.

    ``--no-wait`` while the retrieval job runs: prints ``pending <archive id>  <job id>  <tier>``
    on stdout, a note with the command to re-run on stderr, and exits 0.
    """
    from glacierfs.codec import safe_relpath
    from glacierfs.jobs import IN_PROGRESS
    from glacierfs.timeutil import fmt_duration, parse_iso

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
            archive = resolve_archive(ctx, catalog, vault, args.path)
            archive_id, archive_path = archive.archive_id, archive.path
        target, replace = download_target(args.output, archive_path)
        if target.exists() and not replace:
            raise ConflictError(f"{target} already exists; remove it or choose another name with -o")
        if target.exists() and target.is_dir():
            raise UsageError(f"{target} is a directory")
        runner = ctx.runner(vault)
        if args.no_wait:
            desc = runner.retrieval(archive_id, args.tier)
            if desc.get("StatusCode") == IN_PROGRESS:
                job_id, tier = str(desc.get("JobId")), str(desc.get("Tier") or args.tier)
                started = parse_iso(desc.get("CreationDate"))
                ago = f", started {fmt_duration(time.time() - started)} ago" if started else ""
                _out(f"pending {shown(archive_id)}  {shown(job_id)}  {shown(tier)}")
                words = ["download", "-v", vault, f"--archive-id={archive_id}"]
                if args.output:
                    words += ["-o", args.output]
                _note(f"{tier} retrieval job still running{ago}; to download when it is done, run: "
                      f"{shown(hints.command(args, *words))}")
                return 0
        result = runner.download_verified(archive_id, target, tier=args.tier, wait=not args.no_wait)
        _restore_attrs(result.path, catalog.get(archive_id))
        _out(f"{shown(archive_id)}  {result.tree_hash}  {result.size}  {shown(result.path)}")
    return 0


def _restore_attrs(path: Path, archive: Any) -> None:
    """The archive's mtime (from its description, else its creation date) and a normal mode (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)
        if archive is not None:
            os.utime(path, (archive.mtime, archive.mtime))


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
                f"{shown(v.get('VaultName'))}\t{v.get('NumberOfArchives') or 0}\t{v.get('SizeInBytes') or 0}\t"
                f"{shown(v.get('LastInventoryDate') or '-')}"
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
        ctx.forget_vault(name)
    return 0


# --------------------------------------------------------------------------- registration


def _vault_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--vault", required=True, help="vault name (required)")


def _archive_or_path(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-a",
        "--archive-id",
        metavar="ARCHIVE_ID",
        help="archive id (default: none, give it or PATH); ids that start with '-' need '=': -a=-xyz",
    )
    p.add_argument("path", nargs="?", metavar="PATH", help="path of the archive as `inventory` lists it")


def _json_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON (default: text lines)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add the client commands to the top-level sub-parsers (``common``: the shared options).

    Each command gets a private deep copy of ``common``: argparse shares the parent's action
    objects, so a later sub-parser that redefines a common option with
    ``conflict_handler="resolve"`` would otherwise strip it from every command.
    """

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[copy.deepcopy(common)], help=help, description=description)

    p = add(
        "treehash",
        "print the Glacier tree hash of files",
        "Print '<tree hash>  <FILE>' for each FILE, like sha256sum. Only regular files are read "
        "(a FIFO or device is refused).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="regular files to hash")
    p.set_defaults(func=cmd_treehash)

    p = add(
        "upload",
        "upload files (re-run to resume)",
        "Upload each FILE as one archive and print '<archive id>  <tree hash>  <size>  <path>'. "
        "The archive path is FILE as given, normalized like GNU tar (leading '/' stripped, "
        "everything up to the last '..' removed, '.' dropped), stored as an mt2 description with "
        "the mtime; --description sends its text as-is instead. Re-running the same command after "
        "an interruption resumes. Only regular files are read.",
    )
    _vault_arg(p)
    p.add_argument(
        "--part-size",
        metavar="SIZE",
        help="multipart part size: 1M, 64MiB, 1G or bytes (default: the smallest power-of-two MiB "
        "of at least 16 MiB that keeps the file within 10,000 parts; a resumed upload keeps its own)",
    )
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="parallel part uploads per file (default: one per part, up to 8; 4 for parts of 8 MiB or less)")
    p.add_argument("--jobs", "--files-in-flight", dest="jobs", type=int, default=4, metavar="N",
                   help="files uploaded at once (default: 4); results are printed in argument order")
    p.add_argument("--description", metavar="TEXT", help="archive description sent as-is (default: mt2 of the path)")
    p.add_argument(
        "--single-request",
        action="store_true",
        help="send files of at most one part as one UploadArchive (1 request instead of 3); a crash "
        "in the instant after the service stored it can then leave a duplicate archive, which is "
        "why the default is a multipart upload for every file (default: off)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="regular files to upload")
    p.set_defaults(func=cmd_upload)

    p = add(
        "abort",
        "abort a file's pending upload and forget it",
        "Abort the pending upload of FILE (found by its real path) and forget its local state. When "
        "no local state knows it, the open uploads on the service with FILE's description are aborted "
        "only if provably FILE's (every part they hold is FILE's bytes); each other one is named with "
        "the command that aborts it by id. --upload-id ID aborts that one upload.",
    )
    _vault_arg(p)
    p.add_argument("file", nargs="?", metavar="FILE", help="the file whose upload to abort, as given to `upload`")
    p.add_argument(
        "--upload-id",
        metavar="ID",
        help="abort this open upload instead (whoever started it), and forget any local state naming it;"
        " ids that start with '-' need '=': --upload-id=-xyz (default: none, give it or FILE)",
    )
    p.set_defaults(func=cmd_abort)

    p = add(
        "inventory",
        "list a vault (from the catalog, or via an inventory job)",
        "Print one line per archive: path<TAB>size<TAB>creation date<TAB>archive id, sorted by "
        "path (--json: a JSON array). Without -f the local catalog's last inventory is shown; "
        "an inventory job is joined or started only when there is none. When Glacier has no "
        "inventory of the vault yet, what the catalog knows (uploads from this machine) is listed, "
        "a note says when the first inventory can be had (about a minute on the local server, "
        "about a day on AWS) and the exit status is 0. -f fetches a fresh inventory: it joins an "
        "inventory job still running or the finished, not yet imported job of an interrupted -f; "
        "otherwise it starts a new job; exit status 8 when there is no inventory yet. Job ids are "
        "recorded before waiting, so an interrupted run reattaches when re-run.",
    )
    _vault_arg(p)
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="fetch a fresh inventory (see above; -f is --force here, --foreground for mount) (default: off)",
    )
    _json_arg(p, "an array of archives")
    p.set_defaults(func=cmd_inventory)

    p = add(
        "delete",
        "delete an archive by id or path",
        "Delete one archive the catalog knows, by -a ARCHIVE_ID (ids starting with '-': -a=-xyz) or "
        "by PATH, and print 'deleted <archive id>  <path>'. Glacier answers a delete of an id it "
        "does not hold with success, so an id the catalog does not list is refused (exit 3) "
        "unless --unlisted.",
    )
    _vault_arg(p)
    _archive_or_path(p)
    p.add_argument(
        "--unlisted",
        action="store_true",
        help="send the delete for an id the catalog does not list; prints 'delete sent <id>  -' "
        "since Glacier does not say whether it existed (default: off)",
    )
    p.set_defaults(func=cmd_delete)

    p = add(
        "download",
        "retrieve an archive (job, wait, verified resumable download)",
        "Reuse a running or finished retrieval job for the archive (whatever its tier) or start "
        "one, wait, then download it in tree-hash-aligned verified ranges, resuming a partial "
        "download; the file is verified whole and moved into place atomically. Output: OUT if -o "
        "names a file (replaced), else the archive's base name in -o DIR or the current directory "
        "(never replaced). Prints '<archive id>  <tree hash>  <size>  <file>'; with --no-wait "
        "while the job runs: 'pending <archive id>  <job id>  <tier>' (exit status 0).",
    )
    _vault_arg(p)
    _archive_or_path(p)
    p.add_argument(
        "-o", "--output", metavar="OUT", help="output file or directory (DIR/ is created if missing; default: the current directory)"
    )
    p.add_argument(
        "--tier",
        type=tier_type,
        default=DEFAULT_TIER,
        help=f"retrieval tier for a new job: {', '.join(TIERS)} (default: {DEFAULT_TIER})",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="do not wait: start or check the retrieval job, download if it is done, else print "
        "'pending ...' and exit 0 (default: wait)",
    )
    p.set_defaults(func=cmd_download)

    p = add(
        "vaults",
        "list, create or delete vaults",
        "Without a sub-command: list vaults as name<TAB>archives<TAB>bytes<TAB>last inventory.",
    )
    _json_arg(p, "the ListVaults records")
    p.set_defaults(func=cmd_vaults_list)
    vsub = p.add_subparsers(dest="vaults_command", metavar="SUBCOMMAND")
    q = vsub.add_parser("create", parents=[copy.deepcopy(common)], help="create a vault",
                        description="Create vault NAME; prints 'created NAME'.")
    q.add_argument("name", metavar="NAME", help="vault name (A-Z a-z 0-9 _ . -, at most 255)")
    q.set_defaults(func=cmd_vaults_create)
    q = vsub.add_parser("delete", parents=[copy.deepcopy(common)], help="delete an empty vault",
                        description="Delete vault NAME; Glacier refuses a vault that held archives at its "
                        "last inventory or was written since (exit 9). Then removes the vault's local state "
                        "here (catalog, cached data), unless it is mounted or its mount staging holds "
                        "files that are not archives (one note says so).")
    q.add_argument("name", metavar="NAME", help="vault name")
    q.set_defaults(func=cmd_vaults_delete)
    q = vsub.add_parser("list", parents=[copy.deepcopy(common)], help="list vaults (the default)",
                        description="List vaults as name<TAB>archives<TAB>bytes<TAB>last inventory.")
    q.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the ListVaults records as JSON (default: text lines)")
    q.set_defaults(func=cmd_vaults_list)
