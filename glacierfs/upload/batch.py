"""Several files in flight: a bounded pool of operations, and ``upload FILE...`` on top of it.

Why: per-file costs (three requests per multipart upload, each a round trip on a WAN, plus the
catalog writes the crash guarantees need) dominate many small files; one file at a time leaves
the connections idle between them. ``sync`` and ``upload FILE...`` share :func:`in_flight`.

Threading contract: the caller's thread (the *main* thread) submits and consumes; a pool of
``jobs`` worker threads runs one task each. A task must not raise for a per-item failure (it
returns an outcome); what it raises anyway is re-raised in the main thread, after the tasks
not yet started are cancelled. Workers share nothing mutable of this module; each upload task
makes its own :class:`~glacierfs.upload.engine.UploadEngine` (an engine is one thread's).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from glacierfs.errors import CredentialsError, GlacierFSError

if TYPE_CHECKING:  # pragma: no cover
    from glacierfs.catalog.records import Archive

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FILES_IN_FLIGHT = 4


def in_flight(
    tasks: Iterable[Callable[[], T]], jobs: int, name: str = "batch", stop: threading.Event | None = None
) -> Generator[tuple[int, T], None, None]:
    """Run ``tasks`` with at most ``jobs`` in flight; yield ``(index, result)`` as each completes.

    Tasks are taken from the iterable only as room frees up (a million files are not queued at
    once). Closing the generator early (or an exception, e.g. Ctrl-C) cancels the tasks not yet
    started and sets ``stop``, which the running ones watch (an upload engine given it sends no
    new part), so the process ends within the parts in flight rather than whole files.
    """
    jobs = max(1, jobs)
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix=name)
    pending = enumerate(tasks)
    inflight: dict[Future[T], int] = {}
    try:
        while True:
            while len(inflight) < jobs:
                item = next(pending, None)
                if item is None:
                    break
                inflight[pool.submit(item[1])] = item[0]
            if not inflight:
                break
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                index = inflight.pop(fut)
                yield index, fut.result()
    except BaseException:
        if stop is not None:
            stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# --------------------------------------------------------------------------- upload FILE...


class FileUploader(Protocol):
    """What :func:`upload_files` needs of an :class:`~glacierfs.upload.engine.UploadEngine`."""

    def upload(self, source: Path, archive_path: str, *, mtime: float | None = None,
               description: str | None = None, key: str | None = None) -> Archive: ...


@dataclass(frozen=True)
class FileItem:
    """One FILE of the command line: where to read it and what to call the archive."""

    name: str  # as given (shown in messages)
    archive_path: str
    description: str | None = None


@dataclass(frozen=True)
class FileOutcome:
    """What became of one FILE: its archive, or the error (never both)."""

    index: int
    item: FileItem
    archive: Archive | None = None
    error: GlacierFSError | None = None

    @property
    def fatal(self) -> bool:
        """An error every other file would meet too (credentials, the vault itself is missing)."""
        err = self.error
        return isinstance(err, CredentialsError) or (err is not None and err.code == "ResourceNotFoundException")


def upload_files(
    items: Sequence[FileItem],
    engine_factory: Callable[[threading.Event], FileUploader],
    jobs: int = DEFAULT_FILES_IN_FLIGHT,
) -> Generator[FileOutcome, None, None]:
    """Upload ``items`` with ``jobs`` files in flight; yield each outcome in the items' order.

    Each file's upload key is its real path (as with one file at a time), so re-running the
    same command resumes every interrupted upload and skips the files already archived. A file
    that cannot be read fails alone (its outcome carries the error); the others go on.
    ``engine_factory(stop)`` makes one engine per file that watches ``stop`` (set when this
    generator is closed early or interrupted).
    """
    from glacierfs.fsutil import check_regular_file

    def upload(item: FileItem) -> FileOutcome:
        try:
            st = check_regular_file(item.name)
            archive = engine_factory(stop).upload(
                Path(item.name), item.archive_path, mtime=st.st_mtime, description=item.description,
                key=os.path.realpath(item.name),
            )
            return FileOutcome(-1, item, archive=archive)
        except GlacierFSError as exc:
            return FileOutcome(-1, item, error=exc)

    stop = threading.Event()
    ready: dict[int, FileOutcome] = {}
    next_index = 0
    tasks = (lambda item=item: upload(item) for item in items)
    results = in_flight(tasks, jobs, "upload", stop)
    try:
        for index, out in results:
            ready[index] = FileOutcome(index, out.item, out.archive, out.error)
            while next_index in ready:  # argument order: each line as soon as those before it are out
                yield ready.pop(next_index)
                next_index += 1
    finally:
        stop.set()  # closed early (a fatal error, Ctrl-C): the files still running stop
        results.close()
