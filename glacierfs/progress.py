"""Progress display for uploads, downloads, tree hashes and job waits.

Why a wrapper: library code reports progress unconditionally and cheaply; whether anything
is shown is decided once, here: nothing with ``-q`` or when stderr is not a terminal
(scripts, cron, tests), so output stays parseable and logs stay clean.

On a terminal, :meth:`Progress.status` keeps ONE status line and rewrites it in place
(``\r`` + erase line) at every poll instead of adding a line per poll; :func:`end_status`
erases it before anything else is printed (a result line, an error, a progress bar).

Threads: any thread may call ``status``/``end_status``/``bar``; the module lock ``_lock``
guards ``_active`` (the stream holding an unfinished status line). tqdm bars are updated
under their own lock (:class:`_TqdmBar`).
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
from typing import Any, Protocol, TextIO

log = logging.getLogger(__name__)

_lock = threading.Lock()
_active: TextIO | None = None  # guarded by _lock


def end_status() -> None:
    """Erase the status line a :meth:`Progress.status` left on a terminal (no-op without one)."""
    global _active
    with _lock:
        stream, _active = _active, None
        if stream is not None:
            try:
                stream.write("\r\x1b[K")
                stream.flush()
            except (OSError, ValueError):
                pass


class Bar(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Bar: ...
    def __exit__(self, *exc: object) -> None: ...


class _NullBar:
    """The bar used when progress is disabled: every call is a no-op."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TqdmBar:
    """A tqdm bar safe to update from worker threads."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        with self._lock:
            self._bar.close()

    def __enter__(self) -> _TqdmBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """Factory of progress bars and status lines, silent unless stderr is a terminal."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = not quiet and bool(isatty and isatty())
        self.enabled = bool(enabled) and not quiet

    def bar(self, desc: str, total: int | None, initial: int = 0) -> Bar:
        """A byte-counting bar (``update(n)``/``close()``, also a context manager).

        ``initial`` counts bytes already done (a resumed transfer).
        """
        if not self.enabled:
            return _NullBar()
        end_status()
        from tqdm import tqdm

        return _TqdmBar(
            tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        )

    def status(self, msg: str) -> None:
        """The transient status line (``waiting for job ...``), rewritten in place on a terminal.

        Logged at debug level when silent (``-q``, not a terminal).
        """
        global _active
        if not self.enabled:
            log.debug("%s", msg)
            return
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        line = msg if len(msg) <= width else msg[: width - 1] + "…"
        with _lock:
            try:
                self.stream.write("\r\x1b[K" + line)
                self.stream.flush()
            except (OSError, ValueError):
                return
            _active = self.stream


NULL_PROGRESS = Progress(enabled=False)
