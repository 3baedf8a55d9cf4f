"""Dates as Glacier writes them (ISO 8601, UTC, ``Z``) and durations for humans. One owner.

* :func:`now_iso` / :func:`parse_iso` / :func:`iso_epoch`: Glacier's ``2012-03-20T17:03:43.221Z``
  <-> epoch seconds (``iso_epoch`` raises IntegrityError where a date must be valid);
* :func:`fmt_duration` (``90s``, ``12min``, ``3h05``) and :func:`fmt_ago` (``never`` for None).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from glacierfs.errors import IntegrityError

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
