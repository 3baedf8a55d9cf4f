"""One archive from a finished retrieval job into one S3 object, streamed and verified.

Bytes go from ranged GetJobOutput into S3 without a whole local copy. Each part is one
power-of-two-MiB, tree-aligned range of the archive: its tree hash is checked against the
range's ``x-amz-sha256-tree-hash`` (and its length against Content-Range/Content-Length) while
it is read into a spool buffer (in memory up to :data:`SPOOL_IN_MEMORY`, on disk beyond,
deleted when sent), then it goes to S3 with its SHA-256 (``ChecksumSHA256``) so S3 verifies it
too. The part tree hashes combine into the archive's tree hash, which must equal the
inventory's before CompleteMultipartUpload. An archive of at most one part is one PutObject
with its checksum. A range that fails verification is fetched again (``attempts`` times); a
part S3 rejects for its checksum is sent again from the buffer.

Crash table (a kill at any point, then a re-run):

=====================================  ===============================================
killed after                           the re-run
=====================================  ===============================================
CreateMultipartUpload, before record   ListMultipartUploads on the key finds it: aborted (*)
a part, before its record              ListParts has it, state does not: sent again
recorded parts                         ListParts confirms each (size, checksum); kept
CompleteMultipartUpload, before record HEAD finds the object with our tree hash: done
PutObject, before record               HEAD finds it: done
=====================================  ===============================================

(*) Only the holder of the archive's claim (:mod:`glacierfs.export.claims`) works on its key,
so an upload on the key that our state does not know is a stray of our own killed run, or of the
earlier holder of a claim we continued (same owner, its cache dir gone) or took over: never a
live exporter's. A claim that had an earlier holder has its key's strays aborted right after it
is taken (:meth:`ArchiveStreamer.abort_strays`), also for an archive that now fits one PutObject. PutObject and
CompleteMultipartUpload are conditional (``If-None-Match: *``): an object never replaces another.

An object at the key is never replaced (the writes are conditional); one with another archive
id, or none, or this archive's id with another size or tree hash, is a conflict (the archive
fails, the object stays).

Threading: :meth:`ArchiveStreamer.export` runs in one transfer thread per archive and fans the
parts out to a pool of ``parts_in_flight`` threads. ``slots`` (a semaphore shared by every
archive of the run) bounds the part buffers alive at once, so memory and spool disk stay at
most ``slots x part size``. The only shared mutable state is the :class:`ExportState` (its own
lock) and ``Counters`` (``Counters.lock``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from glacierfs.errors import ConflictError, GlacierFSError, IntegrityError, NotFoundError, ServiceError
from glacierfs.export.claims import Claims
from glacierfs.export.plan import ExportItem, object_metadata, part_size_for
from glacierfs.export.s3 import ChecksumRejected, KeyTaken, NoSuchUpload, ObjectInfo, ObjectStore
from glacierfs.export.state import ExportState, PartDone
from glacierfs.treehash import MiB, TreeHasher, combine

log = logging.getLogger(__name__)

# A part buffer stays in memory up to this, then rolls over to an unlinked file in the spool dir:
# parts are 16 MiB or more, so a part in flight costs at most ~2 x this in memory (the rollover
# copy) and the run's RSS stays far below its 200 MiB bound even when sends are slow.
SPOOL_IN_MEMORY = 4 * MiB
READ_CHUNK = MiB


class JobOutputSource(Protocol):
    """The Glacier call the streamer makes (``glacierfs.client.Glacier``)."""

    def get_job_output(self, vault: str, job_id: str, byte_range: tuple[int, int] | str | None = None) -> Any: ...


class JobGone(NotFoundError):
    """The retrieval job's output is no longer available (expired): start a new job and resume."""


@dataclass(frozen=True)
class Buffer:
    """A verified range of the archive: its bytes (spooled), SHA-256 and tree hash."""

    file: Any  # tempfile.SpooledTemporaryFile
    length: int
    sha256: bytes
    tree_hash: str

    @property
    def sha256_b64(self) -> str:
        return base64.b64encode(self.sha256).decode("ascii")


@dataclass(frozen=True)
class Exported:
    """How one archive ended: ``exported`` (sent now) or ``present`` (already there, verified)."""

    status: str
    item: ExportItem


class Counters:
    """Bytes read from Glacier and sent to S3 (for progress); guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.refetched = 0
        self.resent = 0

    def add(self, sent: int = 0, refetched: int = 0, resent: int = 0) -> None:
        with self.lock:
            self.bytes_sent += sent
            self.refetched += refetched
            self.resent += resent


def _header(headers: Any, *names: str) -> str | None:
    lower = {str(k).lower(): v for k, v in dict(headers or {}).items()}
    for name in names:
        value = lower.get(name.lower())
        if value is not None:
            return str(value)
    return None


def composite_checksum(digests: list[bytes]) -> str:
    """S3's checksum of a multipart object: SHA-256 of the part digests, base64, ``-N``."""
    return base64.b64encode(hashlib.sha256(b"".join(digests)).digest()).decode("ascii") + f"-{len(digests)}"


class ArchiveStreamer:
    """Streams archives of one vault into one bucket (see the module docstring)."""

    def __init__(
        self,
        glacier: JobOutputSource,
        vault: str,
        s3: ObjectStore,
        bucket: str,
        state: ExportState,
        *,
        storage_class: str,
        slots: threading.Semaphore,
        parts_in_flight: int = 4,
        min_part: int | None = None,
        spool_dir: Path | None = None,
        attempts: int = 5,
        counters: Counters | None = None,
        sleep: Callable[[float], None] = time.sleep,
        claims: Claims | None = None,
    ) -> None:
        self.glacier = glacier
        self.claims = claims
        self.vault = vault
        self.s3 = s3
        self.bucket = bucket
        self.state = state
        self.storage_class = storage_class
        self.slots = slots
        self.parts_in_flight = max(1, parts_in_flight)
        self.min_part = min_part
        self.spool_dir = spool_dir
        self.attempts = max(1, attempts)
        self.counters = counters or Counters()
        self.sleep = sleep

    # ------------------------------------------------------------------ one archive

    def part_size(self, item: ExportItem) -> int:
        return part_size_for(item.size, self.min_part) if self.min_part else part_size_for(item.size)

    def present(self, item: ExportItem, info: ObjectInfo | None = None) -> bool:
        """True if the object at the key is this archive; ConflictError if it is something else."""
        info = info if info is not None else self.s3.head_object(self.bucket, item.key)
        if info is None:
            return False
        owner = info.metadata.get("glacier-archive-id")
        if owner != item.archive_id:
            what = f"archive {owner}" if owner else "an object glacierfs did not write"
            raise ConflictError(f"s3://{self.bucket}/{item.key} already holds {what}; not replaced")
        return info.metadata.get("glacier-tree-hash") == item.tree_hash and info.size == item.size

    def export(self, item: ExportItem, job_id: str, checked: bool = False) -> Exported:
        """Copy the archive from the finished job ``job_id`` unless it is already in S3 (verified).

        ``checked``: the caller has just found no object at the key (skips one HEAD).
        """
        if not checked and self.present(item):
            self._done(item)
            return Exported("present", item)
        part = self.part_size(item)
        try:
            if item.size <= part:
                digests = [self._put_single(item, job_id)]
            else:
                digests = self._multipart(item, job_id, part)
        except KeyTaken:
            # The conditional write found an object at the key: fine if it is this very archive
            # (our own earlier Complete whose answer was lost), a conflict otherwise.
            if not self.present(item):  # (present raises ConflictError for another archive's object)
                raise ConflictError(
                    f"s3://{self.bucket}/{item.key} already holds an object of archive {item.archive_id} with "
                    "another size or tree hash; not replaced (delete it to export the archive again)"
                ) from None
            self._done(item)
            return Exported("present", item)
        self.verify(item, digests)
        self._done(item)
        return Exported("exported", item)

    def _done(self, item: ExportItem) -> None:
        """Give up the claim, then record the verified object (in this transfer thread).

        In this order a kill in between leaves no claim behind: the re-run, not yet told the
        archive is done, HEADs it and releases a claim of ours it finds (ExportRun._check).
        """
        if self.claims is not None:
            self.claims.release(item.archive_id)
        self.state.finish(item.archive_id, item.key, item.size)

    def verify(self, item: ExportItem, digests: list[bytes] | None = None) -> ObjectInfo:
        """HEAD the object: size, archive id, tree hash and (when S3 reports it) the checksum must match."""
        info = self.s3.head_object(self.bucket, item.key)
        where = f"s3://{self.bucket}/{item.key}"
        if info is None:
            raise ServiceError(f"{where}: the object is missing right after it was written")
        meta = info.metadata
        if meta.get("glacier-archive-id") != item.archive_id or meta.get("glacier-tree-hash") != item.tree_hash:
            raise IntegrityError(f"{where}: the object's metadata does not name archive {item.archive_id}")
        if info.size != item.size:
            raise IntegrityError(f"{where}: S3 holds {info.size} bytes, the archive has {item.size}")
        if digests is not None and info.checksum_sha256:
            expected = (
                base64.b64encode(digests[0]).decode("ascii") if len(digests) == 1 else composite_checksum(digests)
            )
            if info.checksum_sha256.split("-")[0] != expected.split("-")[0]:
                raise IntegrityError(f"{where}: S3 reports checksum {info.checksum_sha256}, we sent {expected}")
        if info.storage_class != self.storage_class:
            log.warning("%s: stored as %s, asked for %s", where, info.storage_class, self.storage_class)
        return info

    def abort_strays(self, item: ExportItem) -> int:
        """Abort the multipart uploads on the key that our state does not record; how many (we hold the claim)."""
        rec = self.state.get(item.archive_id)
        keep = rec.upload_id if rec and rec.key == item.key else None
        n = 0
        for stray in self.s3.list_uploads(self.bucket, item.key):
            if stray.upload_id != keep:
                log.info("aborting multipart upload %s of s3://%s/%s, left by the claim's earlier holder",
                         stray.upload_id, self.bucket, item.key)
                self.s3.abort_multipart(self.bucket, item.key, stray.upload_id)
                n += 1
        return n

    # ------------------------------------------------------------------ single PutObject

    def _put_single(self, item: ExportItem, job_id: str) -> bytes:
        with self.slots:
            buf = self.fetch(job_id, item, 0, item.size - 1) if item.size else self._empty()
            try:
                if buf.tree_hash != item.tree_hash and item.size:
                    raise IntegrityError(
                        f"archive {item.archive_id}: the job output has tree hash {buf.tree_hash}, "
                        f"the inventory {item.tree_hash}"
                    )
                self._send(
                    lambda: self.s3.put_object(
                        self.bucket, item.key, buf.file, buf.length, buf.sha256_b64,
                        object_metadata(item), self.storage_class,
                    ),
                    buf, f"s3://{self.bucket}/{item.key}",
                )
            finally:
                buf.file.close()
        self.counters.add(sent=item.size)
        return buf.sha256

    def _spool(self) -> Any:
        """A part buffer: in memory up to SPOOL_IN_MEMORY, then an unlinked 0600 file in the spool dir."""
        return tempfile.SpooledTemporaryFile(
            max_size=SPOOL_IN_MEMORY, dir=str(self.spool_dir) if self.spool_dir else None
        )

    def _empty(self) -> Buffer:
        f = self._spool()
        return Buffer(f, 0, hashlib.sha256(b"").digest(), hashlib.sha256(b"").hexdigest())

    def _send(self, call: Callable[[], Any], buf: Buffer, what: str) -> Any:
        """Send a buffer; a checksum rejection (the bytes changed on the way) sends it again."""
        for attempt in range(1, self.attempts + 1):
            buf.file.seek(0)
            try:
                return call()
            except ChecksumRejected as exc:
                if attempt == self.attempts:
                    raise
                log.warning("%s: S3 rejected the body's checksum (attempt %d): sending it again (%s)", what, attempt, exc)
                self.counters.add(resent=1)
                self.sleep(min(2.0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ multipart

    def _open_upload(self, item: ExportItem, part: int) -> tuple[str, dict[int, PartDone]]:
        """The recorded upload (its parts confirmed by ListParts) or a new one; strays on the key are aborted."""
        rec = self.state.get(item.archive_id)
        upload_id = rec.upload_id if rec and rec.key == item.key and rec.part_size == part else None
        done: dict[int, PartDone] = {}
        for stray in self.s3.list_uploads(self.bucket, item.key):
            if stray.upload_id != upload_id:
                log.info("aborting a stray multipart upload %s of s3://%s/%s", stray.upload_id, self.bucket, item.key)
                self.s3.abort_multipart(self.bucket, item.key, stray.upload_id)
        if upload_id:
            try:
                listed = {p.number: p for p in self.s3.list_parts(self.bucket, item.key, upload_id)}
            except NoSuchUpload:
                listed = None
            if listed is None:
                upload_id = None
            else:
                recorded = self.state.parts(item.archive_id, upload_id)
                for n, p in recorded.items():
                    s = listed.get(n)
                    expected = min(part, item.size - (n - 1) * part)
                    if s is not None and s.size == expected and s.checksum_sha256 in (None, p.sha256):
                        done[n] = p
                log.info("resuming s3://%s/%s: %d part(s) already in S3", self.bucket, item.key, len(done))
        if upload_id is None:
            if rec and rec.upload_id and rec.upload_id != upload_id:
                self.s3.abort_multipart(self.bucket, item.key, rec.upload_id)
            upload_id = self.s3.create_multipart(self.bucket, item.key, object_metadata(item), self.storage_class)
            self.state.set_upload(item.archive_id, item.key, item.size, upload_id, part)
        return upload_id, done

    def _multipart(self, item: ExportItem, job_id: str, part: int) -> list[bytes]:
        upload_id, done = self._open_upload(item, part)
        n_parts = (item.size + part - 1) // part
        todo = [n for n in range(1, n_parts + 1) if n not in done]
        self.counters.add(sent=sum(min(part, item.size - (n - 1) * part) for n in done))
        lock = threading.Lock()

        def one(n: int) -> None:
            start = (n - 1) * part
            end = min(item.size, start + part) - 1
            with self.slots:
                buf = self.fetch(job_id, item, start, end)
                try:
                    etag = self._send(
                        lambda: self.s3.upload_part(
                            self.bucket, item.key, upload_id, n, buf.file, buf.length, buf.sha256_b64
                        ),
                        buf, f"part {n} of s3://{self.bucket}/{item.key}",
                    )
                finally:
                    buf.file.close()
            rec = PartDone(n, buf.sha256_b64, buf.tree_hash, etag)
            self.state.part_done(item.archive_id, upload_id, rec)
            with lock:
                done[n] = rec
            self.counters.add(sent=buf.length)

        if todo:
            workers = min(self.parts_in_flight, len(todo))
            with ThreadPoolExecutor(workers, thread_name_prefix="export-part") as pool:
                futures = [pool.submit(one, n) for n in todo]
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    f.cancel()
                for f in futures:
                    exc = None if f.cancelled() else f.exception()
                    if exc is not None:
                        raise exc
        ordered = [done[n] for n in range(1, n_parts + 1)]
        combined = combine([p.tree_hash for p in ordered])
        if combined != item.tree_hash:
            # Every range matched the service's own hash, so the job's bytes are not the inventory's archive.
            self.s3.abort_multipart(self.bucket, item.key, upload_id)
            self.state.set_upload(item.archive_id, item.key, item.size, None, None)
            raise IntegrityError(
                f"archive {item.archive_id}: the job output has tree hash {combined}, the inventory {item.tree_hash}"
            )
        try:
            self.s3.complete_multipart(
                self.bucket, item.key, upload_id, [(p.number, p.etag, p.sha256) for p in ordered]
            )
        except KeyTaken:
            self.s3.abort_multipart(self.bucket, item.key, upload_id)
            self.state.set_upload(item.archive_id, item.key, item.size, None, None)
            raise
        except NoSuchUpload:
            if not self.present(item):  # completed by an earlier attempt whose answer was lost?
                self.state.set_upload(item.archive_id, item.key, item.size, None, None)
                raise
        return [base64.b64decode(p.sha256) for p in ordered]

    # ------------------------------------------------------------------ Glacier ranges

    def fetch(self, job_id: str, item: ExportItem, start: int, end: int) -> Buffer:
        """Bytes [start, end] of the job output, verified; fetched again when they do not verify."""
        last: BaseException | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return self._fetch_once(job_id, start, end)
            except NotFoundError:
                raise JobGone(f"retrieval job {job_id} of archive {item.archive_id} is gone") from None
            except GlacierFSError as exc:  # IntegrityError (bad bytes) or a broken transfer
                last = exc
            log.warning(
                "bytes %d-%d of archive %s: attempt %d failed: %s; fetching them again",
                start, end, item.archive_id, attempt, last,
            )
            self.counters.add(refetched=1)
            self.sleep(min(2.0, 0.05 * 2**attempt))
        msg = f"bytes {start}-{end} of archive {item.archive_id} failed {self.attempts} times: {last}"
        raise IntegrityError(msg) if isinstance(last, IntegrityError) else ServiceError(msg)

    def _fetch_once(self, job_id: str, start: int, end: int) -> Buffer:
        length = end - start + 1
        stream, headers = self.glacier.get_job_output(self.vault, job_id, (start, end))
        spool: BinaryIO = self._spool()
        ok = False
        try:
            crange = _header(headers, "content-range", "contentRange")
            if crange is not None and crange.replace("bytes", "").strip().split("/")[0] != f"{start}-{end}":
                raise IntegrityError(f"asked for bytes {start}-{end}, got Content-Range {crange}")
            clen = _header(headers, "content-length", "ContentLength")
            if clen is not None and int(clen) != length:
                raise IntegrityError(f"asked for {length} bytes, got Content-Length {clen}")
            tree, sha = TreeHasher(), hashlib.sha256()
            got = 0
            while got < length:
                data = stream.read(min(READ_CHUNK, length - got))
                if not data:
                    break
                tree.update(data)
                sha.update(data)
                spool.write(data)
                got += len(data)
            if got != length:
                raise IntegrityError(f"bytes {start}-{end}: the body ended after {got} of {length} bytes")
            if stream.read(1):
                raise IntegrityError(f"bytes {start}-{end}: the body is longer than {length} bytes")
            digest = tree.hexdigest()
            claimed = _header(headers, "x-amz-sha256-tree-hash", "checksum")
            if claimed is not None and claimed != digest:
                raise IntegrityError(f"bytes {start}-{end}: tree hash {digest}, the service says {claimed}")
            ok = True
            return Buffer(spool, length, sha.digest(), digest)
        finally:
            with contextlib.suppress(Exception):
                stream.close()
            if not ok:
                spool.close()
