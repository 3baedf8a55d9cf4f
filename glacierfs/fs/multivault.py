"""``--all-vaults``: the root lists the region's vaults; each is a :class:`VaultFS` built on demand.

``mkdir /VAULT`` creates a vault, ``rmdir /VAULT`` deletes it: Glacier deletes only a vault
that held no archives at its last inventory and had no writes since; when it refuses, the log
says so and rmdir returns ENOTEMPTY. Handles are renumbered so that numbers from different
vaults never collide.

Threading contract
------------------
FUSE threads only (each :class:`VaultFS` runs its own workers). ``_lock`` guards ``_vaults``,
``_opening``, ``_names``, ``_handles`` and ``_started``; it is never held while a vault is
opened (catalog open, flock, cache scan) or while the service is asked for the vault list:
a vault being opened is in ``_opening`` (an Event), so a second caller waits for that one
open instead of starting another, and handle operations of other vaults go on meanwhile.
Lock order: ``_lock`` is a leaf here (VaultFS methods are called without it).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from glacierfs.errors import (
    BadHandle,
    Busy,
    Exists,
    GlacierFSError,
    InvalidArgument,
    NoAttribute,
    NoEntry,
    NotEmpty,
    NotFoundError,
    NotPermitted,
    NotSupported,
    ReadOnly,
    TryAgain,
    UsageError,
)
from glacierfs.fs.types import Attr, statfs_answer
from glacierfs.fs.vaultfs import VaultFS
from glacierfs.names import check_vault_name

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 120.0


class MultiVaultFS:
    """All vaults of a region under one mount point."""

    VAULT_LIST_TTL = 10.0

    def __init__(self, ctx: Any, factory: Callable[[str], VaultFS], *, read_only: bool = False) -> None:
        self._ctx = ctx
        self._factory = factory
        self.read_only = read_only
        self._lock = threading.Lock()
        self._vaults: dict[str, VaultFS] = {}
        self._opening: dict[str, threading.Event] = {}
        self._names: tuple[float, list[str]] | None = None
        self._handles: dict[int, tuple[VaultFS, int]] = {}
        self._fh = itertools.count(1)
        self._started = False
        self._invalidate: Any = None
        self.started_at = time.time()

    def start(self) -> None:
        with self._lock:
            self._started = True
            fss = list(self._vaults.values())
        for fs in fss:
            fs.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._started = False
            fss = list(self._vaults.values())
        for fs in fss:
            fs.stop(timeout)

    def set_invalidator(self, invalidate: Any) -> None:
        with self._lock:
            self._invalidate = invalidate
            fss = list(self._vaults.items())
        for name, fs in fss:
            fs.set_invalidator(_prefixed(invalidate, name))

    def change_token(self) -> Any:
        """Vault list (refreshed at most once a minute) and every open vault's catalog token."""
        with self._lock:
            fss = sorted(self._vaults.items())
            cached = self._names
        if cached is None or time.monotonic() - cached[0] > 60:
            try:
                names = self._vault_names(refresh=True)
            except Exception:
                names = cached[1] if cached else []
        else:
            names = cached[1]
        return tuple(names), tuple((v, fs.change_token()) for v, fs in fss)

    def listing_token(self, path: str) -> Any:
        if path == "/":
            return None
        fs, rest = self._route(path)
        return fs.listing_token(rest)

    def archive_count(self) -> int | None:
        return None

    def notice_changes(self, known: Callable[[], list[tuple[str, list[str]]]]) -> None:
        with self._lock:
            fss = list(self._vaults.items())
        listings = known()
        for name, fs in fss:
            prefix = f"/{name}"
            inside = [(d[len(prefix):] or "/", names) for d, names in listings
                      if d == prefix or d.startswith(prefix + "/")]
            fs.notice_changes(lambda inside=inside: inside)  # type: ignore[misc]

    def _vault_names(self, refresh: bool = False) -> list[str]:
        with self._lock:
            cached = self._names
        if cached is not None and not refresh and time.monotonic() - cached[0] < self.VAULT_LIST_TTL:
            return cached[1]
        names = sorted(v.get("VaultName") for v in self._ctx.glacier.list_vaults() if v.get("VaultName"))
        with self._lock:
            self._names = (time.monotonic(), names)
        return names

    @staticmethod
    def _split(path: str) -> tuple[str | None, str]:
        if path == "/":
            return None, "/"
        vault, _, rest = path[1:].partition("/")
        return vault, "/" + rest

    def _fs(self, vault: str) -> VaultFS:
        """The vault's core, opened once (single-flight, without holding ``_lock``)."""
        while True:
            with self._lock:
                fs = self._vaults.get(vault)
                if fs is not None:
                    return fs
                opening = self._opening.get(vault)
                if opening is None:
                    opening = self._opening[vault] = threading.Event()
                    break
            if not opening.wait(OPEN_TIMEOUT):
                raise TryAgain(f"vault {vault} is still being opened")
        try:
            if vault not in self._vault_names() and vault not in self._vault_names(refresh=True):
                raise NoEntry()
            fs = self._factory(vault)
            with self._lock:
                self._vaults[vault] = fs
                started = self._started
                invalidate = self._invalidate
            if invalidate is not None:
                fs.set_invalidator(_prefixed(invalidate, vault))
            if started:
                fs.start()
            return fs
        finally:
            with self._lock:
                self._opening.pop(vault, None)
            opening.set()

    def _route(self, path: str) -> tuple[VaultFS, str]:
        vault, rest = self._split(path)
        if vault is None:
            raise NotPermitted()
        return self._fs(vault), rest

    def _wrap(self, fs: VaultFS, fh: int) -> int:
        with self._lock:
            n = next(self._fh)
            self._handles[n] = (fs, fh)
        return n

    def _unwrap(self, n: int) -> tuple[VaultFS, int]:
        with self._lock:
            found = self._handles.get(n)
        if found is None:
            raise BadHandle()
        return found

    def _in_vault(self, path: str) -> tuple[VaultFS, str] | None:
        """The vault and path inside it; None for the root and for a vault directory itself."""
        vault, rest = self._split(path)
        if vault is None or rest == "/":
            return None
        return self._fs(vault), rest

    # -- metadata
    def getattr(self, path: str) -> Attr:
        if path == "/":
            return Attr(True, 0, self.started_at)
        fs, rest = self._route(path)
        return fs.getattr(rest)

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        if path == "/":
            return [(name, Attr(True, 0, self.started_at)) for name in self._vault_names(refresh=True)]
        fs, rest = self._route(path)
        return fs.readdir(rest)

    def statfs(self) -> dict[str, int]:
        return statfs_answer()

    def mkdir(self, path: str) -> None:
        vault, rest = self._split(path)
        if vault is not None and rest == "/":
            if self.read_only:
                raise ReadOnly()
            if vault in self._vault_names(refresh=True):
                raise Exists()
            try:
                check_vault_name(vault)
            except UsageError:
                raise InvalidArgument("vault names use A-Z a-z 0-9 _ . - (at most 255)") from None
            self._ctx.glacier.create_vault(vault)
            with self._lock:
                self._names = None
            log.info("created vault %s", vault)
            return
        fs, rest = self._route(path)
        fs.mkdir(rest)

    def rmdir(self, path: str) -> None:
        vault, rest = self._split(path)
        if vault is None:
            raise Busy()
        if rest != "/":
            fs, rest = self._route(path)
            fs.rmdir(rest)
            return
        if self.read_only:
            raise ReadOnly()
        fs = self._fs(vault)
        if fs.readdir("/"):
            raise NotEmpty()
        try:
            self._ctx.glacier.delete_vault(vault)
        except NotFoundError:
            raise NoEntry() from None
        except GlacierFSError as exc:
            log.warning(
                "rmdir %s: Glacier refused to delete the vault (%s). It deletes a vault only when the vault "
                "held no archives at its last inventory and had no writes since: delete the archives, wait "
                "for the next inventory (about a day on AWS), then rmdir again",
                vault,
                exc,
            )
            raise NotEmpty() from None
        with self._lock:
            gone = self._vaults.pop(vault, None)
            self._names = None
        if gone is not None:
            gone.stop()
        log.info("deleted vault %s", vault)

    def rename(self, old: str, new: str) -> None:
        (fs1, r1), (fs2, r2) = self._route(old), self._route(new)
        if fs1 is not fs2 or r1 == "/" or r2 == "/":
            raise NotPermitted("nothing moves between vaults")
        fs1.rename(r1, r2)

    def unlink(self, path: str) -> None:
        found = self._in_vault(path)
        if found is None:
            raise NotPermitted()
        found[0].unlink(found[1])

    def link(self, target: str, source: str) -> None:
        raise NotPermitted("hard links are not supported")

    def symlink(self, target: str, source: str) -> None:
        raise NotPermitted("symbolic links are not supported")

    def chmod(self, path: str, mode: int) -> None:
        found = self._in_vault(path)
        if found is not None:
            found[0].chmod(found[1], mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        found = self._in_vault(path)
        if found is not None:
            found[0].chown(found[1], uid, gid)

    def utimens(self, path: str, mtime: float | None) -> None:
        found = self._in_vault(path)
        if found is not None:
            found[0].utimens(found[1], mtime)

    def getxattr(self, path: str, name: str) -> bytes:
        found = self._in_vault(path)
        if found is None:
            raise NoAttribute() if name.startswith("user.") else NotSupported()
        return found[0].getxattr(found[1], name)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        found = self._in_vault(path)
        if found is None:
            raise NotPermitted()
        found[0].setxattr(found[1], name, value)

    def listxattr(self, path: str) -> list[str]:
        found = self._in_vault(path)
        return [] if found is None else found[0].listxattr(found[1])

    def removexattr(self, path: str, name: str) -> None:
        found = self._in_vault(path)
        if found is None:
            raise NotPermitted()
        found[0].removexattr(found[1], name)

    # -- files
    def open(self, path: str, flags: int) -> int:
        fs, rest = self._route(path)
        return self._wrap(fs, fs.open(rest, flags))

    def create(self, path: str, flags: int = os.O_WRONLY) -> int:
        fs, rest = self._route(path)
        return self._wrap(fs, fs.create(rest, flags))

    def read(self, fh: int, size: int, offset: int) -> bytes:
        fs, h = self._unwrap(fh)
        return fs.read(h, size, offset)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        fs, h = self._unwrap(fh)
        return fs.write(h, data, offset)

    def write_fd(self, fh: int) -> int:
        fs, h = self._unwrap(fh)
        return fs.write_fd(h)

    def write_failed(self, fh: int, code: int) -> None:
        fs, h = self._unwrap(fh)
        fs.write_failed(h, code)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            fs, h = self._unwrap(fh)
            _, rest = self._split(path)
            fs.truncate(rest, length, h)
            return
        fs, rest = self._route(path)
        fs.truncate(rest, length)

    def flush(self, fh: int) -> None:
        fs, h = self._unwrap(fh)
        fs.flush(h)

    def fsync(self, fh: int, datasync: bool = False) -> None:
        fs, h = self._unwrap(fh)
        fs.fsync(h, datasync)

    def release(self, fh: int) -> None:
        with self._lock:
            found = self._handles.pop(fh, None)
        if found is not None:
            found[0].release(found[1])


def _prefixed(invalidate: Callable[[str], None], vault: str) -> Callable[[str], None]:
    return lambda path: invalidate(f"/{vault}{path}")
