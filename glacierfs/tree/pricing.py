"""Retrieval prices and waits: a documented default table the user can override.

Defaults are AWS's us-east-1 list prices for Glacier (Flexible Retrieval) vault retrievals
(see README "Retrieval cost"): per GiB retrieved plus per 1,000 retrieval requests (one job
per archive), and the typical time until a job's output is ready:

==========  =========  ==================  =============
tier        per GiB    per 1,000 requests  ready after
==========  =========  ==================  =============
Expedited   $0.03      $10.00              1-5 minutes
Standard    $0.01      $0.05               3-5 hours
Bulk        $0.0025    $0.025              5-12 hours
==========  =========  ==================  =============

Override with a JSON file given by ``--prices FILE`` or ``$GLACIERFS_PRICES``; any subset of
tiers and fields, e.g. ``{"currency": "EUR", "Standard": {"per_gb": 0.0114, "hours": [3, 5]}}``.
A job reused (already running or finished) costs nothing more; a job's output stays
downloadable for 24 hours.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from glacierfs.errors import UsageError

log = logging.getLogger(__name__)

GiB = 1 << 30
TIERS = ("Expedited", "Standard", "Bulk")


@dataclass(frozen=True, slots=True)
class TierPrice:
    per_gb: float  # per GiB retrieved
    per_1000_requests: float
    hours_min: float  # typical time until the output is ready
    hours_max: float


@dataclass(frozen=True)
class PriceTable:
    tiers: dict[str, TierPrice]
    currency: str = "USD"
    source: str = "built-in us-east-1 list prices"

    def cost(self, tier: str, count: int, size: int) -> float:
        p = self.tiers[tier]
        return size / GiB * p.per_gb + count / 1000 * p.per_1000_requests


DEFAULT_PRICES = PriceTable(
    {
        "Expedited": TierPrice(0.03, 10.0, 1 / 60, 5 / 60),
        "Standard": TierPrice(0.01, 0.05, 3.0, 5.0),
        "Bulk": TierPrice(0.0025, 0.025, 5.0, 12.0),
    }
)


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The default table, overridden by ``path`` (or ``$GLACIERFS_PRICES``) when given."""
    path = path or os.environ.get("GLACIERFS_PRICES") or None
    if not path:
        return DEFAULT_PRICES
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"price table {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"price table {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"price table {path}: expected a JSON object of tiers")
    tiers = dict(DEFAULT_PRICES.tiers)
    for key, value in data.items():
        if key == "currency":
            continue
        tier = next((t for t in TIERS if t.lower() == str(key).lower()), None)
        if tier is None or not isinstance(value, dict):
            raise UsageError(f"price table {path}: unknown tier {key!r} (use {', '.join(TIERS)})")
        tiers[tier] = _tier(tiers[tier], value, f"{path}: {tier}")
    currency = data.get("currency", DEFAULT_PRICES.currency)
    return PriceTable(tiers, str(currency), f"{path} (over the built-in us-east-1 list prices)")


def _tier(base: TierPrice, value: dict[str, Any], where: str) -> TierPrice:
    out = base
    try:
        for field_ in ("per_gb", "per_1000_requests"):
            if field_ in value:
                out = replace(out, **{field_: _number(value[field_], where, field_)})
        if "hours" in value:
            lo, hi = (float(h) for h in value["hours"])
            if not 0 <= lo <= hi:
                raise ValueError
            out = replace(out, hours_min=lo, hours_max=hi)
    except (TypeError, ValueError):
        raise UsageError(f"price table {where}: expected numbers (hours: [min, max])") from None
    unknown = set(value) - {"per_gb", "per_1000_requests", "hours"}
    if unknown:
        raise UsageError(f"price table {where}: unknown field(s) {', '.join(sorted(unknown))}")
    return out


def _number(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
        raise UsageError(f"price table {where}: {name} must be a number >= 0")
    return float(value)


def fmt_hours(hours: float) -> str:
    if hours < 1:
        return f"{max(1, round(hours * 60))} min"
    if hours < 48:
        return f"{hours:.0f} h" if hours == int(hours) else f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def expected_wait(tier: TierPrice, count: int, size: int, max_jobs: int | None,
                  max_bytes_per_hour: int | None) -> tuple[float, float]:
    """(hours until the first files, hours until the last) for ``count`` archives of ``size`` bytes.

    Jobs run in batches of ``max_jobs``: each batch waits the tier's time; the byte rate adds
    ``size / max_bytes_per_hour`` hours of starting. Downloads themselves are not counted.
    """
    if count <= 0:
        return 0.0, 0.0
    batches = math.ceil(count / max_jobs) if max_jobs else 1
    last = batches * tier.hours_max
    if max_bytes_per_hour:
        last = max(last, size / max_bytes_per_hour + tier.hours_max)
    return tier.hours_min, max(last, tier.hours_max)
