"""Tree hash module: the shared vectors, botocore agreement, and the alignment algebra."""

from __future__ import annotations

import hashlib
import io
import random

import pytest
from botocore.utils import calculate_tree_hash

from glacierfs import treehash as th
from tests.helpers.vectors import vector_bytes

MiB = th.MiB


def test_every_shared_vector(treehash_vectors, tmp_path):
    assert len(treehash_vectors) >= 10
    for vec in treehash_vectors:
        data = vector_bytes(vec["size"])
        assert hashlib.sha256(data).hexdigest() == vec["sha256"]
        assert th.tree_hash(data) == vec["tree_hash"], vec["size"]
        f = tmp_path / f"v{vec['size']}"
        f.write_bytes(data)
        assert th.tree_hash_file(f) == vec["tree_hash"]
        assert th.tree_hash_file(f, segment=MiB, workers=2) == vec["tree_hash"]
        assert th.tree_hash_stream(io.BytesIO(data), chunk=12345) == vec["tree_hash"]


def test_empty_payload_is_sha256_of_nothing():
    assert th.tree_hash(b"") == th.EMPTY_SHA256 == calculate_tree_hash(io.BytesIO(b""))


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 5, 5 * MiB, 9 * MiB + 1])
def test_matches_botocore(size):
    data = random.Random(size).randbytes(size)
    assert th.tree_hash(data) == calculate_tree_hash(io.BytesIO(data))


def test_incremental_any_chunking():
    data = random.Random(1).randbytes(7 * MiB + 3)
    h = th.TreeHasher(linear=True)
    rng = random.Random(2)
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 2 * MiB)
        h.update(data[pos : pos + n])
        pos += n
    assert h.hexdigest() == th.tree_hash(data)
    assert h.linear_hexdigest() == hashlib.sha256(data).hexdigest()
    assert h.size == len(data)


@pytest.mark.parametrize("part_mib", [1, 2, 4, 8])
def test_combine_part_hashes(part_mib):
    data = random.Random(part_mib).randbytes(9 * MiB + 1)
    part = part_mib * MiB
    parts = [th.tree_hash(data[i : i + part]) for i in range(0, len(data), part)]
    assert th.combine(parts) == th.tree_hash(data)


def test_combine_breaks_for_non_power_of_two_parts():
    data = random.Random(3).randbytes(7 * MiB)
    parts = [th.tree_hash(data[i : i + 3 * MiB]) for i in range(0, len(data), 3 * MiB)]
    assert th.combine(parts) != th.tree_hash(data)


def test_file_ranges(tmp_path):
    data = random.Random(4).randbytes(13 * MiB + 7)
    f = tmp_path / "f"
    f.write_bytes(data)
    for start, length in [(0, 1), (MiB, 2 * MiB), (4 * MiB, 9 * MiB + 7), (5, 100), (2 * MiB, 8 * MiB)]:
        assert th.tree_hash_file(f, start, length, segment=2 * MiB) == th.tree_hash(data[start : start + length])


def test_file_range_past_end_is_an_error(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    with pytest.raises(EOFError):
        th.tree_hash_file(f, 0, 10)


def _brute_force_nodes(size: int) -> set[tuple[int, int]]:
    nodes = set()
    span = MiB
    while True:
        for start in range(0, size, span):
            nodes.add((start, min(start + span, size) - 1))
        if span >= size:
            break
        span <<= 1
    return nodes


@pytest.mark.parametrize("size_mib_x2", [1, 2, 3, 8, 13, 16, 17])
def test_tree_hash_aligned_equals_tree_nodes(size_mib_x2):
    size = size_mib_x2 * MiB // 2 + (size_mib_x2 % 2)
    nodes = _brute_force_nodes(size)
    points = sorted({0, size - 1} | {k * MiB // 2 for k in range(0, 2 * size // MiB + 2)} | {k * MiB - 1 for k in range(1, size // MiB + 2)})
    points = [p for p in points if 0 <= p < size]
    for s in points:
        for e in points:
            assert th.is_tree_hash_aligned(s, e, size) == ((s, e) in nodes), (s, e, size)


def test_tree_hash_aligned_examples():
    size = 6 * MiB + MiB // 2
    assert th.is_tree_hash_aligned(2 * MiB, 4 * MiB - 1, size)
    assert not th.is_tree_hash_aligned(MiB, 3 * MiB - 1, size)
    assert th.is_megabyte_aligned(MiB, 3 * MiB - 1, size)
    assert th.is_megabyte_aligned(MiB, size - 1, size)
    assert not th.is_megabyte_aligned(MiB + 1, 3 * MiB - 1, size)
    assert not th.is_megabyte_aligned(0, 3 * MiB, size)


def test_part_size_rule():
    assert th.part_size_for(1) == MiB
    assert th.part_size_for(10_000 * MiB) == MiB
    assert th.part_size_for(10_000 * MiB + 1) == 2 * MiB
    assert th.part_size_for(100 * 1024 * MiB) == 16 * MiB
    assert th.part_size_for(5, minimum=4 * MiB) == 4 * MiB
    assert th.is_valid_part_size(MiB) and th.is_valid_part_size(4096 * MiB)
    assert not th.is_valid_part_size(10 * MiB) and not th.is_valid_part_size(8192 * MiB)
    with pytest.raises(ValueError):
        th.part_size_for(10_000 * 4096 * MiB + 1)
