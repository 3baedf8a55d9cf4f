"""Protocol fidelity with raw HTTP: headers, error wire format, keep-alive, 100-continue, odd clients."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import uuid
from urllib.parse import urlsplit

import pytest

from glacierfs.treehash import MiB, tree_hash

VERSION = {"x-amz-glacier-version": "2012-06-01"}


@pytest.fixture
def server(glacier_server_module):
    return glacier_server_module


def conn_for(server) -> http.client.HTTPConnection:
    u = urlsplit(server.url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def request(conn, method, path, body=b"", headers=None):
    conn.request(method, path, body=body, headers={**VERSION, **(headers or {})})
    resp = conn.getresponse()
    return resp, resp.read()


@pytest.fixture
def vault(server):
    name = f"w-{uuid.uuid4().hex[:12]}"
    server.client().create_vault(vaultName=name)
    return name


def test_missing_version_header_and_error_wire_format(server):
    conn = conn_for(server)
    conn.request("GET", "/-/vaults")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 400
    assert body == {"code": "MissingParameterValueException", "message": "Required parameter missing: API version",
                    "type": "Client"}
    assert resp.getheader("x-amzn-ErrorType") == "MissingParameterValueException"
    assert resp.getheader("x-amzn-RequestId")
    assert resp.getheader("Content-Type") == "application/json"


def test_any_host_header_is_accepted(server, vault):
    conn = conn_for(server)
    conn.putrequest("GET", f"/-/vaults/{vault}", skip_host=True)
    conn.putheader("Host", "glacier.us-east-1.amazonaws.com")
    conn.putheader("x-amz-glacier-version", "2012-06-01")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 200
    assert json.loads(resp.read())["VaultName"] == vault


def test_keep_alive_survives_errors(server, vault):
    conn = conn_for(server)
    resp, _ = request(conn, "GET", "/-/vaults")
    assert resp.status == 200
    sock = conn.sock
    # an error before the body is read: the server drains it and keeps the connection
    body = b"z" * 300_000
    resp, raw = request(conn, "POST", "/-/vaults/missing-vault/archives", body,
                        {"x-amz-sha256-tree-hash": tree_hash(body)})
    assert resp.status == 404
    resp, raw = request(conn, "POST", f"/-/vaults/{vault}/archives", body, {"x-amz-sha256-tree-hash": tree_hash(body)})
    assert resp.status == 201
    assert resp.getheader("x-amz-archive-id")
    assert raw == b"" and resp.getheader("Content-Length") == "0"
    resp, _ = request(conn, "GET", f"/-/vaults/{vault}")
    assert resp.status == 200
    assert conn.sock is sock  # one TCP connection throughout


def test_expect_100_continue(server, vault):
    u = urlsplit(server.url)
    body = b"expect me" * 1000
    head = (
        f"POST /-/vaults/{vault}/archives HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\n"
        f"x-amz-sha256-tree-hash: {tree_hash(body)}\r\nx-amz-content-sha256: {hashlib.sha256(body).hexdigest()}\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head)
        interim = s.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100")
        s.sendall(body)
        f = s.makefile("rb")
        status = f.readline()
        assert status.startswith(b"HTTP/1.1 201"), status


@pytest.mark.parametrize("ctype", [None, "application/x-www-form-urlencoded", "text/plain", "application/octet-stream"])
def test_json_body_under_any_content_type(server, vault, ctype):
    server.snapshot(vault)
    conn = conn_for(server)
    headers = {"Content-Type": ctype} if ctype else {}
    resp, _ = request(conn, "POST", f"/-/vaults/{vault}/jobs", json.dumps({"Type": "inventory-retrieval"}), headers)
    assert resp.status == 202
    assert resp.getheader("x-amz-job-id")
    # the documented wrapper form works too
    resp, _ = request(conn, "POST", f"/-/vaults/{vault}/jobs",
                      json.dumps({"jobParameters": {"Type": "inventory-retrieval", "Format": "CSV"}}), headers)
    assert resp.status == 202


def test_malformed_json_is_serialization_exception(server, vault):
    resp, raw = request(conn_for(server), "POST", f"/-/vaults/{vault}/jobs", b"{not json")
    assert resp.status == 400
    assert json.loads(raw)["code"] == "SerializationException"


def test_content_sha256_mismatch_is_403(server, vault):
    body = b"payload"
    resp, raw = request(conn_for(server), "POST", f"/-/vaults/{vault}/archives", body, {
        "x-amz-sha256-tree-hash": tree_hash(body), "x-amz-content-sha256": "0" * 64})
    assert resp.status == 403
    err = json.loads(raw)
    assert err["code"] == "InvalidSignatureException"
    assert err["message"].startswith("The value passed in as x-amz-content-sha256 does not match the computed payload hash.")


def test_missing_tree_hash_header(server, vault):
    resp, raw = request(conn_for(server), "POST", f"/-/vaults/{vault}/archives", b"abc")
    assert resp.status == 400
    assert json.loads(raw)["code"] == "MissingParameterValueException"


def test_content_range_incompatible_with_content_length(server, vault):
    conn = conn_for(server)
    resp, _ = request(conn, "POST", f"/-/vaults/{vault}/multipart-uploads", headers={"x-amz-part-size": str(MiB)})
    uid = resp.getheader("x-amz-multipart-upload-id")
    body = b"x" * 50
    resp, raw = request(conn, "PUT", f"/-/vaults/{vault}/multipart-uploads/{uid}", body, {
        "Content-Range": "bytes 0-99/*", "x-amz-sha256-tree-hash": tree_hash(body)})
    assert resp.status == 400
    assert json.loads(raw)["message"] == "Content-Range: bytes 0-99/* is incompatible with Content-Length: 50"
    resp, raw = request(conn, "PUT", f"/-/vaults/{vault}/multipart-uploads/{uid}", body, {
        "Content-Range": "bytes 0-49/50", "x-amz-sha256-tree-hash": tree_hash(body)})
    assert resp.status == 204  # an exact total is accepted as well as *
    assert resp.getheader("x-amz-sha256-tree-hash") == tree_hash(body)


def test_unsupported_operation(server):
    resp, raw = request(conn_for(server), "GET", "/-/provisioned-capacity")
    assert resp.status == 400
    assert json.loads(raw)["code"] == "BadRequest"


def test_explicit_nulls_by_default(server, vault):
    _, raw = request(conn_for(server), "GET", f"/-/vaults/{vault}")
    assert json.loads(raw)["LastInventoryDate"] is None


def test_omit_nulls_switch(glacier_server_factory):
    s = glacier_server_factory("--omit-nulls")
    s.client().create_vault(vaultName="v")
    _, raw = request(conn_for(s), "GET", "/-/vaults/v")
    assert "LastInventoryDate" not in json.loads(raw)


@pytest.mark.parametrize("strict", [False, True])
def test_range_checksum_rule(glacier_server_factory, strict):
    """Default: the API reference's rule (a range on MiB boundaries, or a MiB-aligned start to the end, gets
    x-amz-sha256-tree-hash); --strict-range-checksum: the dev guide's tree-hash alignment (issue 10 item 9)."""
    import os

    s = glacier_server_factory(*(["--strict-range-checksum"] if strict else []))
    c = s.client()
    c.create_vault(vaultName="v")
    data = os.urandom(4 * MiB + 5)
    aid = c.upload_archive(vaultName="v", body=data)["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]

    def checksum(rng: str, lo: int, hi: int) -> str | None:
        out = c.get_job_output(vaultName="v", jobId=job, range=rng)
        assert out["body"].read() == data[lo:hi]
        return out.get("checksum")

    mib_aligned = checksum(f"bytes={MiB}-{3 * MiB - 1}", MiB, 3 * MiB)  # not a node of the tree
    to_the_end = checksum(f"bytes={MiB}-", MiB, len(data))
    if strict:
        assert mib_aligned is None and to_the_end is None
    else:
        assert mib_aligned == tree_hash(data[MiB:3 * MiB])
        assert to_the_end == tree_hash(data[MiB:])
    assert checksum(f"bytes={2 * MiB}-{4 * MiB - 1}", 2 * MiB, 4 * MiB) == tree_hash(data[2 * MiB:4 * MiB])  # a node
    assert checksum("bytes=5-100", 5, 101) is None  # not on MiB boundaries: never


def test_range_past_the_end_has_the_service_message(glacier_server_factory):
    s = glacier_server_factory()
    c = s.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"x" * 1000)["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    resp, raw = request(conn_for(s), "GET", f"/-/vaults/v/jobs/{job}/output", headers={"Range": "bytes=1000-1999"})
    assert resp.status == 400
    assert json.loads(raw) == {"code": "InvalidParameterValueException", "type": "Client",
                               "message": "The start of the range is larger than size of retrieved data: bytes=1000-1999"}


def test_slow_body_gets_408(glacier_server_factory):
    s = glacier_server_factory("--body-timeout", "1")
    s.client().create_vault(vaultName="v")
    u = urlsplit(s.url)
    head = (
        "POST /-/vaults/v/archives HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\n"
        f"x-amz-sha256-tree-hash: {'0' * 64}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(head + b"only ten b")
        status = sock.makefile("rb").readline()
    assert status.startswith(b"HTTP/1.1 408")
    assert list((s.data_dir / "tmp").iterdir()) == []
