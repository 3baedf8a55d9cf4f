"""Verified, resumable, ranged download of a finished retrieval job's output.

Archive downloads go in power-of-two-MiB chunks aligned on the archive's tree, so each
chunk is one node of the tree: its hash is checked against ``x-amz-sha256-tree-hash``
(and its length against Content-Range/Content-Length) and the chunk hashes combine into
the archive's tree hash. Verified chunks are recorded in a sidecar next to the partial
file (``.NAME.glacierfs-part`` + ``.json`` in the target's directory, so the final
``os.replace`` is atomic and nothing is written outside the target directory); a re-run
resumes from them. The whole file is hashed again before it is moved into place.

Every body read is bounded in time (:class:`Deadlines`): an overall deadline per body and a
no-progress timeout, so a server trickling one byte every few seconds cannot hold a
download (or an inventory fetch, which uses :func:`read_body`) forever.

Threading contract: :meth:`Downloader.fetch` runs in the caller's thread and, for archives
of several chunks, in up to ``concurrency`` pool threads (``download-N``; by default one per
chunk, at most 8: :func:`download_concurrency`) that each fetch one
chunk into its own byte range of the partial file (``os.pwrite``: no shared file offset).
The sidecar state dict ``state["chunks"]`` and the sidecar file are shared: both are only
touched under the per-fetch ``threading.Lock`` (``lock`` in :meth:`_fetch_chunks`); no lock
is held across a network read. The partial file's ``flock`` keeps a second process (or a
second fetch in this one) from writing the same target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from glacierfs.client import JobNotFoundError
from glacierfs.errors import (
    IntegrityError,
    NotFoundError,
    ServiceError,
    StateError,
    UsageError,
)
from glacierfs.fsutil import fsync_dir_best_effort, remove_stale_temps, write_json_atomic
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.treehash import MiB, TreeHasher, combine, tree_hash_file

log = logging.getLogger(__name__)

MAX_CHUNK = 64 * MiB
PROGRESS_UNIT = 64 * 1024  # a body "progresses" each time this many more bytes (or the rest) arrive


class JobExpired(NotFoundError):
    """A recorded job is gone (expired or never existed on this endpoint)."""


class TransferTimeout(ServiceError):
    """A body broke a :class:`Deadlines` bound (stalled or too slow); not retried: that bound was the limit."""


@dataclass(frozen=True)
class Deadlines:
    """How long any one wait may last (seconds).

    ``job_wait``: polling one job until it completes. ``stall``: a body that delivers no
    :data:`PROGRESS_UNIT` (or its rest) for this long is given up. ``transfer_base`` +
    size / ``min_rate``: the overall deadline of one body of ``size`` bytes.
    """

    job_wait: float = 48 * 3600.0
    stall: float = 60.0
    transfer_base: float = 300.0
    min_rate: float = 32 * 1024.0
    socket_read: float = 120.0  # botocore's read timeout: a server sending nothing at all

    @classmethod
    def capped(cls, seconds: float | None) -> Deadlines:
        """The defaults, each capped at ``seconds`` (the CLI's ``--timeout``); None: the defaults."""
        d = cls()
        if seconds is None:
            return d
        if not isinstance(seconds, int | float) or not 0 < seconds < float("inf"):
            raise UsageError(f"invalid timeout {seconds!r}: give a positive number of seconds")
        return cls(
            job_wait=min(d.job_wait, seconds),
            stall=min(d.stall, seconds),
            transfer_base=min(d.transfer_base, seconds),
            min_rate=d.min_rate,
            socket_read=min(d.socket_read, seconds),
        )

    def transfer(self, size: int | None) -> float:
        """The overall deadline of a body of ``size`` bytes (unknown: a 1 GiB body's)."""
        return self.transfer_base + (size if size is not None else 1 << 30) / self.min_rate


@dataclass(frozen=True)
class Downloaded:
    """A verified, complete download."""

    path: Path
    archive_id: str
    size: int
    tree_hash: str
    job_id: str


class Readable(Protocol):
    """A response body; one with ``read1`` (returns what has arrived) is read with it."""

    def read(self, amt: int | None = ...) -> bytes: ...
    def close(self) -> None: ...


class JobOutputSource(Protocol):
    """The part of :class:`glacierfs.client.Glacier` a download needs."""

    def get_job_output(
        self, vault: str, job_id: str, byte_range: tuple[int, int] | str | None = None
    ) -> tuple[Any, dict[str, Any]]: ...


class ArchiveLookup(Protocol):
    """The part of the catalog a download needs: the inventory's tree hash of an archive."""

    def get(self, archive_id: str) -> Any: ...


# --------------------------------------------------------------------------- helpers


# Ranged GETs in flight for one archive by default: one per chunk, up to 8 (the WAN bench's best
# case; at 50 ms a round trip, 2 threads over 16 chunks of a 1 GiB archive waited 8 round trips
# and ran at 0.79 of it). Memory stays bounded whatever the size: each thread holds one body
# block (1 MiB) and a leaf buffer, the bytes go straight to the partial file.
MAX_DOWNLOAD_THREADS = 8


def download_concurrency(size: int, chunk: int) -> int:
    """Threads for an archive of ``size`` bytes in ``chunk``-byte ranges: one per range, at most 8."""
    return max(1, min(MAX_DOWNLOAD_THREADS, -(-size // chunk)))


def chunk_size_for(size: int, maximum: int = MAX_CHUNK) -> int:
    """Power-of-two MiB chunk: up to ``maximum``, smaller so small archives still split a few ways."""
    chunk = MiB
    while chunk * 2 <= maximum and chunk * 2 * 4 <= size:
        chunk *= 2
    return chunk


def header(headers: Mapping[str, Any] | None, *names: str) -> str | None:
    """A response header or parsed field by any of its spellings (case-insensitive)."""
    if not headers:
        return None
    lower = {str(k).lower(): v for k, v in dict(headers).items()}
    for name in names:
        value = lower.get(name.lower())
        if value is not None:
            return str(value)
    return None


def header_int(headers: Mapping[str, Any] | None, *names: str) -> int | None:
    """An integer header (Content-Length): None if absent, :class:`ServiceError` if not a count."""
    value = header(headers, *names)
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise ServiceError(f"the server returned an invalid {names[0]}: {ascii(value)[:40]}")
    return int(text)


def partial_paths(out: Path) -> tuple[Path, Path]:
    """The hidden partial file and its sidecar next to ``out`` (same filesystem: atomic rename).

    ``.NAME.glacierfs-part`` and ``.NAME.glacierfs-part.json``; a hashed name when NAME is
    too long to take the prefix and suffix within the 255-byte name limit.
    """
    name = f".{out.name}.glacierfs-part"
    if len((name + ".json").encode("utf-8", "surrogateescape")) > 255:
        digest = hashlib.sha256(out.name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        name = f".glacierfs-part-{digest}"
    return out.with_name(name), out.with_name(name + ".json")


def stream_errors() -> tuple[type[BaseException], ...]:
    """Errors raised while reading a response body (connection reset, truncated stream)."""
    errs: list[type[BaseException]] = [OSError, EOFError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errs.append(botocore.exceptions.BotoCoreError)
    with contextlib.suppress(ImportError):
        import urllib3.exceptions

        errs.append(urllib3.exceptions.HTTPError)
    return tuple(errs)


def read_body(
    stream: Readable,
    sink: Callable[[bytes], None],
    *,
    limit: int,
    what: str,
    deadlines: Deadlines,
    expected: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Copy ``stream`` into ``sink`` (in blocks); returns the byte count.

    More than ``limit`` bytes is an :class:`IntegrityError` (nothing past the limit reaches
    ``sink``); a body slower than :class:`Deadlines` allows is a :class:`ServiceError`.
    """
    start = mark_time = clock()
    overall = deadlines.transfer(expected if expected is not None else limit)
    total = mark = 0
    read = getattr(stream, "read1", None) or stream.read  # read1: return as soon as bytes arrive
    while True:
        want = min(1 << 20, limit + 1 - total)
        data = read(max(1, want))
        now = clock()
        if not data:
            return total
        if total + len(data) > limit:
            raise IntegrityError(f"{what}: the body is longer than {limit} bytes")
        sink(data)
        total += len(data)
        if total - mark >= PROGRESS_UNIT or (expected is not None and total >= expected):
            mark, mark_time = total, now
        elif now - mark_time > deadlines.stall:
            raise TransferTimeout(
                f"{what}: the transfer stalled ({total} bytes, no progress for {deadlines.stall:g} s)"
            )
        if now - start > overall:
            raise TransferTimeout(f"{what}: the transfer took longer than {overall:g} s; gave up")


_TRANSIENT: tuple[type[BaseException], ...] = (ServiceError, *stream_errors())


# --------------------------------------------------------------------------- downloader


class Downloader:
    """Downloads finished retrieval jobs of one vault (see the module docstring).

    ``chunk_size`` (a power of two MiB) overrides the automatic chunk size; ``attempts``
    bounds the fetches of one chunk that fail verification or break off.
    """

    def __init__(
        self,
        glacier: JobOutputSource,
        catalog: ArchiveLookup,
        vault: str,
        *,
        progress: Progress | None = None,
        chunk_size: int | None = None,
        concurrency: int | None = None,
        attempts: int = 5,
        deadlines: Deadlines | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_size is not None and (chunk_size < MiB or chunk_size & (chunk_size - 1)):
            raise UsageError("download chunk size must be a power of two of at least 1 MiB")
        self.glacier = glacier
        self.catalog = catalog
        self.vault = vault
        self.progress = progress or NULL_PROGRESS
        self.chunk_size = chunk_size
        self.concurrency = None if concurrency is None else max(1, concurrency)  # None: per archive
        self.attempts = max(1, attempts)
        self.deadlines = deadlines or Deadlines()
        self.sleep = sleep

    def fetch(self, desc: Mapping[str, Any], out: Path) -> Downloaded:
        """Download a finished retrieval job's output into ``out``, verified, resumable, atomic."""
        job_id = str(desc["JobId"])
        archive_id = str(desc.get("ArchiveId") or "")
        if desc.get("ArchiveSizeInBytes") is None:
            raise ServiceError(f"retrieval job {job_id} reports no archive size")
        size = int(desc["ArchiveSizeInBytes"])
        expected = desc.get("SHA256TreeHash") or desc.get("ArchiveSHA256TreeHash")
        known = self.catalog.get(archive_id) if archive_id else None
        known_hash = getattr(known, "tree_hash", None) if known else None
        if expected and known_hash and known_hash != expected:
            raise IntegrityError(
                f"archive {archive_id}: the job reports tree hash {expected}, the inventory {known_hash}"
            )
        expected = expected or known_hash
        if not expected:
            raise IntegrityError(f"archive {archive_id}: no tree hash to verify the download against")
        out = Path(out)
        if out.is_dir():
            raise UsageError(f"{out} is a directory")
        part, state_path = partial_paths(out)
        chunk = self.chunk_size or chunk_size_for(size)
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StateError(f"another glacierfs process is downloading to {out}") from None
                raise
            try:
                state = self._load_state(state_path, archive_id, size, expected, chunk, fd)
                self._fetch_chunks(job_id, archive_id, fd, size, chunk, state, state_path)
                self._verify_whole(job_id, archive_id, fd, part, size, chunk, expected, state, state_path)
                os.fsync(fd)
                os.replace(part, out)
            except OSError as exc:  # local disk trouble (full, read-only, removed directory)
                raise StateError(f"writing {out}: {exc.strerror or exc}") from None
            fsync_dir_best_effort(out.parent)
            # Still under the part file's lock: the sidecar and any temporary copy of it
            # that a kill left behind are ours to remove.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_path)
            remove_stale_temps(state_path)
        finally:
            os.close(fd)
        log.info("downloaded archive %s to %s (%d bytes, %s)", archive_id, out, size, expected)
        return Downloaded(path=out, archive_id=archive_id, size=size, tree_hash=expected, job_id=job_id)

    def _load_state(
        self, path: Path, archive_id: str, size: int, tree_hash: str, chunk: int, fd: int
    ) -> dict[str, Any]:
        """The sidecar of a partial download of the same archive, or a fresh one (part truncated)."""
        fresh: dict[str, Any] = {
            "archive_id": archive_id,
            "size": size,
            "tree_hash": tree_hash,
            "chunk_size": chunk,
            "chunks": {},
        }
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = None
        keys = ("archive_id", "size", "tree_hash", "chunk_size")
        ok = (
            isinstance(state, dict)
            and {k: state.get(k) for k in keys} == {k: fresh[k] for k in keys}
            and isinstance(state.get("chunks"), dict)
            and os.fstat(fd).st_size == size
        )
        if ok:
            assert isinstance(state, dict)
            log.info(
                "resuming download of %s: %d chunk(s) already verified", archive_id, len(state["chunks"])
            )
            return state
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        write_json_atomic(path, fresh)
        return fresh

    def _fetch_chunks(
        self,
        job_id: str,
        archive_id: str,
        fd: int,
        size: int,
        chunk: int,
        state: dict[str, Any],
        state_path: Path,
    ) -> None:
        n = max(1, (size + chunk - 1) // chunk) if size else 0
        todo = [i for i in range(n) if str(i) not in state["chunks"]]
        if not todo:
            return
        done_bytes = sum(min(chunk, size - i * chunk) for i in range(n) if str(i) in state["chunks"])
        bar = self.progress.bar(f"download {archive_id[:12]}…", size, initial=done_bytes)
        lock = threading.Lock()  # guards state["chunks"] and the sidecar file

        def one(i: int) -> None:
            start, end = i * chunk, min(size, (i + 1) * chunk) - 1
            digest, confirmed = self._fetch_range(job_id, archive_id, fd, start, end)
            os.fsync(fd)  # the chunk is on disk before the sidecar says so
            with lock:
                state["chunks"][str(i)] = [digest, confirmed]
                write_json_atomic(state_path, state)
            bar.update(end - start + 1)

        threads = self.concurrency or download_concurrency(size, chunk)
        try:
            if threads == 1 or len(todo) == 1:
                for i in todo:
                    one(i)
            else:
                with ThreadPoolExecutor(min(threads, len(todo)), thread_name_prefix="download") as pool:
                    futures = [pool.submit(one, i) for i in todo]
                    try:
                        for f in as_completed(futures):
                            f.result()
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
        finally:
            bar.close()

    def _fetch_range(self, job_id: str, archive_id: str, fd: int, start: int, end: int) -> tuple[str, bool]:
        """Fetch bytes [start, end] of the job output into ``fd``; returns (tree hash, header-confirmed).

        Checks Content-Range, the length and ``x-amz-sha256-tree-hash``; a failing fetch is
        repeated up to ``attempts`` times.
        """
        length = end - start + 1
        last: BaseException | None = None
        integrity_only = True
        delay = 0.05
        for attempt in range(1, self.attempts + 1):
            try:
                return self._fetch_range_once(job_id, fd, start, end, length)
            except (JobExpired, TransferTimeout):
                raise
            except JobNotFoundError:
                raise JobExpired(f"job {job_id} no longer exists") from None
            except IntegrityError as exc:
                last = exc
            except _TRANSIENT as exc:
                last = exc
                integrity_only = False
            log.warning(
                "bytes %d-%d of archive %s: attempt %d failed: %s", start, end, archive_id, attempt, last
            )
            self.sleep(delay)
            delay = min(2.0, delay * 2)
        msg = f"bytes {start}-{end} of archive {archive_id} failed {self.attempts} times: {last}"
        raise IntegrityError(msg) if integrity_only else ServiceError(msg)

    def _fetch_range_once(self, job_id: str, fd: int, start: int, end: int, length: int) -> tuple[str, bool]:
        stream, headers = self.glacier.get_job_output(self.vault, job_id, (start, end))
        what = f"bytes {start}-{end} of job {job_id}"
        try:
            crange = header(headers, "content-range", "contentRange")
            if crange is not None:
                spec = crange.replace("bytes", "").strip().split("/")[0]
                if spec != f"{start}-{end}":
                    raise IntegrityError(f"asked for bytes {start}-{end}, got Content-Range {ascii(crange)[:80]}")
            clen = header_int(headers, "content-length", "ContentLength")
            if clen is not None and clen != length:
                raise IntegrityError(f"asked for {length} bytes, got Content-Length {clen}")
            claimed = header(headers, "x-amz-sha256-tree-hash", "checksum")
            if claimed is not None and not _is_hex64(claimed):
                raise ServiceError(f"{what}: the server returned an invalid tree hash {ascii(claimed)[:80]}")
            hasher = TreeHasher()
            pos = start

            def sink(data: bytes) -> None:
                nonlocal pos
                hasher.update(data)
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, pos)
                    view = view[written:]
                    pos += written

            read_body(stream, sink, limit=length, what=what, deadlines=self.deadlines, expected=length)
            if pos != end + 1:
                raise IntegrityError(
                    f"bytes {start}-{end}: the body ended after {pos - start} of {length} bytes"
                )
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        digest = hasher.hexdigest()
        if claimed is not None and claimed.lower() != digest:
            raise IntegrityError(
                f"bytes {start}-{end}: tree hash {digest} does not match the server's {claimed}"
            )
        return digest, claimed is not None

    def _verify_whole(
        self,
        job_id: str,
        archive_id: str,
        fd: int,
        part: Path,
        size: int,
        chunk: int,
        expected: str,
        state: dict[str, Any],
        state_path: Path,
    ) -> None:
        """Combine the chunk hashes and hash the file on disk; re-fetch what does not match, once."""
        for round_ in range(2):
            n = max(1, (size + chunk - 1) // chunk) if size else 0
            hashes = [state["chunks"][str(i)][0] for i in range(n)] if n else []
            combined = combine(hashes) if hashes else hashlib.sha256(b"").hexdigest()
            if combined != expected:
                # Chunks without a server checksum cannot be told apart: fetch them all again.
                bad = [k for k, (_, confirmed) in state["chunks"].items() if not confirmed] or list(
                    state["chunks"]
                )
            else:
                os.fsync(fd)
                on_disk = tree_hash_file(part) if size else hashlib.sha256(b"").hexdigest()
                if on_disk == expected:
                    return
                bad = []
                for i in range(n):
                    s = i * chunk
                    if (
                        tree_hash_file(part, start=s, length=min(chunk, size - s))
                        != state["chunks"][str(i)][0]
                    ):
                        bad.append(str(i))
                if not bad:
                    bad = list(state["chunks"])
            if round_ == 1:
                break
            log.warning(
                "archive %s: %d chunk(s) failed the whole-file check; fetching them again",
                archive_id,
                len(bad),
            )
            for k in bad:
                state["chunks"].pop(k, None)
            write_json_atomic(state_path, state)
            self._fetch_chunks(job_id, archive_id, fd, size, chunk, state, state_path)
        raise IntegrityError(f"archive {archive_id}: downloaded data does not match tree hash {expected}")


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


__all__ = [
    "Deadlines",
    "Downloaded",
    "Downloader",
    "JobExpired",
    "TransferTimeout",
    "chunk_size_for",
    "download_concurrency",
    "partial_paths",
    "read_body",
]
