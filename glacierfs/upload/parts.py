"""Parts of a multipart upload: the part size, reading+hashing a part once, sending it, verifying what the service holds.

Threading contract: :func:`send_part` runs on the engine's part worker threads; it reads the
file with ``os.pread`` on the shared, read-only descriptor (no shared offset) and touches no
shared state. :func:`verify_server_parts` runs its own short-lived pool of hashing threads,
each reading its own range with its own descriptor. :class:`PartJob` is read-only once built.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

from glacierfs.client import FileSlice, Glacier
from glacierfs.errors import IntegrityError, ServiceError, UsageError
from glacierfs.progress import Progress
from glacierfs.treehash import (
    MiB,
    TreeHasher,
    default_workers,
    is_valid_part_size,
    part_size_for,
    read_range,
    tree_hash_file,
)

log = logging.getLogger(__name__)

MAX_PARTS = 10_000
BUFFER_LIMIT = 8 * MiB  # parts up to this size are read into memory once; larger ones stream
# A streamed part is hashed through one buffer of a leaf: up to 8 connections per file and
# several files at once (the mount: 2) keep their buffers small: the bench's mount peak RSS with
# 4 uploads of 1 GiB was 173 MiB with 4 MiB buffers, 122 MiB with 1 MiB ones (main: 158 MiB).
PART_READ_BLOCK = MiB


# The default part size's floor, picked from measurements at 0.05 s per request (README,
# "Part size"): each part costs a round trip, so parts must be long next to it, while a part
# per connection for mid-sized files and a bounded loss on an interrupted part want them short.
THROUGHPUT_PART_SIZE = 16 * MiB
MAX_PART_SIZE = 4096 * MiB


def default_part_size(size: int) -> int:
    """The smallest power-of-two MiB >= max(size / 10,000, THROUGHPUT_PART_SIZE), at most 4 GiB.

    Why not the smallest valid size: at WAN latency a request per MiB caps the upload rate
    (1 MiB parts on 4 connections at 50 ms: ~80 MB/s whatever the link). Above 40 TiB (10,000
    parts of 4 GiB) no part size fits: the cap is returned and :func:`choose_part_size` refuses.
    """
    part = THROUGHPUT_PART_SIZE
    while part < MAX_PART_SIZE and part * MAX_PARTS < size:
        part <<= 1
    return part


# Connections for one file's parts by default: the best case of the WAN bench uses 8, and at a
# round trip of 50 ms 4 connections of 16 MiB parts left a 1 GiB upload 16 round trips long.
# Parts above BUFFER_LIMIT stream from the file (one PART_READ_BLOCK buffer per connection), so 8 cost
# little memory; buffered (smaller) parts are held whole, so they keep to 4.
MAX_CONNECTIONS = 8
BUFFERED_CONNECTIONS = 4


def default_concurrency(size: int, part_size: int) -> int:
    """Parallel parts for a file of ``size`` bytes: one per part, up to 8 (4 for buffered parts)."""
    cap = MAX_CONNECTIONS if part_size > BUFFER_LIMIT else BUFFERED_CONNECTIONS
    return max(1, min(cap, -(-size // part_size)))


def connections_for(job: PartJob, concurrency: int | None, pool: int | None) -> int:
    """Parts in flight for ``job``: ``concurrency`` if set, else the file's default within ``pool``."""
    if concurrency is not None:
        return concurrency
    n = default_concurrency(job.size, job.part_size)
    return min(n, pool) if pool else n


def choose_part_size(size: int, requested: int | None = None) -> int:
    """The part size for ``size`` bytes: :func:`default_part_size`, or ``requested`` (if it fits)."""
    if requested is not None and not is_valid_part_size(requested):
        raise UsageError(
            f"invalid part size {requested} bytes: it must be 1 MiB times a power of two, "
            "from 1 MiB to 4 GiB (1M, 2M, 4M, ... 4096M)"
        )
    try:
        needed = part_size_for(size, MiB, MAX_PARTS)
    except ValueError:
        raise UsageError(f"{size} bytes is larger than Glacier's largest archive (10,000 parts of 4 GiB)") from None
    if requested is None:
        return default_part_size(size)
    if requested < needed:
        log.warning(
            "part size %d MiB would need more than %d parts for %d bytes; using %d MiB",
            requested // MiB, MAX_PARTS, size, needed // MiB,
        )
        return needed
    return requested


class PartJob:
    """The open file of one upload and the numbers every part needs."""

    def __init__(self, key: str, source: Path, fd: int, size: int, part_size: int) -> None:
        self.key = key
        self.source = source
        self.fd = fd
        self.size = size
        self.part_size = part_size
        self.nparts = max(1, -(-size // part_size))
        self.rechecked = False  # the parts were checked again after the service refused Complete

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.part_size
        return start, min(self.part_size, self.size - start)


def send_part(glacier: Glacier, vault: str, upload_id: str, job: PartJob, index: int, attempts: int) -> tuple[str, int]:
    """Read, hash and send one part (worker thread); returns (tree hash, retries used)."""
    start, length = job.bounds(index)
    end = start + length - 1
    for attempt in range(attempts):
        try:
            hasher, body = hash_and_body(job.fd, start, length)
            tree = hasher.hexdigest()
            try:
                echoed = glacier.upload_part(
                    vault, upload_id, body, start, end, tree, content_sha256=hasher.linear_hexdigest()
                )
            finally:
                if isinstance(body, FileSlice):
                    body.close()
            if echoed is not None and echoed.lower() != tree:
                raise IntegrityError(
                    f"part {index} of {job.source}: the service computed tree hash {echoed}, we sent {tree}"
                )
            return tree, attempt
        except (ServiceError, IntegrityError) as exc:
            if attempt + 1 >= attempts:
                raise
            log.warning("part %d of %s failed (%s); retrying", index, job.source, exc)
            time.sleep(min(0.5 * 2**attempt, 4.0))
    raise AssertionError("unreachable")  # pragma: no cover


def verify_server_parts(
    job: PartJob, parts: list[dict[str, Any]], progress: Progress, strict: bool = False
) -> dict[int, str]:
    """Parts the server holds whose hash equals the local file's: {index: tree hash}.

    ``strict`` (adopting an upload not known to be ours): {} unless *every* part matches.
    """
    candidates: dict[int, str] = {}
    for part in parts:
        try:
            a, b = (int(x) for x in str(part.get("RangeInBytes", "")).split("-"))
        except ValueError:
            if strict:
                return {}
            continue
        index, rem = divmod(a, job.part_size)
        if rem or index >= job.nparts or b - a + 1 != job.bounds(index)[1] or not part.get("SHA256TreeHash"):
            if strict:
                return {}
            continue  # wrong place or length: re-send (overwrites it)
        candidates[index] = str(part["SHA256TreeHash"]).lower()
    if not candidates:
        return {}
    total = sum(job.bounds(i)[1] for i in candidates)
    bar = progress.bar(f"verifying {job.source.name}", total)
    done: dict[int, str] = {}
    try:
        workers = min(default_workers(), len(candidates))

        def local_hash(index: int) -> str:
            start, length = job.bounds(index)
            h = tree_hash_file(job.source, start, length, workers=1, segment=max(job.part_size, MiB))
            bar.update(length)
            return h

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            for index, local in zip(candidates, pool.map(local_hash, candidates), strict=True):
                if local == candidates[index]:
                    done[index] = local
                elif strict:
                    return {}
                else:
                    log.warning("part %d on the server differs from the file; sending it again", index)
    finally:
        bar.close()
    return done


def hash_and_body(fd: int, start: int, length: int) -> tuple[TreeHasher, bytes | BinaryIO]:
    """Tree hash + SHA-256 of a file range in one read, and the body to send it with.

    Up to ``BUFFER_LIMIT`` the bytes read are the body (read once); larger ranges are
    hashed in chunks and sent from a :class:`FileSlice` (memory stays bounded).
    """
    hasher = TreeHasher(linear=True)
    if length <= BUFFER_LIMIT:
        data = pread_exact(fd, start, length)
        hasher.update(data)
        return hasher, data
    try:
        read_range(fd, start, length, hasher.update, block=PART_READ_BLOCK)
    except EOFError:
        raise IntegrityError(f"file shrank while being uploaded (ends before offset {start + length})") from None
    return hasher, cast(BinaryIO, FileSlice(fd, start, length))  # a RawIOBase, read like a BinaryIO


def pread_exact(fd: int, offset: int, length: int) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` (IntegrityError if the file is shorter now)."""
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, offset + got)
        if not chunk:
            raise IntegrityError(f"file shrank while being uploaded (ends before offset {offset + length})")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
