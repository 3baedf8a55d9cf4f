"""Per-connection bandwidth caps for ``serve --bandwidth`` (a reproducible WAN model).

Threading: one :class:`Pacer` per connection, used only by the request thread serving that
connection (http.server serves a connection on one thread), so it holds no lock.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

class Pacer:
    """Caps one connection's transfer at ``rate`` bytes/s (``--bandwidth``), without bursts.

    Each transfer of n bytes moves a deadline n/rate later (from now, if the link was idle)
    and sleeps until it: the time to move N bytes is never below N/rate. Used by one request
    thread at a time (a connection is served by one thread), so it needs no lock.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._due = 0.0

    def account(self, n: int) -> None:
        if n <= 0:
            return
        now = time.monotonic()
        self._due = max(self._due, now) + n / self.rate
        if self._due > now:
            time.sleep(self._due - now)


PACE_CHUNK = 64 * 1024


class PacedReader:
    """A connection's rfile whose reads are paced (only the methods http.server and the body reader use)."""

    def __init__(self, raw: Any, pacer: Pacer) -> None:
        self._raw = raw
        self._pacer = pacer

    def read(self, n: int | None = -1) -> bytes:
        """Like BufferedReader.read: exactly ``n`` bytes unless the stream ends first."""
        if n is None or n < 0:
            data = self._raw.read()
            self._pacer.account(len(data))
            return bytes(data)
        parts = []
        while n > 0:
            piece = self._raw.read(min(n, PACE_CHUNK))
            if not piece:
                break
            self._pacer.account(len(piece))
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def readline(self, limit: int = -1) -> bytes:
        data = self._raw.readline(limit)
        self._pacer.account(len(data))
        return bytes(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class PacedWriter:
    """A connection's wfile whose writes are paced, in pieces of at most ``PACE_CHUNK`` bytes."""

    def __init__(self, raw: Any, pacer: Pacer) -> None:
        self._raw = raw
        self._pacer = pacer

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for i in range(0, len(view), PACE_CHUNK):
            piece = view[i:i + PACE_CHUNK]
            self._raw.write(piece)
            self._pacer.account(len(piece))
        return len(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

