"""The tree-hash test vectors (tests/data/treehash_vectors.json, copied into the repository)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
VECTORS = DATA / "treehash_vectors.json"


def vector_bytes(size: int) -> bytes:
    """The generator of tests/data/treehash_vectors.json (copied from the project's shared test data)."""
    return bytes((i * 7 + i // 4096) % 256 for i in range(size))
