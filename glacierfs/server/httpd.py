"""The listening server and the router: ``GlacierHTTPServer`` and ``Handler``.

Threading contract:

* ``ThreadingHTTPServer`` runs ``serve_forever`` on the ``glacierfs-serve`` thread (started by
  :class:`glacierfs.server.ServerHandle`) and one daemon thread per connection; a connection's
  requests are served one after the other on its thread by one :class:`Handler`.
* ``conn_lock`` guards ``connections`` (the open sockets, shut down at ``close_connections``).
  It is a leaf lock: nothing else is taken while it is held.
* The store has its own locks (see :mod:`.store`): ``_periodic_lock`` -> ``_complete_lock`` ->
  ``_lock`` (the metadata RLock); request threads take them only through store methods.
  ``options`` is read-only after start; the fault plan has its own leaf lock for its counters.
* Signals are not handled here: ``serve``'s main thread (:mod:`.command`) owns them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from .admin import AdminOps
from .apierror import ApiError, invalid, missing, vault_not_found
from .ops_archives import ArchiveOps
from .ops_jobs import JobOps
from .ops_vaults import VaultOps
from .store import Store
from .wire import ACCOUNT, API_VERSION, NO_LONGER_SUPPORTED, VAULT_NAME, Options, describe_job

log = logging.getLogger(__name__)


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
        return f"http://{host!s}:{port}"



Route = tuple[str, Callable[..., None], tuple[str, ...]]


class Handler(VaultOps, ArchiveOps, JobOps, AdminOps):
    """Routes each request to its operation (admin hooks only with ``Options.admin``)."""

    def _dispatch(self, method: str, segs: list[str]) -> None:
        if segs and segs[0] == "_admin" and self.options.admin:
            self._op = "Admin"
            self._admin(method, segs[1:])
        else:
            self._api(method, segs)

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
        if self.options.holds.wait(op):  # held before it takes effect; released with drop: reset
            self._reset()
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

