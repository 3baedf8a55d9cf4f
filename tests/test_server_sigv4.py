"""Optional SigV4 checking (--verify-sigv4): real boto3 signatures pass, anything else is refused."""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.glacier_server import error_of


@pytest.fixture
def signed(glacier_server_factory):
    return glacier_server_factory("--verify-sigv4", "--access-key", "AKIDLOCAL", "--secret-key", "s3cret/key+x")


def client(server, key="AKIDLOCAL", secret="s3cret/key+x", region="us-east-1"):
    return boto3.client("glacier", endpoint_url=server.url, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))


def test_correctly_signed_requests_pass(signed):
    c = client(signed)
    c.create_vault(vaultName="v")
    data = os.urandom(MiB + 5)
    aid = c.upload_archive(vaultName="v", body=data, archiveDescription="signed upload")["archiveId"]
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    c.upload_multipart_part(vaultName="v", uploadId=uid, range="bytes 0-2/*", body=b"abc")
    c.list_parts(vaultName="v", uploadId=uid, limit="5")
    c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize="3", checksum=tree_hash(b"abc"))
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    assert c.get_job_output(vaultName="v", jobId=job, range="bytes=0-9")["body"].read() == data[:10]
    c.set_vault_notifications(vaultName="v", vaultNotificationConfig={
        "SNSTopic": "arn:aws:sns:us-east-1:1:t", "Events": ["ArchiveRetrievalCompleted"]})
    assert c.list_jobs(vaultName="v", statuscode="Succeeded", completed="true")["JobList"]
    # a client signing for another region (and so another Host) is accepted too
    assert client(signed, region="eu-west-1").list_vaults()["VaultList"]


@pytest.mark.parametrize(
    ("key", "secret", "status", "code"),
    [
        ("AKIDLOCAL", "wrong", 403, "InvalidSignatureException"),
        ("AKIDOTHER", "s3cret/key+x", 400, "UnrecognizedClientException"),
    ],
)
def test_bad_credentials_are_refused(signed, key, secret, status, code):
    with pytest.raises(ClientError) as exc:
        client(signed, key, secret).list_vaults()
    assert error_of(exc)[:2] == (status, code)


def test_unsigned_request_is_refused(signed):
    u = urlsplit(signed.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", "/-/vaults", headers={"x-amz-glacier-version": "2012-06-01"})
    resp = conn.getresponse()
    assert resp.status == 400
    assert json.loads(resp.read())["code"] == "MissingAuthenticationTokenException"


def test_admin_needs_a_valid_signature(signed):
    """Under --verify-sigv4 the admin hooks are signed like any request (issue 10 item 2)."""
    client(signed).create_vault(vaultName="v")
    u = urlsplit(signed.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/_admin/clock/advance?seconds=10")
    resp = conn.getresponse()
    assert resp.status == 400
    assert json.loads(resp.read())["code"] == "MissingAuthenticationTokenException"
    conn.request("POST", "/_admin/vaults/v/inventory", headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIDLOCAL/20250101/us-east-1/glacier/aws4_request,"
                         " SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        "x-amz-date": "20250101T000000Z"})
    resp = conn.getresponse()
    assert resp.status == 403
    resp.read()
    assert signed.snapshot("v")["changed"] is True  # signed with the server's keys: accepted
