"""What the export tests share: uploads into ``glacierfs serve``, the S3 side's checks, a slow-S3 hook.

* :func:`assert_exported_once` - one object per archive, nothing else in the bucket (no claim
  left either), no open multipart upload;
* :func:`retrieval_jobs` - the vault's retrieval jobs per archive (one each: no second job);
* :data:`LINGER_HOOK` / :func:`linger_env` - a ``sitecustomize`` that slows the exporter's S3
  calls, so a SIGKILL lands inside a run;
* :func:`claim_bodies` - the exporters' claims in a bucket; :func:`wait_until` - poll a condition.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glacierfs.treehash import tree_hash
from tests.helpers.cli import Cli
from tests.helpers.s3_server import S3Server


def s3_args(s3_server: S3Server) -> list[str]:
    return ["--s3-endpoint-url", s3_server.url, "--s3-region", "us-east-1"]


def upload(glacier: Any, vault: str, body: bytes, description: str) -> str:
    return glacier.upload_archive(vaultName=vault, archiveDescription=description, body=body,
                                  checksum=tree_hash(body))["archiveId"]


def all_objects(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    """key -> head_object answer (with checksum) of every object in the bucket."""
    out: dict[str, dict[str, Any]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.head_object(Bucket=bucket, Key=obj["Key"], ChecksumMode="ENABLED")
    return out


def assert_exported_once(s3: Any, bucket: str, ids: set[str], ctx: str = "") -> dict[str, dict[str, Any]]:
    objects = all_objects(s3, bucket)
    owners = [h["Metadata"].get("glacier-archive-id") for h in objects.values()]
    assert sorted(owners) == sorted(ids), f"{ctx}: objects {len(objects)} for {len(ids)} archives"
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"{ctx}: open multipart uploads left: {uploads}"
    return objects


def retrieval_jobs(glacier_server: Any, vault: str) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    c = glacier_server.client(max_attempts=5)
    for page in c.get_paginator("list_jobs").paginate(vaultName=vault):
        for j in page["JobList"]:
            if j["Action"] == "ArchiveRetrieval":
                jobs.setdefault(j["ArchiveId"], []).append(j["JobId"])
    return jobs


LINGER_HOOK = """
import time

import glacierfs.client as c
import glacierfs.export.s3 as s


def _linger(cls, name, seconds):
    real = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        time.sleep(seconds)
        return result

    setattr(cls, name, wrapper)


# slow enough that a whole export takes well over the latest kill point (2.5 s) on any machine
for _name, _s in (("create_multipart", 0.3), ("upload_part", 0.5), ("complete_multipart", 0.3), ("put_object", 0.3)):
    _linger(s.S3, _name, _s)
_linger(c.Glacier, "initiate_retrieval", 0.1)
"""


def linger_env(cli: Cli, directory: Path, extra: str = "") -> dict[str, str]:
    """The CLI's environment with :data:`LINGER_HOOK` (and ``extra`` code) on its path, in ``directory``."""
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(LINGER_HOOK + extra)
    env = cli.env()
    env["PYTHONPATH"] = f"{directory}{os.pathsep}{env['PYTHONPATH']}"
    return env


CLAIMS_PREFIX = "_glacierfs-claims/"


def claim_bodies(s3: Any, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """archive id -> the JSON body of its claim under ``prefix`` ('' or ending with '/')."""
    out: dict[str, dict[str, Any]] = {}
    base = prefix + CLAIMS_PREFIX
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(base):]] = json.loads(body)
    return out


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
