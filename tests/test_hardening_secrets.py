"""Hardening: credentials never leak, and local state is private.

Commands run with ``-k/-s`` keys and with environment keys, with ``--debug``, against a server
that checks SigV4 signatures with exactly those keys, against one that refuses them, one that
always fails and an endpoint nobody listens on. Every stdout/stderr, every file under the cache
directory (binary-safe) and the mount's log are searched for the secret key and the access key.
Every directory created under ``--cache-dir`` must be 0700 and every file 0600, also with a
permissive umask.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glacierfs.treehash import MiB
from tests.helpers.hardening import Cli, Result, assert_one_error, bad_modes, find_secrets, random_files

KEY, SECRET = "AKIDSECRETTEST", "SuperSecretKey123"
ENV_KEY, ENV_SECRET, ENV_TOKEN = "AKIDENVKEYTEST", "EnvSecretValue456", "SessionTokenSecret789"
ALL = (KEY, SECRET, ENV_KEY, ENV_SECRET, ENV_TOKEN)
UMASK = 0o000  # the worst case: only explicit modes protect anything


@pytest.fixture
def loose_umask():
    old = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(old)


def free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.timeout(300)
def test_keys_never_leak_and_state_is_private(glacier_server_factory, tmp_path: Path, loose_umask) -> None:
    rng = random.Random(7)
    signed = glacier_server_factory("--verify-sigv4", "--access-key", KEY, "--secret-key", SECRET)
    env_signed = glacier_server_factory("--verify-sigv4", "--access-key", ENV_KEY, "--secret-key", ENV_SECRET)
    failing = glacier_server_factory("--faults", "500=1.0", "--faults-ops", "UploadMultipartPart,ListVaults")
    work = tmp_path / "work"
    files = random_files(work, rng, 2, [2 * MiB])
    cache = tmp_path / "cache"
    outputs: dict[str, str] = {}

    def run(url: str, *args: str, keys: bool = True, env_keys: bool = False, code: int | None = 0) -> Result:
        cli = Cli(url, cache, work)
        extra = ["--debug", *(["-k", KEY, "-s", SECRET] if keys else [])]
        env = {"AWS_ACCESS_KEY_ID": ENV_KEY, "AWS_SECRET_ACCESS_KEY": ENV_SECRET, "AWS_SESSION_TOKEN": ENV_TOKEN} \
            if env_keys else None
        res = cli(*args, *extra, code=code, env=env)
        outputs[f"{url} {' '.join(args)}"] = res.stdout + res.stderr
        return res

    # working servers: every command, with the keys on the command line, then from the environment
    for url, keys, env_keys in ((signed.url, True, False), (env_signed.url, False, True)):
        run(url, "vaults", "create", "v", keys=keys, env_keys=env_keys)
        up = run(url, "upload", "-v", "v", "--part-size", "1M", *files, keys=keys, env_keys=env_keys)
        (signed if keys else env_signed).snapshot("v")
        run(url, "inventory", "-v", "v", "-f", keys=keys, env_keys=env_keys)
        aid = up.lines[0].split("  ")[0]
        out = tmp_path / f"out-{env_keys}"
        out.mkdir()
        run(url, "download", "-v", "v", f"-a={aid}", "-o", str(out), keys=keys, env_keys=env_keys)
        run(url, "status", keys=keys, env_keys=env_keys)
        run(url, "vaults", keys=keys, env_keys=env_keys)

    # failing ones: refused keys (both ways round), a failing service, nobody listening
    for url, keys, env_keys in ((signed.url, False, True), (env_signed.url, True, False)):
        res = run(url, "vaults", keys=keys, env_keys=env_keys, code=None)
        assert_one_error(res, codes=(4,), match="credentials refused")
    run(failing.url, "vaults", "create", "v")
    res = run(failing.url, "upload", "-v", "v", "--part-size", "1M", next(iter(files)), code=None)
    assert_one_error(res, codes=(5,))
    res = run(failing.url, "vaults", code=None, env_keys=True)
    assert_one_error(res, codes=(5,))
    res = run(free_url(), "vaults", code=None)
    assert_one_error(res, codes=(5,), match="cannot reach")
    res = Cli(signed.url, cache, work)("vaults", "-k", KEY, code=None)
    outputs["half pair"] = res.stdout + res.stderr
    assert_one_error(res, codes=(4,), match="must be given together")

    leaks = find_secrets(ALL, [cache], outputs)
    assert not leaks, f"credentials leaked: {leaks}"
    bad = bad_modes(cache)
    assert not bad, f"state that is not private (umask {UMASK:03o}): {bad}"


@pytest.mark.timeout(180)
def test_mount_log_and_process_keep_keys_private(glacier_server_factory, tmp_path: Path, loose_umask) -> None:
    """``glacierfs mount`` (daemon mode) with -k/-s: its log and the child's command line hold no key."""
    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    signed = glacier_server_factory("--verify-sigv4", "--access-key", KEY, "--secret-key", SECRET)
    cache = tmp_path / "cache"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = Cli(signed.url, cache, tmp_path)
    cli("vaults", "create", "mv", "-k", KEY, "-s", SECRET)
    res = cli("mount", "mv", str(mnt), "--region", "us-east-1", "--debug", "-k", KEY, "-s", SECRET, code=None)
    pid = None
    try:
        assert res.returncode == 0, str(res)
        assert tm.mounted(mnt), str(res)
        (mnt / "f.txt").write_bytes(b"private")
        synced = subprocess.run(["sync", str(mnt / "f.txt")], capture_output=True, text=True, timeout=60, check=False)
        assert synced.returncode == 0, f"the mount could not upload with the handed-over keys: {synced.stderr}"
        pid = _mount_pid(cache)
        assert pid, "no mount.lock holds the mount's pid"
        cmdlines = {}
        if pid:
            cmdlines["mount process command line"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        cmdlines["mount command output"] = res.stdout + res.stderr
    finally:
        subprocess.run([sys.executable, "-m", "glacierfs", "umount", str(mnt)], env=Cli.env(), capture_output=True,
                       timeout=60, check=False)
        tm.unmount(mnt)
        if pid:
            _wait_gone(pid)
    logs = list((cache / "logs").rglob("*.log"))  # logs/<endpoint>/<region>/<vault>.log
    assert logs, "the mount wrote no log"
    leaks = find_secrets((KEY, SECRET), [cache], cmdlines)
    assert not leaks, f"credentials leaked: {leaks}"
    bad = bad_modes(cache)
    assert not bad, f"state that is not private (umask {UMASK:03o}): {bad}"


def _mount_pid(cache: Path) -> int | None:
    for lock in cache.rglob("mount.lock"):
        text = lock.read_text().strip()
        if text.isdigit():
            return int(text)
    return None


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
