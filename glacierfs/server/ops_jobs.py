"""Job operations: InitiateJob (parameter validation), DescribeJob, ListJobs, GetJobOutput
(ranges, the tree-hash header rule, streamed output with the reset/corrupt faults).

Threading: methods run on the request thread of :class:`.request.Request`; job completion
itself is the store's (serialized by its completion lock).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from typing import Any

from glacierfs.treehash import MiB, TreeHasher, is_megabyte_aligned, is_tree_hash_aligned

from .apierror import ApiError, invalid, missing, not_found
from .clock import parse_iso
from .request import Request
from .wire import (
    BYTE_RANGE,
    HTTP_RANGE,
    JOB_STATUSES,
    MAX_DATE,
    MAX_INT,
    MIN_DATE,
    TIERS,
    check_printable,
    decode_marker,
    describe_job,
    encode_marker,
    marker_int,
    parse_uint,
)

log = logging.getLogger(__name__)


class JobOps(Request):
    """The job operations (a mixin of :class:`.httpd.Handler`)."""

    def initiate_job(self, vault: str) -> None:
        self.store.vault(vault)
        body = self._read_json()
        params = body.get("jobParameters", body) if isinstance(body.get("jobParameters"), dict) else body
        fields = self._job_fields(vault, params)
        if fields.get("action") == "ArchiveRetrieval":
            if fields["tier"] == "Expedited" and self._draw.capacity:
                raise ApiError(503, "InsufficientCapacityException",
                               "There is not enough capacity to process this Expedited retrieval right now.",
                               "Server")
            if fields["tier"] == "Standard" and self._draw.policy:
                raise ApiError(400, "PolicyEnforcedException",
                               "The retrieval request was refused by the vault's data retrieval policy.")
        job_id = self.store.initiate_job(vault, fields)
        self._send(202, {"Location": f"/{self._acct()}/vaults/{vault}/jobs/{job_id}", "x-amz-job-id": job_id})

    def _job_fields(self, vault: str, p: dict[str, Any]) -> dict[str, Any]:
        kind = p.get("Type")
        if not kind:
            raise missing("Required parameter missing: Type")
        description = p.get("Description")
        if description is not None:
            if not isinstance(description, str):
                raise invalid("Invalid job description")
            check_printable(description, "job description")
        sns = p.get("SNSTopic")
        if sns is not None and not isinstance(sns, str):
            raise invalid("Invalid SNSTopic")
        fields: dict[str, Any] = {"description": description, "sns_topic": sns}
        if kind == "archive-retrieval":
            for forbidden in ("Format", "InventoryRetrievalParameters"):
                if p.get(forbidden) is not None:
                    raise invalid(f"{forbidden} is not allowed for archive-retrieval jobs")
            archive_id = p.get("ArchiveId")
            if not archive_id:
                raise missing("Required parameter missing: ArchiveId")
            if not isinstance(archive_id, str) or len(archive_id) > 1024:
                raise invalid("Invalid ArchiveId")
            tier = p.get("Tier") or "Standard"
            if tier not in TIERS:
                raise invalid(f"Invalid Tier: {str(tier)[:100]}. Valid values are {', '.join(TIERS)}")
            arch = self.store.archive(archive_id)
            if arch is None or arch["vault"] != vault or arch["deleted"] is not None:
                # a deleted archive is refused at once, as on the service (not accepted to fail later)
                raise not_found(f"The archive ID was not found: {archive_id}")
            size = arch["size"]
            rng = p.get("RetrievalByteRange")
            if rng is not None:
                m = BYTE_RANGE.match(rng) if isinstance(rng, str) else None
                if not m or not is_megabyte_aligned(int(m.group(1)), int(m.group(2)), size):
                    raise invalid(
                        f"Invalid RetrievalByteRange: {str(rng)[:100]}. The range must be megabyte (1048576 bytes) aligned"
                        f" and within the archive size {size}"
                    )
                start, end = int(m.group(1)), int(m.group(2))
            else:
                start, end = 0, size - 1
            fields.update(
                action="ArchiveRetrieval", tier=tier, archive_id=archive_id, archive_size=size,
                archive_tree_hash=arch["tree_hash"], archive_description=arch["description"],
                range_start=start, range_end=end,
            )
            return fields
        if kind == "inventory-retrieval":
            for forbidden in ("ArchiveId", "RetrievalByteRange"):
                if p.get(forbidden) is not None:
                    raise invalid(f"{forbidden} is not allowed for inventory-retrieval jobs")
            fmt = p.get("Format") or "JSON"
            if fmt not in ("JSON", "CSV"):
                raise invalid(f"Invalid Format: {str(fmt)[:100]}. Valid values are JSON and CSV")
            irp = p.get("InventoryRetrievalParameters") or {}
            if not isinstance(irp, dict):
                raise invalid("Invalid InventoryRetrievalParameters")
            for name in ("StartDate", "EndDate", "Limit", "Marker"):
                value = irp.get(name)
                if value is not None and (not isinstance(value, str | int) or isinstance(value, bool)):
                    raise invalid(f"Invalid {name}: must be a string")
            inv: dict[str, Any] = {"echo": {k: irp.get(k) for k in ("StartDate", "EndDate", "Limit", "Marker")}}
            for key, name in (("start", "StartDate"), ("end", "EndDate")):
                if irp.get(name):
                    try:
                        when = parse_iso(str(irp[name]))
                    except (ValueError, OverflowError):
                        raise invalid(f"Invalid {name}: {str(irp[name])[:100]}") from None
                    if not MIN_DATE <= when <= MAX_DATE:
                        raise invalid(f"Invalid {name}: {str(irp[name])[:100]}")
                    inv[key] = when
            if irp.get("Limit") is not None:
                inv["limit"] = parse_uint(str(irp["Limit"]), "Limit")
                if inv["limit"] < 1:
                    raise invalid(f"Invalid Limit: {irp['Limit']}")
                inv["limit"] = min(inv["limit"], MAX_INT - 1)
            if irp.get("Marker"):
                after = decode_marker(str(irp["Marker"]))
                if not (isinstance(after, list) and len(after) == 2 and type(after[0]) in (int, float)
                        and math.isfinite(after[0]) and isinstance(after[1], str)):
                    raise invalid(f"Invalid Marker: {str(irp['Marker'])[:100]}")
                inv["after"] = after
            fields.update(action="InventoryRetrieval", format=fmt, inv_params=json.dumps(inv))
            return fields
        if kind == "select":
            raise invalid("Select jobs are not supported by this server")
        raise invalid(f"Invalid job type: {kind}. Valid values are archive-retrieval and inventory-retrieval")

    def describe_job(self, vault: str, job_id: str) -> None:
        self._send_json(200, describe_job(self.store, self.store.job(vault, job_id)))

    def list_jobs(self, vault: str) -> None:
        limit = self._limit(50, 50)
        status = self._query.get("statuscode") or None
        if status is not None and status not in JOB_STATUSES:
            raise invalid(f"The job status code is not valid: {status}")
        completed_raw = self._query.get("completed")
        completed = None
        if completed_raw:
            if completed_raw.lower() not in ("true", "false"):
                raise invalid(f"The completed value is not valid: {completed_raw}")
            completed = completed_raw.lower() == "true"
        marker = self._query.get("marker")
        after = marker_int(marker) if marker else 0
        page, nxt = self._shorten(*self.store.list_jobs(vault, status, completed, after, limit), key="seq")
        self._send_json(200, {
            "JobList": [describe_job(self.store, j) for j in page],
            "Marker": encode_marker(nxt) if nxt is not None else None,
        })

    def get_job_output(self, vault: str, job_id: str) -> None:
        job = self.store.job(vault, job_id)
        if job["status"] != "Succeeded":
            raise invalid(f"The job is not currently available for download: {job_id}")
        archive = job["action"] == "ArchiveRetrieval"
        total = job["range_end"] - job["range_start"] + 1 if archive else job["output_size"]
        start, end, ranged = 0, total - 1, False
        raw = self.headers.get("Range")
        if raw:
            m = HTTP_RANGE.match(raw.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise invalid(f"Invalid Range: {raw}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            else:  # suffix range: the last n bytes
                start = max(0, total - int(m.group(2)))
            if start >= total:
                raise invalid(f"The start of the range is larger than size of retrieved data: {raw.strip()}")
            if start > end:
                raise invalid(f"Invalid Range: {raw}. The job output has {total} bytes")
            ranged = True
        headers = {"Accept-Ranges": "bytes"}
        if archive:
            headers["Content-Type"] = "application/octet-stream"
            headers["x-amz-archive-description"] = job["archive_description"] or ""
            tree = self._output_tree_hash(job, start, end)
            if tree:
                headers["x-amz-sha256-tree-hash"] = tree
        else:
            headers["Content-Type"] = "text/csv" if job["format"] == "CSV" else "application/json"
        if ranged:
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        length = end - start + 1
        chunks = self.store.iter_job_output(job, start, end + 1)
        first = next(chunks, b"")  # fail (e.g. a missing body file) before the headers go out
        self._start(206 if ranged else 200, headers, length)
        self._stream(first, chunks, length)

    def _stream(self, first: bytes, rest: Iterator[bytes], length: int) -> None:
        sent = 0
        reset_at = length // 2 if self._fault == "reset" else None
        corrupt = self._corrupt
        for chunk in _chain(first, rest):
            if corrupt and chunk:
                buf = bytearray(chunk)
                buf[len(buf) // 2] ^= 0xFF
                chunk = bytes(buf)
                corrupt = False
            if reset_at is not None and sent + len(chunk) >= reset_at:
                self.wfile.write(chunk[: reset_at - sent])
                self.wfile.flush()
                self._reset()
            self.wfile.write(chunk)
            sent += len(chunk)

    def _output_tree_hash(self, job: dict[str, Any], start: int, end: int) -> str | None:
        """The hash header for output bytes [start, end] (reference §4.2): by default the API reference's
        rule (start and end on MiB boundaries, or a MiB-aligned start to the end of the archive), with
        ``strict_range_checksum`` the dev guide's tree-hash alignment of both the job and the download."""
        size = job["archive_size"]
        base = job["range_start"]
        lo, hi = base + start, base + end
        if self.options.strict_range_checksum:  # the dev guide's rule: tree-hash aligned job and download
            if job["tree_hash"] is None or not is_tree_hash_aligned(lo, hi, size):
                return None
        elif lo % MiB or not ((hi + 1) % MiB == 0 or hi == size - 1):  # the API reference: MiB boundaries
            return None
        if start == 0 and end == job["range_end"] - base and job["tree_hash"]:
            return str(job["tree_hash"])
        hasher = TreeHasher()
        for data in self.store.iter_job_output(job, start, end + 1):
            hasher.update(data)
        return hasher.hexdigest()


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
