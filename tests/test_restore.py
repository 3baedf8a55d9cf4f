"""``glacierfs restore`` (and ``download``'s directory/mtime/mode contract) against the real local server."""

from __future__ import annotations

import json
import os
import random
import stat
import time
from pathlib import Path

import pytest

from glacierfs.codec import encode_description
from tests.helpers.tree import Cli, kill_after_lines, make_tree, read_tree

RESTORE_FILES = 300
KILL_TRIALS = 2
KILL_FILES = 40
# The issue asks for a 1,000,000-archive vault; building that catalog takes ~35 s of import plus
# the server's populate, too slow for every CI run. CI uses 100,000 (set the variable to 1000000).
BIG_VAULT = int(os.environ.get("GLACIERFS_TEST_BIG_VAULT", "100000"))
DRY_RUN_SECONDS = 20.0  # includes the interpreter and boto3 start-up on a loaded 2-core machine


@pytest.fixture(autouse=True)
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def make_cli(server, tmp_path: Path) -> Cli:
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    return Cli(server.url, tmp_path / "cache", work)


def retrieval_jobs(server, vault: str) -> dict[str, int]:
    """Retrieval jobs per archive id, as the service's ListJobs reports them."""
    client = server.client()
    counts: dict[str, int] = {}
    kwargs: dict = {"vaultName": vault}
    while True:
        page = client.list_jobs(**kwargs)
        for job in page["JobList"]:
            if job["Action"] == "ArchiveRetrieval":
                counts[job["ArchiveId"]] = counts.get(job["ArchiveId"], 0) + 1
        if not page.get("Marker"):
            return counts
        kwargs["marker"] = page["Marker"]


def summary(res) -> str:
    lines = [ln for ln in res.lines if ln.startswith("restore:")]
    assert len(lines) == 1, str(res)
    return lines[0]


def assert_restored(out: Path, root: Path, files: dict[str, bytes]) -> None:
    got = read_tree(out)
    assert got == files, sorted(set(got) ^ set(files))[:10]
    for rel in files:
        st = (out / rel).stat()
        assert int(st.st_mtime) == int((root / rel).stat().st_mtime), rel
        assert stat.S_IMODE(st.st_mode) == 0o644, (rel, oct(st.st_mode))


def test_restore_a_300_file_directory_in_one_command(glacier_server, tmp_path: Path) -> None:
    cli = make_cli(glacier_server, tmp_path)
    root = tmp_path / "tree"
    files = make_tree(root / "photos", RESTORE_FILES, seed=5)
    other = {"other/a1.txt": b"a1", "other/b2.txt": b"b2", "other/sub/c3.txt": b"c3", "other/x.bin": b"x"}
    for rel, data in other.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    cli("vaults", "create", "r1")
    cli("sync", "-v", "r1", str(root))

    out = tmp_path / "out"  # does not exist yet: created
    res = cli("restore", "-v", "r1", "photos", "-o", str(out))
    assert summary(res).startswith(f"restore: {RESTORE_FILES} restored, 0 already here")
    assert f"jobs: {RESTORE_FILES} started, 0 reused" in summary(res)
    assert_restored(out / "photos", root / "photos", files)
    assert not (out / "other").exists()
    jobs = retrieval_jobs(glacier_server, "r1")
    assert len(jobs) == RESTORE_FILES and set(jobs.values()) == {1}

    again = cli("restore", "-v", "r1", "photos", "-o", str(out))
    assert summary(again).startswith(f"restore: 0 restored, {RESTORE_FILES} already here")
    assert retrieval_jobs(glacier_server, "r1") == jobs

    # globs: '*' stays within a component, '**' crosses them
    g = tmp_path / "globbed"
    res = cli("restore", "-v", "r1", "other/*.txt", "**/c?.txt", "-o", str(g))
    assert read_tree(g) == {k: v for k, v in other.items() if k.endswith(".txt")}
    assert "3 restored" in summary(res)
    cli("restore", "-v", "r1", "nothing/*.jpg", "-o", str(g), code=3)
    cli("restore", "-v", "r1", "no/such/dir", "-o", str(g), code=3)

    # a different file in the way is reported and kept, never overwritten
    (g / "other" / "a1.txt").write_bytes(b"mine")
    res = cli("restore", "-v", "r1", "other", "-o", str(g), code=9)
    assert (g / "other" / "a1.txt").read_bytes() == b"mine"
    assert "a1.txt" in res.stderr and "not overwritten" in res.stderr
    assert (g / "other" / "x.bin").read_bytes() == b"x"


@pytest.mark.parametrize("trial", range(KILL_TRIALS))
def test_killed_restore_rerun_starts_no_job_twice(glacier_server_factory, tmp_path: Path, trial: int) -> None:
    server = glacier_server_factory("--job-delay", "1")
    cli = make_cli(server, tmp_path)
    root = tmp_path / "tree"
    files = make_tree(root, KILL_FILES, seed=20 + trial, big=1)
    cli("vaults", "create", "rk")
    cli("sync", "-v", "rk", str(root))
    out = tmp_path / "out"
    rng = random.Random(trial)
    kill_after_lines(cli.popen("restore", "-v", "rk", "-o", str(out), "--parallel", "2"),
                     rng.randrange(1, KILL_FILES))
    before = retrieval_jobs(server, "rk")
    assert before and set(before.values()) == {1}
    res = cli("restore", "-v", "rk", "-o", str(out))
    assert "0 failed" in summary(res)
    assert_restored(out, root, files)
    after = retrieval_jobs(server, "rk")
    assert len(after) == len(files) and set(after.values()) == {1}, after
    assert not [p for p in out.rglob(".*") if "glacierfs" in p.name]  # no staging or partial file left


def test_no_wait_batches_within_limits(glacier_server_factory, tmp_path: Path) -> None:
    server = glacier_server_factory("--job-delay", "3600")
    cli = make_cli(server, tmp_path)
    root = tmp_path / "tree"
    files = make_tree(root, 30, seed=30)
    cli("vaults", "create", "rb")
    cli("sync", "-v", "rb", str(root))
    out = tmp_path / "out"
    args = ("restore", "-v", "rb", "-o", str(out), "--no-wait", "--max-jobs", "10")
    res = cli(*args, code=8)
    assert "jobs: 10 started" in summary(res)
    cli(*args, code=8)  # the 10 are still running: nothing more may start
    assert sum(retrieval_jobs(server, "rb").values()) == 10
    server.complete_jobs()
    res = cli(*args, code=8)
    assert summary(res).startswith("restore: 10 restored") and "jobs: 10 started" in summary(res)
    server.complete_jobs()
    cli(*args, code=8)
    server.complete_jobs()
    res = cli(*args)
    assert "0 not ready" not in summary(res) and "restored" in summary(res)
    assert read_tree(out) == files
    jobs = retrieval_jobs(server, "rb")
    assert len(jobs) == 30 and set(jobs.values()) == {1}

    # bytes per hour: the jobs started within the hour stay within the limit (another vault)
    cli("vaults", "create", "rh")
    cli("sync", "-v", "rh", str(root))
    limit = 1000
    cli("restore", "-v", "rh", "-o", str(tmp_path / "out2"), "--no-wait", "--max-bytes-per-hour", str(limit),
        code=8)
    started = retrieval_jobs(server, "rh")
    sizes = {job["ArchiveId"]: job["ArchiveSizeInBytes"] for job in server.client().list_jobs(vaultName="rh")["JobList"]}
    assert 0 < len(started) < 30 and sum(sizes.values()) <= limit


def test_dry_run_of_a_big_vault_prints_its_plan_in_seconds(glacier_server, tmp_path: Path) -> None:
    cli = make_cli(glacier_server, tmp_path)
    cli("vaults", "create", "big")
    # The catalog is filled the way `inventory` fills it (Catalog.import_inventory of inventory items),
    # in-process: populating the server and running an inventory job of the same size costs minutes.
    from glacierfs.catalog import Catalog
    from glacierfs.inventory import InventoryItem

    items = (InventoryItem(f"big-{i:09d}", encode_description(f"d{i % 317}/f{i}.bin", 1_600_000_000 + i),
                           "2026-01-01T00:00:00.000Z", 1024, "ab" * 32) for i in range(BIG_VAULT))
    with Catalog.open(tmp_path / "cache", glacier_server.url.rstrip("/"), "us-east-1", "big") as cat:
        cat.import_inventory(items, "2026-06-01T00:00:00.000Z")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"currency": "EUR", "Bulk": {"per_gb": 1.0, "per_1000_requests": 2.0}}))
    t0 = time.monotonic()
    res = cli("restore", "-v", "big", "-o", str(tmp_path / "out"), "--dry-run", "--tier", "bulk",
              "--prices", str(prices), "--max-jobs", "5000")
    elapsed = time.monotonic() - t0
    assert elapsed < DRY_RUN_SECONDS, elapsed
    text = res.stdout
    assert f"restore plan: {BIG_VAULT} archive(s), {BIG_VAULT * 1024} bytes selected" in text
    assert f"{BIG_VAULT} to start" in text
    bulk = next(ln for ln in res.lines if "Bulk" in ln)
    expected = BIG_VAULT * 1024 / (1 << 30) * 1.0 + BIG_VAULT / 1000 * 2.0
    assert bulk.lstrip().startswith("* Bulk") and f"{expected:.4f} EUR" in bulk
    assert any("Standard" in ln and "3 h-5 h" in ln for ln in res.lines)
    assert not (tmp_path / "out").exists()
    assert retrieval_jobs(glacier_server, "big") == {}
    # a sub-directory's plan
    sub = cli("restore", "-v", "big", "d7", "-o", str(tmp_path / "out"), "--dry-run")
    n = len([i for i in range(BIG_VAULT) if i % 317 == 7])
    assert f"restore plan: {n} archive(s)" in sub.stdout


def test_download_creates_the_directory_and_restores_mtime_and_mode(glacier_server, tmp_path: Path) -> None:
    cli = make_cli(glacier_server, tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "doc.txt").write_bytes(b"hello")
    os.utime(src / "doc.txt", (1_500_000_000, 1_500_000_000))
    cli("vaults", "create", "d1")
    cli("sync", "-v", "d1", str(src))
    out = tmp_path / "new" / "dir"
    res = cli("download", "-v", "d1", "doc.txt", "-o", f"{out}/")
    assert res.lines[0].endswith(str(out / "doc.txt"))
    st = (out / "doc.txt").stat()
    assert (out / "doc.txt").read_bytes() == b"hello"
    assert int(st.st_mtime) == 1_500_000_000 and stat.S_IMODE(st.st_mode) == 0o644
    cli("download", "-v", "d1", "doc.txt", "-o", str(tmp_path / "missing" / "x"), code=2)  # not DIR/: refused


def test_wait_returns_when_the_retrievals_and_uploads_under_the_paths_are_done(
    glacier_server_factory, tmp_path: Path
) -> None:
    from glacierfs.catalog import Catalog
    from glacierfs.upload.state import Identity, UploadState

    server = glacier_server_factory("--job-delay", "3600")
    cli = make_cli(server, tmp_path)
    root = tmp_path / "tree"
    for rel in ("photos/a.jpg", "photos/b/c.jpg", "docs/d.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    cli("vaults", "create", "w")
    cli("sync", "-v", "w", str(root))
    cli("restore", "-v", "w", "photos", "-o", str(tmp_path / "out"), "--no-wait", code=8)
    cli("wait", "-v", "w", "docs")  # nothing under docs: at once
    res = cli("wait", "-v", "w", "photos", "--timeout", "0.5", code=8)
    assert "2 retrieval job(s)" in res.stderr
    proc = cli.popen("wait", "-v", "w", "photos/b")
    try:
        server.complete_jobs()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    cli("wait", "-v", "w")

    url = server.url.rstrip("/")
    with Catalog.open(tmp_path / "cache", url, "us-east-1", "w") as cat:
        cat.put_upload("sync:docs/new.txt", UploadState(
            source="/src/new.txt", archive_path="docs/new.txt", description="d", mtime=1.0,
            identity=Identity(1, 1, 1, 1, 1), size=1, part_size=2**20))
    assert "1 upload(s)" in cli("wait", "-v", "w", "docs", "--timeout", "0.3", code=8).stderr
    cli("wait", "-v", "w", "photos")  # the pending upload is not under photos
    with Catalog.open(tmp_path / "cache", url, "us-east-1", "w") as cat:
        cat.remove_upload("sync:docs/new.txt")
    cli("wait", "-v", "w", "docs")


def test_catalog_iter_entries_selects_exactly_a_subtree(tmp_path: Path) -> None:
    from glacierfs.catalog import Catalog
    from glacierfs.inventory import InventoryItem

    paths = ["a/x", "a/b/y", "a/b/c/z", "ab/w", "a.txt", "a-b/v", "top"]
    with Catalog.open(tmp_path, "e", "us-east-1", "v") as cat:
        cat.import_inventory([InventoryItem(f"id{i}", encode_description(p, 1000 + i), "2026-01-01T00:00:00Z",
                                            i + 1, "cd" * 32) for i, p in enumerate(paths)], "2026-02-01T00:00:00Z")
        assert sorted(e[0] for e in cat.iter_entries("a")) == ["a/b/c/z", "a/b/y", "a/x"]
        assert sorted(e[0] for e in cat.iter_entries("a/b/")) == ["a/b/c/z", "a/b/y"]
        assert sorted(e[0] for e in cat.iter_entries("")) == sorted(paths)
        row = next(iter(cat.iter_entries("ab")))
        assert row == ("ab/w", "id3", 4, 1003.0, "cd" * 32)
