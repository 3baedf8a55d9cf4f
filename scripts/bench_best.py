"""The same server's best case, for scripts/bench: plain boto3, no glacierfs code (own process).

    bench_best.py upload URL VAULT FILE --threads 8      multipart upload, the largest useful parts
    bench_best.py download URL VAULT OUT --job=JOB_ID --threads 8   ranged GetJobOutput, verified
    bench_best.py upload-archive URL VAULT FILE          one UploadArchive (a fresh process per file)

"Largest useful parts": the largest power-of-two MiB that still gives every thread a part
(1 GiB on 8 threads: 128 MiB). Each part's tree hash is computed once, in its thread, and sent
as the checksum (botocore adds the SHA-256 its signature needs); the archive's tree hash is
combined from the part hashes. Prints one JSON line: seconds (from start of main), archive id or
bytes. Credentials come from the environment (the benchmark sets dummy ones).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

MiB = 1 << 20


def tree_hash(data: bytes) -> bytes:
    """Glacier's SHA-256 tree hash of ``data`` (raw digest)."""
    view = memoryview(data)
    level = [hashlib.sha256(view[i:i + MiB]).digest() for i in range(0, len(data), MiB)] or [hashlib.sha256(b"").digest()]
    return combine(level)


def combine(level: list[bytes]) -> bytes:
    while len(level) > 1:
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


def client(url: str, threads: int):
    import boto3
    from botocore.config import Config

    return boto3.client("glacier", endpoint_url=url, region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(max_pool_connections=max(10, threads), retries={"max_attempts": 3}))


def part_size_for(size: int, threads: int) -> int:
    part = MiB
    while part * 2 * threads <= size and part < 4096 * MiB:
        part *= 2
    while -(-size // part) > 10_000:
        part *= 2
    return part


def upload(url: str, vault: str, path: str, threads: int) -> dict:
    g = client(url, threads)
    size = os.path.getsize(path)
    part = part_size_for(size, threads)
    upload_id = g.initiate_multipart_upload(vaultName=vault, partSize=str(part),
                                            archiveDescription="best case")["uploadId"]
    fd = os.open(path, os.O_RDONLY)

    def send(index: int) -> bytes:
        start = index * part
        data = os.pread(fd, min(part, size - start), start)
        digest = tree_hash(data)
        g.upload_multipart_part(vaultName=vault, uploadId=upload_id, body=data, checksum=digest.hex(),
                                range=f"bytes {start}-{start + len(data) - 1}/*")
        return digest

    try:
        with ThreadPoolExecutor(threads) as pool:
            digests = list(pool.map(send, range(-(-size // part))))
    finally:
        os.close(fd)
    res = g.complete_multipart_upload(vaultName=vault, uploadId=upload_id, archiveSize=str(size),
                                      checksum=combine(digests).hex())
    return {"archive_id": res["archiveId"], "part_size": part}


def download(url: str, vault: str, job_id: str, out: str, threads: int) -> dict:
    g = client(url, threads)
    job = g.describe_job(vaultName=vault, jobId=job_id)
    size, want = int(job["ArchiveSizeInBytes"]), job["SHA256TreeHash"]
    chunk = part_size_for(size, threads)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def fetch(index: int) -> bytes:
        start = index * chunk
        end = min(start + chunk, size) - 1
        body = g.get_job_output(vaultName=vault, jobId=job_id, range=f"bytes={start}-{end}")["body"].read()
        if len(body) != end - start + 1:
            raise SystemExit(f"range {start}-{end}: got {len(body)} bytes")
        os.pwrite(fd, body, start)
        return tree_hash(body)

    try:
        with ThreadPoolExecutor(threads) as pool:
            digests = list(pool.map(fetch, range(-(-size // chunk))))
        os.fsync(fd)
    finally:
        os.close(fd)
    if combine(digests).hex() != want:
        raise SystemExit("tree hash mismatch")
    return {"bytes": size}


def upload_archive(url: str, vault: str, path: str) -> dict:
    g = client(url, 1)
    with open(path, "rb") as f:
        res = g.upload_archive(vaultName=vault, body=f, archiveDescription=os.path.basename(path))
    return {"archive_id": res["archiveId"]}


def main() -> int:
    t0 = time.perf_counter()
    p = argparse.ArgumentParser()
    p.add_argument("op", choices=["upload", "download", "upload-archive"])
    p.add_argument("url")
    p.add_argument("vault")
    p.add_argument("args", nargs="+")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--job", help="job id (give it as --job=ID: ids may start with '-')")
    a = p.parse_args()
    if a.op == "upload":
        res = upload(a.url, a.vault, a.args[0], a.threads)
    elif a.op == "download":
        res = download(a.url, a.vault, a.job, a.args[0], a.threads)
    else:
        res = upload_archive(a.url, a.vault, a.args[0])
    res["seconds"] = time.perf_counter() - t0
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
