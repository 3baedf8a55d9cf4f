"""The issue's done-when scenarios, end to end through boto3 against a `glacierfs serve` process."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

from glacierfs.treehash import MiB, tree_hash


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str, str]:
    err = exc.value.response
    return err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"], err["Error"]["Message"]


def test_multipart_reverse_order_matches_local_tree_hash(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    data = os.urandom(9 * MiB + 1)
    part = 2 * MiB
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(part), archiveDescription="big")["uploadId"]
    for start in reversed(range(0, len(data), part)):
        chunk = data[start : start + part]
        r = c.upload_multipart_part(
            vaultName="v", uploadId=uid, range=f"bytes {start}-{start + len(chunk) - 1}/*", body=chunk
        )
        assert r["checksum"] == tree_hash(chunk)
    done = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert done["checksum"] == tree_hash(data)
    assert len(done["archiveId"]) == 138
    again = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert again["archiveId"] == done["archiveId"]
    assert c.list_multipart_uploads(vaultName="v")["UploadsList"] == []
    with pytest.raises(ClientError) as exc:
        c.list_parts(vaultName="v", uploadId=uid)
    assert _code(exc)[:2] == (404, "ResourceNotFoundException")


def test_wrong_part_hash_is_checksum_mismatch(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    body = os.urandom(MiB)
    with pytest.raises(ClientError) as exc:
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes 0-{MiB - 1}/*", body=body, checksum="ab" * 32)
    status, code, message = _code(exc)
    assert (status, code) == (400, "InvalidParameterValueException")
    assert message == f"Checksum mismatch: expected {'ab' * 32}, computed {tree_hash(body)}"
    assert c.list_parts(vaultName="v", uploadId=uid)["Parts"] == []


def test_archive_in_inventory_only_after_snapshot_and_ranged_retrieval(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    glacier_server.snapshot("v")  # an empty first inventory
    data = os.urandom(5 * MiB + 123)
    aid = c.upload_archive(vaultName="v", body=data, archiveDescription="doc")["archiveId"]

    def inventory() -> list[str]:
        job = c.initiate_job(vaultName="v", jobParameters={"Type": "inventory-retrieval"})["jobId"]
        glacier_server.complete_jobs()
        import json

        out = json.loads(c.get_job_output(vaultName="v", jobId=job)["body"].read())
        return [a["ArchiveId"] for a in out["ArchiveList"]]

    assert inventory() == []
    assert c.describe_vault(vaultName="v")["NumberOfArchives"] == 0
    glacier_server.snapshot("v")
    assert inventory() == [aid]
    assert c.describe_vault(vaultName="v")["NumberOfArchives"] == 1

    job = c.initiate_job(
        vaultName="v",
        jobParameters={"Type": "archive-retrieval", "ArchiveId": aid, "RetrievalByteRange": f"{MiB}-{3 * MiB - 1}"},
    )["jobId"]
    glacier_server.complete_jobs()
    desc = c.describe_job(vaultName="v", jobId=job)
    assert desc["StatusCode"] == "Succeeded"
    assert desc["RetrievalByteRange"] == f"{MiB}-{3 * MiB - 1}"
    # 1-3 MiB is MiB aligned but not a node of the tree: no hash (reference §4.2).
    assert desc.get("SHA256TreeHash") is None
    out = c.get_job_output(vaultName="v", jobId=job)
    assert out["body"].read() == data[MiB : 3 * MiB]
    # ... but GetJobOutput follows the API reference by default: MiB boundaries are enough for the header
    assert out.get("checksum") == tree_hash(data[MiB : 3 * MiB])

    job = c.initiate_job(
        vaultName="v",
        jobParameters={"Type": "archive-retrieval", "ArchiveId": aid, "RetrievalByteRange": f"{2 * MiB}-{4 * MiB - 1}"},
    )["jobId"]
    glacier_server.complete_jobs()
    out = c.get_job_output(vaultName="v", jobId=job)
    body = out["body"].read()
    assert body == data[2 * MiB : 4 * MiB]
    assert out["checksum"] == tree_hash(body)
    assert c.describe_job(vaultName="v", jobId=job)["SHA256TreeHash"] == tree_hash(body)


def test_page_through_25_vaults(glacier_server):
    c = glacier_server.client()
    names = [f"vault-{i:02d}" for i in range(25)]
    for n in reversed(names):
        c.create_vault(vaultName=n)
    seen, marker, pages = [], None, 0
    while True:
        kw = {"limit": "10"} | ({"marker": marker} if marker else {})
        page = c.list_vaults(**kw)
        pages += 1
        assert len(page["VaultList"]) <= 10
        seen += [v["VaultName"] for v in page["VaultList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert seen == names
    assert pages == 3
