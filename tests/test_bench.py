"""scripts/bench runs and prints its table: checks the shape only, never timings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["benchmark", "measured", "baseline (same run)", "ratio", "target", "met"]


def run_bench(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    out = tmp_path / "rows.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--workdir", str(tmp_path),
         "--json", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res, json.loads(out.read_text())


def table(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_quick_treehash_and_catalog_print_a_table(tmp_path: Path) -> None:
    res, rows = run_bench(tmp_path, "--only", "treehash,catalog")
    t = table(res.stdout)
    assert t[0] == COLUMNS
    assert set(t[1][0]) == {"-"}  # the separator line
    body = t[2:]
    assert len(body) == len(rows) == 3  # treehash; catalog time and peak RSS
    names = [r[0] for r in body]
    assert names[0].startswith("treehash ")
    assert "catalog import" in names[1] and names[1].endswith("time")
    assert names[2].endswith("peak RSS")
    for r, row in zip(body, rows, strict=True):
        assert len(r) == len(COLUMNS)
        assert r[1] != "ERROR", r
        float(r[3])  # every row here has a same-run ratio
        assert r[5] == "quick"  # quick mode judges no target
        assert row["met"] is None and row["ratio"] > 0
    # the work directory is removed
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]


def test_unknown_benchmark_is_a_usage_error() -> None:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--only", "nope"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 2
    assert "unknown benchmark(s): nope" in res.stderr


# issue 14's rows, each at both modelled latencies (quick sizes: 32 MiB, 30 files)
WAN_ROWS = [
    r"upload \d+ MiB @ {at}: CLI defaults",
    r"mount: cp \d+ MiB until archived @ {at}",
    r"mount: cp \d+ MiB until it returns @ {at}",
    r"restore \d+ MiB @ {at} \(job done; download \+ verify\)",
    r"\d+ files of 1 MiB @ {at}: CLI, one command",
    r"\d+ files of 1 MiB @ {at}: mount, cp -r until archived",
]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_prints_every_row_with_a_ratio_and_a_target(tmp_path: Path) -> None:
    """``--quick`` (every benchmark) prints issue 14's rows, each with a same-run ratio and its target."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("the mount rows need /dev/fuse and fusermount3")
    res, rows = run_bench(tmp_path, timeout=360)
    body = table(res.stdout)[2:]
    assert len(body) == len(rows)
    assert not [r for r in body if r[1] in ("ERROR", "skipped")], res.stdout + res.stderr
    wanted = [p.format(at=at) for at in ("0 ms", "50 ms") for p in WAN_ROWS] + [r"treehash \d+ MiB"]
    for pattern in wanted:
        matches = [r for r in body if re.match(pattern, r[0])]
        assert len(matches) == 1, (pattern, res.stdout)
        r = matches[0]
        assert float(r[3]) > 0, r  # a ratio
        assert re.search(r"(>=|<=) \d", r[4]), r  # and its target
        assert r[5] == "quick", r
    assert "aws upload-archive loop" in res.stdout or "boto3 upload_archive (no aws CLI)" in res.stdout
