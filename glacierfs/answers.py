"""Checks of everything a Glacier server returns, before anything uses it.

Ids become file and URL path parts and are printed, sizes size spools and loops, dates are
compared, tree hashes verified: a broken or hostile endpoint must not reach any of that with a
value the service could not have sent. A bad value is one :class:`ServiceError` line naming what
was invalid, the value shown escaped and truncated (:func:`shown`). No I/O, no state.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from glacierfs.errors import ServiceError

VAULT_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")


def _prefix(context: str | None, msg: str) -> str:
    return f"{context}: {msg}" if context else msg


# Ids are opaque: AWS uses ~92-138 characters of URL-safe base64 (reference section 1); allow a
# little more (padding, dots) for other implementations, never '/', spaces or control chars.
ID_RE = re.compile(r"[A-Za-z0-9_\-.+=]{1,1024}")
HASH_RE = re.compile(r"[0-9a-fA-F]{64}")
RANGE_RE = re.compile(r"([0-9]{1,18})-([0-9]{1,18})")
MAX_COUNT = 1 << 62  # sizes and counts beyond this are not real
MAX_MARKER = 4096
# Bounds of one listing, far beyond what the service allows (1,000 vaults per account,
# 10,000 parts per upload): a server handing out new items forever cannot run us out of memory.
MAX_LISTED = {"VaultList": 100_000, "Parts": 10_000, "UploadsList": 1_000_000, "JobList": 1_000_000}
JOB_ACTIONS = ("ArchiveRetrieval", "InventoryRetrieval", "Select")
JOB_STATUSES = ("InProgress", "Succeeded", "Failed")


def shown(value: Any, limit: int = 80) -> str:
    """``value`` for a message or a terminal: control and non-ASCII characters escaped, truncated."""
    text = ascii(value) if not isinstance(value, str) else ascii(value)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def invalid(ctx: str | None, what: str, value: Any) -> ServiceError:
    return ServiceError(_prefix(ctx, f"the server returned an invalid {what}: {shown(value)}"))


def checked_id(value: Any, what: str, ctx: str | None = None) -> str:
    """An archive, upload or job id: a non-empty string of the id alphabet (never '/')."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise invalid(ctx, what, value)
    return value


def checked_count(value: Any, what: str, ctx: str | None = None, *, optional: bool = True) -> int | None:
    """A size or count: a non-negative integer (or its decimal string); None if absent and ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool):
        raise invalid(ctx, what, value)
    if isinstance(value, str) and value.isdigit() and len(value) <= 19:
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise invalid(ctx, what, value)
    return value


def checked_date(value: Any, what: str, ctx: str | None = None, *, optional: bool = True) -> str | None:
    """An ISO-8601 date as the service writes them (``2012-03-20T17:03:43.221Z``)."""
    if value is None and optional:
        return None
    if isinstance(value, str) and 10 <= len(value) <= 40 and value.isascii() and value[:4].isdigit():
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            pass
    raise invalid(ctx, what, value)


def checked_hash(value: Any, what: str = "tree hash", ctx: str | None = None, *, optional: bool = True) -> str | None:
    """A SHA-256 tree hash: 64 hex digits (returned lower-case)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not HASH_RE.fullmatch(value):
        raise invalid(ctx, what, value)
    return value.lower()


def checked_marker(value: Any, ctx: str | None = None) -> str | None:
    """A page marker: opaque, but a bounded string of printable ASCII (an ARN for ListVaults)."""
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or len(value) > MAX_MARKER
        or not value.isascii()
        or not value.isprintable()
    ):
        raise invalid(ctx, "page marker", value)
    return value


def checked_range(value: Any, what: str, ctx: str | None = None) -> tuple[int, int]:
    """``"start-end"`` (inclusive, start <= end)."""
    m = RANGE_RE.fullmatch(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) > int(m.group(2)):
        raise invalid(ctx, what, value)
    return int(m.group(1)), int(m.group(2))


def check_job(desc: dict[str, Any], ctx: str | None = None) -> dict[str, Any]:
    """Validate a DescribeJob / ListJobs entry in place; returns it."""
    checked_id(desc.get("JobId"), "job id", ctx)
    ctx = ctx or f"job {desc['JobId']}"
    action = desc.get("Action")
    if action is not None and action not in JOB_ACTIONS:
        raise invalid(ctx, "job action", action)
    status = desc.get("StatusCode")
    if status is not None and status not in JOB_STATUSES:
        raise invalid(ctx, "job status", status)
    if desc.get("ArchiveId") is not None:
        checked_id(desc["ArchiveId"], "archive id", ctx)
    for key in ("ArchiveSizeInBytes", "InventorySizeInBytes"):
        checked_count(desc.get(key), key, ctx)
    for key in ("CreationDate", "CompletionDate"):
        checked_date(desc.get(key), key, ctx)
    for key in ("SHA256TreeHash", "ArchiveSHA256TreeHash"):
        if desc.get(key) is not None:
            desc[key] = checked_hash(desc[key], key, ctx)
    rng = desc.get("RetrievalByteRange")
    if rng is not None:
        checked_range(rng, "RetrievalByteRange", ctx)
    msg = desc.get("StatusMessage")
    if msg is not None and not isinstance(msg, str):
        raise invalid(ctx, "StatusMessage", msg)
    if isinstance(msg, str):
        desc["StatusMessage"] = shown(msg, 300)
    return desc


def item_key(key: str, item: Any) -> Any:
    """What identifies one item of a listing (to see whether a page brought anything new)."""
    if not isinstance(item, dict):
        return repr(item)
    field_name = {"VaultList": "VaultARN", "Parts": "RangeInBytes", "UploadsList": "MultipartUploadId",
                  "JobList": "JobId"}.get(key)
    value = item.get(field_name) if field_name else None
    if key == "VaultList" and value is None:
        value = item.get("VaultName")
    return value if isinstance(value, str) else repr(sorted(item.items(), key=str))
