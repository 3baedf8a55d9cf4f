"""``glacierfs mount`` and ``glacierfs umount``.

Without ``--foreground`` the command starts ``python -m glacierfs mount --foreground ...`` as
a detached child (new session, output to ``<cache-dir>/logs/<vault>.log``), waits until the
mount point is mounted (or the child died: its last log line becomes the error) and returns.
The child builds the client context (``--local`` may run the embedded server inside it, so
the server lives exactly as long as the mount), the core (:class:`~glacierfs.vfs.VaultFS`)
and serves FUSE until ``fusermount3 -u`` / ``glacierfs umount``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from glacierfs.errors import GlacierFSError, NotFoundError, StateError, UsageError
from glacierfs.options import tier_type as _tier

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
DEFAULT_CACHE_SIZE = "10GiB"
KEYS_ENV = ("GLACIERFS_MOUNT_ACCESS_KEY", "GLACIERFS_MOUNT_SECRET_KEY")  # -k/-s handed to the daemon


def default_local_dir() -> str:
    """Data directory of a bare ``--local``: the one ``glacierfs serve`` uses by default."""
    try:
        from glacierfs.server.command import DEFAULT_DATA_DIR
    except ImportError:  # pragma: no cover
        DEFAULT_DATA_DIR = "~/.local/share/glacierfs/server"
    return os.path.expanduser(DEFAULT_DATA_DIR)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    # a private copy of the common options: "resolve" below edits the parent's --local action,
    # which must not leak into the other commands sharing ``common``
    p = sub.add_parser(
        "mount",
        parents=[copy.deepcopy(common)],
        conflict_handler="resolve",
        help="mount a vault (or all vaults) as a filesystem",
        description="Mount VAULT on MOUNTPOINT. Returns once the mount is ready unless --foreground. "
        "Files copied in are uploaded in the background; reads need the bytes in the local cache "
        "(retrieve with: setfattr -n user.glacier.retrieve -v Standard FILE).",
    )
    p.add_argument("vault", nargs="?", metavar="VAULT", help="vault name (omit with --all-vaults)")
    p.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("--all-vaults", action="store_true", help="the root lists the region's vaults as directories")
    p.add_argument(
        "--local",
        nargs="?",
        const=default_local_dir(),
        metavar="DATA_DIR",
        help=f"run on the embedded local Glacier over DATA_DIR (default {default_local_dir()}); "
        "the vault is created if missing",
    )
    p.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, metavar="SIZE", help="bound of the data cache")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="parallel part uploads per file")
    p.add_argument("--part-size", metavar="SIZE", help="multipart part size (default: chosen per file)")
    p.add_argument("--read-only", action="store_true", help="mount read-only (retrievals still allowed)")
    p.add_argument(
        "--auto-retrieve",
        metavar="TIER",
        type=_tier,
        help="start a retrieval of this tier (Expedited, Standard, Bulk) when an uncached archive is opened",
    )
    p.add_argument(
        "-o", dest="fuse_options", action="append", default=[], metavar="OPTIONS", help="FUSE mount options"
    )
    p.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount a glacierfs mount point")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-z", "--lazy", action="store_true", help="lazy unmount (detach even if busy)")
    u.set_defaults(func=cmd_umount)


# --------------------------------------------------------------------------- arguments


def _fix_positionals(args: argparse.Namespace) -> None:
    """``--local VAULT MNT`` parses VAULT as DATA_DIR: shift it back (the only valid reading)."""
    if args.all_vaults:
        if args.mountpoint is None:
            args.mountpoint, args.vault = args.vault, None
        elif args.vault is not None:
            raise UsageError("--all-vaults takes only MOUNTPOINT")
    elif args.mountpoint is None and args.local not in (None, default_local_dir()) and args.vault:
        args.vault, args.mountpoint, args.local = args.local, args.vault, default_local_dir()
    if args.mountpoint is None:
        raise UsageError("usage: glacierfs mount VAULT MOUNTPOINT (or --all-vaults MOUNTPOINT)")
    if not args.all_vaults and not args.vault:
        raise UsageError("VAULT is required (or use --all-vaults)")
    if args.vault:
        from glacierfs.names import check_vault_name

        check_vault_name(args.vault)
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")


def _mountpoint(path: str) -> Path:
    mnt = Path(path).expanduser().absolute()
    if not mnt.is_dir():
        raise UsageError(f"mount point {mnt} is not a directory")
    if os.path.ismount(mnt):
        raise StateError(f"{mnt} is already a mount point")
    return mnt


def _fuse_options(args: argparse.Namespace) -> dict[str, Any]:
    from glacierfs.fuse_adapter import parse_options

    opts: dict[str, Any] = {}
    for text in args.fuse_options:
        opts.update(parse_options(text))
    for bad in ("big_writes", "max_write", "writeback_cache"):
        if bad in opts:
            log.warning("ignoring FUSE option %s: libfuse3 rejects it", bad)
            opts.pop(bad)
    if args.read_only:
        opts["ro"] = True
    return opts


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _log_path(args: argparse.Namespace) -> Path:
    from glacierfs.context import cache_root_for

    logs = cache_root_for(args) / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    return logs / f"{_sanitize(args.vault or 'all-vaults')}.log"


def _child_argv(args: argparse.Namespace, mnt: Path) -> list[str]:
    argv = [sys.executable, "-m", "glacierfs", "mount", "--foreground"]
    # -k/-s go to the child through its environment (KEYS_ENV), never its command line: any
    # local user can read a process's command line in /proc, only its owner the environment.
    for opt in ("endpoint_url", "region", "profile", "cache_dir", "part_size", "auto_retrieve"):
        value = getattr(args, opt, None)
        if value:
            argv += [f"--{opt.replace('_', '-')}", str(value)]
    if args.local:
        argv.append(f"--local={Path(args.local).expanduser().absolute()}")
    argv += ["--cache-size", str(args.cache_size), "--concurrency", str(args.concurrency)]
    for flag in ("all_vaults", "read_only", "debug", "quiet"):
        if getattr(args, flag, False):
            argv.append(f"--{flag.replace('_', '-')}")
    for text in args.fuse_options:
        argv += ["-o", text]
    if args.vault:
        argv.append(args.vault)
    argv.append(str(mnt))
    return argv


# --------------------------------------------------------------------------- mount


def cmd_mount(args: argparse.Namespace) -> int:
    _keys_from_env(args)
    _fix_positionals(args)
    mnt = _mountpoint(args.mountpoint)
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        raise StateError("fusermount3 not found: install the fuse3 package")
    if not os.path.exists("/dev/fuse"):
        raise StateError("/dev/fuse is missing: load the fuse module or run with --device /dev/fuse")
    from glacierfs.sizes import parse_size

    args.cache_size_bytes = parse_size(args.cache_size)
    args.part_size_bytes = parse_size(args.part_size) if args.part_size else None
    if args.foreground:
        return run_foreground(args, mnt)
    return _daemonize(args, mnt)


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS_ENV}
    for opt, name in zip(("access_key", "secret_key"), KEYS_ENV, strict=True):
        value = getattr(args, opt, None)
        if value:
            env[name] = value
    return env


def _keys_from_env(args: argparse.Namespace) -> None:
    """The -k/-s a daemonizing parent handed over (removed from the environment once read)."""
    for opt, name in zip(("access_key", "secret_key"), KEYS_ENV, strict=True):
        value = os.environ.pop(name, None)
        if value and not getattr(args, opt, None):
            setattr(args, opt, value)


def _open_log(log_path: Path) -> Any:
    """The mount log, opened for appending and private (0600) whatever the umask."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _daemonize(args: argparse.Namespace, mnt: Path) -> int:
    log_path = _log_path(args)
    argv = _child_argv(args, mnt)
    with _open_log(log_path) as logf:
        logf.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} mount {args.vault or '--all-vaults'} on {mnt}\n".encode())
        logf.flush()
        start = logf.tell()
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            close_fds=True,
            env=_child_env(args),
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            if not getattr(args, "quiet", False):
                print(f"glacierfs: mounted {args.vault or 'all vaults'} on {mnt} (pid {child.pid}, log {log_path})",
                      file=sys.stderr)
            return 0
        code = child.poll()
        if code is not None:
            raise StateError(f"mount failed: {_last_line(log_path, start)} (log: {log_path})")
        time.sleep(0.05)
    child.kill()
    raise StateError(f"mount not ready after {READY_TIMEOUT:.0f} s (log: {log_path})")


def _last_line(path: Path, start: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    useful = [ln for ln in lines if "Ignoring invalid max threads" not in ln]
    line = (useful or lines or ["exited without a message"])[-1]
    return line.removeprefix("glacierfs: error: ").removeprefix("glacierfs: ")


def vault_state_dir(cache_root: Path, endpoint_id: str, region: str, vault: str, catalog: Any = None) -> Path:
    """The per-vault state directory (the catalog's, when it tells us)."""
    for attr in ("state_dir", "root", "vault_dir"):
        value = getattr(catalog, attr, None)
        if isinstance(value, str | os.PathLike):
            return Path(value)
    for fn_name in ("vault_dir", "state_dir"):
        try:
            import glacierfs.catalog as catalog_mod

            fn = getattr(catalog_mod, fn_name, None)
            if callable(fn):
                return Path(fn(cache_root, endpoint_id, region, vault))
        except ImportError:
            break
    return cache_root / _sanitize(endpoint_id) / _sanitize(region) / _sanitize(vault)


@contextlib.contextmanager
def _mount_lock(state_dir: Path):
    """One mount per vault state: two would upload the same staged files."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise StateError(f"this vault is already mounted by process {other or '?'} (one mount per vault)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def build_vaultfs(
    ctx: Any, args: argparse.Namespace, vault: str, stack: contextlib.ExitStack, display_root: str = ""
) -> Any:
    """Catalog, data cache, upload engine factory and job runner for one vault -> VaultFS."""
    from glacierfs.datacache import DataCache
    from glacierfs.upload import UploadEngine
    from glacierfs.vfs import VaultFS

    catalog = ctx.catalog(vault)
    state_dir = vault_state_dir(ctx.cache_root, ctx.endpoint_id, ctx.region, vault, catalog)
    stack.enter_context(_mount_lock(state_dir))
    cache = DataCache(state_dir, args.cache_size_bytes)

    def engine_factory() -> Any:
        return UploadEngine(ctx.glacier, catalog, vault, part_size=args.part_size_bytes, concurrency=args.concurrency)

    return VaultFS(
        catalog,
        ctx.glacier,
        vault,
        cache,
        engine_factory=engine_factory,
        runner=ctx.runner(vault),
        read_only=args.read_only,
        auto_retrieve=args.auto_retrieve,
        poll_interval=0.5 if ctx.is_local else 60.0,
        max_poll_interval=5.0 if ctx.is_local else 900.0,
        display_root=display_root,
    )


def _ensure_vault(ctx: Any, vault: str, local: bool) -> None:
    try:
        ctx.glacier.describe_vault(vault)
    except NotFoundError:
        if not local:
            raise NotFoundError(f"vault {vault!r} does not exist in {ctx.region}") from None
        ctx.glacier.create_vault(vault)
        log.warning("created vault %s on the local server", vault)


def run_foreground(args: argparse.Namespace, mnt: Path) -> int:
    from glacierfs import fuse_adapter
    from glacierfs.context import open_context

    if not getattr(args, "debug", False) and not getattr(args, "quiet", False):
        logging.getLogger("glacierfs").setLevel(logging.INFO)
        # an embedded --local server logs every request at INFO: keep the mount's log readable
        logging.getLogger("glacierfs.server").setLevel(logging.WARNING)
    fmt = logging.Formatter("%(asctime)s glacierfs[%(process)d]: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(fmt)
    with open_context(args) as ctx, contextlib.ExitStack() as stack:
        if args.all_vaults:
            from glacierfs.vfs import MultiVaultFS

            core = MultiVaultFS(
                ctx,
                lambda vault: build_vaultfs(ctx, args, vault, stack, display_root=str(mnt / vault)),
                read_only=args.read_only,
            )
            fsname = "glacierfs"
        else:
            _ensure_vault(ctx, args.vault, bool(args.local))
            core = build_vaultfs(ctx, args, args.vault, stack, display_root=str(mnt))
            core.recover()  # before mounting: a damaged staging area fails the mount, not its first call
            fsname = f"glacierfs:{args.vault}"
        log.info("mounting %s on %s (endpoint %s)", fsname, mnt, ctx.endpoint_url or "AWS")
        try:
            fuse_adapter.run(core, str(mnt), fsname=fsname, options=_fuse_options(args))
        except RuntimeError as exc:
            raise StateError(f"cannot mount on {mnt}: libfuse error {exc}") from None
    return 0


# --------------------------------------------------------------------------- umount


def cmd_umount(args: argparse.Namespace) -> int:
    mnt = Path(args.mountpoint).expanduser().absolute()
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise StateError("fusermount3 not found: install the fuse3 package")
    if not os.path.ismount(mnt):
        raise UsageError(f"{mnt} is not mounted")
    cmd = [tool, "-u"] + (["-z"] if args.lazy else []) + [str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise GlacierFSError(f"unmount failed: {msg[-1] if msg else 'exit ' + str(res.returncode)}"
                             " (files still open? try --lazy)")
    return 0
