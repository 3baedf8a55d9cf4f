"""The mount core without FUSE: a VaultFS over a real catalog, upload engine and job runner
against a real ``glacierfs serve``, and the calls tests make on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from glacierfs.fs import FSError, VaultFS
from glacierfs.fs.datacache import DataCache

VAULT = "v"


class Env:
    def __init__(self, server: Any, root: Path) -> None:
        from glacierfs.catalog import Catalog
        from glacierfs.client import ConnectionSettings, make_glacier

        self.server = server
        self.root = root
        settings = ConnectionSettings(
            endpoint_url=server.url, region="us-east-1", access_key="testing", secret_key="testing", max_attempts=2
        )
        self.glacier = make_glacier(settings)
        try:
            self.glacier.create_vault(VAULT)
        except Exception:
            pass
        self.catalog = Catalog.open(root / "cache", "test", "us-east-1", VAULT)
        self.fss: list[VaultFS] = []

    def fs(self, *, engine_factory: Any = None, cache_size: int = 1 << 30, **kw: Any) -> VaultFS:
        from glacierfs.jobs import Backoff, JobRunner
        from glacierfs.upload import UploadEngine

        kw.setdefault("upload_delay", 0.0)
        kw.setdefault("retry_delay", 0.05)
        kw.setdefault("poll_interval", 0.1)
        kw.setdefault("max_poll_interval", 0.5)
        fs = VaultFS(
            self.catalog,
            self.glacier,
            VAULT,
            DataCache(self.root / "state", cache_size),
            engine_factory=engine_factory
            or (lambda: UploadEngine(self.glacier, self.catalog, VAULT, concurrency=2, rehash=False)),
            runner=JobRunner(self.glacier, self.catalog, VAULT, poll=Backoff.local()),
            **kw,
        )
        self.fss.append(fs)
        fs.start()
        return fs

    def close(self) -> None:
        for fs in self.fss:
            fs.stop()




def write_file(fs: VaultFS, path: str, data: bytes, chunk: int = 65536) -> None:
    fh = fs.create(path)
    # out of order on purpose: any write pattern is staged
    offsets = list(range(0, len(data), chunk))
    for off in reversed(offsets):
        assert fs.write(fh, data[off : off + chunk], off) == len(data[off : off + chunk])
    fs.flush(fh)
    fs.release(fh)


def sync(fs: VaultFS, path: str) -> None:
    fh = fs.open(path, os.O_RDONLY)
    try:
        fs.fsync(fh)
    finally:
        fs.release(fh)


def read_all(fs: VaultFS, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(fh, 1 << 30, 0)
    finally:
        fs.release(fh)


def err(fn: Any, *args: Any) -> int:
    with pytest.raises(FSError) as exc:
        fn(*args)
    return exc.value.errno
