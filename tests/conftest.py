"""Shared fixtures. Feature-specific fixtures live next to their tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def treehash_vectors() -> list[dict]:
    path = DATA / "treehash_vectors.json"
    if not path.exists():
        pytest.fail(f"tree-hash vectors missing: {path}")
    return json.loads(path.read_text())["vectors"]


def vector_bytes(size: int) -> bytes:
    """The generator of tests/data/treehash_vectors.json (copied from the project's shared test data)."""
    return bytes((i * 7 + i // 4096) % 256 for i in range(size))


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
    from tests.glacier_server import GlacierServer

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
    from tests.glacier_server import GlacierServer

    server = GlacierServer(tmp_path_factory.mktemp("glacier-module") / "data", "--seed", "7", start=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
