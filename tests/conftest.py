"""The fixtures more than one test module uses, each defined once here (the helpers they are built
on live in tests/helpers/). Fixtures only one module uses live next to its tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.cli import Cli
from tests.helpers.vectors import VECTORS

if TYPE_CHECKING:
    from tests.helpers.mounts import Mount
    from tests.helpers.s3_server import S3Server


@pytest.fixture(scope="session")
def treehash_vectors() -> list[dict]:
    if not VECTORS.exists():
        pytest.fail(f"tree-hash vectors missing: {VECTORS}")
    return json.loads(VECTORS.read_text())["vectors"]


@pytest.fixture(scope="session", autouse=True)
def isolated_aws_config(tmp_path_factory: pytest.TempPathFactory):
    """Never read the developer's AWS config or credentials, never reach instance metadata."""
    import os

    home = tmp_path_factory.mktemp("aws-config")
    values = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "nonexistent-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "nonexistent-credentials"),
    }
    saved = {k: os.environ.get(k) for k in [*values, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(values)
    yield values
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def glacier_server_factory(tmp_path: Path):
    """``factory(*extra_args, data_dir=None, admin=True)`` -> a started :class:`GlacierServer` (with the
    ``--admin`` hooks unless ``admin=False``); all stopped at teardown."""
    from tests.helpers.glacier_server import GlacierServer

    servers: list[GlacierServer] = []

    def factory(*extra_args: str, data_dir: Path | None = None, admin: bool = True) -> GlacierServer:
        d = data_dir or tmp_path / f"glacier-data-{len(servers)}"
        server = GlacierServer(d, *extra_args, start=False, admin=admin)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        try:
            server.stop()
        except Exception:
            server.kill()


@pytest.fixture
def glacier_server(glacier_server_factory):
    """A fresh ``glacierfs serve`` (job delay 0, inventory every hour) on a tmp data dir."""
    return glacier_server_factory()


@pytest.fixture(scope="module")
def glacier_server_module(tmp_path_factory: pytest.TempPathFactory):
    """One server shared by a test module (seed 7); tests must use their own vault names."""
    from tests.helpers.glacier_server import GlacierServer

    server = GlacierServer(tmp_path_factory.mktemp("glacier-module") / "data", "--seed", "7", start=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- S3 (export)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 behind the checksum gate (tests/helpers/s3_server.py), one per test module."""
    from tests.helpers.s3_server import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3") / "s3.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A new bucket named after the test (gate counters reset)."""
    import hashlib

    name = "b-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:20]
    s3_server.client().create_bucket(Bucket=name)
    s3_server.gate("reset")
    return name


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The working directory the CLI runs in (relative paths are relative to it)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def cli(glacier_server, tmp_path: Path, work: Path) -> Cli:
    """The real ``glacierfs`` command against :func:`glacier_server`, run in :func:`work`."""
    return Cli(glacier_server.url, tmp_path / "cache", work)


# --------------------------------------------------------------------------- FUSE mounts


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """``factory(server, *extra, vault=VAULT, cache=None, name="mnt")`` -> a started :class:`Mount`.

    The vault is created on the server first. All mounts are closed at teardown (stopped, else
    killed, and detached), even when the test failed.
    """
    # imported here: glacierfs.mount is loaded only by tests that mount
    from tests.helpers.mounts import VAULT, Mount, MountSet, skip_without_fuse

    skip_without_fuse()
    mounts = MountSet()

    def factory(server: Any, *extra: str, vault: str | None = VAULT, cache: Path | None = None,
                name: str = "mnt") -> Mount:
        if vault and server is not None:
            server.client(max_attempts=3).create_vault(vaultName=vault)
        m = Mount(tmp_path / name, cache or tmp_path / "cache", server.url if server is not None else None, vault,
                  *extra)
        return mounts.add(m).start()

    try:
        yield factory
    finally:
        mounts.cleanup()
