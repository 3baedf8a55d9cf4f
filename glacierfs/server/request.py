"""One request's plumbing: reading (bounded JSON, streamed bodies), answering, error rendering.

:class:`Request` is the base of every operation mixin (:mod:`.ops_vaults`, :mod:`.ops_archives`,
:mod:`.ops_jobs`, :mod:`.admin`); :class:`.httpd.Handler` combines them and routes.

``http.server`` with HTTP/1.1 keep-alive; every response carries Content-Length and
``x-amzn-RequestId``. Any Host header is accepted (clients sign for the real AWS host), JSON
bodies are parsed whatever the Content-Type, and ``Expect: 100-continue`` is answered by the
standard library. Ids only ever travel in headers, as on the real service.

Request bodies are streamed to disk (≤1 MiB reads). When a request fails before its body
was read, up to ``DRAIN_LIMIT`` bytes are read and dropped so the connection stays usable;
beyond that (or when the framing is unreadable) the connection is closed after the error
response. A client mistake is an :class:`.apierror.ApiError` (logged as one access-log line);
a full data dir is a 500 with one warning line; a client that went away is one info line;
only a bug logs a traceback.

Threading: an instance lives on one ThreadingHTTPServer request thread and serves that
connection's requests one after the other; its fields are that thread's own. Shared state is
reached only through ``self.server.store`` (its own locks) and ``self.server.options`` (read-only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import struct
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from glacierfs.treehash import MiB

from .apierror import ApiError, invalid, missing
from .bodies import IncompleteBody, Received
from .faults import NO_FAULT
from .ids import request_id
from .pacing import PacedReader, PacedWriter, Pacer
from .sigv4 import redact
from .store import Store, is_disk_full
from .wire import (
    DIGITS,
    DRAIN_LIMIT,
    MAX_JSON,
    Options,
    check_printable,
    loads,
)

if TYPE_CHECKING:
    from .httpd import GlacierHTTPServer

log = logging.getLogger(__name__)

class _Reset(Exception):
    """The injected fault has reset the connection: write nothing more."""



class Request(BaseHTTPRequestHandler):
    """Plumbing shared by the operations; :meth:`_dispatch` is the router's (see :mod:`.httpd`)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no delayed-ACK stalls on keep-alive
    server: GlacierHTTPServer

    def version_string(self) -> str:
        return "glacierfs"

    # -- request plumbing --------------------------------------------------------------
    def setup(self) -> None:
        self.timeout = self.server.options.body_timeout  # type: ignore[misc]  # per connection, read by setup()
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
            self._dispatch(method, segs)
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
        self._headers_buffer.append(b"\r\n" + body)  # type: ignore[attr-defined]  # http.server's own buffer
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


    def _dispatch(self, method: str, segs: list[str]) -> None:
        raise NotImplementedError

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
