"""Helpers shared by the whole-tree command tests (sync, check, restore, import-journal)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

from glacierfs.treehash import tree_hash
from tests.helpers.cli import Cli as CommandCli
from tests.helpers.cli import Result

# nested, non-ASCII names (NFC and NFD spellings, CJK, emoji, spaces)
NAMES = ["été", "naïve file", "日本語", "Ünïcödé", "emoji-😀", "e\u0301cole", "plain", "a b c", "Ωmega", "данные"]


class Cli(CommandCli):
    """The command runner of :mod:`tests.helpers.cli` with the longer default timeout whole trees need."""

    def __call__(self, *args: str, code: int | None = 0, timeout: float = 300, **kw: Any) -> Result:
        return super().__call__(*args, code=code, timeout=timeout, **kw)


def kill_after_lines(proc: subprocess.Popen[str], lines: int, timeout: float = 120) -> list[str]:
    """SIGKILL ``proc`` once it has printed ``lines`` lines (at once for 0); returns what it printed."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < lines and time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            seen.append(line.rstrip("\n"))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    return seen


def content(i: int, version: int = 0, size: int | None = None) -> bytes:
    n = size if size is not None else 1 + (i * 37) % 200
    return bytes(((i * 31 + version * 7 + k) % 251) for k in range(n))


def make_tree(root: Path, count: int, seed: int = 1, big: int = 0) -> dict[str, bytes]:
    """``count`` tiny files under nested non-ASCII directories (+ ``big`` files of 2.5 MiB, 3 parts)."""
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(count):
        depth = rng.randint(0, 3)
        dirs = [rng.choice(NAMES) for _ in range(depth)]
        rel = "/".join([*dirs, f"{rng.choice(NAMES)}-{i}.dat"])
        files[rel] = content(i)
    for j in range(big):
        files[f"big/{NAMES[j % len(NAMES)]}-{j}.bin"] = content(j, size=5 * (1 << 19))
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        t = 1_600_000_000 + zlib.crc32(rel.encode()) % 10_000_000
        os.utime(p, (t, t))
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def service_inventory(server, vault: str) -> list[dict]:
    """The vault as the service has it: snapshot now, then an inventory job's ArchiveList."""
    server.snapshot(vault)
    client = server.client()
    job = client.initiate_job(vaultName=vault, jobParameters={"Type": "inventory-retrieval", "Format": "JSON"})
    deadline = time.monotonic() + 60
    while not client.describe_job(vaultName=vault, jobId=job["jobId"])["Completed"]:
        assert time.monotonic() < deadline, "inventory job did not complete"
        server.complete_jobs(job["jobId"])
    body = client.get_job_output(vaultName=vault, jobId=job["jobId"])["body"].read()
    return json.loads(body)["ArchiveList"]


def inventory_by_path(server, vault: str) -> dict[str, list[dict]]:
    from glacierfs.codec import decode_description

    out: dict[str, list[dict]] = {}
    for a in service_inventory(server, vault):
        out.setdefault(decode_description(a["ArchiveDescription"]).path or "", []).append(a)
    return out


def assert_vault_equals(server, vault: str, files: dict[str, bytes], prefix: str = "") -> None:
    """Exactly one archive per file, with its bytes' tree hash; nothing else; no open upload."""
    inv = inventory_by_path(server, vault)
    head = f"{prefix}/" if prefix else ""
    expected = {head + rel: tree_hash(data) for rel, data in files.items()}
    dupes = {p: len(v) for p, v in inv.items() if len(v) > 1}
    assert not dupes, f"duplicate archives: {dupes}"
    assert set(inv) == set(expected), (sorted(set(inv) ^ set(expected)))[:10]
    wrong = [p for p, h in expected.items() if inv[p][0]["SHA256TreeHash"] != h]
    assert not wrong, wrong[:10]
    client = server.client()
    uploads = client.list_multipart_uploads(vaultName=vault)["UploadsList"]
    # an Initiate whose answer a killed run never recorded leaves an empty upload: nothing proves
    # it ours, so it is left alone (the service drops it after a day idle); none may hold a part
    holding = [u for u in uploads if client.list_parts(vaultName=vault, uploadId=u["MultipartUploadId"])["Parts"]]
    assert holding == [], holding
