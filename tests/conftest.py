"""Shared fixtures. Feature-specific fixtures live next to their tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def treehash_vectors() -> list[dict]:
    path = SHARED / "testdata" / "treehash_vectors.json"
    if not path.exists():
        pytest.fail(f"shared test vectors missing: {path}")
    return json.loads(path.read_text())["vectors"]


def vector_bytes(size: int) -> bytes:
    """The generator of ../shared/testdata/treehash_vectors.json."""
    return bytes((i * 7 + i // 4096) % 256 for i in range(size))
