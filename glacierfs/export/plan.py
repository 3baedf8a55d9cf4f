"""What ``glacierfs export`` will do: the selection, object keys and metadata, shards, prices.

Keys
    ``PREFIX/`` + the archive's catalog path: the same safe, distinct names the mount shows
    (``codec.safe_relpath`` + ``codec.variant_name`` for duplicates, owned by the catalog).
    Undecodable descriptions - empty ones, and ones in a dialect's shape (``mt1 ``/``mt2 ``,
    ``<``, ``{``) that do not decode - go to ``PREFIX/_undecoded/<archive id>``, and so does a
    name whose key would exceed S3's 1,024 UTF-8 bytes. A decoded path whose first component is
    ``_undecoded`` (or ``_glacierfs-claims``, where exporters keep their claims:
    :mod:`glacierfs.export.claims`) is spelled ``%5F...`` so the sets of keys never meet.

Metadata (``x-amz-meta-*``, ASCII only, 2 KB in total)
    ``glacier-archive-id``, ``glacier-tree-hash``, ``glacier-creation-date`` (ISO 8601 as the
    inventory has it), ``mtime`` (epoch seconds, the key rclone reads) and
    ``glacier-description``: the original description as base64 of its UTF-8 bytes (exact, any
    bytes; Glacier descriptions are at most 1,024 ASCII characters, 1,368 base64 bytes). A
    description that would push the metadata over 2 KB is left out and
    ``glacier-description-omitted: too-long`` is set instead.

Shards
    ``shard_of(archive_id, n)``: the first 8 bytes of SHA-256(archive id) modulo n. It needs no
    catalog order, so N processes with N separate catalogs agree on every archive.

Prices (:class:`Prices`) are AWS us-east-1 list prices (USD) at the time of writing; the command
lets the user override each one (``--price NAME=USD``).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Protocol

from glacierfs.codec import decode_description
from glacierfs.errors import UsageError
from glacierfs.treehash import MiB

log = logging.getLogger(__name__)

GiB = 1 << 30
MAX_KEY_BYTES = 1024
MAX_METADATA_BYTES = 2048
MAX_PARTS = 10_000
MIN_PART = 16 * MiB  # power of two MiB (tree-hash aligned) and above S3's 5 MiB minimum
MAX_PART = 4 * GiB  # S3: at most 5 GiB
MAX_OBJECT = 5 * 1024 * GiB
UNDECODED = "_undecoded"
CLAIMS = "_glacierfs-claims"  # export.claims: exporters' claims while they export an archive
RESERVED = (UNDECODED, CLAIMS)
SHARD_ENV = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX")
EARLY_DELETE_DAYS = 90
TIERS = ("Bulk", "Standard", "Expedited")
TIER_HOURS = {"Expedited": (1 / 60, 5 / 60), "Standard": (3.0, 5.0), "Bulk": (5.0, 12.0)}
ASSUMED_THROUGHPUT = 100 * MiB  # bytes/s from Glacier to S3 for the duration estimate
_STRUCTURED = ("mt1 ", "mt2 ", "<", "{")


class ArchiveLike(Protocol):
    """The catalog's Archive fields the plan reads."""

    archive_id: str
    path: str
    size: int
    creation_date: str
    mtime: float
    tree_hash: str
    description: str


@dataclass(frozen=True, slots=True)
class ExportItem:
    """One archive to export and where it goes."""

    archive_id: str
    key: str
    size: int
    tree_hash: str
    description: str
    creation_date: str
    mtime: float
    path: str


# --------------------------------------------------------------------------- keys and metadata


def undecodable(description: str | None) -> bool:
    """True for descriptions that name nothing: empty, or a known dialect's shape that does not decode."""
    if not description or not description.strip():
        return True
    text = description.strip()
    if not text.startswith(_STRUCTURED):
        return False
    return decode_description(description).dialect == "plain"


def object_key(archive: ArchiveLike, prefix: str) -> str:
    """The object key of an archive under ``prefix`` ('' or ending in '/'); see the module docstring."""
    if undecodable(archive.description):
        return f"{prefix}{UNDECODED}/{archive.archive_id}"
    path = archive.path
    if any(path == name or path.startswith(name + "/") for name in RESERVED):
        path = "%5F" + path[1:]
    key = prefix + path
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"{prefix}{UNDECODED}/{archive.archive_id}"
    return key


def item_for(archive: ArchiveLike, prefix: str) -> ExportItem:
    return ExportItem(
        archive_id=archive.archive_id,
        key=object_key(archive, prefix),
        size=int(archive.size),
        tree_hash=archive.tree_hash,
        description=archive.description or "",
        creation_date=archive.creation_date or "",
        mtime=float(archive.mtime or 0.0),
        path=archive.path,
    )


def object_metadata(item: ExportItem) -> dict[str, str]:
    """The object's user metadata (see the module docstring); every value is ASCII."""
    meta = {
        "glacier-archive-id": item.archive_id,
        "glacier-tree-hash": item.tree_hash,
        "glacier-creation-date": item.creation_date,
        "mtime": f"{item.mtime:.0f}" if item.mtime == int(item.mtime) else f"{item.mtime:.6f}",
    }
    desc = base64.b64encode(item.description.encode("utf-8", "surrogateescape")).decode("ascii")
    used = sum(len(k) + len(v) for k, v in meta.items())
    if used + len("glacier-description") + len(desc) <= MAX_METADATA_BYTES:
        meta["glacier-description"] = desc
    else:
        meta["glacier-description-omitted"] = "too-long"
    return meta


def decode_metadata_description(meta: dict[str, str]) -> str | None:
    """The original description from an exported object's metadata (None if it was left out)."""
    value = meta.get("glacier-description")
    if value is None:
        return None
    return base64.b64decode(value).decode("utf-8", "surrogateescape")


def part_size_for(size: int, minimum: int = MIN_PART) -> int:
    """Power-of-two MiB part size (tree-hash aligned) keeping ``size`` within 10,000 parts."""
    part = max(MiB, minimum)
    if part & (part - 1):
        raise UsageError("the part size must be a power of two MiB")
    while math.ceil(size / part) > MAX_PARTS:
        part *= 2
    if part > MAX_PART:
        raise UsageError(f"an archive of {size} bytes does not fit S3's 10,000 parts of at most 5 GiB")
    return part


# --------------------------------------------------------------------------- selection


def shard_of(archive_id: str, n: int) -> int:
    """The shard (0..n-1) of an archive: SHA-256 of its id, so every process agrees without a coordinator."""
    return int.from_bytes(hashlib.sha256(archive_id.encode("utf-8")).digest()[:8], "big") % n


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
        """``K/N`` or ``auto/N`` (K from AWS_BATCH_JOB_ARRAY_INDEX or JOB_COMPLETION_INDEX)."""
        if text is None:
            return None
        env: Mapping[str, str] = os.environ if environ is None else environ
        k_text, sep, n_text = text.partition("/")
        try:
            n = int(n_text)
        except ValueError:
            raise UsageError(f"--shard {text!r}: expected K/N or auto/N") from None
        if not sep or n < 1:
            raise UsageError(f"--shard {text!r}: expected K/N or auto/N with N >= 1")
        if k_text == "auto":
            names = [v for v in SHARD_ENV if env.get(v, "").strip()]
            if not names:
                raise UsageError(f"--shard auto/N needs {' or '.join(SHARD_ENV)} in the environment")
            k_text = env[names[0]].strip()
        try:
            k = int(k_text)
        except ValueError:
            raise UsageError(f"--shard {text!r}: shard index {k_text!r} is not a number") from None
        if not 0 <= k < n:
            raise UsageError(f"--shard {text!r}: the index must be between 0 and {n - 1}")
        return cls(k, n)

    def __contains__(self, archive_id: object) -> bool:
        return isinstance(archive_id, str) and shard_of(archive_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Selection:
    """``--select`` patterns (a PATH selects it and everything below it; a GLOB uses fnmatch) and a shard."""

    patterns: tuple[str, ...] = ()
    shard: Shard | None = None

    def matches_path(self, path: str) -> bool:
        if not self.patterns:
            return True
        for pat in self.patterns:
            if any(c in pat for c in "*?["):
                if fnmatch.fnmatchcase(path, pat):
                    return True
            elif path == pat or path.startswith(pat + "/") or not pat:
                return True
        return False

    def __call__(self, archive: ArchiveLike) -> bool:
        if self.shard is not None and archive.archive_id not in self.shard:
            return False
        return self.matches_path(archive.path)


def normalize_patterns(patterns: Sequence[str] | None) -> tuple[str, ...]:
    return tuple("/".join(p for p in pat.split("/") if p not in ("", ".")) for pat in patterns or ())


def select(archives: Iterable[ArchiveLike], selection: Selection) -> Iterator[ArchiveLike]:
    return (a for a in archives if selection(a))


# --------------------------------------------------------------------------- prices and the dry run


@dataclass(frozen=True)
class Prices:
    """USD list prices (us-east-1); per GiB, per 1,000 requests, per GiB-month. Override with ``--price``."""

    retrieval_gb_bulk: float = 0.0025
    retrieval_gb_standard: float = 0.01
    retrieval_gb_expedited: float = 0.03
    retrieval_requests_bulk: float = 0.025
    retrieval_requests_standard: float = 0.05
    retrieval_requests_expedited: float = 10.0
    vault_storage_gb_month: float = 0.0036
    s3_storage: dict[str, float] = field(default_factory=lambda: {
        "STANDARD": 0.023, "STANDARD_IA": 0.0125, "ONEZONE_IA": 0.01, "INTELLIGENT_TIERING": 0.023,
        "GLACIER_IR": 0.004, "GLACIER": 0.0036, "DEEP_ARCHIVE": 0.00099,
    })
    s3_put_requests: dict[str, float] = field(default_factory=lambda: {
        "STANDARD": 0.005, "STANDARD_IA": 0.01, "ONEZONE_IA": 0.01, "INTELLIGENT_TIERING": 0.005,
        "GLACIER_IR": 0.02, "GLACIER": 0.03, "DEEP_ARCHIVE": 0.05,
    })

    def with_overrides(self, items: Sequence[str] | None) -> Prices:
        """``NAME=USD`` overrides: a field name, or ``s3_storage.CLASS`` / ``s3_put_requests.CLASS``."""
        out = self
        names = {f.name for f in fields(self)}
        for item in items or ():
            name, sep, value = item.partition("=")
            try:
                usd = float(value)
            except ValueError:
                usd = -1.0
            if not sep or usd < 0:
                raise UsageError(f"--price {item!r}: expected NAME=USD")
            table, _, cls = name.partition(".")
            if cls and table in ("s3_storage", "s3_put_requests"):
                table_value: dict[str, float] = {**getattr(out, table), cls.upper(): usd}
                out = replace(out, **{table: table_value})  # type: ignore[arg-type]
            elif name in names and not cls and name not in ("s3_storage", "s3_put_requests"):
                out = replace(out, **{name: usd})  # type: ignore[arg-type]
            else:
                raise UsageError(f"--price {item!r}: unknown price {name!r}")
        return out


@dataclass
class Plan:
    """Totals of a selection, filled by :meth:`add` (O(1) memory per archive)."""

    tier: str
    storage_class: str
    prefix: str
    min_part: int = MIN_PART
    archives: int = 0
    bytes: int = 0
    requests: int = 0  # S3 PUT-class requests: PutObject, or Create + parts + Complete
    young: int = 0  # archives younger than 90 days (early-deletion charge if deleted)
    too_big: int = 0
    now: float = 0.0

    def __post_init__(self) -> None:
        # ISO 8601 UTC dates sort as strings: only archives after the cutoff count as young, and
        # their age is taken per day (bytes summed per creation day), which is plenty for a price.
        cutoff = datetime.fromtimestamp(self.now - EARLY_DELETE_DAYS * 86400, UTC)
        self._cutoff = cutoff.strftime("%Y-%m-%dT%H:%M:%S")
        self._simple = self.min_part * MAX_PARTS  # up to here a part is min_part
        self._young_days: dict[str, int] = {}

    @property
    def young_charge_gb_days(self) -> float:
        total = 0.0
        for day, size in self._young_days.items():
            created = _epoch(day + "T12:00:00Z")
            if created is not None:
                age = max(0.0, (self.now - created) / 86400)
                total += size / GiB * max(0.0, EARLY_DELETE_DAYS - age)
        return total

    def _big(self, size: int) -> int:
        if size > MAX_OBJECT:
            self.too_big += 1
        return 2 + math.ceil(size / part_size_for(min(size, MAX_OBJECT), self.min_part))

    def add(self, size: int, creation_date: str) -> None:
        self.add_all([("", "", size, creation_date)], Selection())

    def add_all(self, rows: Iterable[tuple[str, str, int, str]], selection: Selection) -> None:
        """Totals of ``(archive_id, path, size, creation_date)`` rows (``Catalog.iter_summary``)."""
        shard, patterns = selection.shard, selection.patterns
        one, simple, cutoff, days = self.min_part, self._simple, self._cutoff, self._young_days
        n = total = requests = young = 0
        for aid, path, size, cdate in rows:
            if shard is not None and aid not in shard:
                continue
            if patterns and not selection.matches_path(path):
                continue
            n += 1
            total += size
            if size <= one:
                requests += 1
            elif size <= simple:
                requests += 2 - (-size // one)
            else:
                requests += self._big(size)
            if cdate > cutoff:
                young += 1
                day = cdate[:10]
                days[day] = days.get(day, 0) + size
        self.archives += n
        self.bytes += total
        self.requests += requests
        self.young += young


def _epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Estimate:
    retrieval_usd: float
    retrieval_requests_usd: float
    s3_requests_usd: float
    s3_storage_month_usd: float
    early_delete_usd: float
    hours: float
    why: str


def estimate(plan: Plan, prices: Prices, max_jobs: int, max_bytes_per_hour: int | None) -> Estimate:
    """Costs and the expected duration of a plan (see README, Export)."""
    tier = plan.tier.lower()
    gb = plan.bytes / GiB
    retrieval = gb * getattr(prices, f"retrieval_gb_{tier}")
    requests = plan.archives / 1000 * getattr(prices, f"retrieval_requests_{tier}")
    s3_req = plan.requests / 1000 * prices.s3_put_requests.get(plan.storage_class, 0.0)
    s3_month = gb * prices.s3_storage.get(plan.storage_class, 0.0)
    early = plan.young_charge_gb_days / 30 * prices.vault_storage_gb_month
    low, high = TIER_HOURS[plan.tier]
    if not plan.archives:
        return Estimate(0, 0, 0, 0, 0, 0.0, "nothing to export")
    batches = math.ceil(plan.archives / max(1, max_jobs))
    by_jobs = batches * high
    by_bytes = plan.bytes / max_bytes_per_hour + high if max_bytes_per_hour else 0.0
    by_transfer = plan.bytes / ASSUMED_THROUGHPUT / 3600 + high
    hours = max(by_jobs, by_bytes, by_transfer)
    why = (
        f"{plan.tier} jobs take {_fmt_hours(low)}-{_fmt_hours(high)}; {batches} batch(es) of at most "
        f"{max_jobs} job(s)"
    )
    if max_bytes_per_hour:
        why += f"; at most {_fmt_bytes(max_bytes_per_hour)} retrieved per hour"
    why += f"; transfer at about {_fmt_bytes(ASSUMED_THROUGHPUT)}/s"
    return Estimate(retrieval, requests, s3_req, s3_month, early, hours, why)


def _fmt_hours(h: float) -> str:
    if h < 1:
        return f"{h * 60:.0f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.1f} days"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"  # pragma: no cover


def dry_run_lines(plan: Plan, est: Estimate, *, delete_source: bool, dest: str, shard: Shard | None) -> list[str]:
    """The plan as the dry run prints it."""
    where = f" (shard {shard})" if shard else ""
    lines = [
        f"export plan{where}: {plan.archives} archive(s), {plan.bytes} bytes ({_fmt_bytes(plan.bytes)}) "
        f"to {dest} as {plan.storage_class}",
        f"retrieval: {plan.tier}, about ${est.retrieval_usd:,.2f} for the bytes + "
        f"${est.retrieval_requests_usd:,.2f} for {plan.archives} job(s)",
        f"S3 requests: {plan.requests} PUT-class request(s), about ${est.s3_requests_usd:,.2f}",
        f"S3 storage: about ${est.s3_storage_month_usd:,.2f} per month",
        f"expected duration: about {_fmt_hours(est.hours)} ({est.why})",
    ]
    if plan.too_big:
        lines.append(f"warning: {plan.too_big} archive(s) exceed S3's 5 TiB object limit and will fail")
    if delete_source and plan.young:
        lines.append(
            f"warning: --delete-source: {plan.young} archive(s) are younger than {EARLY_DELETE_DAYS} days; "
            f"deleting them is charged as if stored {EARLY_DELETE_DAYS} days, about ${est.early_delete_usd:,.2f}"
        )
    elif delete_source:
        lines.append("--delete-source: no archive is younger than 90 days (no early-deletion charge)")
    lines.append("prices are AWS us-east-1 list prices; override them with --price NAME=USD")
    return lines
