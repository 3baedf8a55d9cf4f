"""ISO 8601 dates as Glacier writes them (``2012-03-20T17:03:43.221Z``) and epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime

from glacierfs.errors import IntegrityError


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


def iso_epoch(text: str) -> float:
    """Epoch seconds of an ISO 8601 date (naive means UTC); IntegrityError when unparsable."""
    epoch = parse_iso(text) if isinstance(text, str) else None
    if epoch is None:
        raise IntegrityError(f"invalid date {text!r}")
    return epoch
