"""The part size of uploads (no server): the throughput default, --part-size, Glacier's limits.

Why a default of at least 16 MiB: README, "Part size" (measured at 0.05 s per request).
"""

from __future__ import annotations

import logging

import pytest

from glacierfs.errors import UsageError
from glacierfs.treehash import MiB
from glacierfs.upload import THROUGHPUT_PART_SIZE, choose_part_size, default_concurrency, default_part_size


@pytest.mark.parametrize(("size", "part"), [
    (0, 16 * MiB),
    (1, 16 * MiB),
    (16 * MiB, 16 * MiB),
    (10_000 * 16 * MiB, 16 * MiB),  # exactly 10,000 parts of the floor
    (10_000 * 16 * MiB + 1, 32 * MiB),  # one byte more: the next power of two
    (100_000 * MiB, 16 * MiB),
    (10_000 * 1024 * MiB + 1, 2048 * MiB),
    (10_000 * 4096 * MiB, 4096 * MiB),  # Glacier's largest archive (40 TiB)
    (10_000 * 4096 * MiB + 1, 4096 * MiB),  # capped: choose_part_size refuses this size
])
def test_default_part_size_is_the_throughput_floor_or_what_10000_parts_need(size, part):
    assert default_part_size(size) == part
    assert THROUGHPUT_PART_SIZE == 16 << 20  # the measured floor (README, "Part size")
    if size <= 10_000 * 4096 * MiB:
        assert choose_part_size(size) == part


def test_requested_part_size_used_when_larger(caplog):
    assert choose_part_size(5 * MiB, 8 * MiB) == 8 * MiB
    with caplog.at_level(logging.WARNING, logger="glacierfs.upload"):
        assert choose_part_size(20_000 * MiB, MiB) == 2 * MiB
    assert "using 2 MiB" in caplog.text


@pytest.mark.parametrize("bad", [0, 1000, 3 * MiB, 10 * MiB, 8192 * MiB])
def test_invalid_requested_part_size(bad):
    with pytest.raises(UsageError, match="power of two"):
        choose_part_size(MiB, bad)


def test_too_large_for_glacier():
    with pytest.raises(UsageError, match="larger than Glacier"):
        choose_part_size(10_000 * 4096 * MiB + 1)


@pytest.mark.parametrize(("size", "part", "connections"), [
    (0, 16 * MiB, 1),
    (1000, 16 * MiB, 1),
    (3 * 16 * MiB, 16 * MiB, 3),  # one per part
    (1024 * MiB, 16 * MiB, 8),  # streamed parts: up to 8 (the WAN bench's best case)
    (1024 * MiB, 8 * MiB, 4),  # parts held in memory whole (<= BUFFER_LIMIT): at most 4
    (100 * MiB, MiB, 4),
])
def test_default_concurrency_is_one_per_part_up_to_the_cap(size, part, connections):
    assert default_concurrency(size, part) == connections
