"""Persistence across restarts and kill -9, the data-dir lock, server.json and file modes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.glacier_server import REPO, error_of


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _start_partial_upload(
    url: str, method: str, path: str, headers: dict[str, str], total: int, sent: bytes
) -> socket.socket:
    """Send headers promising ``total`` bytes, then only ``sent``; returns the open socket."""
    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nx-amz-glacier-version: 2012-06-01\r\nContent-Length: {total}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall((head + "\r\n").encode() + sent)
    return s


def test_restart_keeps_everything(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    data = os.urandom(2 * MiB + 3)
    aid = c.upload_archive(vaultName="v", body=data, archiveDescription="kept")["archiveId"]
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes 0-{MiB - 1}/*", body=data[:MiB])
    glacier_server.snapshot("v")
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    glacier_server.restart()
    c = glacier_server.client()
    assert c.describe_vault(vaultName="v")["NumberOfArchives"] == 1
    assert c.get_job_output(vaultName="v", jobId=job)["body"].read() == data
    parts = c.list_parts(vaultName="v", uploadId=uid)["Parts"]
    assert parts == [{"RangeInBytes": f"0-{MiB - 1}", "SHA256TreeHash": tree_hash(data[:MiB])}]


def test_kill_9_mid_upload_loses_nothing_and_shows_nothing_partial(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    whole = os.urandom(3 * MiB)
    kept = c.upload_archive(vaultName="v", body=whole)["archiveId"]
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    part0 = whole[:MiB]
    c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes 0-{MiB - 1}/*", body=part0)
    done_uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    c.upload_multipart_part(vaultName="v", uploadId=done_uid, range="bytes 0-9/*", body=b"0123456789")
    completed = c.complete_multipart_upload(vaultName="v", uploadId=done_uid, archiveSize="10",
                                            checksum=tree_hash(b"0123456789"))["archiveId"]

    body = os.urandom(2 * MiB)
    archive_sock = _start_partial_upload(glacier_server.url, "POST", "/-/vaults/v/archives", {
        "x-amz-sha256-tree-hash": tree_hash(body), "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
    }, len(body), body[: MiB + 100])
    part = whole[MiB : 2 * MiB]
    part_sock = _start_partial_upload(glacier_server.url, "PUT", f"/-/vaults/v/multipart-uploads/{uid}", {
        "Content-Range": f"bytes {MiB}-{2 * MiB - 1}/*", "x-amz-sha256-tree-hash": tree_hash(part),
    }, len(part), part[:1000])
    tmp = glacier_server.data_dir / "tmp"
    _wait_for(lambda: len(list(tmp.iterdir())) == 2)  # both bodies are being received
    glacier_server.kill()
    archive_sock.close()
    part_sock.close()

    glacier_server.start()
    assert list(tmp.iterdir()) == []
    c = glacier_server.client()
    assert c.list_parts(vaultName="v", uploadId=uid)["Parts"] == [
        {"RangeInBytes": f"0-{MiB - 1}", "SHA256TreeHash": tree_hash(part0)}]
    glacier_server.snapshot("v")
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "inventory-retrieval"})["jobId"]
    listed = {a["ArchiveId"]: a for a in json.loads(c.get_job_output(vaultName="v", jobId=job)["body"].read())["ArchiveList"]}
    assert set(listed) == {kept, completed}
    for aid, expected in ((kept, whole), (completed, b"0123456789")):
        j = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
        out = c.get_job_output(vaultName="v", jobId=j)
        assert out["body"].read() == expected
        assert out["checksum"] == tree_hash(expected)
    # the interrupted upload can still be finished
    for start in (MiB, 2 * MiB):
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes {start}-{start + MiB - 1}/*",
                                body=whole[start : start + MiB])
    r = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(len(whole)), checksum=tree_hash(whole))
    assert r["checksum"] == tree_hash(whole)


def test_kill_9_right_after_complete_is_idempotent(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
    c.upload_multipart_part(vaultName="v", uploadId=uid, range="bytes 0-2/*", body=b"abc")
    first = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize="3", checksum=tree_hash(b"abc"))
    glacier_server.restart(kill=True)
    c = glacier_server.client()
    again = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize="3", checksum=tree_hash(b"abc"))
    assert again["archiveId"] == first["archiveId"]


def test_second_server_on_same_dir_fails_cleanly(glacier_server):
    info = json.loads((glacier_server.data_dir / "server.json").read_text())
    assert info["url"] == glacier_server.url
    assert info["pid"] == glacier_server.proc.pid
    r = subprocess.run(
        [sys.executable, "-m", "glacierfs", "serve", "--port", "0", "--data-dir", str(glacier_server.data_dir)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and "Traceback" not in r.stderr
    assert glacier_server.stop() == 0
    assert not (glacier_server.data_dir / "server.json").exists()


def test_modes_are_private(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    c.upload_archive(vaultName="v", body=b"secret")
    d: Path = glacier_server.data_dir
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = [p for p in d.rglob("*") if p.is_file()]
    assert any(p.parent.parent.name == "archives" for p in files)
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for p in d.rglob("*"):
        if p.is_dir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o700, p


def test_seeded_ids_are_reproducible_but_never_repeat_after_restart(glacier_server_factory, tmp_path):
    def first_ids(server):
        c = server.client()
        c.create_vault(vaultName="v")
        return [c.upload_archive(vaultName="v", body=b"x")["archiveId"] for _ in range(3)]

    a = glacier_server_factory("--seed", "42", data_dir=tmp_path / "a")
    b = glacier_server_factory("--seed", "42", data_dir=tmp_path / "b")
    ids_a = first_ids(a)
    assert ids_a == first_ids(b)
    a.restart()
    assert not set(first_ids(a)) & set(ids_a)


def test_deleted_archive_bytes_are_reclaimed(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"reclaim me")["archiveId"]
    archives = glacier_server.data_dir / "archives"
    assert [p for p in archives.rglob("*") if p.is_file()]
    c.delete_archive(vaultName="v", archiveId=aid)
    glacier_server.advance(60)  # runs the retention sweep
    assert not [p for p in archives.rglob("*") if p.is_file()]
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})
    assert error_of(exc)[0] == 404


def test_lost_body_file_fails_the_job_instead_of_hanging(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=os.urandom(3 * MiB))["archiveId"]
    for p in (glacier_server.data_dir / "archives").rglob("*"):
        if p.is_file():
            p.unlink()
    job = c.initiate_job(vaultName="v", jobParameters={
        "Type": "archive-retrieval", "ArchiveId": aid, "RetrievalByteRange": f"{2 * MiB}-{3 * MiB - 1}"})["jobId"]
    d = c.describe_job(vaultName="v", jobId=job)
    assert d["Completed"] is True and d["StatusCode"] == "Failed"
    whole = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    with pytest.raises(ClientError) as exc:
        c.get_job_output(vaultName="v", jobId=whole)
    assert error_of(exc)[:2] == (500, "ServiceUnavailableException")
    assert c.list_vaults()["VaultList"]  # the server is still fine
