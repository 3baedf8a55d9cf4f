"""Export claims that outlive their exporter's cache dir (issue 12): continued by the same owner,
busy for another owner, taken over when their holder stopped renewing them.

Against our real ``glacierfs serve`` and moto's S3 server (tests/helpers/s3_server.py: moto
honours ``If-None-Match``/``If-Match`` on PutObject and DeleteObject; the gate makes them atomic as
S3 does). Where "no second retrieval job while one is live" is checked, the server runs with
``--job-delay 3600``: the jobs stay InProgress until the test completes them, and each new cache
dir's inventory job is completed by :func:`fetch_inventory`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from glacierfs.codec import encode_description
from glacierfs.errors import UsageError
from glacierfs.export.claims import Acquired, Claims, Holder, claim_owner
from glacierfs.export.s3 import S3Settings, make_s3
from glacierfs.timeutil import parse_duration
from glacierfs.treehash import MiB
from tests.helpers.cli import Cli
from tests.helpers.export import (
    CLAIMS_PREFIX,
    assert_exported_once,
    claim_bodies,
    linger_env,
    retrieval_jobs,
    s3_args,
    upload,
    wait_until,
)
from tests.helpers.hardening import assert_one_error
from tests.helpers.s3_server import S3Server

SEED = 20261202
VAULT = "cv"
BATCH = {"AWS_BATCH_JOB_ID": "6f0c1d2e-export-photos:0", "AWS_BATCH_JOB_ARRAY_INDEX": "0",
         "AWS_BATCH_JOB_ATTEMPT": "1"}
# A live exporter renews its claims every 0.5 s and take-overs may be as short as 1 s (the real
# values are 15 min and 1 h): patched into the exporter processes at start-up.
FAST_CLAIMS = """
import glacierfs.export.claims as _claims
import glacierfs.export.run as _run

_claims.CLAIM_RENEW = _run.CLAIM_RENEW = 0.5
_claims.MIN_TAKE_OVER = 1.0
"""


# --------------------------------------------------------------------------- units


def test_claim_owner_comes_from_the_option_the_batch_job_or_the_cache_dir() -> None:
    store = "ab" * 16
    assert claim_owner("me", "auto/4", store, {"AWS_BATCH_JOB_ID": "j:1"}) == ("me", None)
    assert claim_owner(None, None, store, {"GLACIERFS_CLAIM_OWNER": "from-env"}) == ("from-env", None)
    assert claim_owner(None, "auto/4", store, {"AWS_BATCH_JOB_ID": "j:1"}) == ("aws-batch:j:1", None)
    assert claim_owner(None, "1/4", store, {"AWS_BATCH_JOB_ID": "j:1"}) == (store, None)  # only auto/N
    owner, note = claim_owner(None, "auto/4", store, {"JOB_COMPLETION_INDEX": "1"})
    assert owner == store and note is not None and "--claim-owner" in note
    assert claim_owner(None, None, store, {}) == (store, None)
    for bad in ("", "x" * 201, "a\nb"):
        with pytest.raises(UsageError):
            claim_owner(bad, None, store, {})


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "45m", "45min", "6h", "2d", "1h30m")] == [
        90, 90, 2700, 2700, 21600, 172800, 5400]
    for bad in ("", "h", "-5", "5 h x", "nan"):
        with pytest.raises(UsageError):
            parse_duration(bad)


# --------------------------------------------------------------------------- Claims on a real S3


def test_claims_are_continued_renewed_taken_over_and_given_up_by_compare_and_swap(
    s3_server: S3Server, bucket: str
) -> None:
    s3 = make_s3(S3Settings(s3_server.url, "us-east-1"))
    raw = s3_server.client()
    now = [time.time()]

    def clock() -> float:
        return now[0]

    a = Claims(s3, bucket, "p/", "owner-a", clock=clock)
    b = Claims(s3, bucket, "p/", "owner-b", take_over_after=3600, clock=clock)
    assert a.acquire("X") == Acquired()
    since = claim_bodies(raw, bucket, "p/")["X"]["since"]
    busy = b.acquire("X")
    assert isinstance(busy, Holder) and busy.owner == "owner-a", busy
    # the same owner in a new process (the first one's state is gone): continues it, keeps `since`
    a2 = Claims(s3, bucket, "p/", "owner-a", clock=clock)
    got = a2.acquire("X")
    assert isinstance(got, Acquired) and got.previous is not None and got.previous.run == a.run, got
    assert not got.taken_over
    body = claim_bodies(raw, bucket, "p/")["X"]
    assert body["run"] == a2.run and body["since"] == since, body
    lost = a.renew("X")  # the first process, were it alive, learns the claim is no longer its own
    assert isinstance(lost, Holder) and lost.run == a2.run, lost
    # renewed, a claim stays fresh however old it is
    now[0] += 7200
    assert a2.renew("X") is None
    assert isinstance(b.acquire("X"), Holder)
    # not renewed for more than the take-over time: taken over, and the old holder cannot give it up
    now[0] += 3601
    got = b.acquire("X")
    assert isinstance(got, Acquired) and got.taken_over and got.previous is not None, got
    assert got.previous.owner == "owner-a"
    lost = a2.renew("X")
    assert isinstance(lost, Holder) and lost.owner == "owner-b", lost
    a2.give_up("X")
    assert claim_bodies(raw, bucket, "p/")["X"]["owner"] == "owner-b"
    b.give_up("X")
    assert claim_bodies(raw, bucket, "p/") == {}


class _AtOnce:
    """An ObjectStore whose compare-and-swap writes wait for each other, so two take-overs race."""

    def __init__(self, inner: Any, barrier: threading.Barrier) -> None:
        self.inner = inner
        self.barrier = barrier

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def replace_small(self, bucket: str, key: str, body: bytes, etag: str) -> str | None:
        self.barrier.wait(30)
        return self.inner.replace_small(bucket, key, body, etag)


def test_two_exporters_taking_over_one_stale_claim_at_once_one_wins(s3_server: S3Server, bucket: str) -> None:
    raw = s3_server.client()
    raw.put_object(Bucket=bucket, Key=CLAIMS_PREFIX + "Y", Body=json.dumps(
        {"owner": "gone", "host": "old-host", "pid": 7, "since": time.time() - 3 * 86400}).encode())
    barrier = threading.Barrier(2)
    s3 = make_s3(S3Settings(s3_server.url, "us-east-1"))
    takers = [Claims(_AtOnce(s3, barrier), bucket, "", f"taker-{i}", take_over_after=3600) for i in range(2)]
    results: list[Any] = [None, None]

    def take(i: int) -> None:
        results[i] = takers[i].acquire("Y")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [i for i, r in enumerate(results) if isinstance(r, Acquired)]
    assert len(won) == 1, results
    loser = results[1 - won[0]]
    assert isinstance(loser, Holder) and loser.owner == f"taker-{won[0]}", results
    assert claim_bodies(raw, bucket)["Y"]["run"] == takers[won[0]].run


# --------------------------------------------------------------------------- the command


def fetch_inventory(server: Any, cli: Cli) -> None:
    """``export --dry-run`` (the vault's inventory into ``cli``'s catalog), completing the inventory
    job it waits for (the server holds jobs back)."""
    g = server.client(max_attempts=5)
    proc = cli.popen("export", "-q", "-v", VAULT, "s3://unused", "--dry-run")

    def done() -> bool:
        if proc.poll() is not None:
            return True
        for j in g.list_jobs(vaultName=VAULT, statuscode="InProgress")["JobList"]:
            if j["Action"] == "InventoryRetrieval":
                server.complete_jobs(j["JobId"])
        return False

    try:
        wait_until(done, 120, "the inventory", interval=0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def start(cli: Cli, args: tuple[str, ...], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cli.argv(args), cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return proc.returncode, out, err


def statuses(out: str) -> dict[str, str]:
    """archive id -> status of each output line (one line per archive)."""
    lines = [line.split("  ") for line in out.splitlines()]
    found = {aid: st for st, aid, _url in lines}
    assert len(found) == len(lines), out
    return found


def gen_sha256(archive_id: str, size: int) -> str:
    from glacierfs.server.bodies import gen_bytes

    h = hashlib.sha256()
    for chunk in gen_bytes(archive_id, 0, size):
        h.update(chunk)
    return h.hexdigest()


@pytest.mark.timeout(600)
def test_a_killed_batch_child_whose_cache_dir_is_gone_is_continued_by_its_next_attempt(
    glacier_server_factory: Any, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """AWS Batch array child, attempt 1: SIGKILLed with every archive claimed, every retrieval job
    live and a multipart upload half sent; its container (cache dir) is gone. Another job's run
    finds every archive busy and starts nothing. Attempt 2 (same AWS_BATCH_JOB_ID, new cache dir)
    continues the claims: every archive exported once, the stray upload aborted, the live jobs
    reused (no second job), no claim left."""
    server = glacier_server_factory("--job-delay", "3600")
    g = server.client(max_attempts=5)
    g.create_vault(vaultName=VAULT)
    rng = random.Random(SEED)
    bodies = {}
    for i in range(8):
        body = rng.randbytes(rng.randint(1, 30_000))
        bodies[upload(g, VAULT, body, encode_description(f"b/{i}.bin", 1e9))] = body
    big_size = 5 * 8 * MiB + 1234
    (big,) = server.populate(VAULT, 1, size=big_size, descriptions=[encode_description("b/big.bin", 1e9)])
    server.snapshot(VAULT)
    ids = {*bodies, big}
    owner = "aws-batch:" + BATCH["AWS_BATCH_JOB_ID"]
    s3 = s3_server.client()
    args = ("export", "-q", "-v", VAULT, f"s3://{bucket}/photos", *s3_args(s3_server), "--shard", "auto/1",
            "--part-size", "8MiB", "--parts-in-flight", "1", "--storage-class", "STANDARD")

    first = Cli(server.url, tmp_path / "attempt1", tmp_path)
    fetch_inventory(server, first)
    proc = start(first, args, {**linger_env(first, tmp_path / "hook"), **BATCH})
    try:
        wait_until(lambda: set(retrieval_jobs(server, VAULT)) == ids, 120, "a retrieval job per archive")
        jobs = retrieval_jobs(server, VAULT)
        server.complete_jobs(jobs[big][0])  # only the big archive's job: the others stay live

        def part_sent() -> bool:
            ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            return bool(ups) and bool(s3.list_parts(Bucket=bucket, Key=ups[0]["Key"],
                                                    UploadId=ups[0]["UploadId"]).get("Parts"))

        wait_until(part_sent, 120, "a part of the big archive in S3")
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = claim_bodies(s3, bucket, "photos/")
    assert set(left) == ids and {c["owner"] for c in left.values()} == {owner}, left
    assert len(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
    shutil.rmtree(tmp_path / "attempt1")  # the container is gone, its cache dir with it

    other = Cli(server.url, tmp_path / "another-job", tmp_path)
    fetch_inventory(server, other)
    res = other(*args, code=8, env={**BATCH, "AWS_BATCH_JOB_ID": "93ab-export-photos-again:0"})
    assert_one_error(res, codes=[8], match="--take-over-claims-older-than")
    assert statuses(res.stdout) == dict.fromkeys(ids, "busy"), res
    assert retrieval_jobs(server, VAULT) == jobs, "a job was started for a busy archive"

    second = Cli(server.url, tmp_path / "attempt2", tmp_path)
    fetch_inventory(server, second)
    proc = start(second, args, {**second.env(), **BATCH, "AWS_BATCH_JOB_ATTEMPT": "2"})
    try:
        def continued() -> bool:
            now = claim_bodies(s3, bucket, "photos/")
            return all(now.get(aid, {}).get("pid") == proc.pid for aid in bodies)

        wait_until(continued, 120, "attempt 2 continuing the claims of the archives whose jobs are live")
        server.complete_jobs()
        rc, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    assert rc == 0, err
    assert statuses(out) == dict.fromkeys(ids, "exported"), out
    objects = assert_exported_once(s3, bucket, ids)  # and no claim, no multipart upload left
    assert retrieval_jobs(server, VAULT) == jobs, "a second retrieval job for a live one"
    for key, head in objects.items():
        aid = head["Metadata"]["glacier-archive-id"]
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if aid == big:
            assert key == "photos/b/big.bin" and hashlib.sha256(data).hexdigest() == gen_sha256(big, big_size)
        else:
            assert data == bodies[aid], key


@pytest.mark.timeout(300)
def test_a_claim_of_another_owner_is_busy_and_taken_over_only_once_it_is_old(
    glacier_server: Any, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    g = glacier_server.client(max_attempts=5)
    g.create_vault(vaultName=VAULT)
    rng = random.Random(SEED + 1)
    bodies = {upload(g, VAULT, body, encode_description(f"o/{i}.bin", 1e9)): body
              for i, body in enumerate(rng.randbytes(rng.randint(1, 20_000)) for _ in range(3))}
    glacier_server.snapshot(VAULT)
    gone, live, free = sorted(bodies)
    s3 = s3_server.client()
    now = time.time()
    # a machine that died three days ago (a claim of an older glacierfs: no run, no renewal) and
    # left a multipart upload with a part on its key; a live exporter's claim renewed just now
    s3.put_object(Bucket=bucket, Key=CLAIMS_PREFIX + gone, Body=json.dumps(
        {"owner": "machine-7", "host": "ip-10-0-0-7", "pid": 4242, "since": now - 3 * 86400}).encode())
    key = next(f"o/{i}.bin" for i, aid in enumerate(bodies) if aid == gone)
    stray = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=stray, PartNumber=1, Body=b"x" * 100)
    live_claim = json.dumps({"owner": "machine-8", "run": "r8", "host": "ip-10-0-0-8", "pid": 4343,
                             "since": now - 3 * 86400, "renewed": now + 3600}).encode()
    s3.put_object(Bucket=bucket, Key=CLAIMS_PREFIX + live, Body=live_claim)
    cli = Cli(glacier_server.url, tmp_path / "cache", tmp_path)
    base = ("export", "-v", VAULT, f"s3://{bucket}", *s3_args(s3_server), "--storage-class", "STANDARD")

    res = cli(*base, code=8)
    assert_one_error(res, codes=[8], match="being exported by another exporter")
    assert statuses(res.stdout) == {gone: "busy", live: "busy", free: "exported"}, res
    assert "process 4242 on ip-10-0-0-7" in res.stderr

    for bad, match in (("10m", "at least 1h"), ("soon", "not a duration")):
        cli.error(2, *base, "--take-over-claims-older-than", bad, match=match)
    cli.error(2, *base, "--claim-owner", "a\tb", match="printable")

    res = cli(*base, "--take-over-claims-older-than", "6h", code=8)
    assert statuses(res.stdout) == {gone: "exported", live: "busy", free: "present"}, res
    took = [line for line in res.stderr.splitlines() if "took over" in line]
    assert len(took) == 1 and gone in took[0] and "owner machine-7, process 4242 on ip-10-0-0-7" in took[0], res
    assert "1 claim(s) taken over" in res.stderr
    claims = claim_bodies(s3, bucket)
    assert list(claims) == [live], claims  # the live one is untouched
    assert s3.get_object(Bucket=bucket, Key=CLAIMS_PREFIX + live)["Body"].read() == live_claim
    s3.delete_object(Bucket=bucket, Key=CLAIMS_PREFIX + live)
    assert_exported_once(s3, bucket, {gone, free})  # the stray upload was aborted too


@pytest.mark.timeout(600)
def test_a_live_exporter_keeps_its_claims_and_a_stopped_one_loses_them_without_a_second_job(
    glacier_server_factory: Any, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Exporter A renews its claims while its jobs run, so B (another owner, take-over after 5 s)
    finds them busy. A is stopped (SIGSTOP): its claims age, B takes them over, reusing A's live
    jobs. A, continued, finds its claims taken and leaves those archives (busy, exit 8); B exports
    each archive once, with no second retrieval job."""
    server = glacier_server_factory("--job-delay", "3600")
    g = server.client(max_attempts=5)
    g.create_vault(vaultName=VAULT)
    rng = random.Random(SEED + 2)
    ids = {upload(g, VAULT, rng.randbytes(rng.randint(1, 20_000)), encode_description(f"l/{i}.bin", 1e9))
           for i in range(4)}
    server.snapshot(VAULT)
    s3 = s3_server.client()
    base = ("export", "-v", VAULT, f"s3://{bucket}", *s3_args(s3_server), "--storage-class", "STANDARD")
    a_cli, b_cli = (Cli(server.url, tmp_path / name, tmp_path) for name in ("machine-a", "machine-b"))
    for cli in (a_cli, b_cli):
        fetch_inventory(server, cli)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAST_CLAIMS)

    def env(cli: Cli) -> dict[str, str]:
        e = cli.env()
        e["PYTHONPATH"] = f"{hook}:{e['PYTHONPATH']}"
        return e

    a = start(a_cli, (*base, "--claim-owner", "machine-a"), env(a_cli))
    b_args = (*base, "--claim-owner", "machine-b", "--take-over-claims-older-than", "5s")
    try:
        wait_until(lambda: set(retrieval_jobs(server, VAULT)) == ids, 120, "A's retrieval jobs")
        jobs = retrieval_jobs(server, VAULT)
        first = claim_bodies(s3, bucket)
        wait_until(lambda: all(c["renewed"] > first[aid]["renewed"] for aid, c in claim_bodies(s3, bucket).items()),
                   60, "A renewing its claims")
        rc, out, err = finish(start(b_cli, b_args, env(b_cli)))
        assert rc == 8 and statuses(out) == dict.fromkeys(ids, "busy"), (rc, out, err)
        assert retrieval_jobs(server, VAULT) == jobs

        a.send_signal(signal.SIGSTOP)
        wait_until(lambda: all(time.time() - c["renewed"] > 6 for c in claim_bodies(s3, bucket).values()),
                   60, "A's claims to age past the take-over time", interval=0.2)
        b = start(b_cli, b_args, env(b_cli))
        try:
            wait_until(lambda: all(c["pid"] == b.pid for c in claim_bodies(s3, bucket).values())
                       and len(claim_bodies(s3, bucket)) == len(ids), 120, "B taking over every claim")
            a.send_signal(signal.SIGCONT)
            rc_a, out_a, err_a = finish(a)
            assert rc_a == 8 and statuses(out_a) == dict.fromkeys(ids, "busy"), (rc_a, out_a, err_a)
            assert_one_error(SimpleNamespace(returncode=rc_a, stderr=err_a),  # type: ignore[arg-type]
                             codes=[8], match="being exported by another exporter")
            server.complete_jobs()
            rc_b, out_b, err_b = finish(b)
        finally:
            if b.poll() is None:
                b.kill()
                b.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.communicate(timeout=60)
    assert rc_b == 0 and statuses(out_b) == dict.fromkeys(ids, "exported"), (rc_b, out_b, err_b)
    took = [line for line in err_b.splitlines() if "took over" in line]
    assert len(took) == len(ids), err_b
    assert all(f"owner machine-a, process {a.pid} on {socket.gethostname()}" in line for line in took), err_b
    assert_exported_once(s3, bucket, ids)
    assert retrieval_jobs(server, VAULT) == jobs, "B started a second job for a live one"


def test_help_and_readme_name_the_claim_options(tmp_path: Path) -> None:
    from tests.helpers import REPO

    res = Cli(None, tmp_path / "cache", tmp_path)("export", "--help", connect=False)
    for option in ("--claim-owner", "--take-over-claims-older-than"):
        assert option in res.stdout, res
    readme = (REPO / "README.md").read_text()
    for text in ("--claim-owner", "--take-over-claims-older-than", "AWS_BATCH_JOB_ID",
                 "batch.kubernetes.io/job-name", "podReplacementPolicy"):
        assert text in readme, text
