"""Child process of the catalog benchmark: one import or one baseline, then its figures as JSON.

    python scripts/bench_import.py catalog INVENTORY.json CACHE_ROOT
    python scripts/bench_import.py json-load INVENTORY.json

Run in its own process so that its ``VmHWM`` is the peak RSS of exactly that work (plus the
interpreter). Not ``ru_maxrss``: Linux counts in it the memory image that ``exec`` replaced (the
fork of the bench process), so it reads at least the parent's size. ``catalog``: ``Catalog.import_inventory`` of the streamed parse, as ``glacierfs
inventory`` does it. ``json-load``: the naive baseline, ``json.load`` of the whole file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def vm_hwm_kib() -> int:
    """This process's peak RSS (KiB) since its exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("no VmHWM in /proc/self/status")


def main() -> int:
    mode, inventory = sys.argv[1], Path(sys.argv[2])
    before = vm_hwm_kib()
    t0 = time.perf_counter()
    out: dict = {}
    if mode == "catalog":
        from glacierfs.catalog import Catalog
        from glacierfs.inventory import parse_inventory

        t0 = time.perf_counter()
        with Catalog.open(Path(sys.argv[3]), "bench", "us-east-1", "bench") as cat, open(inventory, "rb") as f:
            header, items = parse_inventory(f, "application/json")
            stats = cat.import_inventory(items, header)
            out["archives"] = stats.total
            out["timings"] = stats.extra.get("timings", {})
            out["count"] = cat.count()
    elif mode == "json-load":
        with open(inventory, "rb") as f:
            data = json.load(f)
        out["archives"] = len(data["ArchiveList"])
    else:
        raise SystemExit(f"unknown mode {mode}")
    out["seconds"] = time.perf_counter() - t0
    out["maxrss_mib"] = vm_hwm_kib() / 1024
    out["start_rss_mib"] = before / 1024
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
