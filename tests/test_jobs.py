"""JobRunner against an in-memory Glacier double: job reuse and reattachment, polling,
verified chunked downloads (corruption, truncation, resume), inventory import.

The end-to-end behaviour through the real server is in tests/test_cli_*.py; here the
double makes the failure cases exact (which chunk is corrupted, when the process dies).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from glacierfs.catalog import JobRecord
from glacierfs.client import JobNotFoundError, NoInventoryError
from glacierfs.download import download_concurrency
from glacierfs.errors import (
    IntegrityError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    StateError,
    UsageError,
)
from glacierfs.jobs import Backoff, JobRunner, NoInventoryYet, chunk_size_for, parse_iso
from glacierfs.progress import Progress
from glacierfs.treehash import MiB, tree_hash

VAULT = "v1"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Interrupted(BaseException):
    """Stands in for the process being killed (not an Exception: nothing may swallow it)."""


@dataclass
class FakeArchive:
    archive_id: str
    path: str
    size: int
    tree_hash: str
    creation_date: str = "2026-01-01T00:00:00.000Z"
    mtime: float = 0.0
    description: str = ""
    source: str = "inventory"


class FakeCatalog:
    """The subset of the Catalog contract JobRunner uses, in memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.archives: dict[str, FakeArchive] = {}
        self.inventory_date: str | None = None
        self.imports: list[tuple[str, list]] = []

    def put_job(self, job: Any) -> None:
        rec = job if isinstance(job, JobRecord) else JobRecord.from_dict(job)
        self.jobs[rec.job_id] = rec.to_dict()

    def get_job(self, job_id: str) -> JobRecord | None:
        job = self.jobs.get(job_id)
        return JobRecord.from_dict(job) if job else None

    def list_jobs(self, kind: str | None = None, archive_id: str | None = None) -> list[JobRecord]:
        return [
            JobRecord.from_dict(j)
            for j in self.jobs.values()
            if (kind is None or j.get("kind") == kind)
            and (archive_id is None or j.get("archive_id") == archive_id)
        ]

    def remove_job(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    def get(self, archive_id: str) -> FakeArchive | None:
        return self.archives.get(archive_id)

    def import_inventory(self, items: Any, inventory_date: str) -> dict:
        items = list(items)
        self.imports.append((inventory_date, items))
        self.inventory_date = inventory_date
        for it in items:
            self.archives[it.archive_id] = FakeArchive(it.archive_id, it.description, it.size, it.tree_hash)
        return {"added": len(items)}


class FakeGlacier:
    """Jobs complete when the test says so; outputs can be corrupted, truncated or unhashed."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}
        self.n = 0
        self.has_inventory = True
        self.inventory_archives: list[dict] = []
        self.corrupt_next = 0  # flip a byte in the next N outputs (hash header stays right)
        self.truncate_next = 0
        self.send_hash = True
        self.fetches: list[tuple[str, Any]] = []
        self.fail_fetch_after: int | None = None  # raise Interrupted on fetch number N

    def add_archive(self, archive_id: str, data: bytes) -> None:
        self.data[archive_id] = data

    def _new_job(self, **fields: Any) -> str:
        self.n += 1
        job_id = f"-job{self.n:04d}"
        self.jobs[job_id] = {
            "JobId": job_id,
            "CreationDate": now_iso(),
            "Completed": False,
            "StatusCode": "InProgress",
            "VaultARN": f"arn:aws:glacier:us-east-1:012345678901:vaults/{VAULT}",
            **fields,
        }
        return job_id

    def complete(self, job_id: str, status: str = "Succeeded") -> None:
        job = self.jobs[job_id]
        job.update(Completed=True, StatusCode=status, CompletionDate=now_iso())
        if job["Action"] == "ArchiveRetrieval":
            job["SHA256TreeHash"] = job["ArchiveSHA256TreeHash"]
        else:
            job["_output"] = json.dumps(
                {
                    "VaultARN": job["VaultARN"],
                    "InventoryDate": now_iso(),
                    "ArchiveList": self.inventory_archives,
                }
            ).encode()
            job["InventorySizeInBytes"] = len(job["_output"])

    # -- the Glacier wrapper surface
    def initiate_inventory(self, vault: str, fmt: str = "JSON") -> str:
        if not self.has_inventory:
            raise NoInventoryError(
                "Glacier has no inventory for this vault yet (Inventory retrieval jobs for vault x cannot be "
                "initiated yet, as Amazon Glacier has not yet generated an initial inventory for this vault.)"
            )
        return self._new_job(Action="InventoryRetrieval", InventoryRetrievalParameters={"Format": fmt})

    def initiate_retrieval(
        self, vault: str, archive_id: str, tier: str = "Standard", byte_range: Any = None
    ) -> str:
        if archive_id not in self.data:
            raise NotFoundError(f"The archive ID was not found: {archive_id}")
        data = self.data[archive_id]
        return self._new_job(
            Action="ArchiveRetrieval",
            ArchiveId=archive_id,
            ArchiveSizeInBytes=len(data),
            ArchiveSHA256TreeHash=tree_hash(data),
            RetrievalByteRange=f"0-{len(data) - 1}",
            Tier=tier,
        )

    def describe_job(self, vault: str, job_id: str) -> dict:
        if job_id not in self.jobs:
            raise JobNotFoundError(f"The job ID was not found: {job_id}")
        return {k: v for k, v in self.jobs[job_id].items() if not k.startswith("_")}

    def list_jobs(self, vault: str) -> list[dict]:
        return [self.describe_job(vault, j) for j in self.jobs]

    def get_job_output(self, vault: str, job_id: str, byte_range: Any = None) -> tuple[io.BytesIO, dict]:
        if job_id not in self.jobs:
            raise JobNotFoundError(f"The job ID was not found: {job_id}")
        job = self.jobs[job_id]
        if job["StatusCode"] != "Succeeded":
            raise NotReadyError(f"The job is not currently available for download: {job_id}")
        self.fetches.append((job_id, byte_range))
        if self.fail_fetch_after is not None and len(self.fetches) > self.fail_fetch_after:
            raise Interrupted()
        body = self.data[job["ArchiveId"]] if job["Action"] == "ArchiveRetrieval" else job["_output"]
        total = len(body)
        start, end = byte_range if byte_range else (0, total - 1)
        chunk = body[start : end + 1]
        headers = {"content-length": str(len(chunk))}
        if byte_range:
            headers["content-range"] = f"bytes {start}-{end}/{total}"
        if job["Action"] == "ArchiveRetrieval":
            headers["content-type"] = "application/octet-stream"
            if self.send_hash:
                headers["x-amz-sha256-tree-hash"] = tree_hash(chunk)
        else:
            headers["content-type"] = "application/json"
        if self.corrupt_next:
            self.corrupt_next -= 1
            mid = len(chunk) // 2
            chunk = chunk[:mid] + bytes([chunk[mid] ^ 0x55]) + chunk[mid + 1 :]
        elif self.truncate_next:
            self.truncate_next -= 1
            chunk = chunk[: len(chunk) // 2]
        return io.BytesIO(chunk), headers


def payload(size: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed + i // 977) % 251 for i in range(size))


@pytest.fixture
def env(tmp_path: Path) -> tuple[FakeGlacier, FakeCatalog, JobRunner]:
    g, c = FakeGlacier(), FakeCatalog()
    runner = JobRunner(g, c, VAULT, poll=Backoff(0, 0), sleep=lambda s: None, chunk_size=MiB, concurrency=1)
    return g, c, runner


def complete_on_poll(g: FakeGlacier, runner: JobRunner) -> None:
    """Complete every in-progress job the first time the runner sleeps."""

    def sleep(_: float) -> None:
        for job_id, job in g.jobs.items():
            if job["StatusCode"] == "InProgress":
                g.complete(job_id)

    runner.sleep = sleep


# --------------------------------------------------------------------------- small pieces


def test_backoff_is_capped_exponential() -> None:
    it = Backoff(1, 60).delays()
    assert [next(it) for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert next(Backoff.local().delays()) < 1


def test_chunk_size_is_power_of_two_mib_and_smaller_for_small_archives() -> None:
    assert chunk_size_for(1) == MiB
    assert chunk_size_for(5 * MiB) == MiB
    assert chunk_size_for(100 * MiB) == 16 * MiB
    assert chunk_size_for(10 << 30) == 64 * MiB
    for size in (1, 3 * MiB, 100 * MiB, 5 << 30):
        c = chunk_size_for(size)
        assert c & (c - 1) == 0 and c >= MiB


def test_download_threads_one_per_chunk_up_to_eight() -> None:
    assert download_concurrency(1, MiB) == 1
    assert download_concurrency(3 * MiB, MiB) == 3
    assert download_concurrency(1 << 30, chunk_size_for(1 << 30)) == 8  # 16 ranges of 64 MiB
    assert download_concurrency(10 << 30, 64 * MiB) == 8


def test_parse_iso() -> None:
    assert parse_iso("1970-01-01T00:01:00.000Z") == 60
    assert parse_iso("1970-01-01T00:01:00Z") == 60
    assert parse_iso(None) is None and parse_iso("garbage") is None


# --------------------------------------------------------------------------- downloads


def test_download_waits_verifies_and_moves_into_place(env, tmp_path: Path) -> None:
    g, c, runner = env
    runner.concurrency = 3
    data = payload(5 * MiB + 123)
    g.add_archive("-arch", data)
    complete_on_poll(g, runner)
    out = tmp_path / "out.bin"
    res = runner.download_verified("-arch", out)
    assert out.read_bytes() == data
    assert res.tree_hash == tree_hash(data) and res.size == len(data)
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]  # no partial or sidecar left
    assert sorted(r for _, r in g.fetches) == [(i * MiB, min(len(data), (i + 1) * MiB) - 1) for i in range(6)]
    # recorded in the catalog, and reused (no second job) by the next download
    assert [j.status for j in c.list_jobs(kind="retrieval", archive_id="-arch")] == ["Succeeded"]
    runner.download(out=tmp_path / "again.bin", archive_id="-arch")
    assert len(g.jobs) == 1


def test_corrupted_chunk_is_fetched_again(env, tmp_path: Path) -> None:
    g, _, runner = env
    data = payload(3 * MiB)
    g.add_archive("a", data)
    g.complete(g.initiate_retrieval(VAULT, "a"))  # a job started by another tool: found via ListJobs
    g.corrupt_next = 2
    g.truncate_next = 0
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data
    assert len(g.jobs) == 1
    assert len(g.fetches) == 3 + 2


def test_truncated_chunk_is_fetched_again(env, tmp_path: Path) -> None:
    g, _, runner = env
    data = payload(2 * MiB + 5)
    g.add_archive("a", data)
    g.complete(g.initiate_retrieval(VAULT, "a"))
    g.truncate_next = 1
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data


def test_persistent_corruption_is_an_integrity_error_and_nothing_is_placed(env, tmp_path: Path) -> None:
    g, _, runner = env
    g.add_archive("a", payload(2 * MiB))
    g.complete(g.initiate_retrieval(VAULT, "a"))
    g.corrupt_next = 100
    with pytest.raises(IntegrityError, match=r"bytes \d+-\d+ of archive a failed 5 times.*tree hash"):
        runner.download("a", tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_without_server_hashes_the_whole_file_check_catches_corruption(env, tmp_path: Path) -> None:
    g, _, runner = env
    data = payload(3 * MiB + 7)
    g.add_archive("a", data)
    g.complete(g.initiate_retrieval(VAULT, "a"))
    g.send_hash = False
    g.corrupt_next = 1  # undetectable per chunk: caught by combining, then all chunks re-fetched
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data
    g.corrupt_next = 100
    with pytest.raises(IntegrityError, match="does not match tree hash"):
        runner.download("a", tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_interrupted_download_resumes_from_verified_chunks(env, tmp_path: Path) -> None:
    g, _, runner = env
    runner.concurrency = 1
    data = payload(6 * MiB + 1)
    g.add_archive("a", data)
    g.complete(g.initiate_retrieval(VAULT, "a"))
    g.fail_fetch_after = 3
    with pytest.raises(Interrupted):
        runner.download("a", tmp_path / "f")
    assert not (tmp_path / "f").exists()
    state = json.loads((tmp_path / ".f.glacierfs-part.json").read_text())
    assert sorted(state["chunks"], key=int) == ["0", "1", "2"]
    g.fail_fetch_after = None
    g.fetches.clear()
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data
    assert [r[0] for _, r in g.fetches] == [3 * MiB, 4 * MiB, 5 * MiB, 6 * MiB]
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_stale_sidecar_of_another_archive_is_discarded(env, tmp_path: Path) -> None:
    g, _, runner = env
    data = payload(2 * MiB, seed=9)
    g.add_archive("a", data)
    g.complete(g.initiate_retrieval(VAULT, "a"))
    (tmp_path / ".f.glacierfs-part").write_bytes(b"x" * 2 * MiB)
    (tmp_path / ".f.glacierfs-part.json").write_text(
        json.dumps(
            {
                "archive_id": "other",
                "size": 2 * MiB,
                "tree_hash": "00",
                "chunk_size": MiB,
                "chunks": {"0": ["00", True]},
            }
        )
    )
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data


def test_corrupted_partial_on_disk_is_detected_and_refetched(env, tmp_path: Path) -> None:
    g, _, runner = env
    runner.concurrency = 1
    data = payload(3 * MiB)
    g.add_archive("a", data)
    g.complete(g.initiate_retrieval(VAULT, "a"))
    g.fail_fetch_after = 2
    with pytest.raises(Interrupted):
        runner.download("a", tmp_path / "f")
    part = tmp_path / ".f.glacierfs-part"
    with open(part, "r+b") as f:  # the disk "lies" about an already verified chunk
        f.seek(10)
        f.write(b"\xff\xfe")
    g.fail_fetch_after = None
    g.fetches.clear()
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == data
    assert [r[0] for _, r in g.fetches] == [2 * MiB, 0]


def test_concurrent_download_to_the_same_target_is_refused(env, tmp_path: Path) -> None:
    import fcntl

    g, _, runner = env
    g.add_archive("a", payload(MiB))
    g.complete(g.initiate_retrieval(VAULT, "a"))
    fd = os.open(tmp_path / ".f.glacierfs-part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StateError, match="another glacierfs process is downloading"):
            runner.download("a", tmp_path / "f")
    finally:
        os.close(fd)


def test_job_tree_hash_disagreeing_with_catalog_is_an_integrity_error(env, tmp_path: Path) -> None:
    g, c, runner = env
    g.add_archive("a", payload(MiB))
    c.archives["a"] = FakeArchive("a", "p", MiB, "ab" * 32)
    g.complete(g.initiate_retrieval(VAULT, "a"))
    with pytest.raises(IntegrityError, match="the job reports tree hash"):
        runner.download("a", tmp_path / "f")


def test_failed_job_is_reported_and_a_new_one_started_next_time(env, tmp_path: Path) -> None:
    g, _, runner = env
    g.add_archive("a", payload(MiB))
    runner.retrieval("a")
    job = next(iter(g.jobs))
    g.complete(job, status="Failed")
    g.jobs[job]["StatusMessage"] = "archive deleted"
    assert runner.retrieval_state("a") == "failed"
    complete_on_poll(g, runner)
    runner.download("a", tmp_path / "f")
    assert len(g.jobs) == 2


def test_non_waiting_api_for_the_mount(env, tmp_path: Path) -> None:
    g, c, runner = env
    data = payload(MiB + 1)
    g.add_archive("a", data)
    assert runner.retrieval_state("a") == "none"
    assert runner.fetch_if_ready("a", tmp_path / "f") is None
    assert not g.jobs  # neither call starts a job
    desc = runner.retrieval("a", tier="Expedited")
    assert desc["StatusCode"] == "InProgress" and desc["Tier"] == "Expedited"
    assert c.get_job(desc["JobId"]).tier == "Expedited"  # recorded at once
    assert runner.retrieval_state("a") == "in_progress"
    with pytest.raises(NotReadyError, match="still running"):
        runner.download("a", tmp_path / "f", wait=False)
    assert runner.fetch_if_ready("a", tmp_path / "f") is None
    g.complete(desc["JobId"])
    assert runner.retrieval_state("a") == "ready"
    assert runner.fetch_if_ready("a", tmp_path / "f") == tmp_path / "f"
    assert (tmp_path / "f").read_bytes() == data
    assert len(g.jobs) == 1


def test_expired_job_is_forgotten_and_replaced(env, tmp_path: Path) -> None:
    g, c, runner = env
    g.add_archive("a", payload(MiB))
    old = runner.retrieval("a")["JobId"]
    del g.jobs[old]  # expired on the service
    complete_on_poll(g, runner)
    runner.download("a", tmp_path / "f")
    assert old not in c.jobs and len(c.jobs) == 1


def test_unknown_archive_is_not_found(env, tmp_path: Path) -> None:
    _, _, runner = env
    with pytest.raises(NotFoundError, match="archive ID was not found"):
        runner.download("nope", tmp_path / "f")


def test_waiting_shows_status_and_backs_off(env, tmp_path: Path) -> None:
    g, _, runner = env
    g.add_archive("a", payload(10))
    slept: list[float] = []
    lines: list[str] = []

    class P(Progress):
        def status(self, msg: str) -> None:
            lines.append(msg)

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 4:
            for job_id in list(g.jobs):
                g.complete(job_id)

    runner.progress = P(enabled=False)
    runner.poll = Backoff(1, 3)
    runner.sleep = sleep
    runner.download("a", tmp_path / "f")
    assert slept == [1, 2, 3, 3]
    assert any("waiting for Standard retrieval job" in m and "started" in m for m in lines)


def test_polling_survives_transient_service_errors(env, tmp_path: Path) -> None:
    g, _, runner = env
    g.add_archive("a", payload(10))
    real = g.describe_job
    calls = {"n": 0}

    def flaky(vault: str, job_id: str) -> dict:
        calls["n"] += 1
        if calls["n"] in (2, 3):
            raise ServiceError("Glacier failed: ServiceUnavailableException")
        return real(vault, job_id)

    g.describe_job = flaky  # type: ignore[method-assign]
    complete_on_poll(g, runner)
    runner.download("a", tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == payload(10)


# --------------------------------------------------------------------------- inventory


def inv_item(i: int) -> dict:
    return {
        "ArchiveId": f"id{i}",
        "ArchiveDescription": f"file{i}",
        "CreationDate": "2026-01-01T00:00:00Z",
        "Size": i + 1,
        "SHA256TreeHash": "00" * 32,
    }


def test_inventory_from_catalog_needs_no_job(env) -> None:
    g, c, runner = env
    c.inventory_date = "2026-01-01T00:00:00Z"
    assert runner.inventory() is None
    assert not g.jobs


def test_inventory_job_is_recorded_before_waiting_and_reattached(env) -> None:
    g, c, runner = env
    g.inventory_archives = [inv_item(i) for i in range(3)]

    def killed(_: float) -> None:
        raise Interrupted()

    runner.sleep = killed
    with pytest.raises(Interrupted):
        runner.inventory(force=True)
    (job_id,) = g.jobs
    assert c.get_job(job_id).kind == "inventory" and c.get_job(job_id).forced
    # re-run -f while the job still runs: reattach
    complete_on_poll(g, runner)
    runner.inventory(force=True)
    assert list(g.jobs) == [job_id]
    assert [a.archive_id for a in c.imports[0][1]] == ["id0", "id1", "id2"]
    assert c.get_job(job_id).imported
    # a further -f: the finished job was imported already, so a new job
    runner.inventory(force=True)
    assert len(g.jobs) == 2


def test_inventory_reattaches_to_finished_unimported_job_after_interruption(env) -> None:
    g, c, runner = env
    g.inventory_archives = [inv_item(1)]
    runner.sleep = lambda s: (_ for _ in ()).throw(Interrupted())
    with pytest.raises(Interrupted):
        runner.inventory(force=True)
    (job_id,) = g.jobs
    g.complete(job_id)  # finished while nobody waited
    runner.inventory(force=True)
    assert list(g.jobs) == [job_id] and len(c.imports) == 1


def test_force_joins_a_running_job_of_another_tool_but_not_a_finished_one(env) -> None:
    g, c, runner = env
    g.inventory_archives = [inv_item(1)]
    other = g.initiate_inventory(VAULT)
    g.complete(other)  # finished, started elsewhere: stale for -f
    running = g.initiate_inventory(VAULT)  # still running: as fresh as a new job
    complete_on_poll(g, runner)
    runner.inventory(force=True)
    assert len(g.jobs) == 2 and c.get_job(running).imported


def test_without_force_a_finished_job_of_another_tool_is_used(env) -> None:
    g, c, runner = env
    g.inventory_archives = [inv_item(1)]
    other = g.initiate_inventory(VAULT)
    g.complete(other)
    runner.inventory()
    assert len(g.jobs) == 1 and c.inventory_date


def test_corrupted_inventory_output_is_fetched_again(env) -> None:
    g, c, runner = env
    g.inventory_archives = [inv_item(i) for i in range(5)]
    complete_on_poll(g, runner)
    g.corrupt_next = 1
    runner.inventory()
    assert len(c.imports) == 1 and len(c.imports[0][1]) == 5
    assert len(g.fetches) >= 3  # one bad, then two that agree


def test_inventory_output_that_never_arrives_intact_is_an_integrity_error(env) -> None:
    g, c, runner = env
    g.inventory_archives = [inv_item(i) for i in range(5)]
    complete_on_poll(g, runner)
    g.truncate_next = 100
    with pytest.raises(IntegrityError, match="could not be fetched intact"):
        runner.inventory()
    assert c.inventory_date is None


def test_vault_without_inventory_yet(env) -> None:
    g, _, runner = env
    g.has_inventory = False
    with pytest.raises(NoInventoryYet, match="has no inventory yet") as info:
        runner.inventory()
    assert info.value.exit_code == 8


def test_failed_inventory_job(env) -> None:
    g, c, runner = env

    def sleep(_: float) -> None:
        for job_id in g.jobs:
            g.complete(job_id, status="Failed")

    runner.sleep = sleep
    with pytest.raises(ServiceError, match=r"inventory job .* failed"):
        runner.inventory()
    assert not c.jobs


def test_inventory_wait_false_returns_none_while_running(env) -> None:
    g, c, runner = env
    assert runner.inventory(wait=False) is None
    assert len(g.jobs) == 1 and len(c.jobs) == 1
    assert runner.inventory(wait=False) is None
    assert len(g.jobs) == 1


def test_long_target_names_get_a_hashed_partial_name(env, tmp_path: Path) -> None:
    g, _, runner = env
    g.add_archive("a", payload(MiB + 1))
    g.complete(g.initiate_retrieval(VAULT, "a"))
    out = tmp_path / ("n" * 250)
    runner.download("a", out)
    assert out.read_bytes() == payload(MiB + 1)
    assert os.listdir(tmp_path) == [out.name]


def test_unwritable_target_directory_is_a_usage_error(env, tmp_path: Path) -> None:
    g, _, runner = env
    g.add_archive("a", payload(10))
    g.complete(g.initiate_retrieval(VAULT, "a"))
    with pytest.raises(UsageError, match="cannot write in"):
        runner.download("a", tmp_path / "missing-dir" / "f")


# --------------------------------------------------------------------------- single-flight retrievals (real server)

SINGLE_FLIGHT_THREADS = 8  # per process
SINGLE_FLIGHT_TRIALS = 3

_ASKER = r"""
import sys, threading
from pathlib import Path
from glacierfs.catalog import Catalog
from glacierfs.client import ConnectionSettings, make_glacier
from glacierfs.jobs import JobRunner
url, cache, aid, go, n = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
glacier = make_glacier(ConnectionSettings(endpoint_url=url, region="us-east-1", access_key="testing",
                                          secret_key="testing", max_attempts=3))
catalog = Catalog.open(cache, url, "us-east-1", "v")
runner = JobRunner(glacier, catalog, "v")
barrier = threading.Barrier(n)
ids, errors = [], []
def ask():
    barrier.wait()
    try:
        ids.append(runner.retrieval(aid)["JobId"])
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=ask) for _ in range(n)]
print("ready", flush=True)
import time
while not go.exists():
    time.sleep(0.005)
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(sorted(set(ids))), "|", "; ".join(errors), flush=True)
"""


def _server_retrieval_jobs(server, vault: str, archive_id: str) -> list[dict]:
    jobs = server.client(max_attempts=3).list_jobs(vaultName=vault)["JobList"]
    return [j for j in jobs if j.get("ArchiveId") == archive_id]


@pytest.mark.timeout(240)
def test_concurrent_retrievals_of_one_archive_start_one_job(glacier_server, tmp_path: Path) -> None:
    """N threads in each of 2 processes (and N here) ask for the same archive at the same moment:
    the server holds exactly one retrieval job for it (the find-then-start is single-flight)."""
    import subprocess
    import sys
    import threading

    from glacierfs.catalog import Catalog
    from glacierfs.client import ConnectionSettings, make_glacier

    glacier_server.client().create_vault(vaultName="v")
    url = glacier_server.url
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for trial in range(SINGLE_FLIGHT_TRIALS):
        aid = glacier_server.client().upload_archive(vaultName="v", body=b"x" * (100 + trial))["archiveId"]
        go = tmp_path / f"go-{trial}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _ASKER, url, str(cache), aid, str(go), str(SINGLE_FLIGHT_THREADS)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )
            for _ in range(2)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            glacier = make_glacier(ConnectionSettings(endpoint_url=url, region="us-east-1", access_key="testing",
                                                      secret_key="testing", max_attempts=3))
            catalog = Catalog.open(cache, url, "us-east-1", "v")
            runner = JobRunner(glacier, catalog, "v")
            barrier = threading.Barrier(SINGLE_FLIGHT_THREADS + 1)
            ids: list[str] = []

            def ask(runner: JobRunner, barrier: threading.Barrier, ids: list[str], aid: str) -> None:
                barrier.wait()
                ids.append(runner.retrieval(aid)["JobId"])

            threads = [threading.Thread(target=ask, args=(runner, barrier, ids, aid))
                       for _ in range(SINGLE_FLIGHT_THREADS)]
            for t in threads:
                t.start()
            go.touch()
            barrier.wait()
            for t in threads:
                t.join(120)
            outs = [p.communicate(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate(timeout=30)
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err
            got, _, errors = out.partition("|")
            assert errors.strip() == "", out
            ids.extend(got.split())
        jobs = _server_retrieval_jobs(glacier_server, "v", aid)
        assert len(jobs) == 1, f"trial {trial}: {len(jobs)} jobs started for one archive"
        assert set(ids) == {jobs[0]["JobId"]}
        catalog.close()


MOUNT_AND_DOWNLOAD_TRIALS = 2


@pytest.mark.timeout(300)
def test_setfattr_retrieve_and_cli_download_at_once_start_one_job(glacier_server_factory, tmp_path: Path) -> None:
    """A ``setfattr -n user.glacier.retrieve`` in a real mount and a ``glacierfs download`` of the same
    archive, started together, share one retrieval job (both go through JobRunner.retrieval and its
    per-archive lock in the vault's state dir)."""
    import subprocess
    import sys

    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    server = glacier_server_factory("--job-delay", "1")
    vault = tm.VAULT
    server.client(max_attempts=3).create_vault(vaultName=vault)
    cache = tmp_path / "cache"
    datas = {f"f{i}.bin": os.urandom(5000 + i) for i in range(MOUNT_AND_DOWNLOAD_TRIALS)}
    ids = {name: server.client().upload_archive(vaultName=vault, body=data, archiveDescription=name)["archiveId"]
           for name, data in datas.items()}
    server.snapshot(vault)
    tm.glacierfs("inventory", "-v", vault, "-f", "--endpoint-url", server.url, "--region", "us-east-1",
                 "--cache-dir", str(cache), "-q")
    m = tm.Mount(tmp_path / "mnt", cache, server.url, vault)
    try:
        m.start()
        for name, aid in ids.items():
            target = m.mnt / name
            assert tm.getfattr(target, "user.glacier.state") == "archived", m.log()
            out = tmp_path / f"out-{name}"
            cmds = [
                ["setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(target)],
                [sys.executable, "-m", "glacierfs", "download", "-v", vault, f"-a={aid}", "-o", str(out),
                 "--endpoint-url", server.url, "--region", "us-east-1", "--cache-dir", str(cache), "-q"],
            ]
            procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tm.env())
                     for c in cmds]
            results = []
            for p in procs:
                try:
                    results.append(p.communicate(timeout=120))
                finally:
                    if p.poll() is None:
                        p.kill()
                        p.communicate(timeout=30)
            for p, (_stdout, stderr) in zip(procs, results, strict=True):
                assert p.returncode == 0, f"{p.args}: {stderr}\n{m.log()}"
            assert out.read_bytes() == datas[name]
            jobs = _server_retrieval_jobs(server, vault, aid)
            assert len(jobs) == 1, f"{name}: {len(jobs)} retrieval jobs for one archive\n{m.log()}"
    finally:
        m.close()


# --------------------------------------------------------------------------- bounded bodies and waits

from glacierfs.download import Deadlines, TransferTimeout, read_body  # noqa: E402


class _Trickle:
    """A body giving one byte per read1 while a fake clock advances ``step`` seconds each time."""

    def __init__(self, data: bytes, step: float, now: list[float]) -> None:
        self.data, self.step, self.now = data, step, now

    def read1(self, amt: int) -> bytes:
        self.now[0] += self.step
        out, self.data = self.data[:1], self.data[1:]
        return out

    read = read1

    def close(self) -> None:
        pass


def test_a_trickling_body_is_given_up_after_the_stall_timeout() -> None:
    now = [0.0]
    got = bytearray()
    with pytest.raises(TransferTimeout, match="stalled"):
        read_body(_Trickle(b"x" * 1000, 5.0, now), got.extend, limit=1000, what="body",
                  deadlines=Deadlines(stall=60), expected=1000, clock=lambda: now[0])
    assert now[0] <= 70 and len(got) < 20


def test_a_slow_body_is_given_up_at_the_overall_deadline() -> None:
    now = [0.0]
    data = b"y" * (10 << 20)

    class Steady(_Trickle):
        def read1(self, amt: int) -> bytes:
            self.now[0] += self.step
            out, self.data = self.data[: 64 * 1024], self.data[64 * 1024 :]
            return out

    with pytest.raises(TransferTimeout, match="longer than"):
        read_body(Steady(data, 1.0, now), lambda b: None, limit=len(data), what="body",
                  deadlines=Deadlines(transfer_base=10, min_rate=1 << 20, stall=60), expected=len(data),
                  clock=lambda: now[0])


def test_a_body_longer_than_its_limit_stops_at_the_limit() -> None:
    got = bytearray()
    with pytest.raises(IntegrityError, match="longer than 100 bytes"):
        read_body(io.BytesIO(b"z" * 10_000), got.extend, limit=100, what="body", deadlines=Deadlines())
    assert len(got) <= 100


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_timeout_option_must_be_a_positive_number(bad: float) -> None:
    with pytest.raises(UsageError):
        Deadlines.capped(bad)
    assert Deadlines.capped(5).job_wait == 5 and Deadlines.capped(5).stall == 5


def test_inventory_spool_is_bounded_by_the_declared_size(env, monkeypatch) -> None:
    """An output far longer than the job declared is cut off near the declared size, never spooled whole."""
    g, c, runner = env
    g.inventory_archives = [inv_item(i) for i in range(5)]
    real_complete = g.complete

    def complete(job_id: str, status: str = "Succeeded") -> None:
        real_complete(job_id, status)
        g.jobs[job_id]["_output"] = b" " * (8 << 20)  # 8 MiB for a job that declared ~1 KB

    g.complete = complete  # type: ignore[method-assign]
    complete_on_poll(g, runner)
    written: list[int] = []
    import tempfile

    real_tf = tempfile.TemporaryFile

    def spy(*a: Any, **k: Any) -> Any:
        f = real_tf(*a, **k)
        written.append(0)
        orig = f.write

        def write(b: bytes) -> int:
            written[-1] += len(b)
            return orig(b)

        f.write = write
        return f

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    with pytest.raises(IntegrityError, match="longer than"):
        runner.inventory()
    assert written and max(written) < 200_000, written
    assert c.inventory_date is None


def test_inventory_that_does_not_fit_the_free_space_is_refused(env, monkeypatch) -> None:
    g, _, runner = env
    g.inventory_archives = [inv_item(i) for i in range(5)]
    complete_on_poll(g, runner)

    class Tiny:
        f_bavail, f_frsize = 1, 512

    monkeypatch.setattr(os, "fstatvfs", lambda fd: Tiny)
    with pytest.raises(StateError, match="do not fit"):
        runner.inventory()


def test_job_wait_has_a_deadline(env) -> None:
    _, c, runner = env
    runner.deadlines = Deadlines(job_wait=0.0)
    with pytest.raises(NotReadyError, match="gave up waiting"):
        runner.inventory()
    assert len(c.jobs) == 1  # the job stays recorded: a re-run reattaches
