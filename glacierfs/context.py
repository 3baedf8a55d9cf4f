"""The composition root of a client command: common options -> Glacier client, cache root,
catalogs, job runners.

:func:`open_context` resolves the endpoint (AWS, ``--endpoint-url`` or ``--local``, which may
start an embedded server for the command's duration), builds the :class:`~glacierfs.client.Glacier`
client and the cache root, and yields a :class:`Context` that opens each vault's catalog once.
Leaving the ``with`` block closes the catalogs and stops an embedded server.

Used by the client commands (:mod:`glacierfs.commands`), the mount (:mod:`glacierfs.mount`)
and the commands other modules register; it imports neither of them. Library imports are
deferred into the functions so that building the parser (``--help``) stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from glacierfs.errors import CredentialsError, NotFoundError, UsageError
from glacierfs.output import note
from glacierfs.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from glacierfs.catalog import Catalog
    from glacierfs.client import Glacier
    from glacierfs.jobs import JobRunner

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/glacierfs`` or ``~/.cache/glacierfs``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glacierfs"


def cache_root_for(args: argparse.Namespace) -> Path:
    """The cache root from ``--cache-dir``/``GLACIERFS_CACHE_DIR`` or the default, created 0700."""
    root = Path(getattr(args, "cache_dir", None) or default_cache_root()).expanduser()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create cache directory {root}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise UsageError(f"cache directory {root} is not a directory")
    return root.resolve()


def make_progress(args: argparse.Namespace) -> Progress:
    """The progress display for ``-q``/``--quiet`` (silent off a terminal anyway)."""
    return Progress(quiet=bool(getattr(args, "quiet", False)))


@dataclass
class Context:
    """Everything a command needs, built once from the common options.

    ``close()`` (or leaving :func:`open_context`'s block) closes the catalogs and stops an
    embedded ``--local`` server.
    """

    args: argparse.Namespace
    glacier: Glacier
    region: str
    endpoint_url: str | None
    endpoint_id: str
    cache_root: Path
    progress: Progress
    _cleanup: Callable[[], None] | None = None
    _catalogs: dict[str, Catalog] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """Local endpoints complete jobs in seconds: poll them faster."""
        from glacierfs.local import is_local_endpoint

        return self.endpoint_id.startswith("local:") or is_local_endpoint(self.endpoint_url)

    def catalog(self, vault: str, *, exists: bool = False) -> Catalog:
        """The vault's catalog, opened once per context.

        A catalog is created only for a vault the service has: the first time a vault is used
        from this cache dir it is described first (``exists``: the caller just saw it), so a
        command on a vault that does not exist fails with one line and leaves no folder behind.
        """
        if vault not in self._catalogs:
            from glacierfs.catalog import Catalog

            if not exists and not Catalog.exists(self.cache_root, self.endpoint_id, self.region, vault):
                self.check_vault(vault)
            self._catalogs[vault] = Catalog.open(self.cache_root, self.endpoint_id, self.region, vault)
        return self._catalogs[vault]

    def check_vault(self, vault: str) -> None:
        """NotFoundError (with the command that lists the vaults) unless the service has ``vault``.

        A policy that denies DescribeVault alone (an upload-only IAM user) does not stop the
        command: its own requests tell whether it may use the vault.
        """
        try:
            self.glacier.describe_vault(vault)
        except CredentialsError as exc:
            if exc.code != "AccessDeniedException":
                raise
            log.debug("DescribeVault of %s denied (%s); the command's own requests will tell", vault, exc)
        except NotFoundError as exc:
            where = self.endpoint_url or "AWS"
            if self.endpoint_id.startswith("local:"):
                where = f"the local server of {self.endpoint_id.removeprefix('local:')}"
            raise NotFoundError(
                f"vault {vault} does not exist in {self.region} at {where}", code=exc.code, hint=("vaults",)
            ) from None

    def forget_vault(self, vault: str) -> None:
        """After DeleteVault: remove the vault's local state, or say in one note why it stays."""
        from glacierfs.catalog import remove_vault_state, vault_dir

        cat = self._catalogs.pop(vault, None)
        if cat is not None:
            cat.close()
        where = vault_dir(self.cache_root, self.endpoint_id, self.region, vault)
        kept = remove_vault_state(where)
        if kept is not None:
            note(f"the local state of {vault} is kept in {where}: {kept}")

    def known_vaults(self) -> list[str]:
        """The vaults that have a catalog here for this endpoint and region (no request)."""
        from glacierfs.catalog import list_vaults

        return sorted(list_vaults(self.cache_root, self.endpoint_id, self.region))

    def runner(self, vault: str) -> JobRunner:
        """A job runner for ``vault`` polling at the endpoint's pace."""
        from glacierfs.download import Deadlines
        from glacierfs.jobs import Backoff, JobRunner

        poll = Backoff.local() if self.is_local else Backoff()
        deadlines = Deadlines.capped(getattr(self.args, "timeout", None))
        return JobRunner(
            self.glacier, self.catalog(vault), vault, progress=self.progress, poll=poll, deadlines=deadlines
        )

    def close(self) -> None:
        for cat in self._catalogs.values():
            try:
                cat.close()
            except Exception as exc:  # closing must not mask the command's own outcome
                log.debug("closing a catalog: %s", exc)
        self._catalogs.clear()
        if self._cleanup:
            cleanup, self._cleanup = self._cleanup, None
            cleanup()


@contextlib.contextmanager
def open_context(args: argparse.Namespace) -> Iterator[Context]:
    """Resolve the endpoint (maybe starting an embedded server), build the client and cache."""
    from glacierfs.client import ConnectionSettings, make_glacier
    from glacierfs.download import Deadlines
    from glacierfs.local import default_region, resolve_endpoint

    cache_root = cache_root_for(args)
    endpoint_url, endpoint_id, extra, cleanup = resolve_endpoint(args)
    try:
        region = getattr(args, "region", None) or default_region(getattr(args, "profile", None))
        settings = ConnectionSettings(
            endpoint_url=endpoint_url,
            region=region,
            profile=getattr(args, "profile", None),
            access_key=extra.get("access_key", getattr(args, "access_key", None)),
            secret_key=extra.get("secret_key", getattr(args, "secret_key", None)),
            max_attempts=extra.get("max_attempts"),
            read_timeout=Deadlines.capped(getattr(args, "timeout", None)).socket_read,
        )
        glacier = make_glacier(settings)
        ctx = Context(
            args=args,
            glacier=glacier,
            region=region,
            endpoint_url=endpoint_url,
            endpoint_id=endpoint_id,
            cache_root=cache_root,
            progress=make_progress(args),
            _cleanup=cleanup,
        )
    except BaseException:
        if cleanup:
            cleanup()
        raise
    try:
        yield ctx
    finally:
        ctx.close()
