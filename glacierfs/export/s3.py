"""The S3 side of ``glacierfs export``: a typed seam (:class:`ObjectStore`) over boto3's ``s3`` client.

Everything the exporter asks of S3 goes through these few calls, so the same code runs against
AWS S3 and any S3-compatible endpoint (``--s3-endpoint-url``), and a test can put a server in
between. Every botocore/boto3 exception becomes one :class:`~glacierfs.errors.GlacierFSError`
line with credentials redacted; a part or object S3 rejected for its checksum raises
:class:`ChecksumRejected` so the caller can send it again.

Thread safety: boto3 clients are thread-safe; :class:`S3` holds no other mutable state.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from glacierfs.errors import (
    ConflictError,
    CredentialsError,
    GlacierFSError,
    IntegrityError,
    NotFoundError,
    ServiceError,
    UsageError,
)

log = logging.getLogger(__name__)

STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
)
CHECKSUM_ERRORS = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})


class ChecksumRejected(IntegrityError):
    """S3 refused a body whose bytes do not match the checksum we sent (BadDigest)."""


class NoSuchUpload(NotFoundError):
    """The multipart upload is gone (completed, aborted or expired)."""


class KeyTaken(ConflictError):
    """A conditional write (``If-None-Match: *``) found an object already at the key (412/409)."""


@dataclass(frozen=True)
class Destination:
    """``s3://BUCKET[/PREFIX]``: ``prefix`` is '' or ends with '/'."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Destination:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"destination {url!r} is not s3://BUCKET[/PREFIX]")
        prefix = parts.path.strip("/")
        if "//" in prefix:
            raise UsageError(f"destination prefix {prefix!r} has an empty path component")
        return cls(parts.netloc, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD says about an object. ``metadata`` keys are lower case, without ``x-amz-meta-``."""

    size: int
    metadata: dict[str, str]
    storage_class: str
    checksum_sha256: str | None
    etag: str | None


@dataclass(frozen=True)
class PartInfo:
    number: int
    size: int
    etag: str
    checksum_sha256: str | None


@dataclass(frozen=True)
class UploadInfo:
    upload_id: str
    key: str


@dataclass
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: int = 5
    extra: dict[str, Any] = field(default_factory=dict)


class ObjectStore(Protocol):
    """The S3 calls the exporter makes (implemented by :class:`S3`)."""

    def check_bucket(self, bucket: str) -> None: ...
    def head_object(self, bucket: str, key: str) -> ObjectInfo | None: ...
    def put_object(
        self, bucket: str, key: str, body: BinaryIO, length: int, sha256_b64: str,
        metadata: dict[str, str], storage_class: str,
    ) -> None: ...
    def create_multipart(self, bucket: str, key: str, metadata: dict[str, str], storage_class: str) -> str: ...
    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: BinaryIO, length: int, sha256_b64: str
    ) -> str: ...
    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]: ...
    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str, str]]
    ) -> None: ...
    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None: ...
    def list_uploads(self, bucket: str, key: str) -> list[UploadInfo]: ...
    def create_small(self, bucket: str, key: str, body: bytes) -> str | None: ...
    def replace_small(self, bucket: str, key: str, body: bytes, etag: str) -> str | None: ...
    def read_small(self, bucket: str, key: str) -> tuple[bytes, str | None] | None: ...
    def delete_object(self, bucket: str, key: str) -> None: ...
    def delete_if(self, bucket: str, key: str, etag: str) -> bool: ...
    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]: ...


def make_s3(settings: S3Settings) -> S3:
    """A boto3 ``s3`` client from ``--s3-endpoint-url/--s3-region/--s3-profile`` (standard credential chain)."""
    import boto3
    from botocore.config import Config

    try:
        session = boto3.Session(profile_name=settings.profile) if settings.profile else boto3.Session()
        region = settings.region or session.region_name or "us-east-1"
        cfg: dict[str, Any] = {
            "region_name": region,
            "retries": {"mode": "standard", "total_max_attempts": max(1, settings.max_attempts)},
            "connect_timeout": 10,
            "read_timeout": 120,
            "max_pool_connections": 32,
            "tcp_keepalive": True,
        }
        if settings.endpoint_url:
            cfg["s3"] = {"addressing_style": "path"}
        cfg.update(settings.extra)
        client = session.client("s3", endpoint_url=settings.endpoint_url or None, config=Config(**cfg))
    except Exception as exc:
        raise translate(exc, "connecting to S3") from None
    return S3(client)


def translate(exc: BaseException, context: str) -> GlacierFSError:
    """One clear line for any botocore/boto3 failure (no credentials: only codes and messages)."""
    from botocore import exceptions as bce

    from glacierfs.client import redact

    if isinstance(exc, GlacierFSError):
        return exc
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error") or {}
        code = str(err.get("Code") or "")
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        msg = redact(f"{context}: {code or status}: {err.get('Message') or 'no message'}")
        if code in CHECKSUM_ERRORS or (code == "InvalidRequest" and "checksum" in msg.lower()):
            return ChecksumRejected(msg)
        if code == "NoSuchUpload":
            return NoSuchUpload(msg)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
            return KeyTaken(msg)
        if code in ("NoSuchBucket", "NoSuchKey", "NotFound") or status == 404:
            return NotFoundError(msg)
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken") or status == 403:
            return CredentialsError(msg)
        if code in ("InvalidStorageClass", "InvalidArgument", "InvalidBucketName", "KeyTooLongError"):
            return UsageError(msg)
        return ServiceError(msg)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.ProfileNotFound):
        return CredentialsError(redact(f"{context}: {exc}"))
    if isinstance(exc, bce.BotoCoreError):
        return ServiceError(redact(f"{context}: {exc}"))
    if isinstance(exc, OSError):
        return ServiceError(redact(f"{context}: {exc.strerror or exc}"))
    return ServiceError(redact(f"{context}: {type(exc).__name__}: {exc}"))


class S3:
    """:class:`ObjectStore` over a boto3 ``s3`` client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def _call(self, op: str, context: str, **params: Any) -> dict[str, Any]:
        try:
            return dict(getattr(self.client, op)(**params))
        except Exception as exc:
            raise translate(exc, context) from None

    def check_bucket(self, bucket: str) -> None:
        self._call("head_bucket", f"bucket {bucket}", Bucket=bucket)

    def head_object(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            resp = self._call("head_object", f"s3://{bucket}/{key}", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except NotFoundError:
            return None
        return ObjectInfo(
            size=int(resp.get("ContentLength") or 0),
            metadata={str(k).lower(): str(v) for k, v in (resp.get("Metadata") or {}).items()},
            storage_class=str(resp.get("StorageClass") or "STANDARD"),
            checksum_sha256=resp.get("ChecksumSHA256"),
            etag=resp.get("ETag"),
        )

    def put_object(
        self, bucket: str, key: str, body: BinaryIO, length: int, sha256_b64: str,
        metadata: dict[str, str], storage_class: str,
    ) -> None:
        self._call(
            "put_object", f"PutObject s3://{bucket}/{key}", Bucket=bucket, Key=key, Body=body,
            ContentLength=length, ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_b64,
            Metadata=metadata, StorageClass=storage_class, IfNoneMatch="*",
        )

    def create_multipart(self, bucket: str, key: str, metadata: dict[str, str], storage_class: str) -> str:
        resp = self._call(
            "create_multipart_upload", f"CreateMultipartUpload s3://{bucket}/{key}", Bucket=bucket, Key=key,
            Metadata=metadata, StorageClass=storage_class, ChecksumAlgorithm="SHA256",
        )
        return str(resp["UploadId"])

    def upload_part(
        self, bucket: str, key: str, upload_id: str, number: int, body: BinaryIO, length: int, sha256_b64: str
    ) -> str:
        resp = self._call(
            "upload_part", f"UploadPart {number} of s3://{bucket}/{key}", Bucket=bucket, Key=key,
            UploadId=upload_id, PartNumber=number, Body=body, ContentLength=length,
            ChecksumAlgorithm="SHA256", ChecksumSHA256=sha256_b64,
        )
        return str(resp["ETag"])

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        parts: list[PartInfo] = []
        marker = 0
        while True:
            resp = self._call(
                "list_parts", f"ListParts s3://{bucket}/{key}", Bucket=bucket, Key=key, UploadId=upload_id,
                PartNumberMarker=marker,
            )
            for p in resp.get("Parts") or []:
                parts.append(PartInfo(int(p["PartNumber"]), int(p.get("Size") or 0), str(p.get("ETag")),
                                      p.get("ChecksumSHA256")))
            if not resp.get("IsTruncated"):
                return parts
            marker = int(resp.get("NextPartNumberMarker") or 0)
            if not marker:
                return parts

    def complete_multipart(self, bucket: str, key: str, upload_id: str, parts: list[tuple[int, str, str]]) -> None:
        self._call(
            "complete_multipart_upload", f"CompleteMultipartUpload s3://{bucket}/{key}", Bucket=bucket, Key=key,
            UploadId=upload_id, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e, "ChecksumSHA256": c} for n, e, c in parts]},
        )

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self._call("abort_multipart_upload", f"AbortMultipartUpload s3://{bucket}/{key}", Bucket=bucket,
                       Key=key, UploadId=upload_id)
        except NotFoundError:
            pass  # already gone: what we wanted

    def list_uploads(self, bucket: str, key: str) -> list[UploadInfo]:
        out: list[UploadInfo] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
        while True:
            resp = self._call("list_multipart_uploads", f"ListMultipartUploads s3://{bucket}/{key}", **params)
            out.extend(UploadInfo(str(u["UploadId"]), str(u["Key"])) for u in resp.get("Uploads") or []
                       if u.get("Key") == key)
            if not resp.get("IsTruncated"):
                return out
            params["KeyMarker"] = resp.get("NextKeyMarker")
            params["UploadIdMarker"] = resp.get("NextUploadIdMarker")

    def _put_small(self, bucket: str, key: str, body: bytes, **cond: str) -> str | None:
        """PutObject of a small body (a claim) with one condition: its ETag, or None if the condition failed."""
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
        try:
            resp = self._call("put_object", f"PutObject s3://{bucket}/{key}", Bucket=bucket, Key=key, Body=body,
                              ContentLength=len(body), ChecksumAlgorithm="SHA256", ChecksumSHA256=sha,
                              StorageClass="STANDARD", **cond)
        except KeyTaken:
            return None
        except NotFoundError:
            if "IfMatch" in cond:
                return None  # If-Match on a key that is gone (404 NoSuchKey): the condition failed
            raise
        return str(resp.get("ETag") or "")  # '' if the endpoint sent none

    def create_small(self, bucket: str, key: str, body: bytes) -> str | None:
        """PutObject ``If-None-Match: *``: the new object's ETag ('' if not sent), or None if the key is taken."""
        return self._put_small(bucket, key, body, IfNoneMatch="*")

    def replace_small(self, bucket: str, key: str, body: bytes, etag: str) -> str | None:
        """PutObject ``If-Match: etag`` (compare and swap): the new ETag, or None if the object changed or is gone.

        An endpoint that ignores If-Match replaces the object anyway (the caller reads it back).
        """
        return self._put_small(bucket, key, body, IfMatch=etag)

    def read_small(self, bucket: str, key: str) -> tuple[bytes, str | None] | None:
        """The body and ETag of a small object, or None if there is none."""
        try:
            resp = self._call("get_object", f"GetObject s3://{bucket}/{key}", Bucket=bucket, Key=key)
        except NotFoundError:
            return None
        try:
            return bytes(resp["Body"].read()), resp.get("ETag")
        except Exception as exc:
            raise translate(exc, f"GetObject s3://{bucket}/{key}") from None

    def delete_object(self, bucket: str, key: str) -> None:
        self._call("delete_object", f"DeleteObject s3://{bucket}/{key}", Bucket=bucket, Key=key)

    def delete_if(self, bucket: str, key: str, etag: str) -> bool:
        """DeleteObject ``If-Match: etag``: True if deleted (or already gone), False if the object changed."""
        try:
            self._call("delete_object", f"DeleteObject s3://{bucket}/{key}", Bucket=bucket, Key=key, IfMatch=etag)
        except KeyTaken:
            return False
        except NotFoundError:
            pass
        return True

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        """The keys under ``prefix`` (ListObjectsV2, 1,000 a page)."""
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            resp = self._call("list_objects_v2", f"ListObjectsV2 s3://{bucket}/{prefix}", **params)
            for obj in resp.get("Contents") or []:
                yield str(obj["Key"])
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            params["ContinuationToken"] = token
