"""The Glacier wire format: limits, parsers of untrusted values, markers, response documents.

Pure functions and constants shared by the operation modules; nothing here touches a socket.
Every parser of a client value is total: it returns a bounded, typed value or raises the
service's 400 (:func:`.apierror.invalid`), never another exception (issue 10 item 6): JSON is
strict (no NaN/Infinity, nesting too deep to parse is malformed), integers are ASCII digits below
2**63, markers are at most ``MAX_MARKER`` characters and decode to the type their list expects.

Choices where the service is silent (documented here, tested in tests/test_server_*.py):

* List ``limit`` above the maximum (10 vaults, 50 others) is clamped; below 1 or not a
  number is 400. Markers other than ListVaults' (which is the next vault's ARN, as on the
  service) are opaque base64 tokens; a marker that does not decode is 400.
* DescribeVault ``SizeInBytes`` adds 32 KiB per archive, like the service's example.
* A zero-byte UploadArchive is 400 ``Invalid Content-Length: 0``.
* GetJobOutput of a failed job is 400 like an unfinished one; a Range past the end is the
  service's 400 ``The start of the range is larger than size of retrieved data: bytes=...``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from glacierfs.treehash import MiB

from .apierror import invalid
from .clock import iso_ms
from .faults import FaultPlan
from .hold import Holds
from .sigv4 import SigV4Verifier
from .store import Store

log = logging.getLogger(__name__)

API_VERSION = "2012-06-01"
DRAIN_LIMIT = 64 * MiB
MAX_ARCHIVE = 4096 * MiB
MAX_JSON = MiB
MAX_MARKER = 4096
MAX_INT = 2**63 - 1
MAX_ADVANCE = 10 * 366 * 86400.0  # one admin clock step: at most ten years
MAX_CLOCK_OFFSET = 100 * 366 * 86400.0  # the virtual clock never runs more than a century ahead
MAX_POPULATE = 10_000_000
MAX_POPULATE_BYTES = 64 * 1024 * MiB  # generated bodies are hashed at populate time
MIN_DATE, MAX_DATE = 0.0, 253402300799.0  # 1970-01-01 .. 9999-12-31T23:59:59Z
DIGITS = re.compile(r"^[0-9]{1,19}$")
ARCHIVE_OVERHEAD = 32 * 1024
VAULT_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")
ACCOUNT = re.compile(r"^(-|\d{12})$")
CONTENT_RANGE = re.compile(r"^bytes ([0-9]{1,19})-([0-9]{1,19})/(\*|[0-9]{1,19})$")
HTTP_RANGE = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")
BYTE_RANGE = re.compile(r"^([0-9]{1,19})-([0-9]{1,19})$")
JOB_STATUSES = ("InProgress", "Succeeded", "Failed")
TIERS = ("Expedited", "Standard", "Bulk")
EVENTS = ("ArchiveRetrievalCompleted", "InventoryRetrievalCompleted")
NO_LONGER_SUPPORTED = (
    "The Amazon Glacier vault API is no longer supported for new accounts:"
    " the service is closed to new customers since 2025-12-15."
)


@dataclass
class Options:
    """Wire-level switches (the state rules live in :class:`store.Settings`)."""

    verify_content_sha256: bool = True
    omit_nulls: bool = False  # leave out null fields instead of sending explicit nulls (§5 item 15)
    strict_range_checksum: bool = False  # GetJobOutput hash header only for tree-hash aligned ranges (dev guide)
    short_pages: bool = False  # List* pages with more to come hold one item less than they could
    body_timeout: float = 60.0  # seconds of silence before a body read fails with 408
    faults: FaultPlan = field(default_factory=lambda: FaultPlan({}, None))
    sigv4: SigV4Verifier | None = None
    admin: bool = False  # the /_admin/ endpoints exist only when this is set (serve --admin)
    latency: float = 0.0  # seconds each response is held back (serve --latency)
    bandwidth: float | None = None  # bytes/s each connection's transfer is capped at (serve --bandwidth)
    holds: Holds = field(default_factory=Holds)  # operations held before they take effect (serve --hold)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def loads(raw: bytes | str) -> Any:
    """Strict JSON: no NaN/Infinity literals; ValueError (also for nesting too deep to parse)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def encode_marker(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_marker(marker: str) -> Any:
    if len(marker) > MAX_MARKER:
        raise invalid("Invalid marker: too long")
    try:
        return loads(base64.urlsafe_b64decode(marker + "=" * (-len(marker) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid(f"Invalid marker: {marker}") from None


def marker_int(marker: str) -> int:
    """A marker that names a position (a sequence number or byte offset): 0 <= n < 2**63."""
    value = decode_marker(marker)
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise invalid(f"Invalid marker: {marker}")
    return value


def marker_str(marker: str) -> str:
    value = decode_marker(marker)
    if not isinstance(value, str):
        raise invalid(f"Invalid marker: {marker}")
    return value


def parse_uint(text: str, what: str) -> int:
    """A decimal integer header or field: ASCII digits only, below 2**63, else 400."""
    text = text.strip()
    if not DIGITS.match(text) or int(text) > MAX_INT:
        raise invalid(f"Invalid {what}: {text[:100]}")
    return int(text)


def check_printable(value: str, what: str) -> str:
    if len(value) > 1024 or any(not 0x20 <= ord(c) <= 0x7E for c in value):
        raise invalid(f"Invalid {what}: must be at most 1024 printable ASCII characters")
    return value



def describe_vault(store: Store, v: dict[str, Any]) -> dict[str, Any]:
    """The DescribeVault JSON of a vault row (also the items of ListVaults)."""
    return {
        "CreationDate": iso_ms(v["created"]),
        "LastInventoryDate": iso_ms(v["inv_date"]) if v["inv_date"] is not None else None,
        "NumberOfArchives": v["inv_count"],
        "SizeInBytes": v["inv_size"] + ARCHIVE_OVERHEAD * v["inv_count"],
        "VaultARN": store.arn(v["name"]),
        "VaultName": v["name"],
    }


def describe_job(store: Store, j: dict[str, Any]) -> dict[str, Any]:
    """The GlacierJobDescription of a job row (DescribeJob, ListJobs and SNS messages)."""
    done = j["completed"] is not None
    archive = j["action"] == "ArchiveRetrieval"
    out: dict[str, Any] = {
        "Action": j["action"],
        "ArchiveId": j["archive_id"],
        "ArchiveSHA256TreeHash": j["archive_tree_hash"],
        "ArchiveSizeInBytes": j["archive_size"],
        "Completed": done,
        "CompletionDate": iso_ms(j["completed"]) if done else None,
        "CreationDate": iso_ms(j["created"]),
        "InventorySizeInBytes": j["output_size"] if not archive else None,
        "JobDescription": j["description"],
        "JobId": j["id"],
        "RetrievalByteRange": f"{j['range_start']}-{j['range_end']}" if archive else None,
        "SHA256TreeHash": j["tree_hash"] if archive and j["status"] == "Succeeded" else None,
        "SNSTopic": j["sns_topic"],
        "StatusCode": j["status"],
        "StatusMessage": j["status_message"],
        "Tier": j["tier"],
        "VaultARN": store.arn(j["vault"]),
    }
    if not archive:
        echo = json.loads(j["inv_params"] or "{}").get("echo", {})
        marker = echo.get("Marker")
        if done:
            nxt = j["next_marker"]
            marker = encode_marker(json.loads(nxt)) if nxt else None
        out["InventoryRetrievalParameters"] = {
            "EndDate": echo.get("EndDate"),
            "Format": j["format"],
            "Limit": str(echo["Limit"]) if echo.get("Limit") is not None else None,
            "Marker": marker,
            "StartDate": echo.get("StartDate"),
        }
    return out

