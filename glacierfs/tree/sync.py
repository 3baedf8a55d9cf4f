"""``glacierfs sync``: make a vault subtree hold the files of a local directory.

Plan (:func:`plan_sync`, read-only): the local tree (:func:`scan.scan_local`) against the
catalog's archives under the prefix (:func:`scan.vault_tree`), paired by safe path.

* no archive for the path                      -> **new** (uploaded)
* an archive with the same size and whole-second mtime -> **unchanged**
* size or mtime differ                          -> with ``--replace-modified`` the file is hashed
  (all cores); an archive with that tree hash makes it unchanged, else it is **replaced**:
  uploaded, and the old archive(s) deleted only after the new one exists. Without the option
  it is reported as modified and left alone.
* several archives for one path: the newest that matches is kept; with ``--replace-modified``
  the others are **superseded** and deleted (this is also how a sync killed between the new
  upload and the deletion of the old archive finishes the job on the next run).
* ``--delete-removed``: archives whose file is gone are **deleted**; paths that are excluded or
  skipped locally are never deleted.

Run (:func:`run_sync`): every operation is idempotent and re-planned from the catalog on the
next run, so a sync killed at any point and run again reaches the same end state:

* uploads use the deterministic upload key ``sync:<archive path>``, so an interrupted upload
  is resumed by the upload engine (ListParts, a repeated Complete gives the same archive id),
  never started as a second archive;
* a deletion is sent to Glacier first, then recorded in the catalog (an archive already gone
  counts as deleted), so a kill in between only repeats it;
* pending ``sync:`` uploads under the prefix that the plan no longer needs (file deleted or
  unchanged meanwhile) are aborted, so nothing is left half-uploaded.

Threading contract: the main thread plans, submits and prints. A pool of ``jobs`` worker
threads (:func:`glacierfs.upload.batch.in_flight`, shared with ``upload FILE...``) runs one
operation each (an upload with its own :class:`UploadEngine`, whose part
threads are its own, or a deletion). Workers share the Glacier client (boto3 clients are
thread-safe) and the catalog (thread- and process-safe); they return an :class:`Outcome` and
touch no shared mutable state of this module. The main thread alone owns :class:`SyncResult`
and the output stream; no locks are needed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from glacierfs.errors import CredentialsError, GlacierFSError, NotFoundError
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.tree.scan import (
    ArchiveLike,
    LocalFile,
    hash_files,
    norm_prefix,
    same_stat,
    scan_local,
    under,
    vault_key,
    vault_tree,
)
from glacierfs.upload.batch import in_flight

log = logging.getLogger(__name__)

KEY_PREFIX = "sync:"


class SyncCatalog(Protocol):
    def iter_archives(self) -> Iterator[ArchiveLike]: ...
    def mark_deleted(self, archive_id: str) -> None: ...
    def list_uploads(self) -> dict[str, dict[str, Any]]: ...


class Uploader(Protocol):
    def upload(self, source: Path, archive_path: str, *, mtime: float | None = None,
               description: str | None = None, key: str | None = None) -> Any: ...
    def abort(self, key: str) -> bool: ...


class Deleter(Protocol):
    def delete_archive(self, vault: str, archive_id: str) -> None: ...


@dataclass(frozen=True)
class UploadOp:
    local: LocalFile
    archive_path: str  # as stored in the description: prefix/rel
    key: str  # safe vault path
    old: tuple[ArchiveLike, ...] = ()  # deleted once the new archive exists


@dataclass(frozen=True)
class DeleteOp:
    key: str
    archive: ArchiveLike
    reason: str  # "removed" | "superseded"


@dataclass
class SyncPlan:
    new: list[UploadOp] = field(default_factory=list)
    replace: list[UploadOp] = field(default_factory=list)
    delete: list[DeleteOp] = field(default_factory=list)
    unchanged: int = 0
    modified: list[str] = field(default_factory=list)  # differ, not replaced (no --replace-modified)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    stale_uploads: list[str] = field(default_factory=list)  # upload keys to abort

    @property
    def upload_bytes(self) -> int:
        return sum(op.local.size for op in (*self.new, *self.replace))


@dataclass
class Outcome:
    kind: str  # "uploaded" | "replaced" | "deleted"
    key: str
    size: int = 0
    error: GlacierFSError | None = None
    deleted: int = 0


@dataclass
class SyncResult:
    new: int = 0
    replaced: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0
    modified: int = 0
    bytes: int = 0
    errors: list[tuple[str, GlacierFSError]] = field(default_factory=list)

    def summary(self, dry_run: bool = False) -> str:
        parts = [
            f"{self.new} new", f"{self.replaced} replaced", f"{self.deleted} deleted",
            f"{self.unchanged} unchanged", f"{self.skipped} skipped",
        ]
        if self.modified:
            parts.append(f"{self.modified} modified not replaced (use --replace-modified)")
        if self.errors:
            parts.append(f"{len(self.errors)} failed")
        verb = "to upload" if dry_run else "uploaded"
        return f"sync{' (dry run)' if dry_run else ''}: {', '.join(parts)}; {self.bytes} bytes {verb}"


def plan_sync(
    catalog: SyncCatalog,
    root: Path,
    *,
    prefix: str | None = None,
    replace_modified: bool = False,
    delete_removed: bool = False,
    excludes: list[str] | None = None,
) -> SyncPlan:
    """What a sync would do now (nothing is changed)."""
    prefix = norm_prefix(prefix)
    tree = scan_local(root, excludes or [])
    remote = vault_tree(catalog, prefix)
    plan = SyncPlan(skipped=list(tree.skipped))
    local: dict[str, tuple[LocalFile, str]] = {}
    for rel in sorted(tree.files):
        lf = tree.files[rel]
        raw = f"{prefix}/{rel}" if prefix else rel
        key = vault_key(prefix, rel)
        if key in local:
            plan.skipped.append((rel, f"same vault path as {local[key][0].rel}"))
            continue
        local[key] = (lf, raw)
    to_hash: list[str] = []
    for key, (lf, raw) in local.items():
        group = remote.get(key)
        if not group:
            plan.new.append(UploadOp(lf, raw, key))
            continue
        matches = [a for a in group if same_stat(lf, a)]
        if matches:
            _keep(plan, key, group, matches[0], replace_modified)
        elif replace_modified:
            to_hash.append(key)
        else:
            plan.modified.append(key)
    if to_hash:
        hashes = hash_files((k, local[k][0].path) for k in to_hash)
        for key in to_hash:
            lf, raw = local[key]
            group = remote[key]
            digest = hashes[key]
            if isinstance(digest, OSError):
                plan.skipped.append((lf.rel, f"cannot read: {digest.strerror or digest}"))
                continue
            matches = [a for a in group if a.tree_hash == digest]
            if matches:
                _keep(plan, key, group, matches[0], True)
            else:
                plan.replace.append(UploadOp(lf, raw, key, tuple(group)))
    if delete_removed:
        protected = [vault_key(prefix, rel) for rel in tree.excluded]
        protected += [vault_key(prefix, rel) for rel, _ in plan.skipped if rel != "."]
        for key, group in sorted(remote.items()):
            if key in local or any(under(key, p) for p in protected):
                continue
            plan.delete.extend(DeleteOp(key, a, "removed") for a in group)
    uploading = {KEY_PREFIX + op.archive_path for op in (*plan.new, *plan.replace)}
    for ukey in catalog.list_uploads():
        if ukey.startswith(KEY_PREFIX) and ukey not in uploading:
            path = ukey[len(KEY_PREFIX):]
            if under(path, prefix):
                plan.stale_uploads.append(ukey)
    return plan


def _keep(plan: SyncPlan, key: str, group: list[ArchiveLike], keep: ArchiveLike, supersede: bool) -> None:
    plan.unchanged += 1
    if supersede:
        plan.delete.extend(DeleteOp(key, a, "superseded") for a in group if a is not keep)


def delete_archive(glacier: Deleter, catalog: SyncCatalog, vault: str, archive_id: str) -> None:
    """Delete in Glacier, then hide in the catalog; an archive already gone counts as deleted."""
    try:
        glacier.delete_archive(vault, archive_id)
    except NotFoundError as exc:
        if "vault" in str(exc).lower() and "archive" not in str(exc).lower():
            raise
        log.info("archive %s was already deleted", archive_id)
    catalog.mark_deleted(archive_id)


def run_sync(
    plan: SyncPlan,
    *,
    vault: str,
    glacier: Deleter,
    catalog: SyncCatalog,
    engine_factory: Callable[[], Uploader],
    jobs: int = 4,
    progress: Progress = NULL_PROGRESS,
    emit: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> SyncResult:
    """Carry out ``plan`` with ``jobs`` operations in flight; per-item failures are collected.

    ``stop`` is set when the run ends early (Ctrl-C, credentials): engines made to watch it send
    no new part, so the process ends within the parts in flight.
    """
    result = SyncResult(unchanged=plan.unchanged, skipped=len(plan.skipped), modified=len(plan.modified))
    for key in plan.stale_uploads:
        try:
            if engine_factory().abort(key):
                log.warning("aborted the pending upload %s: the sync no longer needs it", key)
        except GlacierFSError as exc:
            result.errors.append((key, exc))

    def upload(op: UploadOp, kind: str) -> Outcome:
        try:
            archive = engine_factory().upload(
                op.local.path, op.archive_path, mtime=op.local.mtime, key=KEY_PREFIX + op.archive_path
            )
            if getattr(archive, "size", op.local.size) != op.local.size:
                raise GlacierFSError(f"{op.key}: the archive holds {archive.size} bytes, the file {op.local.size}")
            n = 0
            for old in op.old:  # only now that the new archive exists
                if old.archive_id != getattr(archive, "archive_id", None):
                    delete_archive(glacier, catalog, vault, old.archive_id)
                    n += 1
            return Outcome(kind, op.key, op.local.size, deleted=n)
        except GlacierFSError as exc:
            return Outcome(kind, op.key, error=exc)

    def delete(op: DeleteOp) -> Outcome:
        try:
            delete_archive(glacier, catalog, vault, op.archive.archive_id)
            return Outcome("deleted", op.key, deleted=1)
        except GlacierFSError as exc:
            return Outcome("deleted", op.key, error=exc)

    tasks: list[Callable[[], Outcome]] = []
    tasks += [lambda op=op: upload(op, "uploaded") for op in plan.new]  # type: ignore[misc]
    tasks += [lambda op=op: upload(op, "replaced") for op in plan.replace]  # type: ignore[misc]
    tasks += [lambda op=op: delete(op) for op in plan.delete]  # type: ignore[misc]
    bar = progress.bar("sync", plan.upload_bytes)
    try:
        with contextlib.closing(in_flight(tasks, jobs, "sync", stop)) as results:  # an error cancels the rest
            for _index, out in results:
                if isinstance(out.error, CredentialsError):
                    raise out.error  # every other operation would fail the same way: one line
                _account(out, result, emit)
                bar.update(out.size)
    finally:
        bar.close()
    return result


def _account(out: Outcome, result: SyncResult, emit: Callable[[str], None]) -> None:
    if out.error is not None:
        result.errors.append((out.key, out.error))
        return
    if out.kind == "uploaded":
        result.new += 1
    elif out.kind == "replaced":
        result.replaced += 1
    if out.kind == "deleted":
        result.deleted += out.deleted
    result.bytes += out.size
    emit(f"{out.kind} {out.key}")


def dry_run_result(plan: SyncPlan, emit: Callable[[str], None] = print) -> SyncResult:
    """Print the plan's operations and return its summary counts."""
    for op in plan.new:
        emit(f"would upload {op.key}")
    for op in plan.replace:
        emit(f"would replace {op.key}")
    for d in plan.delete:
        emit(f"would delete {d.key} ({d.reason}, archive {d.archive.archive_id[:16]})")
    for key in plan.stale_uploads:
        emit(f"would abort the pending upload {key}")
    return SyncResult(
        new=len(plan.new), replaced=len(plan.replace), deleted=len(plan.delete),
        unchanged=plan.unchanged, skipped=len(plan.skipped), modified=len(plan.modified),
        bytes=plan.upload_bytes,
    )
