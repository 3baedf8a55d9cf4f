"""Human sizes: parse ``SIZE`` arguments ("1M", "64MiB", "1G", "4096") and format byte counts.

Every unit is binary (a power of 1024) whether or not it is spelled with the ``i``: Glacier part
sizes are powers of two MiB, and a user typing ``--part-size 64M`` means 64 MiB, never 64,000,000
bytes. Units are case-insensitive, an optional trailing ``B`` is accepted (``64MB``, ``1kb``) and
whitespace between number and unit is allowed. A fractional number (``1.5G``) is accepted only
when it names a whole number of bytes, so nothing is silently rounded.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation

from glacierfs.errors import UsageError

log = logging.getLogger(__name__)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "t": TiB,
    "tb": TiB,
    "tib": TiB,
}

_SIZE_RE = re.compile(r"\s*(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)\s*")

_HELP = "use plain bytes or a number with K, KiB, M, MiB, G, GiB, T or TiB (all powers of 1024), e.g. 64MiB"


def parse_size(text: str | int) -> int:
    """``text`` as a number of bytes; :class:`UsageError` (one clear line) when it is not a size.

    An ``int`` is returned unchanged (after a sign check) so callers can pass defaults through.
    """
    if isinstance(text, bool):
        raise UsageError(f"invalid size {text!r}: {_HELP}")
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"invalid size {text}: a size cannot be negative")
        return text
    if not isinstance(text, str):
        raise UsageError(f"invalid size {text!r}: {_HELP}")
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        if text.strip().startswith("-"):
            raise UsageError(f"invalid size {text!r}: a size cannot be negative")
        raise UsageError(f"invalid size {text!r}: {_HELP}")
    unit = m.group("unit").lower()
    factor = _UNITS.get(unit)
    if factor is None:
        raise UsageError(f"invalid size {text!r}: unknown unit {m.group('unit')!r}; {_HELP}")
    try:
        value = Decimal(m.group("num")) * factor
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
        raise UsageError(f"invalid size {text!r}: {_HELP}") from None
    if value != value.to_integral_value():
        raise UsageError(f"invalid size {text!r}: it is not a whole number of bytes")
    return int(value)


def format_size(n: int | float) -> str:
    """``n`` bytes for humans: ``"512 B"``, ``"64 MiB"``, ``"1.5 GiB"`` (binary units, <= 1 decimal)."""
    n = int(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < KiB:
        return f"{sign}{n} B"
    factor, unit = next((f, u) for f, u in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")) if n >= f)
    if n % factor == 0:
        return f"{sign}{n // factor} {unit}"
    return f"{sign}{n / factor:.1f} {unit}"
