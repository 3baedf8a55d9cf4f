"""scripts/bench runs and prints its table: checks the shape only, never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["benchmark", "measured", "baseline (same run)", "ratio", "target", "met"]


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    out = tmp_path / "rows.json"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--workdir", str(tmp_path),
         "--json", str(out), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
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
