"""`glacierfs serve` as a command: bad input, signals, and a smoke test with the real aws CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from glacierfs.treehash import tree_hash
from tests.helpers.glacier_server import REPO, GlacierServer

AWS = REPO / ".venv" / "bin" / "aws"


def serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "glacierfs", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize(
    "args",
    [
        ("--port", "70000"),
        ("--port", "http"),
        ("--job-delay", "-1"),
        ("--inventory-interval", "0"),
        ("--faults", "500=2"),
        ("--faults", "explode=0.1"),
        ("--faults", "500"),
        ("--seed", "abc"),
        ("--faults", "500=0.1", "--faults-ops", "UploadArchiv"),
        ("--verify-sigv4",),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    r = serve("--data-dir", str(tmp_path / "d"), *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(("glacierfs serve: error:", "usage:", "glacierfs serve:"))
    assert "error" in r.stderr.strip().splitlines()[-1]


def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = serve("--data-dir", str(f))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "not a directory" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o500)
    r = serve("--data-dir", str(parent / "d"))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def test_port_in_use(glacier_server, tmp_path):
    port = glacier_server.url.rsplit(":", 1)[1]
    r = serve("--data-dir", str(tmp_path / "other"), "--port", port)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "cannot start" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(tmp_path, sig):
    s = GlacierServer(tmp_path / "d")
    try:
        assert (s.data_dir / "server.json").exists()
        s.proc.send_signal(sig)
        assert s.proc.wait(30) == 0
        assert not (s.data_dir / "server.json").exists()
    finally:
        s.kill()


def test_first_line_and_explicit_port(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = GlacierServer(tmp_path / "d", "--port", str(port), "--host", "127.0.0.1")
    try:
        assert s.url == f"http://127.0.0.1:{port}"
    finally:
        s.stop()


def aws(server, *args: str, check: bool = True) -> str:
    r = subprocess.run([str(AWS), "--endpoint-url", server.url, "--output", "json", "glacier", *args],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "AWS_PAGER": ""})
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.skipif(not AWS.exists(), reason="aws CLI not installed in .venv")
def test_aws_cli_smoke(glacier_server, tmp_path: Path):
    assert json.loads(aws(glacier_server, "list-vaults", "--account-id", "-"))["VaultList"] == []
    aws(glacier_server, "create-vault", "--account-id", "-", "--vault-name", "cli")
    vaults = json.loads(aws(glacier_server, "list-vaults", "--account-id", "-"))["VaultList"]
    assert [v["VaultName"] for v in vaults] == ["cli"]
    src = tmp_path / "in.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    up = json.loads(aws(glacier_server, "upload-archive", "--account-id", "-", "--vault-name", "cli",
                        "--archive-description", "from the aws cli", "--body", str(src)))
    assert up["checksum"] == tree_hash(data)
    params = json.dumps({"Type": "archive-retrieval", "ArchiveId": up["archiveId"]})
    job = json.loads(aws(glacier_server, "initiate-job", "--account-id", "-", "--vault-name", "cli",
                         "--job-parameters", params))["jobId"]
    desc = json.loads(aws(glacier_server, "describe-job", "--account-id", "-", "--vault-name", "cli",
                          f"--job-id={job}"))
    assert desc["StatusCode"] == "Succeeded"
    out = tmp_path / "out.bin"
    meta = json.loads(aws(glacier_server, "get-job-output", "--account-id", "-", "--vault-name", "cli",
                          f"--job-id={job}", str(out)))
    assert out.read_bytes() == data
    assert meta["checksum"] == tree_hash(data)
    glacier_server.snapshot("cli")
    inv = json.loads(aws(glacier_server, "initiate-job", "--account-id", "-", "--vault-name", "cli",
                         "--job-parameters", '{"Type": "inventory-retrieval"}'))["jobId"]
    inv_out = tmp_path / "inv.json"
    aws(glacier_server, "get-job-output", "--account-id", "-", "--vault-name", "cli", f"--job-id={inv}", str(inv_out))
    listed = json.loads(inv_out.read_text())["ArchiveList"]
    assert [a["ArchiveId"] for a in listed] == [up["archiveId"]]


def test_corrupt_metadata_is_one_line(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "meta.sqlite3").write_bytes(b"this is not a database" * 100)
    r = serve("--data-dir", str(d))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "metadata database" in lines[0]
    assert not (d / "server.json").exists()
