"""Writes into a real mount through descriptors opened O_WRONLY (direct I/O, past the kernel's
page cache) and O_RDWR (through it), issue 14: each gives the same archive.

O_WRONLY descriptors (``cp``, ``>``) are opened with FOPEN_DIRECT_IO; O_RDWR ones keep the page
cache, so a shared writable mmap still works. The commit point (SIGKILL right after ``mv``
returned) is tested in test_mount_commit.py.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from tests.helpers.mounts import getfattr, glacierfs, run

PAGE = 4096


def _treehash(path: Path) -> str:
    return glacierfs("treehash", str(path)).stdout.split()[0]


def _archived_as(f: Path, data: bytes, tmp_path: Path, log: str) -> None:
    assert run("sync", str(f)).returncode == 0, log
    assert f.read_bytes() == data
    local = tmp_path / f.name
    local.write_bytes(data)
    assert getfattr(f, "user.glacier.treehash") == _treehash(local)


def test_write_only_and_read_write_descriptors_reach_the_archive(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    # O_WRONLY: small unaligned writes, a rewrite of part of a page, an append
    f = m.mnt / "direct.bin"
    data = bytearray(os.urandom(5 * PAGE + 123))
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for off in range(0, len(data), 1000):
            assert os.pwrite(fd, bytes(data[off:off + 1000]), off) == len(data[off:off + 1000])
        assert os.fstat(fd).st_size == len(data)
        assert getfattr(f, "user.glacier.state") == "uploading"
    finally:
        os.close(fd)
    fd = os.open(f, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"middle", 2 * PAGE + 100) == 6
        data[2 * PAGE + 100:2 * PAGE + 106] = b"middle"
    finally:
        os.close(fd)
    with open(f, "ab") as out:  # O_WRONLY | O_APPEND
        out.write(b"appended")
    data += b"appended"
    assert f.stat().st_size == len(data)
    # a reader that opened the file before the direct writes sees them
    g = m.mnt / "shared.bin"
    g.write_bytes(b"a" * 3 * PAGE)
    reader = os.open(g, os.O_RDONLY)  # its pages are in the kernel's cache (read ahead)
    try:
        assert os.pread(reader, 3 * PAGE, 0) == b"a" * 3 * PAGE
        fd = os.open(g, os.O_WRONLY)
        try:
            os.pwrite(fd, b"b" * PAGE, PAGE)
        finally:
            os.close(fd)
        assert os.pread(reader, 3 * PAGE, 0) == b"a" * PAGE + b"b" * PAGE + b"a" * PAGE
    finally:
        os.close(reader)
    # O_RDWR keeps the page cache: a shared writable mapping works
    h = m.mnt / "mapped.bin"
    fd = os.open(h, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 2 * PAGE)
        with mmap.mmap(fd, 2 * PAGE) as mapped:
            mapped[:5] = b"hello"
            mapped[PAGE + 1:PAGE + 6] = b"world"
            mapped.flush()
    finally:
        os.close(fd)
    mapped_data = bytearray(2 * PAGE)
    mapped_data[:5], mapped_data[PAGE + 1:PAGE + 6] = b"hello", b"world"
    for path, expected in ((f, bytes(data)), (g, b"a" * PAGE + b"b" * PAGE + b"a" * PAGE), (h, bytes(mapped_data))):
        _archived_as(path, expected, tmp_path, m.log())


def test_cp_p_and_truncate_through_a_write_only_descriptor(glacier_server, mount_factory, tmp_path):
    m = mount_factory(glacier_server)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 5))
    os.utime(src, (1_600_000_000, 1_600_000_000))
    assert run("cp", "-p", str(src), str(m.mnt / "kept.bin")).returncode == 0, m.log()
    f = m.mnt / "cut.bin"
    with open(f, "wb") as out:
        out.write(b"x" * 100_000)
        out.flush()
        os.ftruncate(out.fileno(), 1000)
        out.seek(0)
        out.write(b"head")
    assert f.stat().st_size == 1000
    _archived_as(f, b"head" + b"x" * 996, tmp_path, m.log())
    _archived_as(m.mnt / "kept.bin", src.read_bytes(), tmp_path, m.log())
    assert (m.mnt / "kept.bin").stat().st_mtime == 1_600_000_000
