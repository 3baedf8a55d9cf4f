"""Jobs, inventory snapshots, job output and notifications, through boto3 against `glacierfs serve`."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from botocore.exceptions import ClientError

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.glacier_server import error_of

ACCT = "012345678901"
ARN = f"arn:aws:glacier:us-east-1:{ACCT}:vaults/"


@pytest.fixture
def server(glacier_server_module):
    return glacier_server_module


@pytest.fixture
def c(server):
    return server.client()


@pytest.fixture
def vault(c):
    name = f"j-{uuid.uuid4().hex[:12]}"
    c.create_vault(vaultName=name)
    return name


def inventory(c, vault, fmt="JSON", **params):
    jp = {"Type": "inventory-retrieval", "Format": fmt}
    if params:
        jp["InventoryRetrievalParameters"] = params
    job = c.initiate_job(vaultName=vault, jobParameters=jp)["jobId"]
    out = c.get_job_output(vaultName=vault, jobId=job)
    return job, out


# -- inventory -------------------------------------------------------------------------
def test_inventory_before_first_snapshot_is_404(c, vault):
    c.upload_archive(vaultName=vault, body=b"x")
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval"})
    assert error_of(exc) == (
        404, "ResourceNotFoundException",
        f"Inventory retrieval jobs for vault {ARN}{vault} cannot be initiated yet, as Amazon Glacier has not yet"
        " generated an initial inventory for this vault.",
    )


def test_inventory_json_and_lag(server, c, vault):
    data = os.urandom(1500)
    aid = c.upload_archive(vaultName=vault, body=data, archiveDescription="first")["archiveId"]
    server.snapshot(vault)
    job, out = inventory(c, vault)
    assert out["contentType"] == "application/json"
    body = json.loads(out["body"].read())
    assert body["VaultARN"] == ARN + vault
    assert body["InventoryDate"].endswith("Z")
    assert body["ArchiveList"] == [{
        "ArchiveId": aid, "ArchiveDescription": "first", "CreationDate": body["ArchiveList"][0]["CreationDate"],
        "Size": 1500, "SHA256TreeHash": tree_hash(data),
    }]
    desc = c.describe_job(vaultName=vault, jobId=job)
    assert desc["Action"] == "InventoryRetrieval" and desc["StatusCode"] == "Succeeded" and desc["Completed"]
    assert desc["InventorySizeInBytes"] > 0
    assert desc["InventoryRetrievalParameters"]["Format"] == "JSON"
    assert "ArchiveId" not in desc and "SHA256TreeHash" not in desc

    c.delete_archive(vaultName=vault, archiveId=aid)
    aid2 = c.upload_archive(vaultName=vault, body=b"second")["archiveId"]
    _, out = inventory(c, vault)
    assert [a["ArchiveId"] for a in json.loads(out["body"].read())["ArchiveList"]] == [aid]  # still the old snapshot
    assert c.describe_vault(vaultName=vault)["NumberOfArchives"] == 1
    first_date = c.describe_vault(vaultName=vault)["LastInventoryDate"]
    assert server.snapshot(vault)["changed"] is True
    _, out = inventory(c, vault)
    assert [a["ArchiveId"] for a in json.loads(out["body"].read())["ArchiveList"]] == [aid2]
    second_date = c.describe_vault(vaultName=vault)["LastInventoryDate"]
    assert second_date >= first_date
    assert server.snapshot(vault)["changed"] is False  # nothing written: the date stays
    assert c.describe_vault(vaultName=vault)["LastInventoryDate"] == second_date


def test_periodic_inventory_follows_the_clock(server, c, vault):
    server.snapshot(vault)
    c.upload_archive(vaultName=vault, body=b"tick")
    assert c.describe_vault(vaultName=vault)["NumberOfArchives"] == 0
    server.advance(3601)  # the module server takes inventories every 3600 s
    assert c.describe_vault(vaultName=vault)["NumberOfArchives"] == 1


def test_inventory_csv_quoting(server, c, vault):
    tricky = 'a,1"2 back\\slash'
    aid = c.upload_archive(vaultName=vault, body=b"csv", archiveDescription=tricky)["archiveId"]
    server.snapshot(vault)
    _, out = inventory(c, vault, "CSV")
    assert out["contentType"] == "text/csv"
    lines = out["body"].read().decode().splitlines()
    assert lines[0] == "ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash"
    assert lines[1].startswith(aid + ',"a,1\\"2 back\\slash",')
    assert lines[1].endswith(f",3,{tree_hash(b'csv')}")


def test_inventory_range_parameters(server, c, vault):
    ids = server.populate(vault, 5, size=10)
    server.snapshot(vault)
    got, marker, jobs = [], None, 0
    while True:
        params = {"Limit": "2"} | ({"Marker": marker} if marker else {})
        job, out = inventory(c, vault, **params)
        jobs += 1
        page = json.loads(out["body"].read())["ArchiveList"]
        assert len(page) <= 2
        got += [a["ArchiveId"] for a in page]
        irp = c.describe_job(vaultName=vault, jobId=job)["InventoryRetrievalParameters"]
        assert irp["Limit"] == "2"
        marker = irp.get("Marker")
        if not marker:
            break
    assert sorted(got) == sorted(ids) and jobs == 3
    _, out = inventory(c, vault, StartDate="2999-01-01T00:00:00Z")
    assert json.loads(out["body"].read())["ArchiveList"] == []
    _, out = inventory(c, vault, EndDate="2000-01-01T00:00:00Z")
    assert json.loads(out["body"].read())["ArchiveList"] == []
    _, out = inventory(c, vault, StartDate="2000-01-01T00:00:00Z", EndDate="2999-01-01T00:00:00Z")
    assert len(json.loads(out["body"].read())["ArchiveList"]) == 5
    for bad in ({"Limit": "0"}, {"StartDate": "yesterday"}, {"Marker": "!!"}):
        with pytest.raises(ClientError) as exc:
            inventory(c, vault, **bad)
        assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


# -- job validation --------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"Type": "bogus"},
        {"Type": "inventory-retrieval", "ArchiveId": "x"},
        {"Type": "inventory-retrieval", "RetrievalByteRange": "0-1048575"},
        {"Type": "inventory-retrieval", "Format": "XML"},
        {"Type": "archive-retrieval", "ArchiveId": "ARCH", "Format": "JSON"},
        {"Type": "archive-retrieval", "ArchiveId": "ARCH", "Tier": "Fast"},
        {"Type": "archive-retrieval", "ArchiveId": "ARCH", "RetrievalByteRange": "1-1048575"},
        {"Type": "archive-retrieval", "ArchiveId": "ARCH", "RetrievalByteRange": "0-1000"},
        {"Type": "archive-retrieval", "ArchiveId": "ARCH", "RetrievalByteRange": f"0-{4 * MiB}"},
        {"Type": "archive-retrieval", "ArchiveId": "ARCH", "Description": "tab\there"},
        {"Type": "select", "ArchiveId": "ARCH"},
    ],
)
def test_initiate_job_invalid(server, c, vault, params):
    aid = c.upload_archive(vaultName=vault, body=os.urandom(2 * MiB + 1))["archiveId"]
    server.snapshot(vault)
    params = {k: (aid if v == "ARCH" else v) for k, v in params.items()}
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName=vault, jobParameters=params)
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


def test_initiate_job_missing_fields_and_unknown_archive(c, vault):
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName=vault, jobParameters={"Type": "archive-retrieval"})
    assert error_of(exc)[:2] == (400, "MissingParameterValueException")
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName=vault, jobParameters={})
    assert error_of(exc)[:2] == (400, "MissingParameterValueException")
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName=vault, jobParameters={"Type": "archive-retrieval", "ArchiveId": "-nope"})
    assert error_of(exc) == (404, "ResourceNotFoundException", "The archive ID was not found: -nope")
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName="missing-vault", jobParameters={"Type": "inventory-retrieval"})
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")


# -- archive retrieval -----------------------------------------------------------------
def test_whole_archive_retrieval(c, vault):
    data = os.urandom(3 * MiB + 77)
    aid = c.upload_archive(vaultName=vault, body=data, archiveDescription="whole")["archiveId"]
    r = c.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": aid, "Description": "get it", "SNSTopic": "arn:aws:sns:us-east-1:1:t"})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert r["location"] == f"/{ACCT}/vaults/{vault}/jobs/{r['jobId']}"
    job = r["jobId"]
    d = c.describe_job(vaultName=vault, jobId=job)
    assert d["Action"] == "ArchiveRetrieval" and d["ArchiveId"] == aid
    assert d["ArchiveSizeInBytes"] == len(data)
    assert d["ArchiveSHA256TreeHash"] == d["SHA256TreeHash"] == tree_hash(data)
    assert d["RetrievalByteRange"] == f"0-{len(data) - 1}"
    assert d["Tier"] == "Standard" and d["JobDescription"] == "get it" and d["SNSTopic"].endswith(":t")
    assert d["Completed"] and d["StatusCode"] == "Succeeded" and d["CompletionDate"]
    out = c.get_job_output(vaultName=vault, jobId=job)
    assert out["status"] == 200
    assert out["body"].read() == data
    assert out["checksum"] == tree_hash(data)
    assert out["archiveDescription"] == "whole"
    assert out["acceptRanges"] == "bytes"
    assert out["contentType"] == "application/octet-stream"


def test_get_job_output_ranges_and_hash_rule(c, vault):
    data = os.urandom(6 * MiB + MiB // 2)
    aid = c.upload_archive(vaultName=vault, body=data)["archiveId"]
    job = c.initiate_job(vaultName=vault, jobParameters={"Type": "archive-retrieval", "ArchiveId": aid, "Tier": "Bulk"})["jobId"]
    cases = [
        (2 * MiB, 4 * MiB - 1, True),  # a node of the tree
        (MiB, 3 * MiB - 1, True),  # MiB aligned, not a node: hashed by the API reference rule (the default)
        (4 * MiB, len(data) - 1, True),  # the last node, short
        (0, 99, False),
    ]
    for a, b, hashed in cases:
        out = c.get_job_output(vaultName=vault, jobId=job, range=f"bytes={a}-{b}")
        assert out["status"] == 206
        assert out["contentRange"] == f"bytes {a}-{b}/{len(data)}"
        body = out["body"].read()
        assert body == data[a : b + 1]
        assert out.get("checksum") == (tree_hash(body) if hashed else None)
    out = c.get_job_output(vaultName=vault, jobId=job, range=f"bytes={len(data) - 10}-")
    assert out["body"].read() == data[-10:]
    for bad in (f"bytes={len(data)}-", "bytes=5-2", "pages=1-2"):
        with pytest.raises(ClientError) as exc:
            c.get_job_output(vaultName=vault, jobId=job, range=bad)
        assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


def test_ranged_retrieval_relative_output(c, vault):
    data = os.urandom(8 * MiB)
    aid = c.upload_archive(vaultName=vault, body=data)["archiveId"]
    job = c.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": aid, "RetrievalByteRange": f"{4 * MiB}-{8 * MiB - 1}"})["jobId"]
    d = c.describe_job(vaultName=vault, jobId=job)
    assert d["SHA256TreeHash"] == tree_hash(data[4 * MiB :])
    out = c.get_job_output(vaultName=vault, jobId=job, range=f"bytes={2 * MiB}-{4 * MiB - 1}")
    body = out["body"].read()
    assert body == data[6 * MiB :]
    assert out["contentRange"] == f"bytes {2 * MiB}-{4 * MiB - 1}/{4 * MiB}"
    assert out["checksum"] == tree_hash(body)


def test_unknown_job(c, vault):
    for call in (c.describe_job, c.get_job_output):
        with pytest.raises(ClientError) as exc:
            call(vaultName=vault, jobId="J" * 92)
        assert error_of(exc) == (404, "ResourceNotFoundException", f"The job ID was not found: {'J' * 92}")


def test_list_jobs_filters_and_pages(server, c, vault):
    server.snapshot(vault)
    ids = [inventory(c, vault)[0] for _ in range(5)]
    got, marker = [], None
    while True:
        page = c.list_jobs(vaultName=vault, limit="2", **({"marker": marker} if marker else {}))
        assert len(page["JobList"]) <= 2
        got += [j["JobId"] for j in page["JobList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert got == ids  # in initiation order
    assert len(c.list_jobs(vaultName=vault, statuscode="Succeeded")["JobList"]) == 5
    assert c.list_jobs(vaultName=vault, statuscode="InProgress")["JobList"] == []
    assert c.list_jobs(vaultName=vault, completed="false")["JobList"] == []
    assert len(c.list_jobs(vaultName=vault, completed="true", statuscode="Succeeded")["JobList"]) == 5
    with pytest.raises(ClientError) as exc:
        c.list_jobs(vaultName=vault, statuscode="Done")
    assert error_of(exc) == (400, "InvalidParameterValueException", "The job status code is not valid: Done")
    with pytest.raises(ClientError) as exc:
        c.list_jobs(vaultName=vault, completed="maybe")
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    assert len([j for pg in c.get_paginator("list_jobs").paginate(vaultName=vault) for j in pg["JobList"]]) == 5


# -- notifications ---------------------------------------------------------------------
def test_vault_notifications(c, vault):
    with pytest.raises(ClientError) as exc:
        c.get_vault_notifications(vaultName=vault)
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")
    cfg = {"SNSTopic": "arn:aws:sns:us-east-1:012345678901:topic", "Events": ["ArchiveRetrievalCompleted"]}
    r = c.set_vault_notifications(vaultName=vault, vaultNotificationConfig=cfg)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert c.get_vault_notifications(vaultName=vault)["vaultNotificationConfig"] == cfg
    cfg2 = {"SNSTopic": "arn:aws:sns:us-east-1:012345678901:other", "Events": ["InventoryRetrievalCompleted"]}
    c.set_vault_notifications(vaultName=vault, vaultNotificationConfig=cfg2)  # replaces
    assert c.get_vault_notifications(vaultName=vault)["vaultNotificationConfig"] == cfg2
    with pytest.raises(ClientError) as exc:
        c.set_vault_notifications(vaultName=vault, vaultNotificationConfig={"SNSTopic": "t", "Events": ["Nope"]})
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    with pytest.raises(ClientError) as exc:
        c.set_vault_notifications(vaultName=vault, vaultNotificationConfig={"Events": ["ArchiveRetrievalCompleted"]})
    assert error_of(exc)[:2] == (400, "MissingParameterValueException")
    assert c.delete_vault_notifications(vaultName=vault)["ResponseMetadata"]["HTTPStatusCode"] == 204
    c.delete_vault_notifications(vaultName=vault)
    with pytest.raises(ClientError) as exc:
        c.get_vault_notifications(vaultName=vault)
    assert error_of(exc)[0] == 404
    with pytest.raises(ClientError) as exc:
        c.set_vault_notifications(vaultName="missing-vault", vaultNotificationConfig=cfg)
    assert error_of(exc)[0] == 404


# -- job timing (a server with a real job delay; the clock is moved, never waited for) ---
@pytest.fixture
def slow(glacier_server_factory):
    return glacier_server_factory("--job-delay", "3600")


def test_job_delay_and_not_ready_error(slow):
    c = slow.client()
    c.create_vault(vaultName="v")
    data = os.urandom(1000)
    aid = c.upload_archive(vaultName="v", body=data)["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    d = c.describe_job(vaultName="v", jobId=job)
    assert d["Completed"] is False and d["StatusCode"] == "InProgress"
    assert "CompletionDate" not in d and "SHA256TreeHash" not in d
    with pytest.raises(ClientError) as exc:
        c.get_job_output(vaultName="v", jobId=job)
    assert error_of(exc) == (
        400, "InvalidParameterValueException", f"The job is not currently available for download: {job}")
    assert [j["JobId"] for j in c.list_jobs(vaultName="v", completed="false")["JobList"]] == [job]
    assert [j["JobId"] for j in c.list_jobs(vaultName="v", statuscode="InProgress")["JobList"]] == [job]
    slow.advance(3601)
    assert c.describe_job(vaultName="v", jobId=job)["StatusCode"] == "Succeeded"
    assert c.get_job_output(vaultName="v", jobId=job)["body"].read() == data


def test_admin_completes_jobs_and_retention_expires_them(slow):
    c = slow.client()
    c.create_vault(vaultName="v")
    slow.snapshot("v")
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "inventory-retrieval"})["jobId"]
    assert slow.complete_jobs() == [job]
    assert c.describe_job(vaultName="v", jobId=job)["Completed"] is True
    slow.advance(23 * 3600)
    assert c.describe_job(vaultName="v", jobId=job)["StatusCode"] == "Succeeded"
    slow.advance(3600 + 1)
    with pytest.raises(ClientError) as exc:
        c.describe_job(vaultName="v", jobId=job)
    assert error_of(exc) == (404, "ResourceNotFoundException", f"The job ID was not found: {job}")
    assert c.list_jobs(vaultName="v")["JobList"] == []


def test_archive_deleted_during_job_fails_it(slow):
    c = slow.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"short-lived")["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    done = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    slow.complete_jobs(done)
    c.delete_archive(vaultName="v", archiveId=aid)
    slow.complete_jobs()
    d = c.describe_job(vaultName="v", jobId=job)
    assert d["Completed"] is True and d["StatusCode"] == "Failed"
    # output that was ready before the deletion stays downloadable
    assert c.get_job_output(vaultName="v", jobId=done)["body"].read() == b"short-lived"


def test_upload_idle_expiry(slow):
    c = slow.client()
    c.create_vault(vaultName="v")
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    slow.advance(24 * 3600 + 60)
    with pytest.raises(ClientError) as exc:
        c.list_parts(vaultName="v", uploadId=uid)
    assert error_of(exc)[0] == 404


def test_admin_can_fail_a_job(slow):
    c = slow.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"x")["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    other = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    assert slow.complete_jobs(job, status="Failed") == [job]
    d = c.describe_job(vaultName="v", jobId=job)
    assert d["Completed"] is True and d["StatusCode"] == "Failed"
    assert c.describe_job(vaultName="v", jobId=other)["StatusCode"] == "InProgress"
    with pytest.raises(ClientError) as exc:
        c.get_job_output(vaultName="v", jobId=job)
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


def test_sns_sink_records_job_and_vault_topics(server, c, vault):
    job_topic = f"arn:aws:sns:us-east-1:{ACCT}:job-{vault}"
    vault_topic = f"arn:aws:sns:us-east-1:{ACCT}:vault-{vault}"
    c.set_vault_notifications(vaultName=vault, vaultNotificationConfig={
        "SNSTopic": vault_topic, "Events": ["ArchiveRetrievalCompleted"]})
    aid = c.upload_archive(vaultName=vault, body=b"notify")["archiveId"]
    job = c.initiate_job(vaultName=vault, jobParameters={
        "Type": "archive-retrieval", "ArchiveId": aid, "SNSTopic": job_topic})["jobId"]
    server.snapshot(vault)
    c.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval"})  # event not enabled
    for topic in (job_topic, vault_topic):
        msgs = server.admin(f"sns?topic={topic}", method="GET")["messages"]
        assert len(msgs) == 1
        message = json.loads(msgs[0]["Message"])
        assert message["JobId"] == job and message["StatusCode"] == "Succeeded" and message["Completed"] is True
