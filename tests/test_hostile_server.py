"""A hostile Glacier: a tiny HTTP server inside the tests answers each bad case, and the real CLI
(``glacierfs ... --endpoint-url http://127.0.0.1:PORT``) must end every one of them the same way:
a non-zero exit, exactly one clear ``glacierfs: error:`` line, no traceback, no terminal escape
sequence from the server on the user's terminal, nothing written outside the target, and all of it
within a bounded time (endless markers, spools and trickles included).

The server (:class:`Hostile`, ``http.server`` in a thread on 127.0.0.1, port 0) plays a correct
vault ``v`` holding one archive; each :class:`Case` changes one answer. The ``--all-vaults`` mount
meets the endless-marker case too (when FUSE is available).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from glacierfs.treehash import tree_hash
from tests.helpers.hardening import Cli, Result, assert_one_error

BOUND = 30.0  # seconds any one hostile case may take
DATA = bytes(range(256)) * 2  # the one archive's bytes (512)
ARCHIVE_ID = "A" * 20 + "-" + "b_9" * 39  # 138 characters of the id alphabet
JOB_ID = "J" * 92
UPLOAD_ID = "U" * 92
ARN = "arn:aws:glacier:us-east-1:012345678901:vaults/v"
DATE = "2026-01-01T00:00:00.000Z"
ESC = "\x1b[31mred\x1b[0m"


def _inventory_output() -> bytes:
    return json.dumps(
        {
            "VaultARN": ARN,
            "InventoryDate": DATE,
            "ArchiveList": [
                {
                    "ArchiveId": ARCHIVE_ID,
                    "ArchiveDescription": "file.bin",
                    "CreationDate": DATE,
                    "Size": len(DATA),
                    "SHA256TreeHash": tree_hash(DATA),
                }
            ],
        }
    ).encode()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: str | None = None  # None: the real length
    trickle: float | None = None  # seconds between single bytes of the body
    endless: bool = False  # stream this body forever (no Content-Length; close ends it)


def js(data: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status, json.dumps(data).encode(), {"Content-Type": "application/json", **headers})


def error(status: int, code: str, message: str) -> Reply:
    return js({"code": code, "message": message, "type": "Client"}, status, **{"x-amzn-ErrorType": code})


class Hostile:
    """The server: ``ops`` maps an operation name to a function(request) -> Reply (defaults: correct)."""

    def __init__(self, overrides: dict[str, Callable[[Hostile, Request], Reply]]) -> None:
        self.overrides = overrides
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                hostile.serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Hostile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    # -- routing
    def serve(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        url = urlsplit(h.path)
        req = Request(h.command, [p for p in url.path.split("/") if p], parse_qs(url.query), dict(h.headers), body)
        op = req.operation()
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
        handler = self.overrides.get(op) or getattr(type(self), f"op_{op}", None) or Hostile.op_unknown
        try:
            reply = handler(self, req)
        except Exception as exc:  # a broken case must show as a test failure, not a hang
            reply = error(400, "HostileServerBug", repr(exc))
        try:
            self.send(h, reply)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            h.close_connection = True

    @staticmethod
    def send(h: BaseHTTPRequestHandler, reply: Reply) -> None:
        h.send_response(reply.status)
        for k, v in reply.headers.items():
            h.send_header(k, v)
        h.send_header("x-amzn-RequestId", "req-1")
        if reply.endless:
            h.send_header("Connection", "close")
            h.end_headers()
            h.close_connection = True
            block = reply.body or b"x" * 65536
            deadline = time.monotonic() + BOUND  # a client that never stops reading still ends
            while time.monotonic() < deadline:
                h.wfile.write(block)
            return
        h.send_header("Content-Length", reply.content_length or str(len(reply.body)))
        if reply.content_length is not None:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if reply.trickle is not None:
            for i in range(len(reply.body)):
                h.wfile.write(reply.body[i : i + 1])
                h.wfile.flush()
                time.sleep(reply.trickle)  # the server's pace, not a test's wait
            return
        h.wfile.write(reply.body)

    # -- the correct answers
    @staticmethod
    def vault(name: str = "v", **extra: Any) -> dict[str, Any]:
        return {"VaultName": name, "VaultARN": ARN.replace("/v", f"/{name}"), "CreationDate": DATE,
                "LastInventoryDate": DATE, "NumberOfArchives": 1, "SizeInBytes": len(DATA), **extra}

    def op_ListVaults(self, req: Request) -> Reply:
        return js({"VaultList": [self.vault()], "Marker": None})

    def op_DescribeVault(self, req: Request) -> Reply:
        return js(self.vault())

    def job(self, req: Request, **extra: Any) -> dict[str, Any]:
        kind = "inventory" if self.calls.get("InitiateInventory") else "archive"
        base: dict[str, Any] = {"JobId": JOB_ID, "CreationDate": DATE, "CompletionDate": DATE, "Completed": True,
                                "StatusCode": "Succeeded", "VaultARN": ARN}
        if kind == "inventory":
            base.update(Action="InventoryRetrieval", InventorySizeInBytes=len(_inventory_output()),
                        InventoryRetrievalParameters={"Format": "JSON"})
        else:
            base.update(Action="ArchiveRetrieval", ArchiveId=ARCHIVE_ID, ArchiveSizeInBytes=len(DATA),
                        ArchiveSHA256TreeHash=tree_hash(DATA), SHA256TreeHash=tree_hash(DATA),
                        RetrievalByteRange=f"0-{len(DATA) - 1}", Tier="Standard")
        return {**base, **extra}

    def op_ListJobs(self, req: Request) -> Reply:
        return js({"JobList": [], "Marker": None})

    def op_InitiateJob(self, req: Request) -> Reply:
        params = json.loads(req.body or b"{}")
        op = "InitiateInventory" if params.get("Type") == "inventory-retrieval" else "InitiateRetrieval"
        with self.lock:
            self.calls[op] = self.calls.get(op, 0) + 1
        return Reply(202, b"", {"x-amz-job-id": JOB_ID, "Location": f"/-/vaults/v/jobs/{JOB_ID}"})

    def op_DescribeJob(self, req: Request) -> Reply:
        return js(self.job(req))

    def op_GetJobOutput(self, req: Request) -> Reply:
        if self.calls.get("InitiateInventory"):
            return Reply(200, _inventory_output(), {"Content-Type": "application/json"})
        start, end = 0, len(DATA) - 1
        rng = req.headers.get("Range") or req.headers.get("range")
        if rng:
            a, b = rng.split("=")[1].split("-")
            start, end = int(a), int(b)
        chunk = DATA[start : end + 1]
        return Reply(206 if rng else 200, chunk, {
            "Content-Type": "application/octet-stream", "x-amz-sha256-tree-hash": tree_hash(chunk),
            "Content-Range": f"bytes {start}-{end}/{len(DATA)}", "Accept-Ranges": "bytes"})

    def op_UploadArchive(self, req: Request) -> Reply:
        return Reply(201, b"", {"x-amz-archive-id": ARCHIVE_ID, "x-amz-sha256-tree-hash": tree_hash(req.body),
                                "Location": f"/-/vaults/v/archives/{ARCHIVE_ID}"})

    def op_ListMultipartUploads(self, req: Request) -> Reply:
        return js({"UploadsList": [], "Marker": None})

    def op_InitiateMultipartUpload(self, req: Request) -> Reply:
        return Reply(201, b"", {"x-amz-multipart-upload-id": UPLOAD_ID,
                                "Location": f"/-/vaults/v/multipart-uploads/{UPLOAD_ID}"})

    def op_UploadMultipartPart(self, req: Request) -> Reply:
        return Reply(204, b"", {"x-amz-sha256-tree-hash": tree_hash(req.body)})

    def op_CompleteMultipartUpload(self, req: Request) -> Reply:
        return Reply(201, b"", {"x-amz-archive-id": ARCHIVE_ID,
                                "x-amz-sha256-tree-hash": req.headers.get("x-amz-sha256-tree-hash", ""),
                                "Location": f"/-/vaults/v/archives/{ARCHIVE_ID}"})

    def op_ListParts(self, req: Request) -> Reply:
        return js({"MultipartUploadId": UPLOAD_ID, "VaultARN": ARN, "PartSizeInBytes": 1 << 20,
                   "CreationDate": DATE, "Parts": [], "Marker": None})

    def op_AbortMultipartUpload(self, req: Request) -> Reply:
        return Reply(204)

    def op_unknown(self, req: Request) -> Reply:
        return error(400, "InvalidParameterValueException", f"hostile test server: no {req.method} {req.parts}")


@dataclass
class Request:
    method: str
    parts: list[str]  # path segments after the host: ['-', 'vaults', 'v', 'jobs', ID]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def operation(self) -> str:
        p, m = self.parts[1:], self.method
        if p == ["vaults"]:
            return "ListVaults"
        if len(p) == 2:
            return "DescribeVault"
        if len(p) == 3 and p[2] == "jobs":
            return "ListJobs" if m == "GET" else "InitiateJob"
        if len(p) == 4 and p[2] == "jobs":
            return "DescribeJob"
        if len(p) == 5 and p[4] == "output":
            return "GetJobOutput"
        if len(p) == 3 and p[2] == "archives":
            return "UploadArchive"
        if len(p) == 3 and p[2] == "multipart-uploads":
            return "ListMultipartUploads" if m == "GET" else "InitiateMultipartUpload"
        if len(p) == 4 and p[2] == "multipart-uploads":
            return {"PUT": "UploadMultipartPart", "POST": "CompleteMultipartUpload", "GET": "ListParts",
                    "DELETE": "AbortMultipartUpload"}[m]
        return "Unknown"


# --------------------------------------------------------------------------- the cases

Override = Callable[[Hostile, Request], Reply]


@dataclass
class Case:
    name: str
    command: str  # vaults | inventory | download | upload | upload-multipart
    overrides: dict[str, Override]
    match: str  # a piece of the one error line
    extra: tuple[str, ...] = ()


def _counter_marker(h: Hostile, req: Request) -> Reply:
    n = int((req.query.get("marker") or ["0"])[0].rsplit("-", 1)[-1] or 0)
    return js({"VaultList": [h.vault()], "Marker": f"{ARN}-{n + 1}"})


def _new_vaults_every_page(h: Hostile, req: Request) -> Reply:
    n = int((req.query.get("marker") or ["m-0"])[0].rsplit("-", 1)[-1])
    names = [f"v{n * 1000 + i}" for i in range(1000)]
    return js({"VaultList": [h.vault(x) for x in names], "Marker": f"m-{n + 1}"})


def _endless_jobs(h: Hostile, req: Request) -> Reply:
    n = int((req.query.get("marker") or ["0"])[0])
    return js({"JobList": [h.job(req, StatusCode="InProgress", Completed=False)], "Marker": str(n + 1)})


def _job_output_override(**reply: Any) -> Override:
    def answer(h: Hostile, req: Request) -> Reply:
        good = Hostile.op_GetJobOutput(h, req)
        return Reply(**{"status": good.status, "body": good.body, "headers": good.headers, **reply})
    return answer


def _job_output_headers(**headers: str) -> Override:
    def answer(h: Hostile, req: Request) -> Reply:
        good = Hostile.op_GetJobOutput(h, req)
        good.headers.update(headers)
        return good
    return answer


def _describe(**fields: Any) -> Override:
    return lambda h, req: js(h.job(req, **fields))


def _raw(status: int, body: bytes, ctype: str = "application/json") -> Override:
    return lambda h, req: Reply(status, body, {"Content-Type": ctype})


def _nan_vaults(h: Hostile, req: Request) -> Reply:
    body = json.dumps({"VaultList": [h.vault()], "Marker": None}).replace(
        f'"SizeInBytes": {len(DATA)}', '"SizeInBytes": NaN')
    return Reply(200, body.encode(), {"Content-Type": "application/json"})


CASES = [
    Case("new-marker-every-page", "vaults", {"ListVaults": _counter_marker}, "nothing new"),
    Case("new-vaults-every-page", "vaults", {"ListVaults": _new_vaults_every_page}, "more than"),
    Case("same-marker-repeated", "vaults",
         {"ListVaults": lambda h, r: js({"VaultList": [h.vault(f"v{len(r.query)}")], "Marker": "same"})},
         "same page marker twice"),
    Case("marker-with-escapes", "vaults",
         {"ListVaults": lambda h, r: js({"VaultList": [h.vault()], "Marker": ESC})}, "invalid page marker"),
    Case("endless-job-list", "download", {"ListJobs": _endless_jobs}, "nothing new"),
    Case("job-id-with-slash", "inventory",
         {"InitiateJob": lambda h, r: (Hostile.op_InitiateJob(h, r),
                                       Reply(202, b"", {"x-amz-job-id": "../../../etc/x"}))[1]},
         "invalid job id"),
    Case("job-id-with-escape", "download",
         {"InitiateJob": lambda h, r: Reply(202, b"", {"x-amz-job-id": "ab\x1b[2Jcd"})}, "invalid job id"),
    Case("listed-job-with-slash", "download",
         {"ListJobs": lambda h, r: js({"JobList": [h.job(r, JobId="a/b")], "Marker": None})}, "invalid job id"),
    Case("archive-id-with-slash", "upload",
         {"UploadArchive": lambda h, r: Reply(201, b"", {"x-amz-archive-id": "../x/y",
                                                         "x-amz-sha256-tree-hash": tree_hash(r.body)})},
         "invalid archive id"),
    Case("archive-id-with-escape", "upload-multipart",
         {"CompleteMultipartUpload": lambda h, r: Reply(201, b"", {
             "x-amz-archive-id": "id\x1b]0;owned\x07", "x-amz-sha256-tree-hash":
             r.headers.get("x-amz-sha256-tree-hash", "")})},
         "invalid archive id"),
    Case("upload-id-with-slash", "upload-multipart",
         {"InitiateMultipartUpload": lambda h, r: Reply(201, b"", {"x-amz-multipart-upload-id": "u/../../v"})},
         "invalid upload id"),
    Case("invalid-tree-hash-header", "upload",
         {"UploadArchive": lambda h, r: Reply(201, b"", {"x-amz-archive-id": ARCHIVE_ID,
                                                         "x-amz-sha256-tree-hash": "not-a-hash"})},
         "invalid tree hash"),
    Case("inventory-longer-than-declared", "inventory",
         {"GetJobOutput": lambda h, r: Reply(200, b" " * 65536, {"Content-Type": "application/json"}, endless=True)},
         "longer than"),
    Case("trickling-body", "inventory",
         {"GetJobOutput": lambda h, r: Reply(200, _inventory_output(), {"Content-Type": "application/json"},
                                             trickle=0.5)},
         "stalled", ("--timeout", "3")),
    Case("job-never-finishes", "download",
         {"DescribeJob": _describe(StatusCode="InProgress", Completed=False)}, "gave up waiting",
         ("--timeout", "3")),
    Case("bogus-json", "download", {"DescribeJob": _raw(200, b'{"JobId": "' + JOB_ID.encode() + b'", ')},
         "job"),
    Case("non-json-500", "vaults", {"ListVaults": _raw(500, b"<html>Internal Server Error</html>", "text/html")},
         "listing vaults"),
    Case("huge-content-length", "download", {"GetJobOutput": _job_output_override(content_length=str(10**15))},
         "Content-Length"),
    Case("absurd-content-length", "download",
         {"GetJobOutput": _job_output_override(content_length="9" * 30)}, "archive"),
    Case("negative-size", "download", {"DescribeJob": _describe(ArchiveSizeInBytes=-5)},
         "invalid ArchiveSizeInBytes"),
    Case("negative-vault-size", "vaults",
         {"ListVaults": lambda h, r: js({"VaultList": [h.vault(SizeInBytes=-1)], "Marker": None})},
         "invalid SizeInBytes"),
    Case("bad-date", "download", {"DescribeJob": _describe(CreationDate="yesterday")}, "invalid CreationDate"),
    Case("nan-size", "vaults", {"ListVaults": _nan_vaults}, "NaN"),
    Case("truncated-body", "download",
         {"GetJobOutput": _job_output_override(content_length=str(len(DATA) + 100))}, "archive"),
    Case("wrong-tree-hash-on-output", "download",
         {"GetJobOutput": _job_output_headers(**{"x-amz-sha256-tree-hash": "0" * 64})}, "tree hash"),
    Case("invalid-tree-hash-on-output", "download",
         {"GetJobOutput": _job_output_headers(**{"x-amz-sha256-tree-hash": "zz" * 32})}, "invalid tree hash"),
    Case("invalid-job-tree-hash", "download", {"DescribeJob": _describe(SHA256TreeHash="abc")},
         "invalid SHA256TreeHash"),
    Case("unknown-job-status", "download", {"DescribeJob": _describe(StatusCode=ESC)}, "invalid job status"),
    Case("inventory-not-json", "inventory",
         {"GetJobOutput": lambda h, r: Reply(200, b"x" * len(_inventory_output()), {"Content-Type": "application/json"})},
         "inventory"),
]


def _tree(root: Path, skip: set[Path]) -> dict[str, float]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in filenames:
            p = d / n
            out[str(p.relative_to(root))] = p.stat().st_mtime
    return out


def _argv(case: Case, work: Path) -> list[str]:
    if case.command == "vaults":
        return ["vaults"]
    if case.command == "inventory":
        return ["inventory", "-v", "v", "-f"]
    if case.command == "download":
        return ["download", "-v", "v", f"-a={ARCHIVE_ID}", "-o", str(work / "out" / "file.bin")]
    src = work / "src"
    src.mkdir(exist_ok=True)
    (src / "file.bin").write_bytes(DATA)
    if case.command == "upload":
        return ["upload", "-v", "v", "--single-request", "file.bin"]
    return ["upload", "-v", "v", "file.bin"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_answer_ends_in_one_clear_line(case: Case, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    argv = _argv(case, work)
    cwd = work / "src" if case.command.startswith("upload") else work
    before = _tree(tmp_path, {tmp_path / "cache", work / "out"})
    with Hostile(case.overrides) as server:
        cli = Cli(server.url, tmp_path / "cache", cwd)
        t0 = time.monotonic()
        res: Result = cli(*argv, "--region", "us-east-1", *case.extra, code=None, timeout=BOUND + 30)
        elapsed = time.monotonic() - t0
    line = assert_one_error(res, ctx=case.name)
    assert case.match.lower() in line.lower(), f"{case.name}: {case.match!r} not in {line!r}"
    assert elapsed < BOUND, f"{case.name} took {elapsed:.1f} s\n{res}"
    for text in (res.stdout, res.stderr):
        assert "\x1b" not in text and "\x07" not in text, f"{case.name}: raw control characters reached the terminal"
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line)
    assert _tree(tmp_path, {tmp_path / "cache", work / "out"}) == before, f"{case.name}: files written outside"
    leftovers = [n for n in os.listdir(work / "out") if not n.startswith(".file.bin.glacierfs-part")]
    assert leftovers == [], f"{case.name}: {leftovers} at the target"


def test_the_hostile_server_is_a_correct_glacier_without_overrides(tmp_path: Path) -> None:
    """The control: with no override every command above succeeds (so each case fails for its lie)."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    for command in ("vaults", "inventory", "download", "upload", "upload-multipart"):
        case = Case("control", command, {}, "")
        argv = _argv(case, work)
        cwd = work / "src" if command.startswith("upload") else work
        with Hostile({}) as server:
            res = Cli(server.url, tmp_path / f"cache-{command}", cwd)(*argv, "--region", "us-east-1", code=None)
        assert res.returncode == 0, str(res)
    assert (work / "out" / "file.bin").read_bytes() == DATA


@pytest.mark.timeout(120)
def test_all_vaults_mount_ls_ends_on_an_endless_marker(tmp_path: Path) -> None:
    """``ls`` of an ``--all-vaults`` mount against a server handing out a new marker every page
    returns (an error), promptly; the mount stays alive."""
    import subprocess

    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    with Hostile({"ListVaults": _counter_marker}) as server:
        m = tm.Mount(tmp_path / "mnt", tmp_path / "cache", server.url, None, "--all-vaults")
        try:
            m.start()
            t0 = time.monotonic()
            res = subprocess.run(["ls", str(m.mnt)], capture_output=True, text=True, timeout=BOUND + 30)
            assert time.monotonic() - t0 < BOUND, m.log()
            assert res.returncode != 0 or res.stdout.strip() == "", res
            assert server.calls.get("ListVaults", 0) < 100, server.calls
            assert m.proc is not None and m.proc.poll() is None, m.log()
        finally:
            m.close()
