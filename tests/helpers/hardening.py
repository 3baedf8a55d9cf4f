"""Helpers shared by the hardening tests (tests/test_hardening_*.py, test_hostile_server, export, mount).

* :class:`Cli` (from tests.helpers.cli) runs the real ``glacierfs`` command in a subprocess; it
  already asserts that no traceback reaches stderr.
* :func:`server_archives` / :func:`open_uploads` ask the *server* (boto3 over HTTP) what it holds,
  so "exactly once" is checked against the service, not against our own catalog.
* :class:`LyingProxy` is a test-only HTTP proxy in front of the real server that rewrites chosen
  responses (tree hash headers, Content-Range, short bodies) to play a lying service.
* :func:`find_secrets` greps files (binary-safe) and texts for credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from glacierfs.codec import decode_description
from glacierfs.treehash import tree_hash
from tests.helpers.cli import Cli, Result

__all__ = [
    "Cli",
    "LyingProxy",
    "Result",
    "assert_exactly_once",
    "assert_one_error",
    "find_secrets",
    "open_uploads",
    "random_files",
    "server_archives",
]

ERROR_PREFIX = "glacierfs: error: "


def assert_one_error(res: Result, *, codes: Iterable[int] | None = None, match: str | None = None, ctx: str = "") -> str:
    """A failed command: non-zero exit, no traceback, exactly one ``glacierfs: error:`` line."""
    assert res.returncode != 0, f"{ctx}\n{res}"
    if codes is not None:
        assert res.returncode in set(codes), f"{ctx}\n{res}"
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, f"{ctx}\n{res}"
    errors = [line for line in res.stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, f"{ctx}: expected one error line\n{res}"
    if match is not None:
        assert match in errors[0], f"{ctx}: {match!r} not in the error\n{res}"
    return errors[0]


# --------------------------------------------------------------------------- server truth


def server_archives(server: Any, vault: str, attempts: int = 10) -> list[dict]:
    """Every archive the server holds in ``vault`` (fresh snapshot + inventory job, via boto3)."""
    server.snapshot(vault)
    c = server.client(max_attempts=attempts)
    job = c.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval", "Format": "JSON"})["jobId"]
    server.complete_jobs(job)
    for _ in range(attempts):
        try:
            body = c.get_job_output(vaultName=vault, jobId=job)["body"].read()
            return json.loads(body)["ArchiveList"]
        except Exception:  # a fault-injecting server may corrupt or cut it: ask again
            time.sleep(0.05)
    raise AssertionError(f"could not read the inventory of {vault}")


def open_uploads(server: Any, vault: str, attempts: int = 10) -> list[dict]:
    return server.client(max_attempts=attempts).list_multipart_uploads(vaultName=vault)["UploadsList"]


def uploads_holding_parts(server: Any, vault: str) -> list[dict]:
    """Open uploads that hold at least one part (an empty one may be left by a killed Initiate)."""
    client = server.client(max_attempts=10)
    return [u for u in open_uploads(server, vault)
            if client.list_parts(vaultName=vault, uploadId=u["MultipartUploadId"])["Parts"]]


def assert_exactly_once(
    server: Any, vault: str, files: dict[str, bytes], ctx: str = "", empty_uploads_allowed: int = 0
) -> dict[str, str]:
    """The server holds exactly one archive per file (path and tree hash), nothing else, no open upload.

    ``empty_uploads_allowed``: after kills, an Initiate whose answer the killed process never
    recorded leaves an open upload with no part. Nothing proves it ours (another file with the
    same path and mtime may be starting), so the engine leaves it alone and the service drops it
    after a day idle: up to that many such uploads, each holding no part, are accepted.
    Returns ``{path: archive id}``.
    """
    archives = server_archives(server, vault)
    got = sorted(
        (decode_description(a["ArchiveDescription"]).path or "", a["SHA256TreeHash"], a["Size"]) for a in archives
    )
    want = sorted((p, tree_hash(d), len(d)) for p, d in files.items())
    assert got == want, f"{ctx}: archives on the server differ from the files (got {len(got)}, want {len(want)})"
    uploads = open_uploads(server, vault)
    if empty_uploads_allowed and len(uploads) <= empty_uploads_allowed:
        client = server.client(max_attempts=10)
        uploads = [u for u in uploads
                   if client.list_parts(vaultName=vault, uploadId=u["MultipartUploadId"])["Parts"]]
    assert uploads == [], f"{ctx}: leftover multipart uploads (holding parts): {uploads}"
    return {decode_description(a["ArchiveDescription"]).path or "": a["ArchiveId"] for a in archives}


def random_files(root: Path, rng: random.Random, count: int, sizes: list[int], prefix: str = "f") -> dict[str, bytes]:
    """``count`` files of sizes drawn from ``sizes`` (+ a random tail), random content; {relative path: bytes}."""
    files = {}
    for i in range(count):
        size = rng.choice(sizes) + rng.randrange(1, 4096)
        data = rng.randbytes(size)
        rel = f"{prefix}/{i:02d}.bin"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = data
    return files


def listing(res: Result) -> dict[str, str]:
    """``inventory`` output -> {path: archive id}."""
    out = {}
    for line in res.lines:
        path, _size, _date, aid = line.split("\t")
        out[path] = aid
    return out


# --------------------------------------------------------------------------- secrets and modes


def find_secrets(secrets: Iterable[str], roots: Iterable[Path] = (), texts: dict[str, str] | None = None) -> list[str]:
    """Where any secret appears: files under ``roots`` (every file, binary-safe) and named texts."""
    needles = [s.encode() for s in secrets if s]
    hits = []
    for root in roots:
        paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for p in paths:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            hits += [f"{p}: {n.decode()}" for n in needles if n in data]
    for name, text in (texts or {}).items():
        hits += [f"{name}: {n.decode()}" for n in needles if n in text.encode(errors="surrogateescape")]
    return hits


def bad_modes(root: Path) -> list[str]:
    """Entries under ``root`` (and root) that are not 0700 directories / 0600 files."""
    bad = []
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode) and mode != 0o700:
            bad.append(f"{p} dir {mode:o}")
        elif stat.S_ISREG(st.st_mode) and mode != 0o600:
            bad.append(f"{p} file {mode:o}")
    return bad


# --------------------------------------------------------------------------- lying proxy


def operation(method: str, path: str) -> str:
    """The Glacier operation of a request (enough of the REST mapping for the rewrite rules)."""
    parts = urlsplit(path).path.strip("/").split("/")
    if len(parts) < 3 or parts[1] != "vaults":
        return f"{method} {path}"
    rest = parts[3:]
    if rest[:1] == ["multipart-uploads"]:
        if len(rest) == 2:
            return {"PUT": "UploadMultipartPart", "POST": "CompleteMultipartUpload", "GET": "ListParts",
                    "DELETE": "AbortMultipartUpload"}.get(method, method)
        return "InitiateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    if rest[:1] == ["jobs"]:
        if len(rest) == 3 and rest[2] == "output":
            return "GetJobOutput"
        if len(rest) == 2:
            return "DescribeJob"
        return "InitiateJob" if method == "POST" else "ListJobs"
    if rest[:1] == ["archives"]:
        return "UploadArchive" if method == "POST" else "DeleteArchive"
    return "Vault" + method


@dataclass
class Answer:
    """A response the rewrite hook may change: ``headers`` keys are lower-case; ``cut`` sends only
    that many body bytes (keeping Content-Length) and then drops the connection."""

    op: str
    method: str
    path: str
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes
    cut: int | None = None


Rewrite = Callable[[Answer], bool]  # True when it lied
# (operation, request headers) -> (status, headers) to answer without forwarding, or None
Swallow = Callable[[str, dict[str, str]], tuple[int, dict[str, str]] | None]


class LyingProxy:
    """``with LyingProxy(upstream_url, rewrite) as proxy:`` -> ``proxy.url``; ``proxy.lies`` counts rewrites."""

    def __init__(self, upstream: str, rewrite: Rewrite, swallow: Swallow | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rewrite = rewrite
        self.swallow = swallow
        self.lies = 0
        self.seen: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                op = operation(self.command, self.path)
                fake = proxy.swallow(op, {k.lower(): v for k, v in self.headers.items()}) if proxy.swallow else None
                if fake is not None:  # answer "done" without telling the server
                    with proxy._lock:
                        proxy.lies += 1
                        proxy.seen.append(op)
                    status, headers = fake
                    self.send_response(status)
                    for k, v in {**headers, "content-length": "0"}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.flush()
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    ans = Answer(
                        op=operation(self.command, self.path),
                        method=self.command,
                        path=self.path,
                        request_headers={k.lower(): v for k, v in self.headers.items()},
                        status=resp.status,
                        headers={k.lower(): v for k, v in resp.getheaders()
                                 if k.lower() not in ("connection", "transfer-encoding", "keep-alive")},
                        body=data,
                    )
                finally:
                    conn.close()
                with proxy._lock:
                    proxy.seen.append(ans.op)
                if proxy.rewrite(ans):
                    with proxy._lock:
                        proxy.lies += 1
                if ans.cut is None:
                    ans.headers["content-length"] = str(len(ans.body))
                self.send_response(ans.status)
                for k, v in ans.headers.items():
                    self.send_header(k, v)
                if ans.cut is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                payload = ans.body if ans.cut is None else ans.body[: ans.cut]
                if payload and self.command != "HEAD":
                    self.wfile.write(payload)
                self.wfile.flush()
                if ans.cut is not None:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="lying-proxy", daemon=True)

    def __enter__(self) -> LyingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def flip_hex(value: str) -> str:
    """Another 64-hex tree hash (first digit changed)."""
    return ("0" if value[0] != "0" else "1") + value[1:]

