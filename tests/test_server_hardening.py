"""The server under a hostile or careless client (issue 10 items 2, 6, 9): the admin surface, bad
parameters, a full data dir, clients that go away, secrets in the log, InitiateJob of a deleted archive."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.glacier_server import GlacierServer, error_of

VERSION = {"x-amz-glacier-version": "2012-06-01"}
WAIT = 30.0


def conn_for(server: GlacierServer, timeout: float = 30) -> http.client.HTTPConnection:
    u = urlsplit(server.url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def request(server: GlacierServer, method: str, path: str, body: bytes | str = b"",
            headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = conn_for(server)
    try:
        conn.request(method, path, body=body, headers={**VERSION, **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return resp.status, (json.loads(raw) if raw else {})


def wait_for(cond: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def marker(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def year(iso: str) -> int:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).year


# --------------------------------------------------------------------------- item 2: the admin surface


def test_admin_endpoints_exist_only_with_admin(glacier_server_factory):
    s = glacier_server_factory(admin=False)
    for method, path in [("POST", "/_admin/clock/advance?seconds=1e9"), ("GET", "/_admin/status"),
                         ("POST", "/_admin/jobs/complete"), ("POST", "/_admin/inventory")]:
        status, err = request(s, method, path)
        assert status == 400 and err["code"] == "BadRequest", (path, status, err)
    s.client().create_vault(vaultName="v")
    created = s.client().describe_vault(vaultName="v")["CreationDate"]
    assert year(created) == datetime.now(UTC).year  # the clock did not move


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "1e12", "1e309", "-1", "abc", "NaN"])
def test_admin_clock_takes_only_finite_bounded_values(glacier_server_factory, seconds):
    s = glacier_server_factory()
    c = s.client()
    c.create_vault(vaultName="v")
    status, err = request(s, "POST", f"/_admin/clock/advance?seconds={seconds}")
    assert status == 400 and err["code"] == "InvalidParameterValueException", (status, err)
    # the state is intact: writes and listings work, now and after a restart
    for _ in range(2):
        aid = c.upload_archive(vaultName="v", body=b"after the bad advance")["archiveId"]
        assert aid
        vaults = c.list_vaults()["VaultList"]
        assert [v["VaultName"] for v in vaults] == ["v"]
        assert year(vaults[0]["CreationDate"]) == datetime.now(UTC).year
        s.restart()
        c = s.client()
    assert s.advance(3600)["now"]  # a sane advance still works


def test_admin_populate_is_bounded(glacier_server_factory):
    s = glacier_server_factory()
    s.client().create_vault(vaultName="v")
    for query in ("count=1e12", "count=-1", "size=0", "count=1000000&size=1099511627776", "count=nan"):
        status, err = request(s, "POST", f"/_admin/vaults/v/populate?{query}")
        assert status == 400 and err["code"] == "InvalidParameterValueException", (query, status, err)
    status, err = request(s, "POST", "/_admin/vaults/v/populate", json.dumps({"count": 1, "descriptions": ["\x1b[2J"]}))
    assert status == 400
    assert s.populate("v", 2, size=10) is not None


# --------------------------------------------------------------------------- item 6: bad parameters


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlacierServer]:
    """One server for the bad-parameter cases, with a vault, an archive, a succeeded job and an upload."""
    server = GlacierServer(tmp_path_factory.mktemp("hostile") / "data", start=False)
    try:
        server.start()
        c = server.client()
        c.create_vault(vaultName="h")
        aid = c.upload_archive(vaultName="h", body=b"z" * 5000)["archiveId"]
        server.snapshot("h")
        server.job = c.initiate_job(vaultName="h", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]  # type: ignore[attr-defined]
        server.upload = c.initiate_multipart_upload(vaultName="h", partSize=str(MiB))["uploadId"]  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


def _inventory_job(irp: str) -> str:
    return '{"Type": "inventory-retrieval", "InventoryRetrievalParameters": ' + irp + "}"


BAD_REQUESTS: list[tuple[str, str, str, str, dict[str, str], str]] = [
    # (case, method, path ({job}/{upload} filled in), body, headers, expected code)
    ("huge ListJobs marker", "GET", "/-/vaults/h/jobs?marker=" + marker(2**70), "", {}, "InvalidParameterValueException"),
    ("huge ListParts marker", "GET", "/-/vaults/h/multipart-uploads/{upload}?marker=" + marker(10**30), "", {},
     "InvalidParameterValueException"),
    ("long marker", "GET", "/-/vaults/h/multipart-uploads?marker=" + "A" * 8000, "", {}, "InvalidParameterValueException"),
    ("Limit 1e999", "POST", "/-/vaults/h/jobs", _inventory_job('{"Limit": 1e999}'), {}, "InvalidParameterValueException"),
    ("Limit beyond 64 bits", "POST", "/-/vaults/h/jobs", _inventory_job('{"Limit": "99999999999999999999999"}'), {},
     "InvalidParameterValueException"),
    ("NaN in a marker", "POST", "/-/vaults/h/jobs",
     _inventory_job('{"Marker": "' + base64.urlsafe_b64encode(b'[NaN, "x"]').decode() + '"}'), {},
     "InvalidParameterValueException"),
    ("NaN literal", "POST", "/-/vaults/h/jobs", '{"Type": "inventory-retrieval", "Description": NaN}', {},
     "SerializationException"),
    ("marker of the wrong shape", "POST", "/-/vaults/h/jobs", _inventory_job('{"Marker": "' + marker([[1], [2]]) + '"}'),
     {}, "InvalidParameterValueException"),
    ("deeply nested JSON", "POST", "/-/vaults/h/jobs", '{"Type": ' + "[" * 100_000 + "]" * 100_000 + "}", {},
     "SerializationException"),
    ("Range of 5000 digits", "GET", "/-/vaults/h/jobs/{job}/output", "", {"Range": "bytes=" + "9" * 5000 + "-"},
     "InvalidParameterValueException"),
    ("Content-Range of 5000 digits", "PUT", "/-/vaults/h/multipart-uploads/{upload}", "abc",
     {"Content-Range": f"bytes 0-{'9' * 5000}/*", "x-amz-sha256-tree-hash": tree_hash(b"abc")},
     "InvalidParameterValueException"),
    ("StartDate not a string", "POST", "/-/vaults/h/jobs", _inventory_job('{"StartDate": [[[]]]}'), {},
     "InvalidParameterValueException"),
    ("StartDate in year 1", "POST", "/-/vaults/h/jobs", _inventory_job('{"StartDate": "0001-01-01T00:00:00Z"}'), {},
     "InvalidParameterValueException"),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "headers", "code"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_parameter_is_400_with_the_service_code(hostile, case, method, path, body, headers, code):
    before = len(hostile.log())
    path = path.format(job=hostile.job, upload=hostile.upload)
    status, err = request(hostile, method, path, body, headers)
    assert (status, err.get("code")) == (400, code), (case, err)
    assert set(err) == {"code", "message", "type"} and err["type"] == "Client"
    assert "Traceback" not in hostile.log()[before - 5000 if before > 5000 else 0:]
    # nothing was queued that could fail later: every job of the vault is the one good job
    jobs = hostile.client().list_jobs(vaultName="h")["JobList"]
    assert [j["JobId"] for j in jobs] == [hostile.job]


def test_retrieval_range_with_too_many_digits_on_a_real_archive(hostile):
    aid = hostile.client().upload_archive(vaultName="h", body=b"q" * 10)["archiveId"]
    body = json.dumps({"Type": "archive-retrieval", "ArchiveId": aid, "RetrievalByteRange": "0-" + "9" * 5000})
    status, err = request(hostile, "POST", "/-/vaults/h/jobs", body)
    assert (status, err["code"]) == (400, "InvalidParameterValueException")
    hostile.client().delete_archive(vaultName="h", archiveId=aid)


def test_negative_content_length_is_400_at_once(hostile):
    u = urlsplit(hostile.url)
    head = (b"POST /-/vaults/h/jobs HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\n"
            b"Content-Length: -5\r\n\r\n")
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(head)  # and keep the connection open: the server must not wait for a body
        status = sock.makefile("rb").readline()
    assert status.startswith(b"HTTP/1.1 400"), status


# --------------------------------------------------------------------------- item 6: clients that go away, secrets


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_going_away_leave_one_quiet_line_and_no_traceback(glacier_server):
    s = glacier_server
    c = s.client()
    c.create_vault(vaultName="v")
    (aid,) = s.populate("v", 1, size=48 * MiB) or []
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    u = urlsplit(s.url)
    # 1. an idle keep-alive connection reset by the client
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall(b"GET /-/vaults HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    _reset(sock)
    # 2. a download abandoned half-way
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall(f"GET /-/vaults/v/jobs/{job}/output HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\n\r\n"
                 .encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    _reset(sock)
    # 3. an upload body cut short
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall(b"POST /-/vaults/v/archives HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\n"
                 b"x-amz-sha256-tree-hash: " + b"0" * 64 + b"\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    _reset(sock)
    wait_for(lambda: s.log().count("went away") + s.log().count("connection from") >= 3, "three quiet lines")
    assert c.list_vaults()["VaultList"]  # still serving
    assert "Traceback" not in s.log()
    assert "Exception occurred" not in s.log()


def test_verbose_sigv4_log_has_no_token_or_signature(glacier_server_factory):
    s = glacier_server_factory("--verify-sigv4", "--access-key", "AKIDLOCAL", "--secret-key", "right")
    bad = boto3.client("glacier", endpoint_url=s.url, region_name="us-east-1", aws_access_key_id="AKIDLOCAL",
                       aws_secret_access_key="wrong", aws_session_token="SESSIONTOKEN-must-not-leak",
                       config=Config(retries={"total_max_attempts": 1}))
    sent: list[str] = []
    bad.meta.events.register("before-send", lambda request, **kw: sent.append(request.headers["Authorization"]))
    with pytest.raises(ClientError) as exc:
        bad.list_vaults()
    assert error_of(exc)[:2] == (403, "InvalidSignatureException")
    wait_for(lambda: "signature mismatch" in s.log(), "the mismatch line")
    signature = sent[0].decode() if isinstance(sent[0], bytes) else sent[0]
    signature = signature.rsplit("Signature=", 1)[1]
    log = s.log()
    assert "SESSIONTOKEN-must-not-leak" not in log
    assert signature not in log
    assert "wrong" not in log


# --------------------------------------------------------------------------- item 6: a full data dir


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Take every free byte of the file system that holds ``path``."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def test_full_data_dir_is_500_and_damages_nothing(small_disk: Path, tmp_path: Path):
    s = GlacierServer(small_disk / "data", start=False)
    s.log_path = tmp_path / "server.log"  # the log must not live on the full disk
    try:
        s.start()
        c = s.client()
        c.create_vault(vaultName="v")
        kept = os.urandom(300_000)
        kept_id = c.upload_archive(vaultName="v", body=kept)["archiveId"]
        uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
        part = os.urandom(MiB)
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes 0-{MiB - 1}/*", body=part)
        _fill(small_disk / "filler")
        refused = 0
        for body in (os.urandom(200_000), os.urandom(3 * MiB)):
            try:
                c.upload_archive(vaultName="v", body=body)
            except ClientError as exc:
                assert error_of(exc)[:2] == (500, "ServiceUnavailableException")
                refused += 1
        assert refused == 2
        with pytest.raises(ClientError) as exc:
            c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes {MiB}-{2 * MiB - 1}/*", body=part)
        assert error_of(exc)[:2] == (500, "ServiceUnavailableException")
        assert [v["VaultName"] for v in c.list_vaults()["VaultList"]] == ["v"]  # reads go on
        assert "Traceback" not in s.log()
        (small_disk / "filler").unlink()
        # nothing half-stored: the upload has its one part, the vault its one archive, tmp/ is empty
        parts = c.list_parts(vaultName="v", uploadId=uid)["Parts"]
        assert [p["RangeInBytes"] for p in parts] == [f"0-{MiB - 1}"]
        assert list((small_disk / "data" / "tmp").iterdir()) == []
        s.restart()
        c = s.client()
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes {MiB}-{MiB + 9}/*", body=b"0123456789")
        whole = part + b"0123456789"
        c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(len(whole)), checksum=tree_hash(whole))
        s.snapshot("v")
        assert c.describe_vault(vaultName="v")["NumberOfArchives"] == 2
        job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": kept_id})["jobId"]
        assert c.get_job_output(vaultName="v", jobId=job)["body"].read() == kept
        assert "Traceback" not in s.log()
    finally:
        s.stop()


# --------------------------------------------------------------------------- item 9: fidelity


def test_initiate_job_for_a_deleted_archive_is_refused_at_once(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"soon gone")["archiveId"]
    c.delete_archive(vaultName="v", archiveId=aid)
    for archive_id in (aid, "no-such-archive-" + uuid.uuid4().hex):
        with pytest.raises(ClientError) as exc:
            c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": archive_id})
        assert error_of(exc) == (404, "ResourceNotFoundException", f"The archive ID was not found: {archive_id}")
    assert c.list_jobs(vaultName="v")["JobList"] == []


def test_content_sha256_of_signed_admin_body_is_checked(glacier_server_factory):
    """A signed admin request with a body: the payload hash is the body's (the signature covers it)."""
    s = glacier_server_factory("--verify-sigv4", "--access-key", "AK", "--secret-key", "SK")
    boto3.client("glacier", endpoint_url=s.url, region_name="us-east-1", aws_access_key_id="AK",
                 aws_secret_access_key="SK").create_vault(vaultName="v")
    assert s.populate("v", 3, size=10, descriptions=["a", "b", "c"]) is not None
