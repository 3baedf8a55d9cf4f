"""In-process use (start_server), bounded memory for big bodies, concurrency, populated vaults."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from glacierfs.server import DataDirInUse, start_server
from glacierfs.treehash import MiB, tree_hash, tree_hash_file


def _client(url: str):
    return boto3.client("glacier", endpoint_url=url, region_name="us-east-1", config=Config(retries={"max_attempts": 1}))


def test_start_server_in_process(tmp_path):
    with start_server(tmp_path / "d", job_delay=0, seed=3) as handle:
        assert handle.url.startswith("http://127.0.0.1:")
        info = json.loads((tmp_path / "d" / "server.json").read_text())
        assert info == {"url": handle.url, "pid": os.getpid()}
        with pytest.raises(DataDirInUse):
            start_server(tmp_path / "d")
        c = _client(handle.url)
        c.create_vault(vaultName="v")
        assert c.list_vaults()["VaultList"][0]["VaultName"] == "v"
    assert not (tmp_path / "d" / "server.json").exists()
    with start_server(tmp_path / "d") as again:  # the lock was released
        assert _client(again.url).describe_vault(vaultName="v")["VaultName"] == "v"
    with pytest.raises(TypeError):
        start_server(tmp_path / "d", no_such_option=1)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_big_part_is_streamed_not_buffered(glacier_server, tmp_path):
    """A 64 MiB part and its retrieval must not raise the server's peak RSS by anything like 64 MiB."""
    size = 64 * MiB
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for i in range(size // MiB):
            f.write(bytes([i]) * MiB)
    c = glacier_server.client(read_timeout=300)
    c.create_vault(vaultName="v")
    pid = glacier_server.proc.pid
    before = _peak_rss_kib(pid)
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(size))["uploadId"]
    with open(src, "rb") as body:
        c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes 0-{size - 1}/*", body=body)
    expected = tree_hash_file(src)
    aid = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(size), checksum=expected)["archiveId"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    out = c.get_job_output(vaultName="v", jobId=job)
    from glacierfs.treehash import TreeHasher

    hasher = TreeHasher()
    for chunk in out["body"].iter_chunks(MiB):
        hasher.update(chunk)
    assert hasher.hexdigest() == expected == out["checksum"]
    growth_mib = (_peak_rss_kib(pid) - before) / 1024
    assert growth_mib < 24, f"server peak RSS grew by {growth_mib:.1f} MiB"


def test_parallel_parts(glacier_server):
    c = glacier_server.client(max_pool_connections=8)
    c.create_vault(vaultName="v")
    data = os.urandom(8 * MiB + 99)
    uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]

    def send(start: int) -> str:
        chunk = data[start : start + MiB]
        return c.upload_multipart_part(vaultName="v", uploadId=uid, range=f"bytes {start}-{start + len(chunk) - 1}/*",
                                       body=chunk)["checksum"]

    with ThreadPoolExecutor(6) as pool:
        hashes = list(pool.map(send, range(0, len(data), MiB)))
    assert hashes == [tree_hash(data[s : s + MiB]) for s in range(0, len(data), MiB)]
    r = c.complete_multipart_upload(vaultName="v", uploadId=uid, archiveSize=str(len(data)), checksum=tree_hash(data))
    assert r["checksum"] == tree_hash(data)


def test_populated_archives_are_real_archives(glacier_server):
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    ids = glacier_server.populate("v", 3, size=2 * MiB + 1, descriptions=["one", "two"], snapshot=True)
    assert len(ids) == 3
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "inventory-retrieval"})["jobId"]
    inv = json.loads(c.get_job_output(vaultName="v", jobId=job)["body"].read())["ArchiveList"]
    by_id = {a["ArchiveId"]: a for a in inv}
    assert set(by_id) == set(ids)
    assert sorted(a["ArchiveDescription"] for a in inv) == ["one", "one", "two"]
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": ids[0]})["jobId"]
    out = c.get_job_output(vaultName="v", jobId=job)
    body = out["body"].read()
    assert len(body) == 2 * MiB + 1
    assert tree_hash(body) == by_id[ids[0]]["SHA256TreeHash"] == out["checksum"]
    assert c.describe_vault(vaultName="v")["NumberOfArchives"] == 3


def test_vault_limit(tmp_path, monkeypatch):
    from botocore.exceptions import ClientError

    import glacierfs.server.store as store_module

    monkeypatch.setattr(store_module, "MAX_VAULTS", 3)
    with start_server(tmp_path / "d") as handle:
        c = _client(handle.url)
        for i in range(3):
            c.create_vault(vaultName=f"v{i}")
        c.create_vault(vaultName="v0")  # existing: still fine
        with pytest.raises(ClientError) as exc:
            c.create_vault(vaultName="v3")
        assert exc.value.response["Error"]["Code"] == "LimitExceededException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_short_pages_still_reach_everything(glacier_server_factory):
    s = glacier_server_factory("--short-pages")
    c = s.client()
    names = [f"s{i:02d}" for i in range(25)]
    for n in names:
        c.create_vault(vaultName=n)
    seen, marker, sizes = [], None, []
    while True:
        page = c.list_vaults(limit="10", **({"marker": marker} if marker else {}))
        sizes.append(len(page["VaultList"]))
        seen += [v["VaultName"] for v in page["VaultList"]]
        marker = page.get("Marker")
        if not marker:
            break
    assert seen == names
    assert sizes[0] == 9  # short although more remain
    uid = c.initiate_multipart_upload(vaultName="s00", partSize=str(MiB))["uploadId"]
    for i in range(5):
        c.upload_multipart_part(vaultName="s00", uploadId=uid, range=f"bytes {i * MiB}-{i * MiB}/*", body=b"p")
    parts = [p for pg in c.get_paginator("list_parts").paginate(vaultName="s00", uploadId=uid,
                                                               PaginationConfig={"PageSize": 2}) for p in pg["Parts"]]
    assert len(parts) == 5
