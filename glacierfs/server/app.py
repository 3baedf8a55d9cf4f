"""HTTP layer: routing, request validation and the Glacier wire format (reference §1-§3).

``http.server`` with HTTP/1.1 keep-alive; every response carries Content-Length and
``x-amzn-RequestId``. Any Host header is accepted (clients sign for the real AWS host), JSON
bodies are parsed whatever the Content-Type, and ``Expect: 100-continue`` is answered by the
standard library. Ids only ever travel in headers, as on the real service.

Request bodies are streamed to disk (≤1 MiB reads). When a request fails before its body
was read, up to ``DRAIN_LIMIT`` bytes are read and dropped so the connection stays usable;
beyond that the connection is closed after the error response.

Choices where the service is silent (documented here, tested in tests/test_server_*.py):

* List ``limit`` above the maximum (10 vaults, 50 others) is clamped; below 1 or not a
  number is 400. Markers other than ListVaults' (which is the next vault's ARN, as on the
  service) are opaque base64 tokens; a marker that does not decode is 400.
* DescribeVault ``SizeInBytes`` adds 32 KiB per archive, like the service's example.
* A zero-byte UploadArchive is 400 ``Invalid Content-Length: 0``.
* GetJobOutput of a failed job is 400 like an unfinished one; an unsatisfiable Range is 400.

Admin endpoints (under ``/_admin/``, which cannot collide with an account id; never faulted,
never signature-checked, no version header needed; JSON answers):

* ``GET  /_admin/status`` - ``{"url", "now", "account"}``;
* ``GET  /_admin/sns[?topic=ARN]`` - recorded job-completion notifications
  ``{"messages": [{"Topic", "Date", "Message"}]}`` (Message: the DescribeJob JSON as text);
* ``POST /_admin/vaults/{vault}/inventory`` - take the vault's inventory snapshot now (also for a
  never-written vault that has none yet) -> ``{"changed", "InventoryDate"}``;
* ``POST /_admin/inventory`` - the periodic run now: every vault written since its inventory;
* ``POST /_admin/jobs/complete[?job_id=ID][&due=1][&status=Failed]`` - complete every in-progress
  job (or one, or only those due) -> ``{"completed": [ids]}``;
* ``POST /_admin/clock/advance?seconds=N`` - move the virtual clock (job delays, retention,
  upload expiry, inventory schedule all follow) and run what became due -> ``{"now"}``;
* ``POST /_admin/vaults/{vault}/populate?count=N&size=S[&snapshot=1]`` (or the same keys plus
  ``descriptions`` in a JSON body) - add N archives whose bodies are generated
  deterministically (no upload, no disk) -> ``{"count", "archive_ids" (null above 1000)}``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from glacierfs.treehash import MiB, TreeHasher, is_megabyte_aligned, is_tree_hash_aligned, is_valid_part_size

from .apierror import ApiError, invalid, missing, not_found, vault_not_found
from .bodies import IncompleteBody, Received
from .clock import iso_ms, parse_iso
from .faults import NO_FAULT, FaultPlan
from .ids import request_id
from .sigv4 import SigV4Verifier, redact
from .store import MAX_PARTS, Store, is_disk_full

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


class Pacer:
    """Caps one connection's transfer at ``rate`` bytes/s (``--bandwidth``), without bursts.

    Each transfer of n bytes moves a deadline n/rate later (from now, if the link was idle)
    and sleeps until it: the time to move N bytes is never below N/rate. Used by one request
    thread at a time (a connection is served by one thread), so it needs no lock.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._due = 0.0

    def account(self, n: int) -> None:
        if n <= 0:
            return
        now = time.monotonic()
        self._due = max(self._due, now) + n / self.rate
        if self._due > now:
            time.sleep(self._due - now)


PACE_CHUNK = 64 * 1024


class PacedReader:
    """A connection's rfile whose reads are paced (only the methods http.server and the body reader use)."""

    def __init__(self, raw: Any, pacer: Pacer) -> None:
        self._raw = raw
        self._pacer = pacer

    def read(self, n: int | None = -1) -> bytes:
        """Like BufferedReader.read: exactly ``n`` bytes unless the stream ends first."""
        if n is None or n < 0:
            data = self._raw.read()
            self._pacer.account(len(data))
            return bytes(data)
        parts = []
        while n > 0:
            piece = self._raw.read(min(n, PACE_CHUNK))
            if not piece:
                break
            self._pacer.account(len(piece))
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def readline(self, limit: int = -1) -> bytes:
        data = self._raw.readline(limit)
        self._pacer.account(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class PacedWriter:
    """A connection's wfile whose writes are paced, in pieces of at most ``PACE_CHUNK`` bytes."""

    def __init__(self, raw: Any, pacer: Pacer) -> None:
        self._raw = raw
        self._pacer = pacer

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for i in range(0, len(view), PACE_CHUNK):
            piece = view[i:i + PACE_CHUNK]
            self._raw.write(piece)
            self._pacer.account(len(piece))
        return len(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Reset(Exception):
    """The injected fault has reset the connection: write nothing more."""


class GlacierHTTPServer(ThreadingHTTPServer):
    """The listening server: a store, options, and the set of open connections (closed at shutdown)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # parallel part uploads and mounts open many connections at once

    def __init__(self, address: tuple[str, int], store: Store, options: Options) -> None:
        self.store = store
        self.options = options
        self.connections: set[socket.socket] = set()
        store.describe_job = lambda job: describe_job(store, job)
        self.conn_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke outside a request's own handling: one quiet line if the client went
        away (reset, broken pipe, timeout), the traceback only for anything else (a bug)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.info("connection from %s ended: %s", client_address[0], type(exc).__name__)
            return
        log.exception("unexpected error on the connection from %s", client_address[0])

    def close_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


Route = tuple[str, Callable[..., None], tuple[str, ...]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no delayed-ACK stalls on keep-alive
    server: GlacierHTTPServer

    def version_string(self) -> str:
        return "glacierfs"

    # -- request plumbing --------------------------------------------------------------
    def setup(self) -> None:
        self.timeout = self.server.options.body_timeout
        super().setup()
        rate = self.server.options.bandwidth
        if rate:  # one pacer per connection: reads and writes share the connection's rate
            pacer = Pacer(rate)
            self.rfile = PacedReader(self.rfile, pacer)  # type: ignore[assignment]
            self.wfile = PacedWriter(self.wfile, pacer)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), redact(format % args))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """The access log: client, request line, status, operation, ms to the status line (no headers)."""
        started = getattr(self, "_started", None)
        ms = f"{(time.monotonic() - started) * 1000:.1f}ms" if started else "-"
        log.info('%s "%s" %s %s %s', self.client_address[0], redact(self.requestline), code, getattr(self, "_op", "-"),
                 ms)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    @property
    def store(self) -> Store:
        return self.server.store

    @property
    def options(self) -> Options:
        return self.server.options

    def _handle(self, method: str) -> None:
        self._started = time.monotonic()
        self._rid = request_id()
        self._op = "-"
        self._reset_done = False
        self._draw = NO_FAULT
        self._corrupt = False
        self._fault: str | None = None
        self._body_cache: bytes | None = None
        self._headers_sent = False
        te = self.headers.get("Transfer-Encoding", "")
        self._chunked = "chunked" in te.lower()
        raw_length = self.headers.get("Content-Length")
        self._remaining = 0
        try:
            if raw_length is not None:
                if not DIGITS.match(raw_length.strip()):
                    # unreadable framing: the body cannot be skipped, so the connection ends after the answer
                    self.close_connection = True
                    raise invalid(f"Invalid Content-Length: {raw_length[:100]}")
                self._remaining = int(raw_length)
            url = urlsplit(self.path)
            self._query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            segs = [unquote(s) for s in url.path.split("/")[1:]]
            if segs and segs[0] == "_admin" and self.options.admin:
                self._op = "Admin"
                self._admin(method, segs[1:])
            else:
                self._api(method, segs)
        except _Reset:
            pass
        except ApiError as err:
            self._send_error(err)
        except TimeoutError:
            self.close_connection = True
            self._send_error(ApiError(408, "RequestTimeoutException", "Request timed out while reading the body."))
        except (IncompleteBody, ConnectionError) as exc:
            log.info("client went away during %s: %s", self._op, exc)
            self.close_connection = True
            return
        except Exception as exc:
            self.close_connection = True
            if is_disk_full(exc):
                # one line, no traceback: the write was undone (temp file removed, transaction rolled back)
                log.warning("%s failed: the data dir is full: %s", self._op, exc)
                self._send_error(ApiError(500, "ServiceUnavailableException",
                                          "The server is out of storage space; nothing was stored.", "Server"))
            else:
                log.exception("internal error in %s", self._op)
                self._send_error(ApiError(500, "ServiceUnavailableException", "Internal server error.", "Server"))
        finally:
            self._finish_body()

    def _finish_body(self) -> None:
        """Keep the connection usable if the body was not read, or drop it if that costs too much."""
        if self._reset_done or self.close_connection:
            return
        if self._chunked or self._remaining > DRAIN_LIMIT:
            self.close_connection = True
            return
        try:
            while self._remaining > 0:
                data = self.rfile.read(min(MiB, self._remaining))
                if not data:
                    break
                self._remaining -= len(data)
        except OSError:
            self.close_connection = True

    def _read_json(self) -> dict[str, Any]:
        if self._body_cache is not None:
            raw = self._body_cache
        else:
            if self._remaining > MAX_JSON:
                raise invalid("Request body too large")
            raw = self.rfile.read(self._remaining) if self._remaining else b""
            self._remaining -= len(raw)
        if not raw.strip():
            return {}
        try:
            data = loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "SerializationException", "Malformed JSON in the request body.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "SerializationException", "The request body must be a JSON object.")
        return data

    def _receive_body(self, length: int) -> Received:
        """Stream the body to a temp file (or reset half-way through, if so faulted)."""
        if self._fault == "reset":
            half = length // 2
            while half > 0:
                data = self.rfile.read(min(MiB, half))
                if not data:
                    break
                half -= len(data)
                self._remaining -= len(data)
            self._reset()
        received = self.store.bodies.receive(self.rfile, length)
        self._remaining -= length
        return received

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._reset_done = True
        self.close_connection = True
        raise _Reset()

    # -- responses ---------------------------------------------------------------------
    def _start(self, status: int, headers: dict[str, str], length: int, body: bytes = b"") -> None:
        """Send status and headers (and a small ``body`` in the same write)."""
        self._headers_sent = True
        if self.options.latency:  # the modelled round trip: every response is held back this long
            time.sleep(self.options.latency)
        if self._draw.slow:  # injected slow response: hold it back, then send it as usual
            time.sleep(self.options.faults.slow_seconds)
        self.send_response(status)
        self.send_header("x-amzn-RequestId", self._rid)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self._start(status, headers or {}, len(body), body if self.command != "HEAD" else b"")

    def _clean(self, obj: Any) -> Any:
        if not self.options.omit_nulls:
            return obj
        if isinstance(obj, dict):
            return {k: self._clean(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [self._clean(v) for v in obj]
        return obj

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(self._clean(obj)).encode()
        self._send(status, {"Content-Type": "application/json", **(headers or {})}, body)

    def _send_error(self, err: ApiError) -> None:
        if self._reset_done:
            return
        if self._headers_sent:  # failed mid-body: the only honest signal left is a cut connection
            self.close_connection = True
            return
        body = json.dumps({"code": err.code, "message": err.message, "type": err.kind}).encode()
        if self._remaining > DRAIN_LIMIT or self._chunked:
            self.close_connection = True
        try:
            self._send(err.status, {"Content-Type": "application/json", "x-amzn-ErrorType": err.code}, body)
        except OSError:
            self.close_connection = True

    # -- routing -----------------------------------------------------------------------
    def _route(self, method: str, segs: list[str]) -> Route:
        if len(segs) < 2 or segs[1] not in ("vaults",):
            raise ApiError(400, "BadRequest", f"Unsupported operation: {method} {self.path.split('?')[0]}")
        rest = segs[2:]
        n = len(rest)
        table: dict[tuple[int, str | None, str], tuple[str, Callable[..., None]]] = {
            (0, None, "GET"): ("ListVaults", self.list_vaults),
            (1, None, "PUT"): ("CreateVault", self.create_vault),
            (1, None, "GET"): ("DescribeVault", self.describe_vault),
            (1, None, "DELETE"): ("DeleteVault", self.delete_vault),
            (2, "archives", "POST"): ("UploadArchive", self.upload_archive),
            (3, "archives", "DELETE"): ("DeleteArchive", self.delete_archive),
            (2, "multipart-uploads", "POST"): ("InitiateMultipartUpload", self.initiate_multipart),
            (2, "multipart-uploads", "GET"): ("ListMultipartUploads", self.list_uploads),
            (3, "multipart-uploads", "PUT"): ("UploadMultipartPart", self.upload_part),
            (3, "multipart-uploads", "POST"): ("CompleteMultipartUpload", self.complete_multipart),
            (3, "multipart-uploads", "DELETE"): ("AbortMultipartUpload", self.abort_multipart),
            (3, "multipart-uploads", "GET"): ("ListParts", self.list_parts),
            (2, "jobs", "POST"): ("InitiateJob", self.initiate_job),
            (2, "jobs", "GET"): ("ListJobs", self.list_jobs),
            (3, "jobs", "GET"): ("DescribeJob", self.describe_job),
            (2, "notification-configuration", "PUT"): ("SetVaultNotifications", self.set_notifications),
            (2, "notification-configuration", "GET"): ("GetVaultNotifications", self.get_notifications),
            (2, "notification-configuration", "DELETE"): ("DeleteVaultNotifications", self.delete_notifications),
        }
        if n == 4 and rest[1] == "jobs" and rest[3] == "output" and method == "GET":
            return "GetJobOutput", self.get_job_output, (rest[0], rest[2])
        key = (n, rest[1] if n >= 2 else None, method)
        if n <= 3 and key in table:
            op, fn = table[key]
            return op, fn, tuple(rest[:1] + rest[2:3])
        raise ApiError(400, "BadRequest", f"Unsupported operation: {method} {self.path.split('?')[0]}")

    def _api(self, method: str, segs: list[str]) -> None:
        op, fn, args = self._route(method, segs)
        self._op = op
        self._draw = self.options.faults.draw(op)
        self._fault, self._corrupt = self._draw.fault, self._draw.corrupt
        if self._fault == "500":
            raise ApiError(500, "ServiceUnavailableException", "Service unavailable, please retry.", "Server")
        if self._fault == "throttle":
            raise ApiError(400, "ThrottlingException", "Rate exceeded")
        if self._fault == "408":
            raise ApiError(408, "RequestTimeoutException", "Request timed out.")
        if self._fault == "closed":
            raise ApiError(400, "NoLongerSupportedException", NO_LONGER_SUPPORTED)
        if self._fault == "reset" and op not in ("UploadArchive", "UploadMultipartPart", "GetJobOutput"):
            self._reset()
        account = segs[0]
        if not ACCOUNT.match(account):
            raise ApiError(403, "AccessDeniedException", f"Access denied for account id {account}")
        if account != "-" and account != self.store.settings.account:
            raise ApiError(403, "AccessDeniedException", f"Access denied for account id {account}")
        version = self.headers.get("x-amz-glacier-version")
        if not version:
            raise missing("Required parameter missing: API version")
        if version != API_VERSION:
            raise invalid(f"Invalid API version: {version}")
        if self.options.sigv4 is not None:
            self._check_signature(method, op)
        if args and op != "CreateVault" and not VAULT_NAME.match(args[0]):
            raise vault_not_found(args[0])
        fn(*args)

    def _check_signature(self, method: str, op: str) -> None:
        """SigV4 over the request as received; small bodies without x-amz-content-sha256 are read here."""
        assert self.options.sigv4 is not None
        payload_hash = self.headers.get("x-amz-content-sha256")
        if not payload_hash:
            if op in ("UploadArchive", "UploadMultipartPart"):
                raise missing("Required parameter missing: x-amz-content-sha256")
            if self._remaining > MAX_JSON:
                raise invalid("Request body too large")
            self._body_cache = self.rfile.read(self._remaining) if self._remaining else b""
            self._remaining -= len(self._body_cache)
            payload_hash = hashlib.sha256(self._body_cache).hexdigest()
        raw_path, _, raw_query = self.path.partition("?")
        self.options.sigv4.verify(method, raw_path, raw_query, self.headers, payload_hash)

    # -- helpers -----------------------------------------------------------------------
    def _acct(self) -> str:
        return self.store.settings.account

    def _limit(self, default: int, maximum: int) -> int:
        raw = self._query.get("limit")
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid(f"Invalid limit: {raw}") from None
        if value < 1:
            raise invalid(f"Invalid limit: {raw}")
        return min(value, maximum)

    def _shorten(self, page: list[dict[str, Any]], nxt: Any, key: str) -> tuple[list[dict[str, Any]], Any]:
        """With ``--short-pages``, hold back the last item of a page that has more after it.

        The service may return fewer items than ``limit`` while more remain (reference §4.4);
        this makes that happen on every such page, so a client that stops on a short page fails.
        """
        if self.options.short_pages and nxt is not None and len(page) > 1:
            return page[:-1], page[-1][key]
        return page, nxt

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self._chunked:
                raise ApiError(411, "MissingParameterValueException", "Required parameter missing: Content-Length")
            raise missing("Required parameter missing: Content-Length")
        try:
            value = int(raw)
        except ValueError:
            raise invalid(f"Invalid Content-Length: {raw}") from None
        if value < 0:
            raise invalid(f"Invalid Content-Length: {raw}")
        return value

    def _description(self, header: str) -> str | None:
        raw = self.headers.get(header)
        if raw is None:
            return None
        return check_printable(raw.lstrip(" "), "archive description")

    def _tree_hash_header(self) -> str:
        value = self.headers.get("x-amz-sha256-tree-hash")
        if not value:
            raise missing("Required parameter missing: x-amz-sha256-tree-hash")
        return value.strip()

    def _verify(self, received: Received, expected_tree: str) -> None:
        content = self.headers.get("x-amz-content-sha256")
        if (
            (self.options.verify_content_sha256 or self.options.sigv4 is not None)
            and content
            and content != "UNSIGNED-PAYLOAD"
            and content.lower() != received.sha256
        ):
            raise ApiError(
                403,
                "InvalidSignatureException",
                "The value passed in as x-amz-content-sha256 does not match the computed payload hash."
                f" Computed digest: {received.sha256} expected hash: {content}",
            )
        if expected_tree.lower() != received.tree_hash:
            raise invalid(f"Checksum mismatch: expected {expected_tree}, computed {received.tree_hash}")

    def _describe_vault(self, v: dict[str, Any]) -> dict[str, Any]:
        return {
            "CreationDate": iso_ms(v["created"]),
            "LastInventoryDate": iso_ms(v["inv_date"]) if v["inv_date"] is not None else None,
            "NumberOfArchives": v["inv_count"],
            "SizeInBytes": v["inv_size"] + ARCHIVE_OVERHEAD * v["inv_count"],
            "VaultARN": self.store.arn(v["name"]),
            "VaultName": v["name"],
        }

    # -- vaults ------------------------------------------------------------------------
    def list_vaults(self) -> None:
        limit = self._limit(10, 10)
        marker = self._query.get("marker") or None
        start = None
        if marker:
            prefix = self.store.arn("")
            if not marker.startswith(prefix) or len(marker) > len(prefix) + 255:
                raise invalid(f"Invalid marker: {marker}")
            start = marker[len(prefix):]
        page, nxt = self._shorten(*self.store.list_vaults(start, limit), key="name")
        self._send_json(200, {
            "Marker": self.store.arn(nxt) if nxt else None,
            "VaultList": [self._describe_vault(v) for v in page],
        })

    def create_vault(self, vault: str) -> None:
        if not VAULT_NAME.match(vault):
            raise invalid(f"Invalid vault name: {vault}. Vault names are 1-255 characters from a-z, A-Z, 0-9, '_', '-', '.'")
        self.store.create_vault(vault)
        self._send(201, {"Location": f"/{self._acct()}/vaults/{vault}"})

    def describe_vault(self, vault: str) -> None:
        self._send_json(200, self._describe_vault(self.store.vault(vault)))

    def delete_vault(self, vault: str) -> None:
        self.store.delete_vault(vault)
        self._send(204)

    # -- archives ----------------------------------------------------------------------
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

    # -- multipart ---------------------------------------------------------------------
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

    # -- jobs --------------------------------------------------------------------------
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

    def _describe_job(self, j: dict[str, Any]) -> dict[str, Any]:
        return describe_job(self.store, j)

    def describe_job(self, vault: str, job_id: str) -> None:
        self._send_json(200, self._describe_job(self.store.job(vault, job_id)))

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
            "JobList": [self._describe_job(j) for j in page],
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
            return job["tree_hash"]
        hasher = TreeHasher()
        for data in self.store.iter_job_output(job, start, end + 1):
            hasher.update(data)
        return hasher.hexdigest()

    # -- notifications -----------------------------------------------------------------
    def set_notifications(self, vault: str) -> None:
        self.store.vault(vault)
        body = self._read_json()
        cfg = body.get("vaultNotificationConfig", body) if isinstance(body.get("vaultNotificationConfig"), dict) else body
        topic = cfg.get("SNSTopic")
        events = cfg.get("Events")
        if not topic or not isinstance(topic, str):
            raise missing("Required parameter missing: SNSTopic")
        if not events or not isinstance(events, list):
            raise missing("Required parameter missing: Events")
        for ev in events:
            if ev not in EVENTS:
                raise invalid(f"Invalid event: {ev}. Valid values are {', '.join(EVENTS)}")
        self.store.set_notifications(vault, {"SNSTopic": topic, "Events": list(dict.fromkeys(events))})
        self._send(204)

    def get_notifications(self, vault: str) -> None:
        cfg = self.store.get_notifications(vault)
        if cfg is None:
            raise not_found(f"No notification configuration is set for vault: {self.store.arn(vault)}")
        self._send_json(200, cfg)

    def delete_notifications(self, vault: str) -> None:
        self.store.set_notifications(vault, None)
        self._send(204)

    # -- admin -------------------------------------------------------------------------
    def _admin(self, method: str, segs: list[str]) -> None:
        """Test and tooling hooks (only with ``serve --admin``); never faulted, no version header needed,
        signed like any request under ``--verify-sigv4``."""
        q = self._query
        store = self.store
        if self.options.sigv4 is not None:
            self._check_signature(method, "Admin")
        if method == "GET" and segs == ["status"]:
            self._send_json(200, {"url": self.server.url, "now": iso_ms(store.now()), "account": store.settings.account})
            return
        if method == "GET" and segs == ["sns"]:
            self._send_json(200, {"messages": store.sns_messages(q.get("topic"))})
            return
        if method != "POST":
            raise ApiError(400, "BadRequest", f"Unknown admin request: {method} {self.path}")
        if len(segs) == 3 and segs[0] == "vaults" and segs[2] == "inventory":
            changed = store.snapshot(segs[1], force=True)
            v = store.vault(segs[1])
            self._send_json(200, {"changed": changed, "InventoryDate": iso_ms(v["inv_date"])})
        elif segs == ["inventory"]:
            self._send_json(200, {"vaults": store.snapshot_all()})
        elif segs == ["jobs", "complete"]:
            job_id = q.get("job_id") or q.get("id")
            due_only = q.get("due") in ("1", "true")
            status = q.get("status", "Succeeded")
            if status not in ("Succeeded", "Failed"):
                raise invalid("status must be Succeeded or Failed")
            done = store.complete_jobs(force=not due_only, job_id=job_id, fail=status == "Failed")
            self._send_json(200, {"completed": done})
        elif segs == ["clock", "advance"]:
            try:
                seconds = float(q.get("seconds", "0"))
            except ValueError:
                raise invalid("seconds must be a number") from None
            if not (math.isfinite(seconds) and 0 <= seconds <= MAX_ADVANCE):
                raise invalid(f"seconds must be a finite number from 0 to {MAX_ADVANCE:.0f}")
            if store.clock.offset + seconds > MAX_CLOCK_OFFSET:
                raise invalid(f"the virtual clock may run at most {MAX_CLOCK_OFFSET:.0f} seconds ahead")
            store.clock.advance(seconds)
            store.periodic()
            self._send_json(200, {"now": iso_ms(store.now())})
        elif len(segs) == 3 and segs[0] == "vaults" and segs[2] == "populate":
            body = self._read_json()
            try:
                count = parse_uint(str(q.get("count", body.get("count", 1))), "count")
                size = parse_uint(str(q.get("size", body.get("size", 1024))), "size")
            except ApiError:
                raise invalid("count and size must be integers") from None
            if not (0 <= count <= MAX_POPULATE and 1 <= size <= MAX_ARCHIVE and count * size <= MAX_POPULATE_BYTES):
                raise invalid(f"count must be 0-{MAX_POPULATE}, size 1-{MAX_ARCHIVE} and count*size at most"
                              f" {MAX_POPULATE_BYTES}")
            descriptions = body.get("descriptions") or []
            if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
                raise invalid("descriptions must be a list of strings")
            for d in descriptions:
                check_printable(d, "archive description")
            ids = store.populate(segs[1], count, size, descriptions)
            if q.get("snapshot") in ("1", "true") or body.get("snapshot"):
                store.snapshot(segs[1], force=True)
            self._send_json(200, {"count": len(ids), "archive_ids": ids if len(ids) <= 1000 else None})
        else:
            raise ApiError(400, "BadRequest", f"Unknown admin request: {method} {self.path}")


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


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest
