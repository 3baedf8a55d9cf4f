"""An S3-compatible server for the export tests: moto's S3 plus the checksum check S3 makes.

moto accepts any ``x-amz-checksum-sha256`` without computing it; AWS S3 rejects a PUT whose
body does not match (400 BadDigest). :class:`ChecksumGate` (WSGI middleware in front of moto)
does what S3 does, and can play a bad network: ``POST /_gate/corrupt?count=N`` flips one byte
in the next N UploadPart bodies *before* the check, so S3 rejects them and the client must
send them again. ``GET /_gate/stats`` counts verified bodies, rejections and PUTs that came
without a checksum.

moto honours ``If-None-Match: *`` and ``If-Match: ETAG`` on PutObject, CompleteMultipartUpload
and DeleteObject (412 when the condition fails), but checks and then writes without a lock, so
two concurrent conditional writes could both pass. S3 evaluates them atomically; the gate does
the same by running every conditional request under one lock (``conditional``).

Run as ``python -m tests.helpers.s3_server`` (prints ``listening on URL``, serves until SIGTERM);
:class:`S3Server` starts and stops that subprocess for the tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.helpers import REPO

BAD_DIGEST = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadDigest</Code>'
    b"<Message>The SHA256 you specified did not match the calculated checksum.</Message></Error>"
)


class ChecksumGate:
    """WSGI middleware: verifies ``x-amz-checksum-sha256`` of PUT bodies like S3, injects corruption."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.conditional = threading.Lock()  # one conditional write at a time, as S3's are atomic
        self.corrupt_next = 0
        self.stats = {"verified": 0, "rejected": 0, "unchecked_puts": 0, "parts": 0}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if path.startswith("/_gate/"):
            return self._admin(path, query, start_response)
        if environ.get("REQUEST_METHOD") == "PUT" and "HTTP_X_AMZ_COPY_SOURCE" not in environ:
            want = environ.get("HTTP_X_AMZ_CHECKSUM_SHA256")
            is_part = "partNumber" in query
            chunked = "aws-chunked" in environ.get("HTTP_CONTENT_ENCODING", "")
            has_key = path.strip("/").count("/") >= 1
            if has_key and not want and not chunked:
                with self.lock:
                    self.stats["unchecked_puts"] += 1
            if want and not chunked:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length)
                with self.lock:
                    corrupt = is_part and self.corrupt_next > 0
                    if corrupt:
                        self.corrupt_next -= 1
                    if is_part:
                        self.stats["parts"] += 1
                if corrupt and body:
                    buf = bytearray(body)
                    buf[len(buf) // 2] ^= 0x01
                    body = bytes(buf)
                if base64.b64encode(hashlib.sha256(body).digest()).decode() != want:
                    with self.lock:
                        self.stats["rejected"] += 1
                    start_response("400 Bad Request", [("Content-Type", "application/xml"),
                                                       ("Content-Length", str(len(BAD_DIGEST)))])
                    return [BAD_DIGEST]
                with self.lock:
                    self.stats["verified"] += 1
                environ["wsgi.input"] = io.BytesIO(body)
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE") and (
            "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        ):
            with self.conditional:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    def _admin(self, path: str, query: dict[str, list[str]], start_response: Callable[..., Any]) -> list[bytes]:
        with self.lock:
            if path == "/_gate/corrupt":
                self.corrupt_next = int(query.get("count", ["1"])[0])
            elif path == "/_gate/reset":
                self.stats = dict.fromkeys(self.stats, 0)
            body = json.dumps({**self.stats, "corrupt_next": self.corrupt_next}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def serve() -> None:
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = ChecksumGate(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


class S3Server:
    """The server above in a subprocess; ``url`` while it runs. ``stop()`` is safe to call twice."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> S3Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.s3_server"], stdout=subprocess.PIPE,
                                     stderr=log, cwd=REPO, env=env)
        log.close()
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(60)
        text = line[0].decode().strip() if line else ""
        if not text.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"S3 server did not start: {text!r}; log: {self.log_path.read_text()[-2000:]}")
        self.url = text.removeprefix("listening on ")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", region_name="us-east-1", endpoint_url=self.url,
                            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 3}))

    def gate(self, action: str, **query: Any) -> dict[str, int]:
        import urllib.request
        from urllib.parse import urlencode

        url = f"{self.url}/_gate/{action}" + (f"?{urlencode(query)}" if query else "")
        with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=30) as r:
            return json.loads(r.read())


if __name__ == "__main__":
    serve()
