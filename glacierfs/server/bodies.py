"""Archive, part and job-output bytes on disk; never whole in memory.

Layout under the data dir (files 0600, directories 0700)::

    tmp/                 bodies being received; anything here at startup is a crash leftover
    archives/ab/<key>    single-request archives (key = sha256 of the archive id)
    parts/<key>/<start>.<nonce>   multipart parts; after Complete they *are* the archive
    jobs/<key>.out       rendered inventory-job outputs

A body reference (stored as JSON in the metadata) is one of ``{"file": rel}``,
``{"parts": [[rel, size], ...]}`` (a completed multipart upload: no copy at Complete) or
``{"gen": seed}`` (bytes generated deterministically from the seed, for populated vaults).

Receiving writes ≤1 MiB reads to a temp file while hashing, fsyncs it, and only then is
the file renamed into place by the caller after verification, so a kill -9 mid-body leaves
nothing but a temp file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from glacierfs.treehash import MiB, TreeHasher

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


class Readable(Protocol):
    """A request body stream (the connection's rfile, possibly paced)."""

    def read(self, n: int = -1, /) -> bytes: ...


class IncompleteBody(Exception):
    """The client closed the connection before sending Content-Length bytes."""


@dataclass
class Received:
    path: Path
    size: int
    tree_hash: str
    sha256: str


def _key(ident: str) -> str:
    return hashlib.sha256(ident.encode()).hexdigest()[:40]


def gen_bytes(seed: str, start: int, end: int) -> Iterator[bytes]:
    """Deterministic bytes ``[start, end)`` of a generated body, in ≤1 MiB chunks.

    MiB block ``i`` is SHAKE-128 of ``"{seed}:{i}"``: an extendable-output function, so a
    short archive costs only its own length, any range can be produced without what
    precedes it, and the bytes never change with the Python version.
    """
    pos = start
    while pos < end:
        block = pos // MiB
        lo = pos - block * MiB
        hi = min(MiB, end - block * MiB)
        yield hashlib.shake_128(f"{seed}:{block}".encode()).digest(hi)[lo:hi]
        pos = block * MiB + hi


class BodyStore:
    """Owns the byte files; the metadata store owns which of them are live."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("tmp", "archives", "parts", "jobs"):
            (root / sub).mkdir(mode=DIR_MODE, exist_ok=True)

    # -- receiving ---------------------------------------------------------------------
    def clean_temp(self) -> int:
        """Remove bodies a previous run was receiving when it died; returns how many."""
        count = 0
        for p in (self.root / "tmp").iterdir():
            p.unlink(missing_ok=True)
            count += 1
        if count:
            log.info("removed %d partial bodies left by a previous run", count)
        return count

    def receive(self, stream: Readable, length: int, chunk: int = MiB) -> Received:
        """Copy exactly ``length`` bytes from ``stream`` to a temp file, hashing as it goes."""
        path = self.root / "tmp" / f"{secrets.token_hex(12)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        hasher = TreeHasher(linear=True)
        ok = False
        failed: OSError | None = None
        try:
            remaining = length
            while remaining:
                data = stream.read(min(chunk, remaining))
                if not data:
                    raise IncompleteBody(f"body ended {remaining} bytes early")
                remaining -= len(data)
                if failed is not None:
                    continue  # the disk is full: read the rest so the client gets our answer, store nothing
                hasher.update(data)
                try:
                    os.write(fd, data)
                except OSError as exc:
                    failed = exc
            if failed is not None:
                raise failed
            os.fsync(fd)
            ok = True
        finally:
            os.close(fd)
            if not ok:
                path.unlink(missing_ok=True)
        return Received(path, length, hasher.hexdigest(), hasher.linear_hexdigest())

    def discard(self, received: Received) -> None:
        received.path.unlink(missing_ok=True)

    def _place(self, tmp: Path, rel: str) -> str:
        dest = self.root / rel
        dest.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.rename(tmp, dest)
        dfd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return rel

    def place_archive(self, tmp: Path, archive_id: str) -> str:
        k = _key(archive_id)
        return self._place(tmp, f"archives/{k[:2]}/{k}")

    def place_part(self, tmp: Path, upload_id: str, start: int) -> str:
        return self._place(tmp, f"parts/{_key(upload_id)}/{start}.{secrets.token_hex(4)}")

    def job_output_path(self, job_id: str) -> tuple[Path, str]:
        rel = f"jobs/{_key(job_id)}.out"
        return self.root / rel, rel

    def new_temp(self) -> Path:
        return self.root / "tmp" / f"{secrets.token_hex(12)}.out"

    # -- removal -----------------------------------------------------------------------
    def remove_rel(self, rel: str) -> None:
        try:
            (self.root / rel).unlink()
        except FileNotFoundError:
            pass
        parent = (self.root / rel).parent
        if parent.parent.name == "parts" or parent.parent.name == "archives":
            try:
                parent.rmdir()
            except OSError:
                pass

    def remove_body(self, body: dict[str, Any]) -> None:
        if "file" in body:
            self.remove_rel(body["file"])
        for rel, _size in body.get("parts", ()):
            self.remove_rel(rel)

    def all_files(self) -> Iterator[str]:
        """Relative paths of every stored body file (for the startup orphan sweep)."""
        for sub in ("archives", "parts", "jobs"):
            for dirpath, _dirs, files in os.walk(self.root / sub):
                for name in files:
                    yield os.path.relpath(os.path.join(dirpath, name), self.root)

    # -- reading -----------------------------------------------------------------------
    def iter_range(self, body: dict[str, Any], start: int, end: int, chunk: int = MiB) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of a body reference, in ≤ ``chunk`` pieces."""
        if "gen" in body:
            yield from gen_bytes(body["gen"], start, end)
            return
        segments = [(body["file"], None)] if "file" in body else body["parts"]
        offset = 0
        for rel, size in segments:
            path = self.root / rel
            if size is None:
                size = path.stat().st_size
            seg_lo, seg_hi = offset, offset + size
            offset = seg_hi
            lo, hi = max(start, seg_lo), min(end, seg_hi)
            if lo >= hi:
                continue
            with open(path, "rb") as f:
                f.seek(lo - seg_lo)
                remaining = hi - lo
                while remaining:
                    data = f.read(min(chunk, remaining))
                    if not data:
                        raise OSError(f"body file {rel} is shorter than recorded")
                    remaining -= len(data)
                    yield data

    def iter_file(self, rel: str, start: int, end: int, chunk: int = MiB) -> Iterator[bytes]:
        yield from self.iter_range({"file": rel}, start, end, chunk)

    def tree_hash_range(self, body: dict[str, Any], start: int, end: int) -> str:
        hasher = TreeHasher()
        for data in self.iter_range(body, start, end):
            hasher.update(data)
        return hasher.hexdigest()
