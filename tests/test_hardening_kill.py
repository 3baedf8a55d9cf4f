"""Hardening: SIGKILL of the CLI and of the mount at random points of 20 uploads, then resume.

The kill moments come from a ``random.Random`` seeded per test (the seed is in every assertion
message), so a failure can be replayed. After the interruptions the same command (or a new
mount) finishes the work and the *server* must hold exactly one archive per file, with the
file's tree hash, and no open multipart upload.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from glacierfs.treehash import MiB
from tests.helpers.hardening import Cli, assert_exactly_once, open_uploads, random_files

SEED = 20261125
SIZES = [900, MiB - 100, MiB + 200, 2 * MiB + 300, 3 * MiB - 5000]

# A local upload of 20 small files takes half a second: too short to land kills anywhere but at
# the start. The child lingers after each answer the server gave (a ``sitecustomize`` in the
# child only; the command is unchanged), so a kill can land in every window: the server holds
# an upload, a part or a completed archive that this process has not recorded yet.
LINGER_HOOK = """
import time

import glacierfs.client as c

def _linger(name, seconds):
    real = getattr(c.Glacier, name)

    def wrapper(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        time.sleep(seconds)
        return result

    setattr(c.Glacier, name, wrapper)

for _name, _s in (("initiate_multipart_ex", 0.03), ("upload_part", 0.06), ("complete_multipart", 0.05)):
    _linger(_name, _s)
"""


def kill_at(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``proc`` after ``delay`` seconds unless it ended first; True if it was killed."""
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        return True
    return False


@pytest.mark.timeout(300)
def test_cli_sigkilled_at_random_points_of_20_uploads_then_rerun(glacier_server, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    ctx = f"seed {SEED}"
    glacier_server.client().create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 20, SIZES)
    cli = Cli(glacier_server.url, tmp_path / "cache", work)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LINGER_HOOK)
    options = ("--part-size", "1M", "--concurrency", "2", "--jobs", "2", *files)
    args = ("upload", "-q", "-v", "v", *options)
    env = cli.env()
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    # The kill points scale with this machine's speed: one whole run into another vault first
    # (however fast or loaded the machine, each kill lands within 20-70% of a whole run).
    glacier_server.client().create_vault(vaultName="calibration")
    t0 = time.monotonic()
    cal = subprocess.run(cli.argv(("upload", "-q", "-v", "calibration", *options)), cwd=cli.cwd, env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    whole = time.monotonic() - t0
    assert cal.returncode == 0, cal.stderr
    kills: list[float] = []
    printed: dict[str, str] = {}
    for _ in range(10):
        proc = subprocess.Popen(cli.argv(args), cwd=cli.cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(0.2, 0.7) * whole
        try:
            killed = kill_at(proc, delay)
        finally:
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate(timeout=30)
        if not killed:
            assert proc.returncode == 0, f"{ctx}: upload failed after kills at {kills}: {err}"
            break
        kills.append(round(delay, 2))
        assert "Traceback" not in err, f"{ctx}: {err}"
        for line in out.splitlines():
            aid, _tree, _size, path = line.split("  ")
            printed.setdefault(path, aid)
            assert printed[path] == aid, f"{ctx}: {path} printed as two archives (kills at {kills})"
    final = cli(*args, timeout=240)  # the same command again: resumes, uploads nothing twice
    ids = assert_exactly_once(glacier_server, "v", files, f"{ctx} kills at {kills}", empty_uploads_allowed=len(kills))
    for line in final.lines:
        aid, _tree, _size, path = line.split("  ")
        assert ids[path] == aid, f"{ctx}: {path} printed {aid}, the server has {ids[path]} (kills at {kills})"
    assert all(ids[p] == a for p, a in printed.items()), f"{ctx}: an interrupted run printed another archive"
    assert len(kills) >= 3, f"{ctx}: only {len(kills)} kills landed ({kills}); the test did not test much"
    status = json.loads(cli("status", "-v", "v", "--json").stdout)
    assert status["pending_uploads"] == [], f"{ctx}: {status}"
    print(f"{ctx}: killed at {kills} s; {len(printed)} file(s) finished before the last kill")


# --------------------------------------------------------------------------- the mount


def _held(server, op: str) -> int:
    return int(server.admin("held", method="GET")["waiting"].get(op, 0))


def _mount_helpers():
    from tests.helpers import mounts

    return mounts


@pytest.mark.timeout(300)
def test_mount_sigkilled_at_random_points_of_20_uploads_then_remounted(
    glacier_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tm = _mount_helpers()
    tm.skip_without_fuse()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LINGER_HOOK)  # the mount processes linger like the CLI above
    monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    rng = random.Random(SEED + 1)
    ctx = f"seed {SEED + 1}"
    glacier_server.client().create_vault(vaultName="mv")
    src = tmp_path / "src"
    files = random_files(src, rng, 20, SIZES[:4], prefix="d")
    cache = tmp_path / "cache"
    mnt = tmp_path / "mnt"
    mounts = tm.MountSet()

    def mount() -> object:
        m = mounts.add(tm.Mount(mnt, cache, glacier_server.url, "mv", "--part-size", "1M", "--concurrency", "2"))
        return m.start()

    def copy_all(m, rel_paths: list[str], deadline: float) -> None:
        for rel in rel_paths:
            if time.monotonic() > deadline:
                return
            target = m.mnt / rel
            res = subprocess.run(["cp", str(src / rel), str(target)], capture_output=True, text=True, timeout=60,
                                 check=False)
            if res.returncode != 0:
                return  # the mount died under us (the kill): stop copying
            time.sleep(0.08)  # files arrive one by one: kills land between, during and after copies

    kills: list[float] = []
    rounds: list[tuple[int, int]] = []  # (files fully copied, open uploads) at each kill
    try:
        m = mount()
        probe = m.mnt / "probe.txt"
        try:
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as exc:
            pytest.skip(f"the mount does not accept a small write yet ({exc}); log:\n{m.log()}")
        (m.mnt / "d").mkdir()
        for n in range(5):
            delay = rng.uniform(0.2, 2.0)
            todo = [rel for rel in files if not _complete(m.mnt / rel, files[rel])]
            # odd rounds kill on a condition, not a clock: between an upload's last part and its
            # Complete (held by the server, then dropped: it never takes effect)
            held = n % 2 == 1 and bool(todo)
            if held:
                glacier_server.admin("hold?ops=CompleteMultipartUpload")
            try:
                t = threading.Thread(target=copy_all, args=(m, todo, time.monotonic() + (300 if held else delay)),
                                     daemon=True)
                t.start()
                if held:
                    tm.wait_until(lambda: _held(glacier_server, "CompleteMultipartUpload"), 120,
                                  f"{ctx}: a Complete of the mount to be held\n{m.log()}")
                    kills.append(-1.0)  # -1: at a held Complete
                else:
                    time.sleep(delay)
                    kills.append(round(delay, 2))
                copied = sum(_complete(m.mnt / rel, files[rel]) for rel in files)
                m.kill()  # SIGKILL the mount process, then unmount the dead mount point
            finally:
                if held:
                    glacier_server.admin("release?drop=1")
            t.join(60)
            rounds.append((copied, len(open_uploads(glacier_server, "mv"))))
            m = mount()
        todo = [rel for rel in files if not _complete(m.mnt / rel, files[rel])]
        for rel in todo:  # what the user re-copies after the crashes
            (m.mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            res = subprocess.run(["cp", str(src / rel), str(m.mnt / rel)], capture_output=True, text=True,
                                 timeout=60, check=False)
            assert res.returncode == 0, f"{ctx}: cp {rel} after kills at {kills}: {res.stderr}\n{m.log()}"
        res = subprocess.run(["sync", *[str(m.mnt / rel) for rel in files]], capture_output=True, text=True,
                             timeout=240, check=False)
        assert res.returncode == 0, f"{ctx}: sync after kills at {kills}: {res.stderr}\n{m.log()}"
        listed = sorted(str(p.relative_to(m.mnt)) for p in m.mnt.rglob("*") if p.is_file())
        assert listed == sorted(files), f"{ctx}: the mount lists {listed} after kills at {kills}\n{m.log()}"
        assert_exactly_once(glacier_server, "mv", files, f"{ctx} kills at {kills}", empty_uploads_allowed=len(kills))
        assert any(open_n for _, open_n in rounds), f"{ctx}: no kill landed during an upload: {rounds}"
        print(f"{ctx}: killed at {kills} s; (files copied, uploads open) at each kill: {rounds}")
    finally:
        mounts.cleanup()


def _complete(path: Path, data: bytes) -> bool:
    """The file is in the mount with all its bytes (a copy cut off by a kill is not)."""
    try:
        return path.stat().st_size == len(data)
    except OSError:
        return False


DOWNLOAD_HOOK = """
import time

import glacierfs.client as c

_real = c.JobOutputStream.read

def read(self, amt=None):
    data = _real(self, amt if amt is None else min(amt, 256 * 1024))
    time.sleep(0.05)
    return data

c.JobOutputStream.read = read
_real1 = c.JobOutputStream.read1

def read1(self, amt=1 << 16):
    data = _real1(self, min(amt, 256 * 1024))
    time.sleep(0.05)
    return data

c.JobOutputStream.read1 = read1

def _linger(name, seconds):
    real = getattr(c.Glacier, name)

    def wrapper(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        time.sleep(seconds)
        return result

    setattr(c.Glacier, name, wrapper)

for _name in ("initiate_inventory", "describe_job", "list_jobs"):
    _linger(_name, 0.2)
"""


@pytest.mark.timeout(240)
def test_download_and_inventory_sigkilled_at_random_points_then_rerun(glacier_server, tmp_path: Path) -> None:
    """Kills during ``download`` (partial file, sidecar) and ``inventory -f`` (job recorded, import)."""
    rng = random.Random(SEED + 3)
    ctx = f"seed {SEED + 3}"
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    data = rng.randbytes(6 * MiB + 123)
    aid = c.upload_archive(vaultName="v", archiveDescription="big.bin", body=data)["archiveId"]
    for i in range(200):
        c.upload_archive(vaultName="v", archiveDescription=f"many/{i:03d}", body=b"m")
    glacier_server.snapshot("v")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DOWNLOAD_HOOK)
    cli = Cli(glacier_server.url, tmp_path / "cache", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    kills: list[tuple[str, float]] = []
    target = str(out / "big.bin")
    for args in (("inventory", "-v", "v", "-f"), ("download", "-q", "-v", "v", f"-a={aid}", "-o", target)):
        for _ in range(4):
            env = cli.env()
            env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
            proc = subprocess.Popen(cli.argv(args), cwd=cli.cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            delay = rng.uniform(0.3, 1.3)
            try:
                killed = kill_at(proc, delay)
            finally:
                if proc.poll() is None:
                    proc.kill()
                _, err = proc.communicate(timeout=30)
            assert "Traceback" not in err, f"{ctx}: {err}"
            if not killed:
                assert proc.returncode == 0, f"{ctx}: {args[0]} failed after kills at {kills}: {err}"
                break
            kills.append((args[0], round(delay, 2)))
        res = cli(*args, timeout=120)  # the same command, not interrupted
        if args[0] == "inventory":
            assert len(res.lines) == 201, f"{ctx}: kills at {kills}"
    assert (out / "big.bin").read_bytes() == data, f"{ctx}: kills at {kills}"
    assert os.listdir(out) == ["big.bin"], f"{ctx}: leftovers {os.listdir(out)} (kills at {kills})"
    jobs = c.list_jobs(vaultName="v")["JobList"]
    assert len([j for j in jobs if j["Action"] == "ArchiveRetrieval"]) == 1, f"{ctx}: retrieval jobs {jobs}"
    assert {k for k, _ in kills} == {"inventory", "download"}, f"{ctx}: kills landed only in {kills}"
    print(f"{ctx}: killed at {kills} s; {len(jobs)} job(s) in all")
