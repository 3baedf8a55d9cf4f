"""The mount's life cycle through the real commands: start, dead mounts, stop, exit codes, logs, hints.

Each test runs the installed ``glacierfs`` console script (the daemonizing ``mount``, ``umount``)
against real FUSE mounts and a real server; :class:`tests.helpers.mounts.MountSet` detaches every
mount and ends every daemon a test started, failures included.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glacierfs.cli import build_parser
from glacierfs.local import endpoint_id
from glacierfs.mount import LOG_BACKUPS, LOG_MAX_BYTES, hint_options
from glacierfs.processes import pid_running
from glacierfs.treehash import tree_hash_file
from tests.helpers.mounts import MountSet, clean_env, cli, in_mount_table, wait_until

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
NOISE = re.compile(r"Traceback|ProgrammingError|ERROR|internal error")


def _skip_without_fuse() -> None:
    if not os.path.exists("/dev/fuse") or subprocess.run(["which", "fusermount3"], capture_output=True).returncode:
        pytest.skip("FUSE is not available")


@pytest.fixture
def mounts():
    _skip_without_fuse()
    ms = MountSet()
    try:
        yield ms
    finally:
        ms.cleanup()


def _local(tmp_path: Path, name: str = "data") -> list[str]:
    return ["--local", str(tmp_path / name), "--cache-dir", str(tmp_path / "cache")]


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _archives(server, vault: str) -> list[dict]:
    """The vault's archives as the server's inventory lists them now."""
    server.snapshot(vault)
    c = server.client(max_attempts=3)
    job = c.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval", "Format": "JSON"})
    wait_until(lambda: server.complete_jobs(job["jobId"]) is not None and
               c.describe_job(vaultName=vault, jobId=job["jobId"])["Completed"], 30, "the inventory job")
    return json.loads(c.get_job_output(vaultName=vault, jobId=job["jobId"])["body"].read())["ArchiveList"]


# --------------------------------------------------------------------------- issue 10 item 1


@pytest.mark.parametrize("planted", ["package", "empty"])
def test_daemon_runs_the_installed_package_whatever_the_cwd(mounts, tmp_path, planted):
    cwd = tmp_path / "work"
    (cwd / "glacierfs").mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"
    if planted == "package":
        code = f"open({str(marker)!r}, 'w').write('pwned')\n__version__ = '6.6.6'\n"
        for name in ("__init__.py", "__main__.py", "cli.py", "mount.py"):
            (cwd / "glacierfs" / name).write_text(code)
    mnt = tmp_path / "mnt"
    mounts.mount(*_local(tmp_path), "v", mnt=mnt, cwd=cwd)
    (mnt / "f.txt").write_bytes(b"installed code only\n")
    assert subprocess.run(["sync", str(mnt / "f.txt")], timeout=60).returncode == 0
    assert cli("umount", str(mnt), cwd=cwd).returncode == 0
    assert not marker.exists(), "code from the cwd ran in the mount daemon"
    assert not in_mount_table(mnt)


# --------------------------------------------------------------------------- issue 8 item 9


def test_after_kill9_mount_and_umount_detach_the_dead_mount(mounts, tmp_path):
    mnt = tmp_path / "mnt"
    mounts.mount(*_local(tmp_path), "v", mnt=mnt)
    (mnt / "kept.txt").write_bytes(b"archived before the kill\n")
    assert subprocess.run(["sync", str(mnt / "kept.txt")], timeout=60).returncode == 0
    os.kill(mounts.pid(mnt), signal.SIGKILL)
    wait_until(lambda: not any(pid_running(p) for p in mounts.pids), 30, "the killed daemon")

    res = mounts.mount(*_local(tmp_path), "v", mnt=mnt)  # no manual fusermount3 step
    assert res.stderr.count("detached the dead mount") == 1, res.stderr
    assert (mnt / "kept.txt").read_bytes() == b"archived before the kill\n"

    os.kill(mounts.pid(mnt), signal.SIGKILL)
    wait_until(lambda: not any(pid_running(p) for p in mounts.pids), 30, "the killed daemon")
    res = cli("umount", str(mnt))
    assert res.returncode == 0, res.stderr
    assert "detached the dead mount" in _one_line(res.stderr)
    assert not in_mount_table(mnt)
    res = cli("umount", str(mnt))
    assert res.returncode == 2 and "is not mounted" in _one_line(res.stderr)


def test_umount_during_an_upload_then_an_immediate_mount(mounts, glacier_server_factory, tmp_path):
    # every part is held back 0.5 s: the 6-part upload is still running when umount comes
    server = glacier_server_factory("--faults", "slow=1", "--faults-ops", "UploadMultipartPart",
                                    "--slow-seconds", "0.5")
    server.client(max_attempts=3).create_vault(vaultName="v")
    common = ["--endpoint-url", server.url, "--region", "us-east-1", "--cache-dir", str(tmp_path / "cache"),
              "--part-size", "1M", "--concurrency", "1"]
    mnt = tmp_path / "mnt"
    res = mounts.mount(*common, "v", mnt=mnt)
    log_path = mounts.log_of(res)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * MiB))
    subprocess.run(["cp", str(src), str(mnt / "big.bin")], check=True, timeout=60)
    wait_until(lambda: "uploading /big.bin" in log_path.read_text(), 30, "the upload to start")
    pid = mounts.pid(mnt)

    t0 = time.monotonic()
    res = cli("umount", str(mnt))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert not pid_running(pid), "umount returned while the mount process still ran"
    assert time.monotonic() - t0 < 30
    assert not in_mount_table(mnt)

    mounts.mount(*common, "v", mnt=mnt)  # at once: the vault is free
    assert subprocess.run(["sync", str(mnt / "big.bin")], timeout=120).returncode == 0
    assert cli("umount", str(mnt)).returncode == 0
    archives = _archives(server, "v")
    assert [a["SHA256TreeHash"] for a in archives] == [tree_hash_file(src)]
    assert server.client(max_attempts=3).list_multipart_uploads(vaultName="v")["UploadsList"] == []
    text = log_path.read_text()
    assert "unmounted" in text and not NOISE.search(text), text


# --------------------------------------------------------------------------- issue 13 item 4


def test_mount_exit_status_by_cause(mounts, tmp_path):
    mnt = tmp_path / "mnt"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    no_keys = clean_env()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        no_keys.pop(k, None)
    res = mounts.mount(*cache, "v", mnt=mnt, env=no_keys, check=False)
    assert res.returncode == 4, res.stderr
    assert "mount failed: no AWS credentials" in _one_line(res.stderr)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    res = mounts.mount(*cache, "--endpoint-url", closed, "v", mnt=mnt, check=False)
    assert res.returncode == 5, res.stderr
    assert "cannot reach" in _one_line(res.stderr)
    assert not in_mount_table(mnt)


# --------------------------------------------------------------------------- issue 13 item 10


def test_mount_point_forgotten_says_so(mounts, tmp_path):
    (tmp_path / "data").mkdir()
    res = cli("mount", "--local", str(tmp_path / "data"), "demo", cwd=tmp_path)
    assert res.returncode == 2
    line = _one_line(res.stderr)
    assert "mount point is missing" in line and "invalid vault name" not in line, line
    res = cli("mount", "--local", "data", "demo", cwd=tmp_path)
    assert res.returncode == 2 and "mount point is missing" in _one_line(res.stderr)


def test_non_empty_mount_point_is_refused_unless_nonempty(mounts, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "mine.txt").write_text("would be hidden")
    res = mounts.mount(*_local(tmp_path), "v", mnt=mnt, check=False)
    assert res.returncode == 2
    assert "is not empty" in _one_line(res.stderr) and "-o nonempty" in res.stderr
    assert not in_mount_table(mnt)
    mounts.mount(*_local(tmp_path), "-o", "nonempty", "v", mnt=mnt)
    assert not (mnt / "mine.txt").exists()  # hidden while mounted, as asked
    assert cli("umount", str(mnt)).returncode == 0
    assert (mnt / "mine.txt").read_text() == "would be hidden"


def test_libfuse_refusal_is_named_in_the_error(mounts, tmp_path):
    res = mounts.mount(*_local(tmp_path), "-o", "no_such_fuse_option", "v", mnt=tmp_path / "mnt", check=False)
    assert res.returncode == 7
    line = _one_line(res.stderr)
    assert "unknown option" in line and "no_such_fuse_option" in line, line


def test_already_mounted_says_how_to_unmount(mounts, tmp_path):
    mnt = tmp_path / "mnt"
    mounts.mount(*_local(tmp_path), "v", mnt=mnt)
    res = mounts.mount(*_local(tmp_path), "other", mnt=mnt, check=False)
    assert res.returncode == 7
    line = _one_line(res.stderr)
    assert "already a mount point" in line and f"glacierfs umount {mnt}" in line, line
    hint = line.split("unmount it first: ", 1)[1]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    ran = subprocess.run(hint, shell=True, capture_output=True, text=True, timeout=90, env=clean_env(PATH=path))
    assert ran.returncode == 0, ran.stderr  # the hint works as printed
    assert not in_mount_table(mnt)


def test_second_demo_says_it_is_running_and_how_to_stop_it(mounts, tmp_path):
    mnt = tmp_path / "mnt"
    data = tmp_path / "data"
    mounts.mount("--local", str(data), "demo", mnt=mnt)  # what the first scripts/demo did
    env = clean_env(GLACIERFS_DEMO_DATA=str(data), GLACIERFS_VENV=str(Path(sys.executable).parent.parent))
    res = subprocess.run([str(REPO / "scripts" / "demo"), str(mnt)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "already running" in res.stdout and f"umount {mnt}" in res.stdout, res.stdout
    tries = [ln for ln in res.stdout.splitlines() if ln.startswith("  ") and "  # " in ln]
    assert len(tries) >= 6 and len({ln.index("  # ") for ln in tries}) == 1, res.stdout  # aligned comments
    stop = next(ln for ln in tries if "umount" in ln).split("  # ")[0].strip()
    assert subprocess.run(stop, shell=True, capture_output=True, timeout=90).returncode == 0  # works as printed
    assert not in_mount_table(mnt)


def test_bench_missing_workdir_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--workdir",
                          str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no such directory" in _one_line(res.stderr)


# --------------------------------------------------------------------------- issue 13 items 1, 7


def test_hint_options_make_commands_that_work_as_printed(mounts, tmp_path):
    data, cache = tmp_path / "data dir", tmp_path / "cache 'dir'"
    mnt = tmp_path / "mnt"
    argv = ["mount", "--local", str(data), "--cache-dir", str(cache), "--region", "us-east-1", "v", str(mnt)]
    hint = hint_options(build_parser().parse_args(argv))
    assert shlex.split(hint) == ["--local", str(data), "--region", "us-east-1", "--cache-dir", str(cache)]
    mounts.mount(*argv[1:-1], mnt=mnt)
    (mnt / "hinted.txt").write_bytes(b"x" * 1000)
    assert subprocess.run(["sync", str(mnt / "hinted.txt")], timeout=60).returncode == 0
    # pasted into a shell as printed, the hint reaches the mount's catalog (not AWS, not another cache)
    res = subprocess.run(f"{shlex.quote(str(mounts_cli()))} status {hint} -v v", shell=True, capture_output=True,
                         text=True, env=clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(f"{shlex.quote(str(mounts_cli()))} inventory {hint} -v v", shell=True,
                         capture_output=True, text=True, env=clean_env(), timeout=60)
    assert "hinted.txt" in res.stdout, (res.stdout, res.stderr)


def mounts_cli() -> Path:
    from tests.helpers.mounts import CLI

    return CLI


def test_mount_log_per_endpoint_rotated_without_libfuse_noise(mounts, tmp_path):
    mnt = tmp_path / "mnt"
    res = mounts.mount(*_local(tmp_path, "one"), "v", mnt=mnt)
    log_one = mounts.log_of(res)
    assert cli("umount", str(mnt)).returncode == 0
    text = log_one.read_text()
    assert "mounted" in text and "Ignoring invalid max threads" not in text, text
    assert (log_one.stat().st_mode & 0o777) == 0o600

    res = mounts.mount(*_local(tmp_path, "two"), "v", mnt=mnt)  # same vault name, another endpoint
    log_two = mounts.log_of(res)
    assert log_two != log_one and "two" in str(log_two.parent)
    assert cli("umount", str(mnt)).returncode == 0

    with open(log_one, "ab") as f:  # a log grown past the bound is rotated at the next mount
        f.write(b"old line\n" * (LOG_MAX_BYTES // 9 + 1))
    mounts.mount(*_local(tmp_path, "one"), "v", mnt=mnt)
    assert cli("umount", str(mnt)).returncode == 0
    rotated = log_one.with_name(log_one.name + ".1")
    assert rotated.stat().st_size >= LOG_MAX_BYTES and log_one.stat().st_size < LOG_MAX_BYTES
    assert "old line" not in log_one.read_text()
    assert (log_one.stat().st_mode & 0o777) == 0o600
    assert LOG_BACKUPS >= 1


# --------------------------------------------------------------------------- issue 8 item 10


def test_endpoint_id_rule():
    assert endpoint_id() == "aws"
    assert endpoint_id(local_dir=Path("/srv/g")) == "local:/srv/g"
    assert endpoint_id("HTTP://LocalHost:80/") == "http://localhost"
    assert endpoint_id("https://h.example:8443") == "https://h.example:8443"
    from glacierfs.client import ConnectionSettings

    assert ConnectionSettings(endpoint_url="http://x:1/").endpoint_id == endpoint_id("http://x:1")


def test_local_server_on_another_port_keeps_its_identity(glacier_server_factory, tmp_path):
    data = tmp_path / "data"
    server = glacier_server_factory(data_dir=data)
    server.client(max_attempts=3).create_vault(vaultName="v")
    src = tmp_path / "same.bin"
    src.write_bytes(os.urandom(300_000))
    common = ["--local", str(data), "--cache-dir", str(tmp_path / "cache"), "-q"]
    first = cli("upload", *common, "-v", "v", str(src), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    old_url = server.url
    server.stop()
    server.start()  # port 0: another port
    assert server.url != old_url
    again = cli("upload", *common, "-v", "v", str(src), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[0] == first.stdout.split()[0]  # the same archive
    assert len(_archives(server, "v")) == 1
