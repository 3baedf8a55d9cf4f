"""The one place glacierfs talks to boto3: client factory, error mapping, pagination.

Why a wrapper at all: callers (upload engine, jobs, commands, the mount) must see
:class:`~glacierfs.errors.GlacierFSError` with one clear line, never a botocore
traceback; every listing must follow every ``Marker``; optional response fields must be
read with ``.get()`` (the service sometimes leaves out null fields, reference §1); and
credentials must never leak into a message or a log line.

Nothing a server returns is used unchecked: every answer goes through :mod:`glacierfs.answers`
(ids, markers, sizes, dates, tree hashes) and every listing is bounded (a repeated marker, pages
that bring nothing new, more items than the service can hold end it with an error).

Settings follow the standard AWS chain (environment, profile, instance roles). Explicit
``access_key``/``secret_key`` (the CLI's ``-k``/``-s``) are honoured when given. The region
is the explicit one, else the profile's, else ``us-east-1``. Retries use botocore's
*standard* mode (5xx, throttling, 408 and connection errors are retried with backoff).

Streaming uploads: botocore would read an upload body twice (``add_glacier_checksums``)
plus once more to sign it unless ``x-amz-sha256-tree-hash`` and ``x-amz-content-sha256``
are already set. :meth:`Glacier.upload_part` / :meth:`Glacier.upload_archive` take the
precomputed tree hash (``checksum=``) and the linear SHA-256 (set as a header by a handler
registered *before* botocore's), so a :class:`FileSlice` body is read exactly once, while
it is sent.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from glacierfs.answers import (
    ID_RE,
    MAX_LISTED,
    VAULT_NAME_RE,
    check_job,
    checked_count,
    checked_date,
    checked_hash,
    checked_id,
    checked_marker,
    checked_range,
    invalid,
    item_key,
    shown,
)
from glacierfs.errors import (
    ConflictError,
    CredentialsError,
    GlacierFSError,
    IntegrityError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    UsageError,
)
from glacierfs.streams import FileSlice, JobOutputStream

log = logging.getLogger(__name__)

__all__ = [  # answers.py (checks of server answers) and streams.py names are re-exported here
    "ID_RE",
    "VAULT_NAME_RE",
    "FileSlice",
    "JobOutputStream",
    "check_job",
    "checked_count",
    "checked_date",
    "checked_hash",
    "checked_id",
    "checked_marker",
    "checked_range",
    "shown",
]


class JobNotFoundError(NotFoundError):
    """The service does not know the job (expired, or never existed): not a missing vault."""


class NoInventoryError(NotReadyError):
    """The service has not generated the vault's first inventory yet."""


DEFAULT_REGION = "us-east-1"
Body = bytes | BinaryIO | FileSlice  # an upload body: in memory, a file object, or a file slice
# Header botocore's add_glacier_checksums and the SigV4 signer both honour when present.
_CONTENT_SHA256 = "x-amz-content-sha256"


# --------------------------------------------------------------------------- settings


@dataclass
class ConnectionSettings:
    """How to reach Glacier. Credentials are hidden from ``repr`` so they never reach a log."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    max_attempts: int | None = 5  # total attempts per request, first included (standard mode); None: 5
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_pool_connections: int | None = 32  # keep >= upload/download concurrency; None: 32

    @property
    def endpoint_id(self) -> str:
        """Identity of the endpoint for local state paths (the rule is :func:`glacierfs.local.endpoint_id`)."""
        from glacierfs.local import endpoint_id

        return endpoint_id(self.endpoint_url)


def validate_vault_name(vault: str) -> str:
    """Reject a bad vault name before any call (the service answers a confusing 404)."""
    if not isinstance(vault, str) or not VAULT_NAME_RE.fullmatch(vault):
        raise UsageError(
            f"invalid vault name {vault!r}: use 1-255 characters from A-Z a-z 0-9 _ . -"
        )
    return vault


def make_glacier(settings: ConnectionSettings) -> Glacier:
    """Build a :class:`Glacier` from ``settings`` (one boto3 Session per Glacier object)."""
    try:
        kwargs: dict[str, Any] = {}
        if settings.profile:
            kwargs["profile_name"] = settings.profile
        if settings.access_key or settings.secret_key:
            if not (settings.access_key and settings.secret_key):
                raise CredentialsError("--access-key and --secret-key must be given together")
            kwargs["aws_access_key_id"] = settings.access_key
            kwargs["aws_secret_access_key"] = settings.secret_key
        session = boto3.Session(**kwargs)
        region = settings.region or session.region_name or DEFAULT_REGION
        config = Config(
            region_name=region,
            retries={"mode": "standard", "total_max_attempts": max(1, settings.max_attempts or 5)},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            tcp_keepalive=True,
            max_pool_connections=max(1, settings.max_pool_connections or 32),
        )
        client = session.client("glacier", endpoint_url=settings.endpoint_url or None, config=config)
    except GlacierFSError:
        raise
    except Exception as exc:
        raise translate_error(
            exc, "connecting to Glacier", endpoint=settings.endpoint_url, secrets=(settings.secret_key, settings.access_key)
        ) from None
    return Glacier(client, settings, region)


# --------------------------------------------------------------------------- errors

_REDACT_PATTERNS = [
    re.compile(r"Credential=[^,\s]+"),
    re.compile(r"Signature=[0-9a-fA-F]+"),
    re.compile(r"\b(?:AKIA|ASIA|AIDA)[A-Z0-9]{12,}\b"),
    re.compile(r"(?i)(authorization|x-amz-security-token)(['\"]?\s*[:=]\s*)(['\"]?)[^'\",\s]+"),
]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove credentials and signatures from ``text`` and make it one line."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _REDACT_PATTERNS:
        if pattern.groups >= 3:
            text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}***", text)
        else:
            text = pattern.sub("***", text)
    return " ".join(text.split())


def _prefix(context: str | None, msg: str) -> str:
    return f"{context}: {msg}" if context else msg


_CLOSED_MSG = (
    "the Amazon Glacier vault API is closed to new customers since 2025-12-15 "
    "(NoLongerSupportedException); only accounts that used it before can still call it"
)


def translate_error(
    exc: BaseException,
    context: str | None = None,
    *,
    endpoint: str | None = None,
    secrets: Iterable[str | None] = (),
) -> GlacierFSError:
    """Map any botocore/boto3/urllib3 exception to one :class:`GlacierFSError` line.

    ``context`` names what was being done (``"vault 'photos'"``); ``endpoint`` is shown for
    connection failures; ``secrets`` are scrubbed from the text in addition to anything
    that looks like a signature or an access key id.
    """
    secrets = list(secrets)
    where = endpoint or "the Glacier endpoint"

    def done(cls: type[GlacierFSError], msg: str) -> GlacierFSError:
        return cls(redact(msg, secrets))

    if isinstance(exc, GlacierFSError):
        return exc
    # botocore wraps anything raised while sending (e.g. by our body's read()) in HTTPClientError.
    inner = getattr(exc, "kwargs", {}).get("error") if isinstance(exc, bce.BotoCoreError) else None
    if isinstance(inner, GlacierFSError):
        return inner

    if isinstance(exc, bce.ClientError):
        return _translate_client_error(exc, context, secrets)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return done(
            CredentialsError,
            "no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or configure ~/.aws/credentials, or use --profile",
        )
    if isinstance(exc, bce.ProfileNotFound):
        return done(CredentialsError, f"AWS profile {exc.kwargs.get('profile')!r} not found in the AWS config")
    if isinstance(
        exc,
        bce.CredentialRetrievalError
        | bce.TokenRetrievalError
        | bce.NoAuthTokenError
        | bce.UnknownCredentialError
        | bce.RefreshWithMFAUnsupportedError,
    ):
        return done(CredentialsError, f"cannot load AWS credentials: {exc}")
    if isinstance(exc, bce.ReadTimeoutError):
        return done(ServiceError, _prefix(context, f"cannot reach {where}: read timed out"))
    if isinstance(exc, bce.ConnectTimeoutError):
        return done(ServiceError, _prefix(context, f"cannot reach {where}: connection timed out"))
    if isinstance(exc, bce.EndpointConnectionError):
        reason = inner if inner is not None else exc
        return done(ServiceError, _prefix(context, f"cannot reach {where}: {_reason(reason)}"))
    if isinstance(exc, bce.ConnectionClosedError):
        return done(ServiceError, _prefix(context, f"cannot reach {where}: connection closed by the server"))
    if isinstance(exc, bce.SSLError):
        return done(ServiceError, _prefix(context, f"cannot reach {where}: TLS error: {_reason(inner or exc)}"))
    if isinstance(exc, bce.IncompleteReadError | bce.ResponseStreamingError):
        return done(ServiceError, _prefix(context, f"transfer from {where} interrupted: {_reason(inner or exc)}"))
    if isinstance(exc, bce.ConnectionError | bce.HTTPClientError):
        return done(ServiceError, _prefix(context, f"cannot reach {where}: {_reason(inner or exc)}"))
    if isinstance(exc, bce.ParamValidationError):
        return done(UsageError, _prefix(context, f"invalid request: {exc}"))
    if isinstance(exc, bce.NoRegionError | bce.UnknownRegionError | bce.InvalidRegionError):
        return done(UsageError, f"bad AWS region: {exc}")
    if isinstance(exc, bce.BotoCoreError):
        return done(ServiceError, _prefix(context, str(exc)))
    try:
        import urllib3.exceptions as u3

        if isinstance(exc, u3.HTTPError):
            return done(ServiceError, _prefix(context, f"transfer with {where} failed: {_reason(exc)}"))
    except ImportError:  # pragma: no cover - urllib3 always comes with botocore
        pass
    if isinstance(exc, ConnectionError | TimeoutError):
        return done(ServiceError, _prefix(context, f"cannot reach {where}: {_reason(exc)}"))
    return done(ServiceError, _prefix(context, f"{type(exc).__name__}: {exc}"))


def _reason(exc: BaseException) -> str:
    # urllib3 errors carry (message, cause): show the message, not the tuple
    args = getattr(exc, "args", ())
    text = args[0] if args and isinstance(args[0], str) else (str(exc) or type(exc).__name__)
    # urllib3 messages look like "<urllib3.connection.HTTPConnection object at 0x..>: Failed to ..."
    text = re.sub(r"<[^>]*object at 0x[0-9a-f]+>:\s*", "", text)
    return text


def _translate_client_error(exc: bce.ClientError, context: str | None, secrets: list[Any]) -> GlacierFSError:
    resp = getattr(exc, "response", None) or {}
    err = resp.get("Error") or {}
    code = str(err.get("Code") or "Unknown")
    message = str(err.get("Message") or "").strip() or code
    meta = resp.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode") or 0
    retries = meta.get("RetryAttempts") or 0
    low = message.lower()

    def done(cls: type[GlacierFSError], msg: str) -> GlacierFSError:
        return cls(redact(msg, secrets), code=code)  # callers may branch on the service code

    if code == "NoLongerSupportedException":
        return done(ServiceError, _CLOSED_MSG)
    if code == "ResourceNotFoundException":
        if "not yet generated an initial inventory" in low or "cannot be initiated yet" in low:
            return done(NoInventoryError, _prefix(context, f"Glacier has no inventory for this vault yet ({message})"))
        if "job id" in low:
            return done(JobNotFoundError, _prefix(context, message))
        return done(NotFoundError, _prefix(context, message))
    if code == "InvalidParameterValueException":
        if "checksum mismatch" in low or "invalid x-amz-sha256-tree-hash" in low:
            return done(IntegrityError, _prefix(context, f"the service rejected the tree hash: {message}"))
        if "missing part" in low:  # parts it acknowledged are not there: the service lost or dropped them
            return done(IntegrityError, _prefix(context, f"the service does not hold every part: {message}"))
        if "not currently available for download" in low:
            return done(NotReadyError, _prefix(context, message))
        if "vault not empty" in low:
            return done(ConflictError, _prefix(context, message))
        if low.startswith("invalid vault name"):
            return done(NotFoundError, _prefix(context, f"the archive is not in this vault ({message})"))
        return done(UsageError, _prefix(context, message))
    if code in ("ThrottlingException", "SlowDown", "RequestLimitExceeded", "TooManyRequestsException"):
        return done(ServiceError, _prefix(context, f"throttled by Glacier; retried {retries} times"))
    if "x-amz-content-sha256" in low or "computed payload hash" in low:
        # 403 with a signature-ish code, but the cause is a body that changed while sent.
        return done(IntegrityError, _prefix(context, f"the body did not match its SHA-256: {message}"))
    if code in (
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "AccessDeniedException",
        "ExpiredTokenException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
    ):
        return done(CredentialsError, _prefix(context, f"credentials refused by Glacier ({code}): {message}"))
    if code in ("LimitExceededException", "PolicyEnforcedException"):
        return done(ConflictError, _prefix(context, f"{code}: {message}"))
    if code == "InsufficientCapacityException":
        return done(ServiceError, _prefix(
            context, "Glacier has no Expedited retrieval capacity right now (InsufficientCapacityException);"
            " retry later or use the Standard or Bulk tier"))
    if code == "MissingParameterValueException":
        return done(ServiceError, _prefix(context, f"the service says a parameter is missing: {message}"))
    if status >= 500 or code in ("ServiceUnavailableException", "RequestTimeoutException", "InternalFailure"):
        suffix = f" (retried {retries} times)" if retries else ""
        return done(ServiceError, _prefix(context, f"Glacier failed: {code}: {message}{suffix}"))
    return done(ServiceError, _prefix(context, f"{code}: {message}"))


_TLS = threading.local()  # the SHA-256 of an in-memory body, for the handler below (same thread)


def _set_content_sha256(params: dict[str, Any], **_: Any) -> None:
    """before-call handler, registered first: use the body's precomputed SHA-256 if it has one."""
    body = params.get("body")
    sha = getattr(body, "content_sha256", None) or getattr(_TLS, "content_sha256", None)
    if sha and _CONTENT_SHA256 not in params["headers"]:
        params["headers"][_CONTENT_SHA256] = sha


@contextlib.contextmanager
def _precomputed_sha256(sha: str | None) -> Iterator[None]:
    """Hand ``sha`` to :func:`_set_content_sha256` for the call made inside (bytes bodies
    cannot carry an attribute, and a BytesIO would be sent in small blocks)."""
    _TLS.content_sha256 = sha
    try:
        yield
    finally:
        _TLS.content_sha256 = None


# --------------------------------------------------------------------------- the wrapper


def _strip(resp: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resp.items() if k != "ResponseMetadata"}


class Glacier:
    """Thin typed wrapper over a boto3 ``glacier`` client (thread-safe, like the client).

    Every method validates the vault name first, maps every exception through
    :func:`translate_error`, and returns plain data. Listings return all pages.
    """

    def __init__(self, client: Any, settings: ConnectionSettings, region: str) -> None:
        self.client = client
        self.settings = settings
        self.region = region
        self.endpoint = settings.endpoint_url or client.meta.endpoint_url
        self._secrets = (settings.secret_key, settings.access_key)
        events = client.meta.events
        for op in ("UploadArchive", "UploadMultipartPart"):
            events.register_first(f"before-call.glacier.{op}", _set_content_sha256)

    def __repr__(self) -> str:
        return f"Glacier(endpoint={self.endpoint!r}, region={self.region!r})"

    @property
    def endpoint_id(self) -> str:
        return self.settings.endpoint_id

    # -- plumbing

    def translate(self, exc: BaseException, context: str | None = None) -> GlacierFSError:
        return translate_error(exc, context, endpoint=self.endpoint, secrets=self._secrets)

    def _call(self, op: str, context: str | None, **params: Any) -> dict[str, Any]:
        try:
            resp: dict[str, Any] = getattr(self.client, op)(**params)
            return resp
        except GlacierFSError:
            raise
        except Exception as exc:
            err = self.translate(exc, context)
            log.debug("%s failed: %s", op, err)
            raise err from None

    def _pages(self, op: str, context: str, key: str, **params: Any) -> tuple[dict[str, Any], list[Any]]:
        """Call a List* operation until ``Marker`` is empty; returns (first page, all items).

        A repeated marker, a page that brings no item not seen before, or more items than
        the service could hold (:data:`MAX_LISTED`) end the listing with a ServiceError: a
        broken or hostile server cannot keep us paging forever.
        """
        items: list[Any] = []
        first: dict[str, Any] | None = None
        marker: str | None = None
        seen: set[str] = set()
        keys: set[Any] = set()
        stale = 0  # pages in a row that brought nothing new (the service may return a short page)
        limit = MAX_LISTED.get(key, 1_000_000)
        while True:
            page = self._call(op, context, **params, **({"marker": marker} if marker else {}))
            if first is None:
                first = page
            got = page.get(key) or []
            if not isinstance(got, list):
                raise invalid(context, f"{key} list", type(got).__name__)
            new = 0
            for item in got:
                k = item_key(key, item)
                if k not in keys:
                    keys.add(k)
                    new += 1
            items.extend(got)
            if len(items) > limit:
                raise ServiceError(f"{context}: the service listed more than {limit} items; giving up")
            marker = checked_marker(page.get("Marker"), context)
            if not marker:
                return _strip(first), items
            if marker in seen:
                raise ServiceError(f"{context}: the service returned the same page marker twice")
            stale = 0 if new else stale + 1
            if stale >= 3:
                raise ServiceError(f"{context}: the service keeps returning pages with nothing new")
            seen.add(marker)

    @staticmethod
    def _vctx(vault: str) -> str:
        return f"vault '{validate_vault_name(vault)}'"

    # -- vaults

    def list_vaults(self, *, page_size: int | None = None) -> list[dict[str, Any]]:
        """Every vault (all pages). A name the service could not have accepted (a lying or broken
        endpoint: '/', control characters...) is left out with a warning: callers print names one
        per line and the mount makes directories of them."""
        vaults = self._pages("list_vaults", "listing vaults", "VaultList", **_limit(page_size))[1]
        good = [v for v in vaults if isinstance(v, dict) and isinstance(v.get("VaultName"), str)
                and VAULT_NAME_RE.fullmatch(v["VaultName"])]
        for v in good:
            ctx = f"vault '{v['VaultName']}'"
            checked_count(v.get("NumberOfArchives"), "NumberOfArchives", ctx)
            checked_count(v.get("SizeInBytes"), "SizeInBytes", ctx)
            checked_date(v.get("CreationDate"), "CreationDate", ctx)
            checked_date(v.get("LastInventoryDate"), "LastInventoryDate", ctx)
        if len(good) != len(vaults):
            bad = [v.get("VaultName") if isinstance(v, dict) else v for v in vaults if v not in good]
            log.warning("ignoring %d vault(s) with invalid names from the service: %s",
                        len(bad), ", ".join(ascii(b)[:80] for b in bad[:5]))
        return good

    def describe_vault(self, vault: str) -> dict[str, Any]:
        ctx = self._vctx(vault)
        desc = _strip(self._call("describe_vault", ctx, vaultName=vault))
        checked_count(desc.get("NumberOfArchives"), "NumberOfArchives", ctx)
        checked_count(desc.get("SizeInBytes"), "SizeInBytes", ctx)
        checked_date(desc.get("CreationDate"), "CreationDate", ctx)
        checked_date(desc.get("LastInventoryDate"), "LastInventoryDate", ctx)
        return desc

    def create_vault(self, vault: str) -> str | None:
        return self._call("create_vault", self._vctx(vault), vaultName=vault).get("location")

    def delete_vault(self, vault: str) -> None:
        self._call("delete_vault", self._vctx(vault), vaultName=vault)

    # -- archives

    def upload_archive(
        self,
        vault: str,
        body: Body,
        tree_hash: str,
        description: str | None = None,
        *,
        content_sha256: str | None = None,
    ) -> tuple[str, str | None]:
        """Single-request upload; returns (archive_id, location). Verifies the echoed tree hash."""
        ctx = f"uploading to {self._vctx(vault)}"
        params: dict[str, Any] = {"vaultName": vault, "checksum": tree_hash, "body": _body(body, content_sha256)}
        if description is not None:
            params["archiveDescription"] = description
        with _precomputed_sha256(content_sha256):
            resp = self._call("upload_archive", ctx, **params)
        _check_echo(resp.get("checksum"), tree_hash, ctx)
        archive_id = resp.get("archiveId")
        if not archive_id:
            raise ServiceError(f"{ctx}: the service returned no archive id")
        return checked_id(archive_id, "archive id", ctx), resp.get("location")

    def delete_archive(self, vault: str, archive_id: str) -> None:
        self._call("delete_archive", f"archive {archive_id} in {self._vctx(vault)}", vaultName=vault, archiveId=archive_id)

    # -- multipart

    def initiate_multipart(self, vault: str, part_size: int, description: str | None = None) -> str:
        """Start a multipart upload; returns the upload id."""
        return self.initiate_multipart_ex(vault, part_size, description)[0]

    def initiate_multipart_ex(self, vault: str, part_size: int, description: str | None = None) -> tuple[str, int]:
        """Like :meth:`initiate_multipart`, also returning how many times botocore retried
        (a retried Initiate may have left an orphan upload behind on the server)."""
        params: dict[str, Any] = {"vaultName": vault, "partSize": str(part_size)}
        if description is not None:
            params["archiveDescription"] = description
        resp = self._call("initiate_multipart_upload", f"starting an upload to {self._vctx(vault)}", **params)
        upload_id = resp.get("uploadId")
        if not upload_id:
            raise ServiceError("the service returned no multipart upload id")
        return checked_id(upload_id, "upload id", f"starting an upload to {self._vctx(vault)}"), int((resp.get("ResponseMetadata") or {}).get("RetryAttempts") or 0)

    def upload_part(
        self,
        vault: str,
        upload_id: str,
        body: Body,
        start: int,
        end: int,
        tree_hash: str,
        *,
        content_sha256: str | None = None,
    ) -> str | None:
        """Send bytes ``[start, end]`` (``end`` inclusive, as on the wire); returns the server's
        tree hash of the part (``None`` if it sent none; the caller compares)."""
        with _precomputed_sha256(content_sha256):
            resp = self._call(
                "upload_multipart_part",
                f"uploading part {start}-{end} to {self._vctx(vault)}",
                vaultName=vault,
                uploadId=upload_id,
                range=f"bytes {start}-{end}/*",
                checksum=tree_hash,
                body=_body(body, content_sha256),
            )
        return checked_hash(resp.get("checksum"), "part tree hash", f"uploading part {start}-{end}")

    def complete_multipart(self, vault: str, upload_id: str, size: int, tree_hash: str) -> tuple[str, str | None]:
        """Complete (idempotent for a while: same archive id); returns (archive_id, location)."""
        ctx = f"completing upload {upload_id[:16]}... in {self._vctx(vault)}"
        resp = self._call(
            "complete_multipart_upload",
            ctx,
            vaultName=vault,
            uploadId=upload_id,
            archiveSize=str(size),
            checksum=tree_hash,
        )
        _check_echo(resp.get("checksum"), tree_hash, ctx)
        archive_id = resp.get("archiveId")
        if not archive_id:
            raise ServiceError(f"{ctx}: the service returned no archive id")
        return checked_id(archive_id, "archive id", ctx), resp.get("location")

    def abort_multipart(self, vault: str, upload_id: str) -> None:
        self._call(
            "abort_multipart_upload",
            f"aborting upload {upload_id[:16]}... in {self._vctx(vault)}",
            vaultName=vault,
            uploadId=upload_id,
        )

    def list_parts(self, vault: str, upload_id: str, *, page_size: int | None = None) -> dict[str, Any]:
        """All pages of ListParts: the first page's fields with ``Parts`` from every page."""
        first, parts = self._pages(
            "list_parts",
            f"upload {upload_id[:16]}... in {self._vctx(vault)}",
            "Parts",
            vaultName=vault,
            uploadId=upload_id,
            **_limit(page_size),
        )
        ctx = f"upload {upload_id[:16]}..."
        for part in parts:
            if not isinstance(part, dict):
                raise invalid(ctx, "part", part)
            checked_range(part.get("RangeInBytes"), "part range", ctx)
            part["SHA256TreeHash"] = checked_hash(part.get("SHA256TreeHash"), "part tree hash", ctx, optional=False)
        checked_count(first.get("PartSizeInBytes"), "PartSizeInBytes", ctx)
        checked_date(first.get("CreationDate"), "CreationDate", ctx)
        if first.get("MultipartUploadId") is not None:
            checked_id(first["MultipartUploadId"], "upload id", ctx)
        first["Parts"] = parts
        first.pop("Marker", None)
        return first

    def list_uploads(self, vault: str, *, page_size: int | None = None) -> list[dict[str, Any]]:
        ctx = self._vctx(vault)
        uploads = self._pages("list_multipart_uploads", ctx, "UploadsList", vaultName=vault, **_limit(page_size))[1]
        for up in uploads:
            if not isinstance(up, dict):
                raise invalid(ctx, "upload", up)
            checked_id(up.get("MultipartUploadId"), "upload id", ctx)
            checked_count(up.get("PartSizeInBytes"), "PartSizeInBytes", ctx)
            checked_date(up.get("CreationDate"), "CreationDate", ctx)
        return uploads

    # -- jobs

    def initiate_inventory(
        self,
        vault: str,
        fmt: str = "JSON",
        *,
        description: str | None = None,
        sns_topic: str | None = None,
        start_date: str | None = None,
        end_date: str | None = None,
        limit: int | None = None,
        marker: str | None = None,
    ) -> str:
        """Start an inventory-retrieval job; returns the job id."""
        params: dict[str, Any] = {"Type": "inventory-retrieval", "Format": fmt.upper()}
        ranged = {"StartDate": start_date, "EndDate": end_date, "Limit": None if limit is None else str(limit), "Marker": marker}
        ranged = {k: v for k, v in ranged.items() if v is not None}
        if ranged:
            params["InventoryRetrievalParameters"] = ranged
        return self._initiate_job(vault, params, description, sns_topic, "inventory")

    def initiate_retrieval(
        self,
        vault: str,
        archive_id: str,
        tier: str = "Standard",
        byte_range: tuple[int, int] | str | None = None,
        *,
        description: str | None = None,
        sns_topic: str | None = None,
    ) -> str:
        """Start an archive-retrieval job (``byte_range`` inclusive, MiB aligned); returns the job id."""
        if not isinstance(archive_id, str) or not ID_RE.fullmatch(archive_id):
            raise UsageError(f"invalid archive id {shown(archive_id)}")
        params: dict[str, Any] = {"Type": "archive-retrieval", "ArchiveId": archive_id, "Tier": tier}
        if byte_range is not None:
            params["RetrievalByteRange"] = (
                byte_range if isinstance(byte_range, str) else f"{byte_range[0]}-{byte_range[1]}"
            )
        return self._initiate_job(vault, params, description, sns_topic, f"retrieval of archive {archive_id}")

    def _initiate_job(self, vault: str, params: dict[str, Any], description: str | None, sns: str | None, what: str) -> str:
        if description is not None:
            params["Description"] = description
        if sns is not None:
            params["SNSTopic"] = sns
        resp = self._call("initiate_job", f"{what} in {self._vctx(vault)}", vaultName=vault, jobParameters=params)
        job_id = resp.get("jobId")
        if not job_id:
            raise ServiceError("the service returned no job id")
        return checked_id(job_id, "job id", f"{what} in {self._vctx(vault)}")

    def describe_job(self, vault: str, job_id: str) -> dict[str, Any]:
        ctx = f"job {job_id} in {self._vctx(vault)}"
        desc = check_job(_strip(self._call("describe_job", ctx, vaultName=vault, jobId=job_id)), ctx)
        if desc["JobId"] != job_id:
            raise invalid(ctx, "job id (another job's)", desc["JobId"])
        return desc

    def list_jobs(
        self,
        vault: str,
        *,
        statuscode: str | None = None,
        completed: bool | None = None,
        page_size: int | None = None,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"vaultName": vault, **_limit(page_size)}
        if statuscode is not None:
            params["statuscode"] = statuscode
        if completed is not None:
            params["completed"] = "true" if completed else "false"
        ctx = f"jobs of {self._vctx(vault)}"
        jobs = self._pages("list_jobs", ctx, "JobList", **params)[1]
        for desc in jobs:
            if not isinstance(desc, dict):
                raise invalid(ctx, "job", desc)
            check_job(desc, ctx)
        return jobs

    def get_job_output(
        self, vault: str, job_id: str, byte_range: tuple[int, int] | str | None = None
    ) -> tuple[JobOutputStream, dict[str, Any]]:
        """Open the output of a job (``byte_range`` inclusive, relative to the output).

        Returns ``(stream, headers)``: ``headers`` has botocore's parsed fields
        (``checksum``, ``contentRange``, ``contentType``, ``status``, ``archiveDescription``,
        ``acceptRanges``) *and* the raw lower-case HTTP headers (``content-length``,
        ``x-amz-sha256-tree-hash``, ...). The stream raises :class:`GlacierFSError` on
        transfer failures; close it when done.
        """
        ctx = f"output of job {job_id} in {self._vctx(vault)}"
        params: dict[str, Any] = {"vaultName": vault, "jobId": job_id}
        if byte_range is not None:
            params["range"] = (
                byte_range if isinstance(byte_range, str) else f"bytes={byte_range[0]}-{byte_range[1]}"
            )
        resp = self._call("get_job_output", ctx, **params)
        headers: dict[str, Any] = dict((resp.get("ResponseMetadata") or {}).get("HTTPHeaders") or {})
        headers.update({k: v for k, v in resp.items() if k not in ("body", "ResponseMetadata")})
        return JobOutputStream(resp["body"], lambda exc: self.translate(exc, ctx)), headers


def _limit(page_size: int | None) -> dict[str, str]:
    """The ``limit`` parameter (items per page; the service's default when None)."""
    return {} if page_size is None else {"limit": str(page_size)}


def _body(body: Body, content_sha256: str | None) -> Any:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)  # sent in one piece; the SHA-256 goes through _precomputed_sha256
    if content_sha256 and getattr(body, "content_sha256", None) is None:
        try:
            setattr(body, "content_sha256", content_sha256)  # noqa: B010 - not every BinaryIO has it
        except AttributeError:
            pass  # botocore will compute it
    return body


def _check_echo(echoed: str | None, sent: str, ctx: str) -> None:
    echoed = checked_hash(echoed, "tree hash", ctx)
    if echoed and echoed.lower() != sent.lower():
        raise IntegrityError(f"{ctx}: the service computed tree hash {echoed}, we sent {sent}")
