"""The server's one time source: wall clock plus a persisted, test-advanceable offset.

Every timed rule (job completion, job and upload retention, idempotency windows, the
inventory schedule) reads :meth:`Clock.now`, so ``POST /_admin/clock/advance`` moves all of
them together (reference §5 item 1) without tests having to sleep.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

log = logging.getLogger(__name__)


MAX_OFFSET = 200 * 366 * 86400.0  # beyond this dates stop being representable soon (year 9999)


class Clock:
    """``now()`` = ``time.time()`` + offset; ``advance`` persists the offset through ``save``.

    The offset is always finite and within ``[0, MAX_OFFSET]``: ``advance`` refuses anything else
    with ValueError (before changing or saving anything), and a persisted offset outside that range
    (written by an older server) is ignored with a warning, so one bad request can never break
    every later date.
    """

    def __init__(self, offset: float = 0.0, save: Callable[[float], None] | None = None) -> None:
        if not (math.isfinite(offset) and 0 <= offset <= MAX_OFFSET):
            log.warning("ignoring an unusable persisted clock offset %r", offset)
            offset = 0.0
        self._offset = offset
        self._save = save
        self._lock = threading.Lock()

    @property
    def offset(self) -> float:
        return self._offset

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            new = self._offset + seconds
            if not (math.isfinite(seconds) and seconds >= 0 and new <= MAX_OFFSET):
                raise ValueError(f"cannot advance the clock by {seconds!r} seconds")
            if self._save:
                self._save(new)
            self._offset = new
        return self.now()


def iso_ms(ts: float) -> str:
    """``2012-03-20T17:03:43.221Z``: the format of every date in a JSON response body."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso_s(ts: float) -> str:
    """``2011-12-12T14:19:01Z``: the inventory date format."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> float:
    """Parse an ISO-8601 UTC date (with or without fractions); ValueError if malformed."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
