"""`serve --latency SECONDS --bandwidth RATE` (issue 14): a reproducible WAN model for benchmarks.

Only lower bounds are asserted (a loaded machine can only make things slower): N requests take at
least N x latency, and N bytes over one connection take at least N / rate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from glacierfs.server import start_server
from glacierfs.treehash import MiB
from tests.helpers.glacier_server import REPO

REQUESTS = 5


def _client(url: str):
    return boto3.client("glacier", endpoint_url=url, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1}))


def test_latency_holds_every_response_back(glacier_server_factory):
    s = glacier_server_factory("--latency", "0.2")
    c = s.client()
    c.create_vault(vaultName="v")
    t0 = time.monotonic()
    for _ in range(REQUESTS):
        c.describe_vault(vaultName="v")
    assert time.monotonic() - t0 >= REQUESTS * 0.2
    t0 = time.monotonic()
    with pytest.raises(ClientError):  # errors are held back too
        c.describe_vault(vaultName="missing")
    assert time.monotonic() - t0 >= 0.2


def test_bandwidth_caps_each_connection_both_ways(glacier_server_factory):
    rate = 2 * MiB
    s = glacier_server_factory("--bandwidth", "2M")
    c = s.client()
    c.create_vault(vaultName="v")
    data = os.urandom(4 * MiB)
    t0 = time.monotonic()
    aid = c.upload_archive(vaultName="v", body=data)["archiveId"]
    assert time.monotonic() - t0 >= 0.9 * len(data) / rate  # upload: the body read is paced
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})["jobId"]
    t0 = time.monotonic()
    assert c.get_job_output(vaultName="v", jobId=job)["body"].read() == data
    assert time.monotonic() - t0 >= 0.9 * len(data) / rate  # download: the body write is paced


def test_start_server_latency_in_process(tmp_path):
    with start_server(tmp_path / "d", latency=0.1, bandwidth=100 * MiB) as handle:
        c = _client(handle.url)
        t0 = time.monotonic()
        for _ in range(REQUESTS):
            c.list_vaults()
        assert time.monotonic() - t0 >= REQUESTS * 0.1
    for bad in ({"latency": float("nan")}, {"latency": -1.0}, {"bandwidth": 0.0}, {"bandwidth": float("inf")}):
        with pytest.raises(ValueError):
            start_server(tmp_path / "e", **bad)


@pytest.mark.parametrize("args", [("--latency", "nan"), ("--latency", "-1"), ("--latency", "1e9"),
                                  ("--bandwidth", "fast"), ("--bandwidth", "0"), ("--bandwidth", "-5M")])
def test_bad_wan_options_are_one_line(tmp_path, args):
    r = subprocess.run([sys.executable, "-m", "glacierfs", "serve", "--data-dir", str(tmp_path / "d"), *args],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "error" in r.stderr.strip().splitlines()[-1]
