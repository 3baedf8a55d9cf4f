"""Optional AWS Signature Version 4 checking (off by default; ``--verify-sigv4``).

Clients sign for the real AWS host, so the canonical request is rebuilt from what was
received (the Host header as sent, the raw path and query), exactly as botocore builds it:
the path is quoted once more with ``safe='/~'`` (botocore double-encodes for non-S3
services), query pairs are sorted and quoted with ``safe='-_.~'``, header values are
trimmed and whitespace-collapsed, and the payload hash is ``x-amz-content-sha256`` when sent,
else the SHA-256 of the body. The region and date come from the credential scope, so any
region a client signs for is accepted; the service must be ``glacier`` and the date within
15 minutes of the real time. Presigned (query-string) requests are not supported.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from calendar import timegm
from typing import Any
from urllib.parse import quote, unquote

from .apierror import ApiError

log = logging.getLogger(__name__)

AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request\s*,\s*"
    r"SignedHeaders=([^,\s]+)\s*,\s*Signature=([0-9a-f]{64})\s*$"
)
MAX_SKEW = 15 * 60
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret"
    " Access Key and signing method. Consult the service documentation for details."
)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def canonical_query(raw_query: str) -> str:
    pairs = []
    for item in raw_query.split("&") if raw_query else []:
        key, _, value = item.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


SECRET_HEADERS = ("authorization", "x-amz-security-token")
SECRET_QUERY = re.compile(r"((?:^|[?&])X-Amz-(?:Signature|Security-Token|Credential)=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Presigned-URL secrets in a request line or query, replaced by ``<redacted>``."""
    return SECRET_QUERY.sub(r"\1<redacted>", text)


def redact_canonical(canonical: str) -> str:
    """A canonical request fit for a log: no session token, authorization or presigned secrets."""
    lines = []
    for line in canonical.split("\n"):
        name, sep, _value = line.partition(":")
        if sep and name.lower() in SECRET_HEADERS:
            line = f"{name}:<redacted>"
        lines.append(redact(line))
    return "\n".join(lines)


class SigV4Verifier:
    """Checks the Authorization header of each request against one access key / secret key."""

    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region

    def verify(self, method: str, raw_path: str, raw_query: str, headers: Any, payload_hash: str) -> None:
        auth = headers.get("Authorization")
        if not auth:
            raise ApiError(400, "MissingAuthenticationTokenException", "Missing Authentication Token")
        m = AUTH.match(auth.strip())
        if not m:
            raise ApiError(400, "IncompleteSignatureException", "Authorization header requires Credential,"
                           " SignedHeaders and Signature parameters for AWS4-HMAC-SHA256.")
        access, day, region, service, signed, signature = m.groups()
        if access != self.access_key:
            raise ApiError(400, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if service != "glacier":
            raise ApiError(403, "InvalidSignatureException", "Credential should be scoped to correct service: 'glacier'.")
        amz_date = headers.get("x-amz-date") or ""
        try:
            ts = timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            raise ApiError(403, "InvalidSignatureException", "Missing or malformed x-amz-date header.") from None
        if not amz_date.startswith(day):
            raise ApiError(403, "InvalidSignatureException", "Credential date does not match x-amz-date.")
        if abs(time.time() - ts) > MAX_SKEW:
            raise ApiError(403, "InvalidSignatureException", f"Signature expired: {amz_date} is now earlier or later"
                           " than 15 minutes from the current time.")
        names = signed.split(";")
        if "host" not in names:
            raise ApiError(403, "InvalidSignatureException", "The host header must be signed.")
        canon_headers = ""
        for name in names:
            values = headers.get_all(name) or []
            canon_headers += f"{name}:{','.join(' '.join(v.split()) for v in values)}\n"
        canonical = "\n".join([
            method.upper(), quote(raw_path, safe="/~"), canonical_query(raw_query), canon_headers, signed, payload_hash,
        ])
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = _hmac(_hmac(_hmac(_hmac(("AWS4" + self.secret_key).encode(), day), region), service), "aws4_request")
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            log.info("signature mismatch; canonical request was (secrets redacted):\n%s", redact_canonical(canonical))
            raise ApiError(403, "InvalidSignatureException", MISMATCH)
