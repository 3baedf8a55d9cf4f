"""Conformance of vault, archive and multipart operations, through boto3 against `glacierfs serve`."""

from __future__ import annotations

import os
import uuid

import pytest
from botocore.exceptions import ClientError

from glacierfs.treehash import MiB, combine, tree_hash
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
    name = f"v-{uuid.uuid4().hex[:12]}"
    c.create_vault(vaultName=name)
    return name


# -- vaults ----------------------------------------------------------------------------
def test_create_vault_location_uses_numeric_account(c):
    r = c.create_vault(vaultName="loc.test_1-x")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert r["location"] == f"/{ACCT}/vaults/loc.test_1-x"


def test_create_vault_is_idempotent_and_keeps_archives(server, c, vault):
    c.upload_archive(vaultName=vault, body=b"keep me")
    c.create_vault(vaultName=vault)
    server.snapshot(vault)
    assert c.describe_vault(vaultName=vault)["NumberOfArchives"] == 1


@pytest.mark.parametrize("name", ["bad name", "x" * 256, "slash\\", "ümlaut"])
def test_create_vault_invalid_name(c, name):
    with pytest.raises(ClientError) as exc:
        c.create_vault(vaultName=name)
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


def test_describe_new_vault(c, vault):
    d = c.describe_vault(vaultName=vault)
    assert d["VaultARN"] == ARN + vault
    assert d["VaultName"] == vault
    assert d["NumberOfArchives"] == 0 and d["SizeInBytes"] == 0
    assert "LastInventoryDate" not in d
    assert d["CreationDate"].endswith("Z") and len(d["CreationDate"]) == 24


def test_describe_missing_vault(c):
    with pytest.raises(ClientError) as exc:
        c.describe_vault(vaultName="no-such-vault")
    assert error_of(exc) == (404, "ResourceNotFoundException", f"Vault not found for ARN: {ARN}no-such-vault")


def test_size_in_bytes_counts_overhead_from_snapshot(server, c, vault):
    c.upload_archive(vaultName=vault, body=b"a" * 1000)
    assert c.describe_vault(vaultName=vault)["SizeInBytes"] == 0
    server.snapshot(vault)
    d = c.describe_vault(vaultName=vault)
    assert d["NumberOfArchives"] == 1
    assert d["SizeInBytes"] == 1000 + 32 * 1024
    assert d["LastInventoryDate"]


def test_list_vaults_limits(c, vault):
    with pytest.raises(ClientError) as exc:
        c.list_vaults(limit="0")
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    with pytest.raises(ClientError) as exc:
        c.list_vaults(limit="ten")
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    assert len(c.list_vaults(limit="50")["VaultList"]) <= 10  # clamped to the maximum
    with pytest.raises(ClientError) as exc:
        c.list_vaults(marker="garbage")
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


def test_list_vaults_paginator_sorted(c):
    names = {f"pg-{i:02d}" for i in range(12)}
    for n in names:
        c.create_vault(vaultName=n)
    got = [v["VaultName"] for page in c.get_paginator("list_vaults").paginate() for v in page["VaultList"]]
    assert got == sorted(got)
    assert names <= set(got)


def test_delete_vault_rules(server, c):
    name = f"del-{uuid.uuid4().hex[:8]}"
    c.create_vault(vaultName=name)
    c.initiate_multipart_upload(vaultName=name, partSize=str(MiB))  # open uploads do not block
    c.delete_vault(vaultName=name)  # never written
    with pytest.raises(ClientError) as exc:
        c.describe_vault(vaultName=name)
    assert error_of(exc)[0] == 404
    with pytest.raises(ClientError) as exc:
        c.delete_vault(vaultName=name)
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")

    c.create_vault(vaultName=name)
    aid = c.upload_archive(vaultName=name, body=b"x")["archiveId"]
    msg = f"Vault not empty or recently written to: {ARN}{name}"
    with pytest.raises(ClientError) as exc:
        c.delete_vault(vaultName=name)
    assert error_of(exc) == (400, "InvalidParameterValueException", msg)
    server.snapshot(name)
    with pytest.raises(ClientError) as exc:  # inventory lists the archive
        c.delete_vault(vaultName=name)
    assert error_of(exc)[2] == msg
    c.delete_archive(vaultName=name, archiveId=aid)
    with pytest.raises(ClientError) as exc:  # empty now, but written since the inventory
        c.delete_vault(vaultName=name)
    assert error_of(exc)[2] == msg
    server.snapshot(name)
    c.delete_vault(vaultName=name)


def test_vault_waiters(c):
    name = f"w-{uuid.uuid4().hex[:8]}"
    c.create_vault(vaultName=name)
    c.get_waiter("vault_exists").wait(vaultName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 3})
    c.delete_vault(vaultName=name)
    c.get_waiter("vault_not_exists").wait(vaultName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 3})


def test_other_account_is_denied_and_own_numeric_account_works(c, vault):
    assert c.describe_vault(accountId=ACCT, vaultName=vault)["VaultName"] == vault
    with pytest.raises(ClientError) as exc:
        c.describe_vault(accountId="111111111111", vaultName=vault)
    assert error_of(exc)[:2] == (403, "AccessDeniedException")


# -- archives --------------------------------------------------------------------------
def test_upload_archive(server, c, vault):
    data = os.urandom(2 * MiB + 17)
    r = c.upload_archive(vaultName=vault, body=data, archiveDescription="a file")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert r["checksum"] == tree_hash(data)
    assert len(r["archiveId"]) == 138
    assert r["location"] == f"/{ACCT}/vaults/{vault}/archives/{r['archiveId']}"
    assert set(r["archiveId"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_upload_archive_checksum_mismatch(c, vault):
    with pytest.raises(ClientError) as exc:
        c.upload_archive(vaultName=vault, body=b"hello", checksum="00" * 32)
    assert error_of(exc) == (
        400, "InvalidParameterValueException",
        f"Checksum mismatch: expected {'00' * 32}, computed {tree_hash(b'hello')}",
    )


def test_upload_archive_errors(c, vault):
    with pytest.raises(ClientError) as exc:
        c.upload_archive(vaultName="missing-vault", body=b"x")
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")
    with pytest.raises(ClientError) as exc:
        c.upload_archive(vaultName=vault, body=b"")
    assert error_of(exc) == (400, "InvalidParameterValueException", "Invalid Content-Length: 0")
    with pytest.raises(ClientError) as exc:
        c.upload_archive(vaultName=vault, body=b"x", archiveDescription="d" * 1025)
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


def test_ids_can_start_with_dash(server, vault):
    ids = server.populate(vault, 64)
    assert all(len(i) == 138 for i in ids)
    assert any(i.startswith("-") for i in ids)


def test_delete_archive(server, c, vault):
    aid = c.upload_archive(vaultName=vault, body=b"gone")["archiveId"]
    r = c.delete_archive(vaultName=vault, archiveId=aid)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    c.delete_archive(vaultName=vault, archiveId=aid)  # idempotent
    c.delete_archive(vaultName=vault, archiveId="-" + "A" * 137)  # unknown: also fine
    with pytest.raises(ClientError) as exc:
        c.delete_archive(vaultName="missing-vault", archiveId=aid)
    assert error_of(exc)[0] == 404


def test_delete_archive_of_another_vault(c, vault):
    other = f"o-{uuid.uuid4().hex[:8]}"
    c.create_vault(vaultName=other)
    aid = c.upload_archive(vaultName=other, body=b"theirs")["archiveId"]
    with pytest.raises(ClientError) as exc:
        c.delete_archive(vaultName=vault, archiveId=aid)
    assert error_of(exc) == (400, "InvalidParameterValueException", f"Invalid vault name: {ARN}{vault}")


# -- multipart -------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["0", str(3 * MiB), str(10 * MiB), str(8192 * MiB), str(MiB // 2), "x"])
def test_initiate_bad_part_size(c, vault, size):
    with pytest.raises(ClientError) as exc:
        c.initiate_multipart_upload(vaultName=vault, partSize=size)
    assert error_of(exc) == (
        400, "InvalidParameterValueException",
        f"Invalid part size: {size}. Part size must not be null, must be a power of two and be between"
        " 1048576 and 4294967296 bytes.",
    )


def test_initiate_missing_part_size(c, vault):
    with pytest.raises(ClientError) as exc:
        c.initiate_multipart_upload(vaultName=vault)
    assert error_of(exc)[2].startswith("Invalid part size: null.")


def test_initiate_multipart(c, vault):
    r = c.initiate_multipart_upload(vaultName=vault, partSize=str(4096 * MiB), archiveDescription="   lead")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert r["location"] == f"/{ACCT}/vaults/{vault}/multipart-uploads/{r['uploadId']}"
    assert 80 <= len(r["uploadId"]) <= 100
    parts = c.list_parts(vaultName=vault, uploadId=r["uploadId"])
    assert parts["ArchiveDescription"] == "lead"  # leading spaces stripped
    assert parts["PartSizeInBytes"] == 4096 * MiB
    assert parts["VaultARN"] == ARN + vault
    assert parts["Parts"] == []


def _upload(c, vault, uid, data, start, **kw):
    return c.upload_multipart_part(
        vaultName=vault, uploadId=uid, range=f"bytes {start}-{start + len(data) - 1}/*", body=data, **kw
    )


def test_upload_part_rules(c, vault):
    uid = c.initiate_multipart_upload(vaultName=vault, partSize=str(MiB))["uploadId"]
    for start, data in ((MiB // 2, b"x" * 10), (0, b"x" * (MiB + 1)), (10_000 * MiB, b"x")):
        with pytest.raises(ClientError) as exc:
            _upload(c, vault, uid, data, start)
        assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    with pytest.raises(ClientError) as exc:
        _upload(c, vault, "U" * 92, b"x", 0)
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")
    with pytest.raises(ClientError) as exc:
        c.upload_multipart_part(vaultName=vault, uploadId=uid, range="bytes=0-0", body=b"x")
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    with pytest.raises(ClientError) as exc:
        c.upload_multipart_part(vaultName=vault, uploadId=uid, body=b"x")
    assert error_of(exc)[:2] == (400, "MissingParameterValueException")
    r = _upload(c, vault, uid, b"y" * 100, 9_999 * MiB)  # the 10,000th part is allowed
    assert r["checksum"] == tree_hash(b"y" * 100)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_short_part_accepted_then_complete_fails_until_fixed(c, vault):
    part = MiB
    data = os.urandom(3 * MiB)
    uid = c.initiate_multipart_upload(vaultName=vault, partSize=str(part))["uploadId"]
    _upload(c, vault, uid, data[:part], 0)
    _upload(c, vault, uid, data[part : part + 100], part)  # short, but not the last one
    _upload(c, vault, uid, data[2 * part :], 2 * part)
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    assert [u["MultipartUploadId"] for u in c.list_multipart_uploads(vaultName=vault)["UploadsList"]] == [uid]
    _upload(c, vault, uid, data[part : 2 * part], part)  # overwrite the range
    r = c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert r["checksum"] == tree_hash(data)


def test_complete_errors_leave_upload_open(c, vault):
    data = os.urandom(2 * MiB + 5)
    uid = c.initiate_multipart_upload(vaultName=vault, partSize=str(MiB))["uploadId"]
    _upload(c, vault, uid, data[:MiB], 0)
    _upload(c, vault, uid, data[2 * MiB :], 2 * MiB)
    with pytest.raises(ClientError) as exc:  # gap at 1 MiB
        c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    _upload(c, vault, uid, data[MiB : 2 * MiB], MiB)
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize=str(len(data) + 1), checksum=tree_hash(data))
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")
    bad = "ff" * 32
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize=str(len(data)), checksum=bad)
    assert error_of(exc) == (400, "InvalidParameterValueException", f"Invalid x-amz-sha256-tree-hash: {bad}")
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(vaultName=vault, uploadId=uid, checksum=tree_hash(data))
    assert error_of(exc)[:2] == (400, "MissingParameterValueException")
    assert len(c.list_parts(vaultName=vault, uploadId=uid)["Parts"]) == 3
    parts = c.list_parts(vaultName=vault, uploadId=uid)["Parts"]
    assert combine(p["SHA256TreeHash"] for p in parts) == tree_hash(data)
    r = c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert r["location"] == f"/{ACCT}/vaults/{vault}/archives/{r['archiveId']}"
    with pytest.raises(ClientError) as exc:
        c.complete_multipart_upload(vaultName=vault, uploadId="Z" * 92, archiveSize="1", checksum=tree_hash(b"x"))
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")


def test_abort(c, vault):
    uid = c.initiate_multipart_upload(vaultName=vault, partSize=str(MiB))["uploadId"]
    _upload(c, vault, uid, b"abc", 0)
    r = c.abort_multipart_upload(vaultName=vault, uploadId=uid)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    c.abort_multipart_upload(vaultName=vault, uploadId=uid)  # idempotent
    for call in (
        lambda: c.list_parts(vaultName=vault, uploadId=uid),
        lambda: _upload(c, vault, uid, b"abc", 0),
        lambda: c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize="3", checksum=tree_hash(b"abc")),
        lambda: c.abort_multipart_upload(vaultName=vault, uploadId="Q" * 92),
    ):
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc)[:2] == (404, "ResourceNotFoundException")
    assert c.list_multipart_uploads(vaultName=vault)["UploadsList"] == []


def test_abort_after_complete_fails(c, vault):
    uid = c.initiate_multipart_upload(vaultName=vault, partSize=str(MiB))["uploadId"]
    _upload(c, vault, uid, b"abc", 0)
    c.complete_multipart_upload(vaultName=vault, uploadId=uid, archiveSize="3", checksum=tree_hash(b"abc"))
    with pytest.raises(ClientError) as exc:
        c.abort_multipart_upload(vaultName=vault, uploadId=uid)
    assert error_of(exc)[:2] == (404, "ResourceNotFoundException")


def test_list_parts_pages_in_range_order(c, vault):
    uid = c.initiate_multipart_upload(vaultName=vault, partSize=str(MiB))["uploadId"]
    for i in (4, 0, 3, 1, 2):
        _upload(c, vault, uid, bytes([i]) * 10, i * MiB)
    ranges, marker = [], None
    while True:
        page = c.list_parts(vaultName=vault, uploadId=uid, limit="2", **({"marker": marker} if marker else {}))
        assert len(page["Parts"]) <= 2
        ranges += [p["RangeInBytes"] for p in page["Parts"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert ranges == [f"{i * MiB}-{i * MiB + 9}" for i in range(5)]
    via_paginator = [p for pg in c.get_paginator("list_parts").paginate(vaultName=vault, uploadId=uid) for p in pg["Parts"]]
    assert len(via_paginator) == 5


def test_list_multipart_uploads_pages(c, vault):
    ids = {c.initiate_multipart_upload(vaultName=vault, partSize=str(MiB), archiveDescription=f"u{i}")["uploadId"]
           for i in range(5)}
    got, marker = [], None
    while True:
        page = c.list_multipart_uploads(vaultName=vault, limit="2", **({"marker": marker} if marker else {}))
        assert len(page["UploadsList"]) <= 2
        for u in page["UploadsList"]:
            assert u["VaultARN"] == ARN + vault and u["PartSizeInBytes"] == MiB
        got += [u["MultipartUploadId"] for u in page["UploadsList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert set(got) == ids and len(got) == 5
    with pytest.raises(ClientError) as exc:
        c.list_multipart_uploads(vaultName=vault, marker="%%%")
    assert error_of(exc)[:2] == (400, "InvalidParameterValueException")


MISSING = "no-such-vault-here"
VAULT_CALLS = {
    "describe_vault": {},
    "delete_vault": {},
    "upload_archive": {"body": b"x"},
    "delete_archive": {"archiveId": "A" * 138},
    "initiate_multipart_upload": {"partSize": str(MiB)},
    "upload_multipart_part": {"uploadId": "U" * 92, "range": "bytes 0-0/*", "body": b"x"},
    "complete_multipart_upload": {"uploadId": "U" * 92, "archiveSize": "1", "checksum": "0" * 64},
    "abort_multipart_upload": {"uploadId": "U" * 92},
    "list_parts": {"uploadId": "U" * 92},
    "list_multipart_uploads": {},
    "initiate_job": {"jobParameters": {"Type": "inventory-retrieval"}},
    "describe_job": {"jobId": "J" * 92},
    "list_jobs": {},
    "get_job_output": {"jobId": "J" * 92},
    "set_vault_notifications": {"vaultNotificationConfig": {"SNSTopic": "t", "Events": ["ArchiveRetrievalCompleted"]}},
    "get_vault_notifications": {},
    "delete_vault_notifications": {},
}


@pytest.mark.parametrize("op", sorted(VAULT_CALLS))
def test_every_vault_operation_on_a_missing_vault_is_404(c, op):
    with pytest.raises(ClientError) as exc:
        getattr(c, op)(vaultName=MISSING, **VAULT_CALLS[op])
    assert error_of(exc) == (404, "ResourceNotFoundException", f"Vault not found for ARN: {ARN}{MISSING}")


def test_invalid_vault_name_outside_create_is_404_with_the_raw_name(c):
    with pytest.raises(ClientError) as exc:
        c.describe_vault(vaultName="bad name!")
    assert error_of(exc) == (404, "ResourceNotFoundException", "Vault not found for ARN: bad name!")
