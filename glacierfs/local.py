"""Endpoint resolution: real AWS, ``--endpoint-url``, or ``--local DATA_DIR``.

``--local`` talks to the ``glacierfs serve`` already running on DATA_DIR (it advertises
itself in ``DATA_DIR/server.json``) or, if none is alive, runs an embedded server
in-process for the duration of the command.

This module owns the endpoint id (:func:`endpoint_id`), which names the client-side state
(catalog, caches, mount logs) so that two endpoints never share it: ``aws``; for
``--local DATA_DIR`` ``local:<absolute data dir>``, because the data dir *is* the server's
identity (its port changes at every restart); for ``--endpoint-url`` the normalized URL
(lower-case scheme and host, default port and trailing ``/`` dropped), so the same server
reached through another port or host name is another endpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from glacierfs.errors import CredentialsError, StateError, UsageError
from glacierfs.processes import pid_alive

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

Cleanup = Callable[[], None] | None


def endpoint_id(endpoint_url: str | None = None, local_dir: Path | None = None) -> str:
    """The identity of an endpoint for local state paths (the one owner of this rule)."""
    if local_dir is not None:
        return f"local:{local_dir}"
    if not endpoint_url:
        return "aws"
    url = endpoint_url.rstrip("/")
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return url
    if not host:
        return url
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def local_data_dir(local: str) -> Path:
    """The absolute data directory of ``--local DATA_DIR`` (created if missing)."""
    data_dir = Path(local).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot use {local} as a data directory: {exc.strerror or exc}") from None
    if not data_dir.is_dir():
        raise UsageError(f"{local} is not a directory")
    return data_dir.resolve()


def endpoint_id_for(args: argparse.Namespace) -> str:
    """:func:`endpoint_id` of the common options, without contacting or starting anything."""
    local = getattr(args, "local", None)
    if local:
        return endpoint_id(local_dir=local_data_dir(local))
    return endpoint_id(getattr(args, "endpoint_url", None))


def is_local_endpoint(url: str | None) -> bool:
    """Whether ``url`` points at this machine (jobs there finish fast: poll faster)."""
    if not url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host in LOCAL_HOSTS


def default_region(profile: str | None = None) -> str:
    """The region of the AWS config (profile-aware), else ``us-east-1``."""
    try:
        import boto3
        import botocore.exceptions

        try:
            region = boto3.session.Session(profile_name=profile).region_name
        except botocore.exceptions.ProfileNotFound:
            raise CredentialsError(f"AWS profile {profile!r} not found in the AWS config") from None
    except ImportError:  # pragma: no cover
        region = None
    return region or "us-east-1"


def _has_credentials(profile: str | None) -> bool:
    try:
        import boto3
        import botocore.exceptions

        try:
            return boto3.session.Session(profile_name=profile).get_credentials() is not None
        except botocore.exceptions.ProfileNotFound:
            raise CredentialsError(f"AWS profile {profile!r} not found in the AWS config") from None
        except botocore.exceptions.BotoCoreError:
            return False
    except ImportError:  # pragma: no cover
        return False


def _port_open(url: str, timeout: float = 1.0) -> bool:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def running_server_url(data_dir: Path) -> str | None:
    """URL of a live server advertised in ``DATA_DIR/server.json`` (pid alive and port open)."""
    info_path = data_dir / "server.json"
    try:
        info = json.loads(info_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("ignoring unreadable %s: %s", info_path, exc)
        return None
    url = info.get("url") if isinstance(info, dict) else None
    if not isinstance(url, str) or not pid_alive(info.get("pid")):
        return None
    return url if _port_open(url) else None


def start_embedded(data_dir: Path, **options: Any) -> tuple[str, Callable[[], None]]:
    """Run a server on ``data_dir`` in this process; returns its URL and the stop function."""
    try:
        from glacierfs.server import start_server
    except ImportError as exc:
        raise StateError(f"the embedded local server is unavailable: {exc}") from None
    try:
        handle = start_server(data_dir, port=0, **options)
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot start a local server on {data_dir}: {exc}") from None
    except Exception as exc:  # DataDirInUse: a server we could not reach holds the lock
        raise StateError(f"{exc}; is it still starting or hung?") from None
    log.debug("embedded server on %s at %s", data_dir, handle.url)

    def stop() -> None:
        with contextlib.suppress(Exception):
            handle.shutdown()

    return handle.url, stop


def resolve_endpoint(args: argparse.Namespace) -> tuple[str | None, str, dict[str, Any], Cleanup]:
    """``(endpoint_url, endpoint_id, extra_client_kwargs, cleanup)`` for the common options.

    ``extra_client_kwargs`` may hold ``access_key``/``secret_key`` (dummy ``local`` ones in
    local mode when the AWS chain has none). ``cleanup`` (or None) must be called when the
    command ends: it stops an embedded server.
    """
    local = getattr(args, "local", None)
    endpoint_url = getattr(args, "endpoint_url", None)
    profile = getattr(args, "profile", None)
    extra: dict[str, Any] = {}
    if local and endpoint_url:
        raise UsageError("--local and --endpoint-url exclude each other")
    if local:
        data_dir = local_data_dir(local)
        if not (
            getattr(args, "access_key", None) and getattr(args, "secret_key", None)
        ) and not _has_credentials(profile):
            extra = {"access_key": "local", "secret_key": "local"}
        url = running_server_url(data_dir)
        cleanup: Cleanup = None
        if url is None:
            url, cleanup = start_embedded(data_dir)
        return url, endpoint_id(local_dir=data_dir), extra, cleanup
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"invalid --endpoint-url {endpoint_url!r}: expected http(s)://host[:port]")
        return endpoint_url.rstrip("/"), endpoint_id(endpoint_url), extra, None
    return None, endpoint_id(), extra, None
