"""Archive operations: UploadArchive, DeleteArchive and the multipart upload operations
(reference §2 rows 5-12): header validation, streamed bodies, checksum verification.

Threading: methods run on the request thread of :class:`.request.Request`; bodies are
received into private temp files and committed by the store under its lock.
"""

from __future__ import annotations

import logging

from glacierfs.treehash import is_valid_part_size

from .apierror import invalid, missing
from .clock import iso_ms
from .request import Request
from .store import MAX_PARTS
from .wire import (
    CONTENT_RANGE,
    MAX_ARCHIVE,
    encode_marker,
    marker_int,
    marker_str,
)

log = logging.getLogger(__name__)


class ArchiveOps(Request):
    """The archive and multipart operations (a mixin of :class:`.httpd.Handler`)."""

    def upload_archive(self, vault: str) -> None:
        self.store.vault(vault)
        description = self._description("x-amz-archive-description") or ""
        length = self._content_length()
        if length == 0:
            raise invalid("Invalid Content-Length: 0")
        if length > MAX_ARCHIVE:
            raise invalid(f"Invalid Content-Length: {length}. Use a multipart upload above 4 GiB")
        expected = self._tree_hash_header()
        received = self._receive_body(length)
        try:
            self._verify(received, expected)
            archive_id = self.store.add_archive(vault, received, description)
        finally:
            self.store.bodies.discard(received)  # no-op once placed
        self._send(201, {
            "Location": f"/{self._acct()}/vaults/{vault}/archives/{archive_id}",
            "x-amz-archive-id": archive_id,
            "x-amz-sha256-tree-hash": received.tree_hash,
        })

    def delete_archive(self, vault: str, archive_id: str) -> None:
        self.store.delete_archive(vault, archive_id)
        self._send(204)

    def initiate_multipart(self, vault: str) -> None:
        self.store.vault(vault)
        raw = self.headers.get("x-amz-part-size")
        try:
            part_size = int(raw) if raw is not None else None
        except ValueError:
            part_size = None
        if part_size is None or not is_valid_part_size(part_size):
            raise invalid(
                f"Invalid part size: {raw if raw is not None else 'null'}. Part size must not be null, must be a"
                " power of two and be between 1048576 and 4294967296 bytes."
            )
        description = self._description("x-amz-archive-description")
        upload_id = self.store.initiate_upload(vault, part_size, description)
        self._send(201, {
            "Location": f"/{self._acct()}/vaults/{vault}/multipart-uploads/{upload_id}",
            "x-amz-multipart-upload-id": upload_id,
        })

    def upload_part(self, vault: str, upload_id: str) -> None:
        up = self.store.open_upload(vault, upload_id)
        part_size = up["part_size"]
        crange = self.headers.get("Content-Range")
        if not crange:
            raise missing("Required parameter missing: Content-Range")
        m = CONTENT_RANGE.match(crange.strip())
        if not m:
            raise invalid(f"Invalid Content-Range: {crange}")
        start, end = int(m.group(1)), int(m.group(2))
        length = self._content_length()
        if end < start:
            raise invalid(f"Invalid Content-Range: {crange}")
        if end - start + 1 != length:
            raise invalid(f"Content-Range: {crange.strip()} is incompatible with Content-Length: {length}")
        if m.group(3) != "*" and int(m.group(3)) <= end:
            raise invalid(f"Invalid Content-Range: {crange}")
        if start % part_size:
            raise invalid(f"Invalid Content-Range: {crange}. The range must start at a multiple of the part size {part_size}")
        if length > part_size:
            raise invalid(f"Invalid Content-Range: {crange}. The range is larger than the part size {part_size}")
        if start // part_size >= MAX_PARTS:
            raise invalid(f"Invalid Content-Range: {crange}. An upload has at most {MAX_PARTS} parts")
        expected = self._tree_hash_header()
        received = self._receive_body(length)
        try:
            self._verify(received, expected)
            self.store.put_part(vault, upload_id, start, received)
        finally:
            self.store.bodies.discard(received)
        self._send(204, {"x-amz-sha256-tree-hash": received.tree_hash})

    def complete_multipart(self, vault: str, upload_id: str) -> None:
        raw = self.headers.get("x-amz-archive-size")
        if raw is None:
            raise missing("Required parameter missing: x-amz-archive-size")
        try:
            size = int(raw)
        except ValueError:
            raise invalid(f"Invalid x-amz-archive-size: {raw}") from None
        expected = self._tree_hash_header()
        archive_id, tree_hash = self.store.complete_upload(vault, upload_id, size, expected)
        self._send(201, {
            "Location": f"/{self._acct()}/vaults/{vault}/archives/{archive_id}",
            "x-amz-archive-id": archive_id,
            "x-amz-sha256-tree-hash": tree_hash,
        })

    def abort_multipart(self, vault: str, upload_id: str) -> None:
        self.store.abort_upload(vault, upload_id)
        self._send(204)

    def list_parts(self, vault: str, upload_id: str) -> None:
        limit = self._limit(50, 50)
        marker = self._query.get("marker")
        after = marker_int(marker) if marker else 0
        up, page, nxt = self.store.list_parts(vault, upload_id, after, limit)
        page, nxt = self._shorten(page, nxt, key="start")
        self._send_json(200, {
            "ArchiveDescription": up["description"],
            "CreationDate": iso_ms(up["created"]),
            "Marker": encode_marker(nxt) if nxt is not None else None,
            "MultipartUploadId": upload_id,
            "PartSizeInBytes": up["part_size"],
            "Parts": [
                {"RangeInBytes": f"{p['start']}-{p['start'] + p['size'] - 1}", "SHA256TreeHash": p["tree_hash"]}
                for p in page
            ],
            "VaultARN": self.store.arn(vault),
        })

    def list_uploads(self, vault: str) -> None:
        limit = self._limit(50, 50)
        marker = self._query.get("marker")
        after = marker_str(marker) if marker else ""
        page, nxt = self._shorten(*self.store.list_uploads(vault, after, limit), key="id")
        self._send_json(200, {
            "Marker": encode_marker(nxt) if nxt is not None else None,
            "UploadsList": [
                {
                    "ArchiveDescription": u["description"],
                    "CreationDate": iso_ms(u["created"]),
                    "MultipartUploadId": u["id"],
                    "PartSizeInBytes": u["part_size"],
                    "VaultARN": self.store.arn(vault),
                }
                for u in page
            ],
        })
