"""Dates as Glacier writes them (ISO 8601, UTC, ``Z``) and durations for humans. One owner.

* :func:`now_iso` / :func:`parse_iso` / :func:`iso_epoch`: Glacier's ``2012-03-20T17:03:43.221Z``
  <-> epoch seconds (``iso_epoch`` raises IntegrityError where a date must be valid);
* :func:`fmt_duration` (``90s``, ``12min``, ``3h05``) and :func:`fmt_ago` (``never`` for None);
* :func:`parse_duration`: ``90s``, ``45m``/``45min``, ``6h``, ``2d``, ``1h30m`` or plain seconds.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

from glacierfs.errors import IntegrityError, UsageError

log = logging.getLogger(__name__)


def now_iso() -> str:
    """The current UTC time as Glacier writes dates (millisecond precision, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 date (naive means UTC), None if absent or unparsable."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def fmt_duration(seconds: float) -> str:
    """``42s``, ``12min``, ``3h05`` (whole units, never negative)."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}"


def fmt_ago(seconds: float | None) -> str:
    """An age for humans (``never`` when there is none)."""
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def iso_epoch(text: str) -> float:
    """Epoch seconds of an ISO 8601 date (naive means UTC); IntegrityError when unparsable."""
    epoch = parse_iso(text) if isinstance(text, str) else None
    if epoch is None:
        raise IntegrityError(f"invalid date {text!r}")
    return epoch


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(min|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds of ``90s``, ``45m``/``45min``, ``6h``, ``2d``, ``1h30m`` or a plain number; UsageError otherwise."""
    t = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", t):
        return float(t)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t):
        raise UsageError(f"{text!r} is not a duration (e.g. 90s, 45m, 6h, 2d, 1h30m)")
    return total
