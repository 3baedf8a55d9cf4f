"""Held operations: a request of a held operation waits BEFORE it takes effect until released.

For kill tests that need a client stopped between two of its requests (the mount killed
while its DeleteArchive is in flight): ``serve --hold DeleteArchive`` (or ``POST
/_admin/hold?ops=DeleteArchive``) makes every such request wait after routing and before
validation or any effect; ``GET /_admin/held`` counts the waiting ones; ``POST
/_admin/release`` lets them go on as usual, ``POST /_admin/release?drop=1`` resets their
connections instead (nothing took effect, as if the request never arrived). A held request
goes on by itself after ``max_seconds`` (``--hold-seconds``), so nothing waits forever.

Threading contract: one condition variable guards the held set and the counts; request
threads wait on it, admin requests and :meth:`Holds.release` notify it.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Holds:
    """Which operations are held, how many requests wait, and the release generation."""

    def __init__(self, ops: set[str] | None = None, max_seconds: float = 300.0) -> None:
        self.max_seconds = max_seconds
        self._ops: set[str] = set(ops or ())
        self._waiting: dict[str, int] = {}
        self._released = 0  # bumped by each release: waiters of an older generation go on
        self._drop: set[int] = set()  # generations released with drop
        self._cond = threading.Condition()

    def hold(self, ops: set[str]) -> None:
        with self._cond:
            self._ops |= ops

    def held(self) -> dict[str, object]:
        with self._cond:
            return {"ops": sorted(self._ops), "waiting": dict(self._waiting)}

    def release(self, drop: bool = False) -> int:
        """Stop holding; the waiting requests go on (or, with ``drop``, are reset). Returns how many."""
        with self._cond:
            n = sum(self._waiting.values())
            if drop:
                self._drop.add(self._released)
            self._released += 1
            self._ops.clear()
            self._cond.notify_all()
        log.info("released %d held request(s)%s", n, " (dropped)" if drop else "")
        return n

    def wait(self, op: str) -> bool:
        """Block while ``op`` is held; True when the request must be dropped (reset, no effect)."""
        with self._cond:
            if op not in self._ops:
                return False
            gen = self._released
            self._waiting[op] = self._waiting.get(op, 0) + 1
            log.info("holding %s", op)
            deadline = time.monotonic() + self.max_seconds
            try:
                while self._released == gen and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
            finally:
                self._waiting[op] -= 1
                if not self._waiting[op]:
                    del self._waiting[op]
            return gen in self._drop
