"""Fault injection (--faults, --faults-ops, --seed): kinds, reproducibility, never on admin requests."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from glacierfs.treehash import MiB, tree_hash
from tests.glacier_server import error_of


def outcomes(server, n: int = 25) -> list[str]:
    c = server.client()
    result = []
    for _ in range(n):
        try:
            c.list_vaults()
            result.append("ok")
        except ClientError as exc:
            status, code, _ = error_of(exc)
            result.append(f"{status} {code}")
    return result


def test_same_seed_same_faults(glacier_server_factory, tmp_path):
    spec = ("--faults", "500=0.3,throttle=0.2,408=0.1", "--seed", "5")
    a = outcomes(glacier_server_factory(*spec, data_dir=tmp_path / "a"))
    b = outcomes(glacier_server_factory(*spec, data_dir=tmp_path / "b"))
    assert a == b
    assert {"ok", "500 ServiceUnavailableException", "400 ThrottlingException", "408 RequestTimeoutException"} <= set(a)


def test_admin_is_never_faulted_and_faults_ops_restricts(glacier_server_factory):
    s = glacier_server_factory("--faults", "500=1", "--faults-ops", "DescribeVault,ListVaults")
    c = s.client()
    c.create_vault(vaultName="v")  # not in --faults-ops
    assert s.snapshot("v")["changed"] is True
    with pytest.raises(ClientError) as exc:
        c.describe_vault(vaultName="v")
    assert error_of(exc)[:2] == (500, "ServiceUnavailableException")


def test_corrupt_output_keeps_the_right_hash(glacier_server_factory):
    s = glacier_server_factory("--faults", "corrupt=1")
    c = s.client()
    c.create_vault(vaultName="v")
    data = os.urandom(MiB + 10)
    aid = c.upload_archive(vaultName="v", body=data)["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    out = c.get_job_output(vaultName="v", jobId=job)
    body = out["body"].read()
    assert len(body) == len(data) and body != data
    assert out["checksum"] == tree_hash(data)


def test_reset_mid_upload_stores_nothing(glacier_server_factory):
    s = glacier_server_factory("--faults", "reset=1", "--faults-ops", "UploadArchive,UploadMultipartPart")
    c = s.client()
    c.create_vault(vaultName="v")
    with pytest.raises(BotoCoreError):
        c.upload_archive(vaultName="v", body=os.urandom(2 * MiB))
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    with pytest.raises(BotoCoreError):
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes 0-{MiB - 1}/*", body=os.urandom(MiB))
    assert c.list_parts(vaultName="v", uploadId=uid)["Parts"] == []
    s.snapshot("v")
    assert c.describe_vault(vaultName="v")["NumberOfArchives"] == 0
    assert list((s.data_dir / "tmp").iterdir()) == []


def test_reset_mid_job_output(glacier_server_factory):
    s = glacier_server_factory("--faults", "reset=1", "--faults-ops", "GetJobOutput")
    c = s.client()
    c.create_vault(vaultName="v")
    data = os.urandom(2 * MiB)
    aid = c.upload_archive(vaultName="v", body=data)["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    with pytest.raises(Exception) as exc:  # urllib3 and botocore raise different types by version
        c.get_job_output(vaultName="v", jobId=job)["body"].read()
    assert not isinstance(exc.value, AssertionError)


def test_retries_get_through_faults(glacier_server_factory):
    s = glacier_server_factory("--faults", "500=0.2,throttle=0.15,408=0.1,reset=0.1", "--seed", "11")
    c = s.client(max_attempts=25)
    c.create_vault(vaultName="v")
    data = os.urandom(3 * MiB + 1)
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    for start in range(0, len(data), MiB):
        chunk = data[start : start + MiB]
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes {start}-{start + len(chunk) - 1}/*", body=chunk)
    r = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert r["checksum"] == tree_hash(data)
