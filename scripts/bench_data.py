"""Synthetic vault contents for the benchmarks: paths, mt2 descriptions, a JSON inventory file.

A vault of ``n`` archives has one big directory holding a tenth of them (100,000 of
1,000,000: ``photos/big/``) and the rest spread over ``backup/NN/MMM/`` directories of about
1,000 archives each, like a machine backup. Descriptions are glacierfs ``mt2`` (what the
mount and ``upload`` write); archive ids are 138 URL-safe base64 characters like Glacier's.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

BIG_DIR = "photos/big"
PER_DIR = 1000
MTIME0 = 1_600_000_000.0


def big_count(n: int) -> int:
    return n // 10


def path_of(i: int, n: int) -> str:
    """Path of archive ``i`` of an ``n``-archive vault."""
    big = big_count(n)
    if i < big:
        return f"{BIG_DIR}/IMG_{i:07d}.jpg"
    j = i - big
    d = j // PER_DIR
    return f"backup/{d // 100:02d}/{d % 100:03d}/file-{j:07d}.dat"


def iter_descriptions(n: int, start: int = 0, stop: int | None = None) -> Iterator[str]:
    from glacierfs.codec import encode_description

    for i in range(start, n if stop is None else stop):
        yield encode_description(path_of(i, n), MTIME0 + i * 7.25)


def archive_id(rng: random.Random) -> str:
    return base64.urlsafe_b64encode(rng.randbytes(104)).decode()[:138]


def write_json_inventory(path: Path, n: int, seed: int = 5) -> int:
    """Write a Glacier JSON inventory of ``n`` archives to ``path`` (streamed); returns its size."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"VaultARN":"arn:aws:glacier:us-east-1:012345678901:vaults/bench",'
                '"InventoryDate":"2026-01-02T03:04:05Z","ArchiveList":[')
        batch: list[str] = []
        for i, desc in enumerate(iter_descriptions(n)):
            day = 1 + i % 28
            entry = {
                "ArchiveId": archive_id(rng),
                "ArchiveDescription": desc,
                "CreationDate": f"2025-12-{day:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}Z",
                "Size": rng.randrange(1, 1 << 30),
                "SHA256TreeHash": rng.randbytes(32).hex(),
            }
            batch.append(json.dumps(entry, separators=(",", ":")))
            if len(batch) >= 10_000:
                f.write(("," if i >= len(batch) else "") + ",".join(batch))
                batch = []
        if batch:
            f.write(("," if n > len(batch) else "") + ",".join(batch))
        f.write("]}")
    return os.path.getsize(path)
