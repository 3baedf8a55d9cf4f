"""Request and response bodies of the Glacier wrapper (:mod:`glacierfs.client`).

:class:`FileSlice` is an upload body read exactly once, while it is sent; :class:`JobOutputStream`
is a GetJobOutput body whose transfer errors come out as :class:`GlacierFSError` (the
translation function is the client's), with ``read1`` for callers that time a body.
Both are used by one thread at a time (each slice has its own descriptor).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from glacierfs.errors import GlacierFSError, IntegrityError

log = logging.getLogger(__name__)


class FileSlice(io.RawIOBase):
    """A seekable, read-only view of ``[start, start+length)`` of a file, for upload bodies.

    Positions are relative to the slice (botocore rewinds a body with ``seek(0)`` before a
    retry). Reads use ``os.pread`` on a private descriptor, so slices of the same file can
    be sent from several threads. ``content_sha256`` (if set) is sent as the
    ``x-amz-content-sha256`` header so nothing re-reads the slice to hash it.
    """

    def __init__(
        self, path: str | os.PathLike[str] | int, start: int, length: int, content_sha256: str | None = None
    ) -> None:
        super().__init__()
        # An int is an open descriptor (duplicated, so the slice reads the file already opened).
        self._fd = os.dup(path) if isinstance(path, int) else os.open(os.fspath(path), os.O_RDONLY)
        self._start = start
        self._length = length
        self._pos = 0
        self.content_sha256 = content_sha256

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length - self._pos

    def __bool__(self) -> bool:  # an empty slice is still a body, not "no body"
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, min(self._length, base + offset))
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        remaining = self._length - self._pos
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        data = os.pread(self._fd, size, self._start + self._pos)
        if not data:
            raise IntegrityError(
                f"file shrank while being uploaded (offset {self._start + self._pos} is past its end)"
            )
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


class JobOutputStream:
    """The body of GetJobOutput, with transfer errors mapped to :class:`GlacierFSError`."""

    def __init__(self, body: Any, translate: Callable[[BaseException], GlacierFSError]) -> None:
        self._body = body
        self._translate = translate

    def read(self, amt: int | None = None) -> bytes:
        try:
            data: bytes = self._body.read(amt)
            return data
        except GlacierFSError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    def read1(self, amt: int = 1 << 16) -> bytes:
        """Up to ``amt`` bytes, returning as soon as any arrive (one socket read): the caller sees a
        trickling body byte by byte and can enforce its no-progress timeout (``read(amt)`` would
        block until ``amt`` bytes arrived, however slowly)."""
        raw = getattr(self._body, "_raw_stream", None)
        reader = getattr(raw, "read1", None)
        try:
            data: bytes = reader(amt) if reader is not None else self._body.read(amt)
            return data
        except GlacierFSError:
            raise
        except Exception as exc:
            raise self._translate(exc) from None

    def iter_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        while True:
            data = self.read(chunk_size)
            if not data:
                return
            yield data

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_chunks()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        try:
            self._body.close()
        except Exception:  # closing a broken connection must not mask the real error
            log.debug("closing job output stream failed", exc_info=True)

    def __enter__(self) -> JobOutputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
