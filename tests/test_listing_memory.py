"""A directory listing for readdirplus costs what its names and ``stat`` structs need.

``ls -l`` of a directory of 100,000 archives keeps its packed listing (reused while the catalog
is unchanged). As a ``(bytes, ctypes stat)`` tuple per entry it held ~400 bytes an entry
(tracemalloc); the :class:`~glacierfs.fs.listing_cache.Listing` buffers hold the 144-byte
``stat`` and the name. Measured in-process with tracemalloc over a core that lists N entries;
what libfuse reads at the addresses is checked too.
"""

from __future__ import annotations

import ctypes
import gc
import os
import stat
import tracemalloc
from typing import Any

import pytest

from glacierfs.fs.listing_cache import Listings, StatPacker
from glacierfs.fs.types import Attr

N = 20_000
BYTES_PER_ENTRY = 240  # stat 144 + name ~16 + offset 8, with room; the tuples held ~400


def _c_stat() -> Any:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    try:
        import mfusepy
    except (ImportError, OSError) as exc:  # no libfuse here
        pytest.skip(f"mfusepy not importable: {exc}")
    return mfusepy.c_stat


class _Core:
    """What Listings asks of the core; the names are distinct objects, as the catalog's are."""

    def __init__(self, n: int, token: object = 1) -> None:
        self.n = n
        self.token = token

    def getattr(self, path: str) -> Attr:
        return Attr(True, 0, 0.0)

    def listing_token(self, path: str) -> object:
        return self.token

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        return [(f"IMG_{i:07d}.jpg", Attr(False, 1000 + i, 1.6e9 + i * 7.25)) for i in range(self.n)]


def test_a_cached_listing_holds_about_its_stat_structs_and_names() -> None:
    c_stat = _c_stat()
    listings = Listings(_Core(N), StatPacker(c_stat, 1234, 5678))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fh = listings.opendir("/big")
        listing = listings.entries(fh, 0)
        listings.releasedir(fh)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base  # the cached listing only
    finally:
        tracemalloc.stop()
    assert len(listing) == N + 2
    assert held / N <= BYTES_PER_ENTRY, f"{held / N:.0f} bytes an entry"
    # what the filler reads: NUL-terminated names and stat structs at the addresses
    for i in (0, 1, 2, N // 2, N + 1):
        name = ctypes.string_at(listing.name_address(i))
        st = c_stat.from_address(listing.stat_address(i))
        if i < 2:
            assert name == (b"." if i == 0 else b"..") and stat.S_ISDIR(st.st_mode)
            continue
        k = i - 2
        assert name == f"IMG_{k:07d}.jpg".encode() == listing.name(i)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 1000 + k and st.st_blocks == (1000 + k + 511) // 512
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert st.st_mtimespec.tv_sec * 10**9 + st.st_mtimespec.tv_nsec == int((1.6e9 + k * 7.25) * 1e9)
    assert listings.known_listings() == [("/big", [f"IMG_{k:07d}.jpg" for k in range(N)])]


def test_listings_are_kept_up_to_a_total_of_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    from glacierfs.fs import listing_cache

    monkeypatch.setattr(listing_cache, "MAX_CACHED_ENTRIES", 250)
    listings = Listings(_Core(100), StatPacker(_c_stat(), 0, 0))
    for d in ("/a", "/b", "/c", "/d"):
        listings.build(d)
    kept = [d for d, _ in listings.known_listings()]
    assert kept == ["/c", "/d"]  # 102 entries each: a third would pass 250
    big = Listings(_Core(300), StatPacker(_c_stat(), 0, 0))
    big.build("/huge")
    assert big.known_listings() == []  # bigger than the bound alone: built, not kept


def test_an_uncacheable_listing_is_released_with_its_handle() -> None:
    listings = Listings(_Core(N, token=None), StatPacker(_c_stat(), 0, 0))  # None: files still uploading
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fh = listings.opendir("/busy")
        assert len(listings.entries(fh, 0)) == N + 2
        open_held = tracemalloc.get_traced_memory()[0] - base
        listings.releasedir(fh)
        gc.collect()
        released = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert open_held > N * 144  # the open handle holds the snapshot...
    assert released < N * 8, f"{released} bytes left after releasedir"  # ...and releasedir frees it
