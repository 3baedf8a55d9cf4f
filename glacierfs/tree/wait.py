"""``glacierfs wait``: block until the uploads and retrievals under some vault paths are done.

Pending uploads are the catalog's upload states (CLI uploads, syncs and the mount's queue all
record one until the archive exists); replacements are the mount's staged manifests that still
name archives to delete (:func:`~glacierfs.fs.stagedir.pending_replacements`: the new archive
may exist already while the old one is not deleted yet); retrievals are the vault's retrieval jobs still
``InProgress`` (one ListJobs per poll, so jobs of the mount, of ``restore`` and of other tools
count) whose archive is under a PATH. With no PATH everything counts. A mount downloads a
finished job into its cache shortly after (its own poll), so ``wait`` returning means the job's
output can be read.

Threading contract: single-threaded (the caller's thread); it only reads the catalog and lists jobs.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from glacierfs.errors import NotReadyError
from glacierfs.fs.stagedir import pending_replacements
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.upload.state import UploadState

log = logging.getLogger(__name__)


class WaitCatalog(Protocol):
    def list_uploads(self) -> Mapping[str, UploadState]: ...
    def get(self, archive_id: str, include_deleted: bool = False) -> Any: ...
    @property
    def state_dir(self) -> Path: ...


class JobLister(Protocol):
    def list_jobs(self, vault: str) -> list[dict[str, Any]]: ...


@dataclass
class Pending:
    uploads: list[str]
    retrievals: list[str]
    replacements: list[str] = field(default_factory=list)  # paths whose replaced archives are not deleted yet

    def __bool__(self) -> bool:
        return bool(self.uploads or self.retrievals or self.replacements)

    def summary(self) -> str:
        s = f"{len(self.uploads)} upload(s), {len(self.retrievals)} retrieval job(s)"
        if self.replacements:
            s += f", {len(self.replacements)} replaced archive delete(s)"
        return s


def _norm(path: str) -> str:
    return posixpath.normpath("/" + path).lstrip("/")


def _under(path: str | None, roots: list[str]) -> bool:
    if not roots:
        return True
    if not path:
        return False
    return any(not r or path == r or path.startswith(r + "/") for r in roots)


def pending(catalog: WaitCatalog, glacier: JobLister, vault: str, paths: list[str]) -> Pending:
    roots = [_norm(p) for p in paths]
    uploads = []
    for key, state in catalog.list_uploads().items():
        path = state.archive_path
        if _under(_norm(path) if path else None, roots):
            uploads.append(str(path or key))
    retrievals = []
    for job in glacier.list_jobs(vault):
        if job.get("Action") != "ArchiveRetrieval" or job.get("StatusCode") != "InProgress":
            continue
        archive = catalog.get(job.get("ArchiveId") or "")
        where: str | None = getattr(archive, "path", None)
        if _under(where, roots):
            retrievals.append(where or str(job.get("ArchiveId")))
    replacements = [_norm(m.path) for m in pending_replacements(catalog.state_dir) if _under(_norm(m.path), roots)]
    return Pending(sorted(uploads), sorted(retrievals), sorted(replacements))


def wait_until_done(
    catalog: WaitCatalog, glacier: JobLister, vault: str, paths: list[str], *,
    timeout: float | None = None, poll: tuple[float, float] = (1.0, 60.0),
    progress: Progress = NULL_PROGRESS, sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Return when nothing is pending under ``paths``; NotReadyError after ``timeout`` seconds."""
    deadline = None if timeout is None else clock() + timeout
    delay = poll[0]
    while True:
        left = pending(catalog, glacier, vault, paths)
        if not left:
            return
        progress.status(f"waiting for {left.summary()}")
        if deadline is not None and clock() >= deadline:
            first = (left.uploads + left.retrievals + left.replacements)[0]
            raise NotReadyError(f"still pending after {timeout:g} s: {left.summary()} (e.g. {first})")
        pause = delay if deadline is None else max(0.0, min(delay, deadline - clock()))
        sleep(pause)
        delay = min(poll[1], delay * 1.5)
