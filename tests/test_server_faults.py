"""Fault injection (--faults, --faults-ops, --seed): kinds, reproducibility, never on admin requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.glacier_server import error_of


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


# -- closed, capacity, policy, slow (reference §5 item 10) -----------------------------------


def initiate(c, aid: str | None = None, tier: str | None = None) -> str:
    """InitiateJob (archive-retrieval with ``aid``, else inventory); "ok" or "STATUS Code"."""
    params = {"Type": "archive-retrieval", "ArchiveId": aid} if aid else {"Type": "inventory-retrieval"}
    if tier:
        params["Tier"] = tier
    try:
        c.initiate_job(vaultName="v", jobParameters=params)
        return "ok"
    except ClientError as exc:
        status, code, _ = error_of(exc)
        return f"{status} {code}"


def vault_with_archive(server) -> tuple:
    c = server.client(max_attempts=1)
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"x" * 1000)["archiveId"]
    server.snapshot("v")
    return c, aid


def test_closed_is_no_longer_supported_on_any_operation(glacier_server_factory):
    s = glacier_server_factory("--faults", "closed=1")
    c = s.client(max_attempts=1)
    calls = [c.list_vaults, lambda: c.create_vault(vaultName="v"), lambda: c.describe_vault(vaultName="v"),
             lambda: c.list_jobs(vaultName="v"), lambda: c.upload_archive(vaultName="v", body=b"abc")]
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        status, code, message = error_of(exc)
        assert (status, code) == (400, "NoLongerSupportedException")
        assert "no longer supported for new accounts" in message and "2025-12-15" in message
    assert s.admin("status", method="GET")["account"]  # admin is never faulted


def test_capacity_only_on_expedited_archive_retrieval(glacier_server_factory):
    s = glacier_server_factory("--faults", "capacity=1")
    c, aid = vault_with_archive(s)  # CreateVault, UploadArchive: not faulted
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid, "Tier": "Expedited"})
    status, code, message = error_of(exc)
    assert (status, code) == (503, "InsufficientCapacityException")
    assert "capacity" in message.lower() and "Expedited" in message
    body = exc.value.response
    assert body["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "InsufficientCapacityException"
    raw = urllib.request.Request(f"{s.url}/-/vaults/v/jobs", method="POST", headers={"x-amz-glacier-version": "2012-06-01"},
                                 data=json.dumps({"Type": "archive-retrieval", "ArchiveId": aid, "Tier": "Expedited"}).encode())
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(raw, timeout=30)
    assert http.value.code == 503
    assert json.loads(http.value.read())["type"] == "Server"
    assert [initiate(c, aid, t) for t in ("Standard", "Bulk", None)] == ["ok", "ok", "ok"]
    assert initiate(c) == "ok"  # inventory
    assert initiate(c, "no-such-archive", "Expedited") == "404 ResourceNotFoundException"  # validation first
    assert c.list_jobs(vaultName="v")["JobList"]


def test_policy_only_on_standard_archive_retrieval(glacier_server_factory):
    s = glacier_server_factory("--faults", "policy=1")
    c, aid = vault_with_archive(s)
    with pytest.raises(ClientError) as exc:
        c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})  # default tier
    status, code, message = error_of(exc)
    assert (status, code) == (400, "PolicyEnforcedException")
    assert "policy" in message.lower()
    assert initiate(c, aid, "Standard") == "400 PolicyEnforcedException"
    assert [initiate(c, aid, t) for t in ("Expedited", "Bulk")] == ["ok", "ok"]
    assert initiate(c) == "ok"


def test_new_kinds_are_reproducible_with_a_seed(glacier_server_factory, tmp_path):
    spec = ("--faults", "closed=0.3,capacity=0.5,policy=0.5", "--seed", "7")

    def run(data_dir):
        s = glacier_server_factory(*spec, "--faults-ops", "InitiateJob,ListVaults", data_dir=data_dir)
        c, aid = vault_with_archive(s)
        return [initiate(c, aid, ("Expedited", "Standard", "Bulk")[i % 3]) for i in range(30)] + outcomes(s, 15)

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a == b
    assert {"ok", "400 NoLongerSupportedException", "503 InsufficientCapacityException",
            "400 PolicyEnforcedException"} <= set(a)
    assert "400 NoLongerSupportedException" in a[30:]  # ListVaults gets closed, never capacity/policy
    assert not {"503 InsufficientCapacityException", "400 PolicyEnforcedException"} & set(a[30:])


def test_slow_delays_the_response(glacier_server_factory):
    s = glacier_server_factory("--faults", "slow=1", "--slow-seconds", "0.6", "--faults-ops", "ListVaults")
    c = s.client(max_attempts=1)
    c.create_vault(vaultName="v")
    start = time.monotonic()
    c.describe_vault(vaultName="v")  # not in --faults-ops
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    assert [v["VaultName"] for v in c.list_vaults()["VaultList"]] == ["v"]  # slow but correct
    assert time.monotonic() - start >= 0.6
    start = time.monotonic()
    s.admin("status", method="GET")  # admin is never faulted
    assert time.monotonic() - start < 0.5


def test_slow_is_reproducible_with_a_seed(glacier_server_factory, tmp_path):
    def run(data_dir):
        s = glacier_server_factory("--faults", "slow=0.4", "--slow-seconds", "0.3", "--seed", "3", data_dir=data_dir)
        c = s.client(max_attempts=1)
        times = []
        for _ in range(10):
            start = time.monotonic()
            c.list_vaults()
            times.append(time.monotonic() - start >= 0.3)
        return times

    a = run(tmp_path / "a")
    assert a == run(tmp_path / "b")
    assert True in a and False in a


def test_cli_download_expedited_without_capacity_is_one_line(glacier_server_factory, tmp_path):
    s = glacier_server_factory("--faults", "capacity=1")
    _, aid = vault_with_archive(s)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "glacierfs", "download", "-v", "v", f"-a={aid}", "--tier", "Expedited",
         "-o", str(tmp_path / "out"), "--endpoint-url", s.url, "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("glacierfs: error: ") and "no Expedited retrieval capacity" in err, err
    assert "InsufficientCapacityException" in err and "Standard or Bulk" in err, err
    assert not (tmp_path / "out").exists()


def _held_deletes(server) -> int:
    return int(server.admin("held", method="GET")["waiting"].get("DeleteArchive", 0))


def _until(cond, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("drop", [False, True])
def test_hold_stops_an_operation_before_it_takes_effect(glacier_server_factory, drop):
    """``--hold DeleteArchive``: the delete waits before any effect; a release lets it go on,
    a release with drop resets it (the archive stays); other operations are never held."""
    import threading

    server = glacier_server_factory("--hold", "DeleteArchive")
    c = server.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"x")["archiveId"]
    outcome: list[object] = []
    t = threading.Thread(target=lambda: outcome.append(_try_delete(c, aid)))
    t.start()
    try:
        _until(lambda: _held_deletes(server) == 1, "the delete to be held")
        c.describe_vault(vaultName="v")  # not held
        assert server.admin("release?drop=1" if drop else "release") == {"released": 1}
    finally:
        t.join(30)
    assert not t.is_alive() and _held_deletes(server) == 0
    assert (outcome[0] is not None) == drop, outcome  # a dropped request fails at the client
    params = {"Type": "archive-retrieval", "ArchiveId": aid}
    if drop:  # still there: nothing took effect
        server.client().initiate_job(vaultName="v", jobParameters=params)
    else:  # gone: InitiateJob of a deleted archive is a 404 at once
        with pytest.raises(ClientError):
            server.client().initiate_job(vaultName="v", jobParameters=params)


def _try_delete(c, aid: str) -> object:
    try:
        c.delete_archive(vaultName="v", archiveId=aid)
        return None
    except (BotoCoreError, ClientError) as exc:
        return exc


def test_a_held_request_goes_on_by_itself_after_hold_seconds(glacier_server_factory):
    """Nothing waits forever: with no release, a held DeleteArchive takes effect once
    ``--hold-seconds`` have passed (and the next one is held again)."""
    import threading

    server = glacier_server_factory("--hold", "DeleteArchive", "--hold-seconds", "1")
    c = server.client()
    c.create_vault(vaultName="v")
    aid = c.upload_archive(vaultName="v", body=b"x")["archiveId"]
    outcome: list[object] = []
    t = threading.Thread(target=lambda: outcome.append(_try_delete(c, aid)))
    t.start()
    try:
        _until(lambda: bool(outcome) or _held_deletes(server) == 1, "the delete to be held")
        t.join(60)  # no release: the hold ends by itself
        ended_by_itself = not t.is_alive()
    finally:
        if t.is_alive():
            server.admin("release")
            t.join(30)
    assert ended_by_itself, "the held delete still waited after 60 s"
    assert outcome == [None], outcome
    with pytest.raises(ClientError):  # it took effect: the archive is gone
        c.initiate_job(vaultName="v", jobParameters={"Type": "archive-retrieval", "ArchiveId": aid})
    assert server.admin("held", method="GET")["ops"] == ["DeleteArchive"]
