"""glacierfs benchmarks (run through ``scripts/bench``).

Every figure is printed next to a baseline measured in the same run on the same data,
because these machines are noisy: the ratio is the number to compare across runs.
Benchmarks never fail on a missed target; they print the target beside the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MiB = 1 << 20


@dataclass
class Row:
    name: str
    measured: str
    baseline: str
    ratio: float | None
    target: str



def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_file(path: Path, size: int) -> Path:
    """A file of incompressible bytes, written once per run."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def drop_page_cache_hint(path: Path) -> None:
    """Ask the kernel to keep the file cached for every contender alike (read it once)."""
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def bench_treehash(work: Path, quick: bool) -> list[Row]:
    """glacierfs.treehash.tree_hash_file vs botocore.utils.calculate_tree_hash on the same file."""
    from botocore.utils import calculate_tree_hash

    from glacierfs.treehash import default_workers, tree_hash_file

    size = 128 * MiB if quick else 1024 * MiB
    f = make_file(work / "treehash.bin", size)
    drop_page_cache_hint(f)
    repeat = 3

    ours = median_time(lambda: tree_hash_file(f), repeat)

    def botocore_hash() -> str:
        with open(f, "rb") as fh:
            return calculate_tree_hash(fh)

    base = median_time(botocore_hash, repeat)
    assert tree_hash_file(f) == botocore_hash(), "tree hashes disagree"
    mbps = size / ours / 1e6
    return [
        Row(
            f"treehash {size // MiB} MiB ({default_workers()} threads)",
            f"{ours:.2f} s ({mbps:.0f} MB/s)",
            f"botocore {base:.2f} s ({size / base / 1e6:.0f} MB/s)",
            base / ours,
            "speed-up >= 1.7 on 2 cores",
        )
    ]


BENCHES: dict[str, Callable[[Path, bool], list[Row]]] = {
    "treehash": bench_treehash,
}


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "measured", "baseline (same run)", "ratio", "target")
    cells = [header] + [
        (r.name, r.measured, r.baseline, "-" if r.ratio is None else f"{r.ratio:.2f}", r.target) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells[1:]:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--workdir", help="where to put test files (default: a temp dir on /var/tmp)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="glacierfs-bench-", dir=args.workdir or "/var/tmp") as tmp:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.extend(BENCHES[name](Path(tmp), args.quick))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
