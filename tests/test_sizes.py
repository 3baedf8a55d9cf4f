"""SIZE arguments: binary units, plain bytes, clear errors."""

from __future__ import annotations

import pytest

from glacierfs.errors import UsageError
from glacierfs.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1K", 1024),
        ("1KiB", 1024),
        ("1k", 1024),
        ("1M", 1 << 20),
        ("64MiB", 64 << 20),
        ("64mib", 64 << 20),
        ("64MB", 64 << 20),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
        ("2T", 2 << 40),
        ("2TiB", 2 << 40),
        (" 8 M ", 8 << 20),
        ("1.5G", 3 << 29),
        ("0.5K", 512),
        ("10B", 10),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_passes_ints_through() -> None:
    assert parse_size(123) == 123


@pytest.mark.parametrize(
    "text", ["", " ", "M", "1X", "1MiBs", "-1", "-1M", "1..5M", "0.3K", "1e6", "1 2", "0x10"]
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message or text.strip() in message


def test_parse_size_rejects_negative_int_and_bool() -> None:
    with pytest.raises(UsageError):
        parse_size(-5)
    with pytest.raises(UsageError):
        parse_size(True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (64 << 20, "64 MiB"),
        (1 << 30, "1 GiB"),
        ((1 << 40) * 3, "3 TiB"),
        (-2048, "-2 KiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_parse_round_trip_for_exact_sizes() -> None:
    for n in (1, 1024, 5 << 20, 7 << 30, 9 << 40):
        assert parse_size(format_size(n).replace(" ", "")) == n
