"""Progress display for uploads, downloads, tree hashes and job waits.

Why a wrapper: library code reports progress unconditionally and cheaply; whether anything
is shown is decided once, here: nothing with ``-q`` or when stderr is not a terminal
(scripts, cron, tests), so output stays parseable and logs stay clean.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Protocol, TextIO

log = logging.getLogger(__name__)


class Bar(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


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
        """One transient line such as ``waiting for job ...`` (logged at debug when silent)."""
        if not self.enabled:
            log.debug("%s", msg)
            return
        from tqdm import tqdm

        tqdm.write(msg, file=self.stream)


NULL_PROGRESS = Progress(enabled=False)
