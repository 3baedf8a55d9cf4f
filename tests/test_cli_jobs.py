"""Jobs through the real server and the real command: downloads (verified, resumable,
atomic, confined to the target), inventory reattachment after a kill, description dialects,
faults, ``--local``.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.cli import Cli, write

POLL_LIMIT = 60.0  # seconds to wait for something a background process must do (never asserted)


def upload_raw(server, vault: str, data: bytes, description: str) -> str:
    return server.client().upload_archive(vaultName=vault, archiveDescription=description, body=data)[
        "archiveId"
    ]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


# --------------------------------------------------------------------------- download


def test_download_by_path_into_dir_cwd_and_file(cli: Cli, glacier_server, work: Path, tmp_path: Path) -> None:
    cli("vaults", "create", "v")
    data = write(work / "docs" / "report.pdf", 3 * MiB + 11)
    up = cli("upload", "-v", "v", "docs/report.pdf").lines[0].split("  ")
    glacier_server.snapshot("v")
    cli("inventory", "-v", "v", "-f")
    out = tmp_path / "out"
    out.mkdir()
    res = cli("download", "-v", "v", "docs/report.pdf", "-o", str(out))
    assert res.lines == [f"{up[0]}  {tree_hash(data)}  {len(data)}  {out / 'report.pdf'}"]
    assert (out / "report.pdf").read_bytes() == data
    assert os.listdir(out) == ["report.pdf"]  # no partial or sidecar left behind
    # an existing file at the derived name is kept
    cli.error(9, "download", "-v", "v", "docs/report.pdf", "-o", str(out), match="already exists")
    # -o FILE names the file exactly and replaces it; the finished job is reused
    (out / "named").write_bytes(b"old")
    cli("download", "-v", "v", f"-a={up[0]}", "-o", str(out / "named"))
    assert (out / "named").read_bytes() == data
    # default: the base name in the current directory
    (work / "docs" / "report.pdf").unlink()
    cli("download", "-v", "v", "/docs/./report.pdf")
    assert (work / "report.pdf").read_bytes() == data
    jobs = glacier_server.client().list_jobs(vaultName="v")["JobList"]
    assert sorted(j["Action"] for j in jobs) == ["ArchiveRetrieval", "InventoryRetrieval"]


def test_download_never_writes_outside_the_target(cli: Cli, glacier_server, tmp_path: Path) -> None:
    cli("vaults", "create", "v")
    evil = b"evil bytes"
    upload_raw(glacier_server, "v", evil, "../../../../tmp/escaped/evil.sh")
    upload_raw(glacier_server, "v", b"dots", "..")
    glacier_server.snapshot("v")
    paths = {line.split("\t")[0]: line.split("\t")[3] for line in cli("inventory", "-v", "v").lines}
    assert all(not p.startswith("/") and ".." not in p.split("/") for p in paths), paths
    evil_path = next(p for p in paths if p.endswith("tmp/escaped/evil.sh"))
    out = tmp_path / "jail" / "out"
    out.mkdir(parents=True)
    cli("download", "-v", "v", evil_path, "-o", str(out))
    assert (out / "evil.sh").read_bytes() == evil
    dots = next(i for p, i in paths.items() if p != evil_path)
    cli("download", "-v", "v", f"-a={dots}", "-o", str(out))
    assert sorted(os.listdir(out)) == sorted(
        ["evil.sh", Path(next(p for p in paths if paths[p] == dots)).name]
    )
    assert os.listdir(tmp_path / "jail") == ["out"]


def test_download_errors(cli: Cli, glacier_server, tmp_path: Path) -> None:
    cli("vaults", "create", "v")
    upload_raw(glacier_server, "v", b"abc", "f.txt")
    glacier_server.snapshot("v")
    cli("inventory", "-v", "v")
    cli.error(3, "download", "-v", "v", "-a=nosuchid", "-o", str(tmp_path), match="archive ID was not found")
    cli.error(3, "download", "-v", "v", "g.txt", match="no archive g.txt in vault v")
    cli.error(
        2, "download", "-v", "v", "f.txt", "-o", str(tmp_path / "no" / "dir" / "x"), match="does not exist"
    )
    cli.error(2, "download", "-v", "v", match="give either -a ARCHIVE_ID or PATH")
    cli.error(3, "download", "-v", "novault", "-a=x", match="vault novault does not exist")
    res = cli("download", "-v", "v", "f.txt", "--tier", "Fast", code=2)
    assert "invalid tier 'Fast'" in res.stderr


def test_download_no_wait_reuses_the_running_job(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    server = glacier_server_factory("--job-delay", "3600")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    aid = upload_raw(server, "v", b"x" * 5000, "later.bin")
    for extra in (["--tier", "bulk"], []):
        res = cli("download", "-v", "v", f"-a={aid}", "--no-wait", *extra)  # its normal outcome: exit 0
        assert res.lines == [f"pending {aid}  {res.lines[0].split()[2]}  Bulk"], str(res)
        assert "retrieval job still running" in res.stderr and "error" not in res.stderr
    status = json.loads(cli("status", "-v", "v", "--json").stdout)
    assert [(j["kind"], j["archive_id"], j["tier"]) for j in status["jobs"]] == [("retrieval", aid, "Bulk")]
    assert "job InProgress: retrieval" in cli("status", "-v", "v").stdout
    server.complete_jobs()
    cli("download", "-v", "v", f"-a={aid}", "--no-wait", "-o", str(tmp_path / "later.bin"))
    assert (tmp_path / "later.bin").read_bytes() == b"x" * 5000
    assert len(server.client().list_jobs(vaultName="v")["JobList"]) == 1


def test_download_waits_visibly_then_fetches(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    server = glacier_server_factory("--job-delay", "3600")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    aid = upload_raw(server, "v", b"y" * 100, "w.bin")
    proc = cli.popen("download", "-v", "v", f"-a={aid}", "-o", str(tmp_path / "w.bin"), "--debug")
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the job completes only once the wait was shown (EOF: it never was)
            seen.append(line)
            if "waiting for Standard retrieval job" in line:
                break
        server.complete_jobs()
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    err = "".join(seen) + err
    assert proc.returncode == 0, err
    assert "waiting for Standard retrieval job" in err
    assert (tmp_path / "w.bin").read_bytes() == b"y" * 100


def test_interrupted_download_resumes(cli: Cli, glacier_server, tmp_path: Path) -> None:
    """A download killed part-way resumes from the verified chunks (started in-process, finished by the CLI)."""
    from glacierfs.catalog import Catalog
    from glacierfs.client import ConnectionSettings, make_glacier
    from glacierfs.jobs import JobRunner

    cli("vaults", "create", "v")
    data = bytes((i * 7 + i // 999) % 256 for i in range(6 * MiB + 3))
    aid = upload_raw(glacier_server, "v", data, "big.bin")
    glacier = make_glacier(ConnectionSettings(endpoint_url=glacier_server.url, region="us-east-1"))
    catalog = Catalog.open(tmp_path / "cache", glacier_server.url, "us-east-1", "v")

    class Killed(BaseException):
        pass

    calls = {"n": 0}
    real = glacier.get_job_output

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise Killed()
        return real(*args, **kwargs)

    glacier.get_job_output = dying
    runner = JobRunner(glacier, catalog, "v", concurrency=1)
    target = tmp_path / "big.bin"
    with pytest.raises(Killed):
        runner.download(aid, target)
    close = getattr(catalog, "close", None)
    if close:
        close()
    assert not target.exists() and (tmp_path / ".big.bin.glacierfs-part.json").exists()
    res = cli("download", "-v", "v", f"-a={aid}", "-o", str(target), "--debug")
    assert "2 chunk(s) already verified" in res.stderr
    assert target.read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == sorted(["big.bin", "cache", "work", *_server_files(tmp_path)])
    assert len(glacier_server.client().list_jobs(vaultName="v")["JobList"]) == 1


def _server_files(tmp_path: Path) -> list[str]:
    return [n for n in os.listdir(tmp_path) if n.startswith("glacier-data")]


def _corrupt_then_clean_seed() -> int:
    """A seed for which the server corrupts the first GetJobOutput and not the second."""
    from glacierfs.server.faults import FaultPlan

    for seed in range(1000):
        plan = FaultPlan({"corrupt": 0.5}, seed, {"GetJobOutput"})
        if [plan.draw("GetJobOutput")[1] for _ in range(2)] == [True, False]:
            return seed
    raise AssertionError("no seed found")


def test_corrupted_job_output_is_detected_and_fetched_again(
    glacier_server_factory, tmp_path: Path, work: Path
) -> None:
    seed = _corrupt_then_clean_seed()
    server = glacier_server_factory(
        "--faults", "corrupt=0.5", "--faults-ops", "GetJobOutput", "--seed", str(seed)
    )
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    data = b"z" * (MiB // 2)
    aid = upload_raw(server, "v", data, "c.bin")
    res = cli("download", "-v", "v", f"-a={aid}", "-o", str(tmp_path / "c.bin"))
    assert "does not match the server's" in res.stderr  # the corrupted fetch was noticed ...
    assert (tmp_path / "c.bin").read_bytes() == data  # ... and fetched again


def test_always_corrupted_output_is_an_integrity_error(
    glacier_server_factory, tmp_path: Path, work: Path
) -> None:
    server = glacier_server_factory("--faults", "corrupt=1.0", "--faults-ops", "GetJobOutput", "--seed", "1")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    aid = upload_raw(server, "v", b"q" * 1000, "q.bin")
    cli.error(6, "download", "-v", "v", f"-a={aid}", "-o", str(tmp_path / "q.bin"), match="failed 5 times")
    assert not (tmp_path / "q.bin").exists()


# --------------------------------------------------------------------------- inventory -f reattach


def test_inventory_force_reattaches_after_kill(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    from glacierfs.catalog import Catalog

    server = glacier_server_factory("--job-delay", "30")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    server.populate("v", 2, size=10, descriptions=["r1", "r2"], snapshot=True)
    first = cli.popen("inventory", "-v", "v", "-f")
    try:
        deadline = time.monotonic() + POLL_LIMIT
        recorded: list = []
        while not recorded and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            cat = Catalog.open(tmp_path / "cache", server.url, "us-east-1", "v")
            recorded = cat.list_jobs(kind="inventory")
            close = getattr(cat, "close", None)
            if close:
                close()
        assert recorded, "the inventory job was not recorded"
        first.send_signal(signal.SIGKILL)
    finally:
        stop(first)
    jobs = server.client().list_jobs(vaultName="v")["JobList"]
    assert [j["JobId"] for j in jobs] == [recorded[0].job_id]
    second = cli.popen("inventory", "-v", "v", "-f", "--debug")
    try:
        server.complete_jobs()  # before or after the second run attaches: it must reattach either way
        out, err = second.communicate(timeout=120)
    finally:
        stop(second)
    assert second.returncode == 0, err
    assert "reattaching to inventory job" in err
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == ["r1", "r2"]
    assert len(server.client().list_jobs(vaultName="v")["JobList"]) == 1


# --------------------------------------------------------------------------- dialects


MT2 = "mt2 eyJmaWxlbmFtZSI6InN1Yi9ow6lsbG8tw7xuw69jb2RlLnR4dCIsIm10aW1lIjoiMjAyNjExMjVUMTUzMjQ1WiJ9"


def fastglacier(path: str) -> str:
    b64 = base64.b64encode(path.encode()).decode()
    return f"<m><v>4</v><p>{b64}</p><lm>20120821T170824Z</lm></m>"


def test_vaults_written_by_other_tools_list_with_real_paths(cli: Cli, glacier_server, tmp_path: Path) -> None:
    cli("vaults", "create", "old")
    descriptions = {
        MT2: "sub/héllo-ünïcode.txt",
        fastglacier("glacier-dg.pdf"): "glacier-dg.pdf",
        fastglacier("photos/2012/ä b.jpg"): "photos/2012/ä b.jpg",
        "backup/2020/photos.tar": "backup/2020/photos.tar",
        "/abs/plain.txt": "abs/plain.txt",
    }
    ids = {upload_raw(glacier_server, "old", d.encode()[:50] + b"!", d): p for d, p in descriptions.items()}
    glacier_server.snapshot("old")
    listed = {line.split("\t")[3]: line.split("\t")[0] for line in cli("inventory", "-v", "old", "-f").lines}
    assert listed == ids
    data = json.loads(cli("inventory", "-v", "old", "--json").stdout)
    mt2 = next(d for d in data if d["description"] == MT2)
    assert mt2["path"] == "sub/héllo-ünïcode.txt" and mt2["mtime"] is not None
    out = tmp_path / "o"
    out.mkdir()
    cli("download", "-v", "old", "sub/héllo-ünïcode.txt", "-o", str(out))
    assert (out / "héllo-ünïcode.txt").read_bytes() == MT2.encode()[:50] + b"!"


def test_csv_inventory_job_of_another_tool_is_reattached_and_imported(
    cli: Cli, glacier_server, tmp_path: Path
) -> None:
    """CSV output has no InventoryDate: the job's own date stands in, and quoting survives."""
    cli("vaults", "create", "csv")
    tricky = 'odd, "quoted" \\name.txt'
    ids = {upload_raw(glacier_server, "csv", b"x" * 10, d): d for d in (tricky, "plain/b.txt")}
    glacier_server.snapshot("csv")
    job = glacier_server.client().initiate_job(
        vaultName="csv", jobParameters={"Type": "inventory-retrieval", "Format": "CSV"}
    )["jobId"]
    listed = {line.split("\t")[3]: line.split("\t")[0] for line in cli("inventory", "-v", "csv").lines}
    assert listed == {i: d for i, d in ids.items()}
    jobs = glacier_server.client().list_jobs(vaultName="csv")["JobList"]
    assert [j["JobId"] for j in jobs] == [job]  # reattached, no second job


# --------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_twenty_files_through_faults(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    server = glacier_server_factory(
        "--faults", "500=0.05,throttle=0.03,reset=0.02,corrupt=0.1", "--seed", "7"
    )
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    files = {}
    for i in range(20):
        size = [700, 5000, MiB + 3, 2 * MiB + 700_000][i % 4] + i
        files[f"f/{i:02d}.bin"] = write(work / "f" / f"{i:02d}.bin", size, seed=i)
    up = cli("upload", "-v", "v", "--part-size", "1M", *files, timeout=600)
    assert [line.split("  ")[3] for line in up.lines] == list(files)
    for line in up.lines:
        _, th, size, path = line.split("  ")
        assert th == tree_hash(files[path]) and int(size) == len(files[path])
    server.snapshot("v")
    inv = cli("inventory", "-v", "v", "-f").lines
    assert sorted(line.split("\t")[0] for line in inv) == sorted(files)
    out = tmp_path / "out"
    out.mkdir()
    stderr = ""
    for path, data in files.items():
        res = cli("download", "-v", "v", path, "-o", str(out))
        stderr += res.stderr
        assert (out / Path(path).name).read_bytes() == data
    assert "does not match the server's" in stderr  # corrupted outputs were seen and fetched again


# --------------------------------------------------------------------------- --local


def test_local_embedded_server_and_running_server(glacier_server, tmp_path: Path, work: Path) -> None:
    data_dir = tmp_path / "local-data"
    cli = Cli(None, tmp_path / "cache", work)
    cli("vaults", "create", "lv", "--local", str(data_dir))
    write(work / "a.txt", 42)
    line = cli("upload", "-v", "lv", "a.txt", "--local", str(data_dir)).lines[0]
    assert line.split("  ")[3] == "a.txt"
    assert cli("vaults", "--local", str(data_dir)).lines[0].split("\t")[0] == "lv"
    assert not (data_dir / "server.json").exists()  # the embedded server stopped with the command
    no_keys = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    assert cli("vaults", "--local", str(data_dir), env=no_keys).lines[0].startswith("lv\t")  # dummy keys
    # the catalog of a --local endpoint is keyed by the data dir, not by a port
    listed = cli("inventory", "-v", "lv", "--local", str(data_dir)).lines
    assert [x.split("\t")[0] for x in listed] == ["a.txt"]
    # a server already running on the data dir is used, not a second one
    Cli(glacier_server.url, tmp_path / "cache", work)("vaults", "create", "seen-by-server")
    res = cli("vaults", "--local", str(glacier_server.data_dir), connect=False)
    assert "seen-by-server" in res.stdout
    cli.error(2, "vaults", "--local", str(data_dir), "--endpoint-url", "http://x", match="exclude each other")


def test_upload_rerun_resumes_on_the_same_local_data_dir(
    glacier_server_factory, tmp_path: Path, work: Path
) -> None:
    """--local finds the running server via server.json; the catalog is keyed by the data dir, so the
    re-run after a failed upload (against a restarted server on another port) resumes it."""
    data_dir = tmp_path / "shared-data"
    failing = glacier_server_factory(
        "--faults", "500=1.0", "--faults-ops", "UploadMultipartPart", data_dir=data_dir
    )
    cli = Cli(None, tmp_path / "cache", work)
    cli("vaults", "create", "v", "--local", str(data_dir))
    data = write(work / "r.bin", 2 * MiB + 9)
    res = cli("upload", "-v", "v", "--part-size", "1M", "r.bin", "--local", str(data_dir), code=None)
    assert res.returncode in (5, 6), str(res)
    assert len(failing.client().list_multipart_uploads(vaultName="v")["UploadsList"]) == 1
    failing.stop()
    healthy = glacier_server_factory(data_dir=data_dir)
    line = cli("upload", "-v", "v", "--part-size", "1M", "r.bin", "--local", str(data_dir)).lines[0]
    assert line.split("  ")[1:] == [tree_hash(data), str(len(data)), "r.bin"]
    assert healthy.client().list_multipart_uploads(vaultName="v")["UploadsList"] == []
    healthy.snapshot("v")
    listed = cli("inventory", "-v", "v", "-f", "--local", str(data_dir)).lines
    assert [x.split("\t")[0] for x in listed] == ["r.bin"]  # one archive: resumed, not uploaded twice


def test_failed_jobs_are_reported_and_replaced(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    server = glacier_server_factory("--job-delay", "3600")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    aid = upload_raw(server, "v", b"f" * 300, "f.bin")
    first = cli("download", "-v", "v", f"-a={aid}", "--no-wait").lines[0].split()
    assert first[:2] == ["pending", aid]
    server.complete_jobs(status="Failed")
    # the failed job is not reused: a new one is started (and still runs)
    second = cli("download", "-v", "v", f"-a={aid}", "--no-wait").lines[0].split()
    assert second[:2] == ["pending", aid] and second[2] != first[2]
    assert len(server.client().list_jobs(vaultName="v")["JobList"]) == 2
    server.populate("v", 1, size=5, snapshot=True)
    proc = cli.popen("inventory", "-v", "v")
    try:
        deadline = time.monotonic() + POLL_LIMIT
        while time.monotonic() < deadline and not any(
            j["Action"] == "InventoryRetrieval" for j in server.client().list_jobs(vaultName="v")["JobList"]
        ):
            time.sleep(0.1)
        server.complete_jobs(status="Failed")
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 5, err
    assert "glacierfs: error: inventory job" in err and "failed" in err
