"""``glacierfs mount`` and ``glacierfs umount``: the mount's life from start to stop.

Start. Without ``--foreground`` the command starts the daemon as a detached child (new
session, output to the mount log) and waits until the mount point is mounted, or until the
child died: then its last log line becomes the error and its exit status the command's (the
codes of :mod:`glacierfs.errors`). The child runs ``python -I`` (isolated: neither the cwd
nor ``PYTHON*`` variables reach ``sys.path``) with the directory of the installed package put
first explicitly, so a ``./glacierfs/`` in the cwd is never imported by a process that holds
the user's AWS secrets. The child builds the client context (``--local`` may run the embedded
server inside it, so the server lives exactly as long as the mount), the core
(:class:`~glacierfs.fs.vaultfs.VaultFS`) and serves FUSE.

Dead mounts. A mount whose process died (kill -9) stays in the mount table with a dead
connection (ENOTCONN on stat); ``mount`` and ``umount`` detect it and detach it
(``fusermount3 -u -z``) with one log line.

Stop. ``umount`` runs ``fusermount3 -u``; the kernel's DESTROY makes the FUSE loop stop the
core (``stop()``). The shutdown order is: (1) FUSE loop ends, core stopped; (2) the service
gate closes: calls already in flight finish, new ones fail at once with :class:`Unmounting`,
so upload workers end within one request; (3) the core's worker threads are waited for (at
most ``STOP_TIMEOUT``); (4) only then are catalogs closed and an embedded server stopped. If
workers are still busy at the deadline the process exits without closing what they use
(their state is durable and resumes at the next mount). ``umount`` returns once the mount
process has exited (``--lazy``: at once), so an immediate ``mount`` finds the vault free.

Threads: this module's code runs in the main thread (the FUSE loop); ``_ServiceGate`` runs in
the core's workers and only reads a ``threading.Event``; ``_LibfuseLog`` runs in whichever
thread libfuse logs from, its ``_lock`` guarding its partial message and ``last`` (a leaf lock:
nothing else is taken while it is held).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import errno
import fcntl
import functools
import logging
import logging.handlers
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import glacierfs
from glacierfs import hints
from glacierfs.errors import (
    ConflictError,
    CredentialsError,
    GlacierFSError,
    IntegrityError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    StateError,
    UsageError,
)
from glacierfs.options import count_type as _count
from glacierfs.options import positive_type as _positive
from glacierfs.options import tier_type as _tier
from glacierfs.processes import pid_running, processes_with_env

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0  # how long a stopping mount waits for requests in flight
UMOUNT_TIMEOUT = STOP_TIMEOUT + 30.0  # how long `umount` waits for the mount process to exit
DEFAULT_CACHE_SIZE = "10GiB"
DEFAULT_AUTO_RETRIEVE_MAX = 10  # jobs per hour that --auto-retrieve may start (grep -r must not start 300)
DEFAULT_RETRIEVE_MAX_JOBS = 100  # retrievals in flight that setfattr on a directory may reach
KEYS_ENV = ("GLACIERFS_MOUNT_ACCESS_KEY", "GLACIERFS_MOUNT_SECRET_KEY")  # -k/-s handed to the daemon
MOUNTPOINT_ENV = "GLACIERFS_MOUNTPOINT"  # marks the daemon of a mount point (umount waits for it)
LOG_MAX_BYTES = 4 << 20  # a mount log over this size is rotated when the next mount starts
LOG_BACKUPS = 3
# libfuse 3.14's compat fuse_main_real prints this at every mount whatever the options
LIBFUSE_NOISE = ("Ignoring invalid max threads value",)
_EXIT_CLASSES: dict[int, type[GlacierFSError]] = {
    cls.exit_code: cls
    for cls in (UsageError, NotFoundError, CredentialsError, ServiceError, IntegrityError, StateError,
                NotReadyError, ConflictError)
}


class Unmounting(GlacierFSError):
    """A service call refused because the mount is stopping (the work resumes at the next mount)."""

    exit_code = StateError.exit_code


def default_local_dir() -> str:
    """Data directory of a bare ``--local``: the one ``glacierfs serve`` uses by default."""
    from glacierfs.server.command import DEFAULT_DATA_DIR

    return os.path.expanduser(DEFAULT_DATA_DIR)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
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
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="parallel part uploads per file (default: as glacierfs upload, up to 8)")
    p.add_argument("--part-size", metavar="SIZE", help="multipart part size (default: chosen per file)")
    p.add_argument("--read-only", action="store_true", help="mount read-only (retrievals still allowed)")
    p.add_argument(
        "--auto-retrieve",
        metavar="TIER",
        type=_tier,
        help="start a retrieval of this tier (Expedited, Standard, Bulk) when an uncached archive is opened",
    )
    p.add_argument(
        "--auto-retrieve-max", type=_count, default=DEFAULT_AUTO_RETRIEVE_MAX, metavar="N",
        help=f"--auto-retrieve starts at most N jobs per hour; beyond, reads get EAGAIN (default "
        f"{DEFAULT_AUTO_RETRIEVE_MAX})",
    )
    p.add_argument(
        "--retrieve-max-jobs", type=_positive, default=DEFAULT_RETRIEVE_MAX_JOBS, metavar="N",
        help="setfattr -n user.glacier.retrieve on a directory starts jobs while fewer than N retrievals "
        f"run in the mount (default {DEFAULT_RETRIEVE_MAX_JOBS})",
    )
    p.add_argument(
        "--retrieve-max-bytes-per-hour", metavar="SIZE", default=None,
        help="setfattr -n user.glacier.retrieve on a directory starts jobs for at most SIZE bytes of "
        "archives per hour, as restore --max-bytes-per-hour (e.g. 10G; default unlimited)",
    )
    p.add_argument(
        "-o", dest="fuse_options", action="append", default=[], metavar="OPTIONS",
        help="FUSE mount options (e.g. allow_other; nonempty: mount over a directory that has files)",
    )
    p.set_defaults(func=cmd_mount)

    u = sub.add_parser(
        "umount",
        help="unmount a glacierfs mount point",
        description="Unmount MOUNTPOINT and return once its mount process has exited (uploads in "
        "flight resume at the next mount). A mount whose process died is detached.",
    )
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-z", "--lazy", action="store_true",
                   help="lazy unmount: detach even if busy and return at once")
    u.set_defaults(func=cmd_umount)


# --------------------------------------------------------------------------- arguments


def _fix_positionals(args: argparse.Namespace) -> None:
    """``--local VAULT MNT`` parses VAULT as DATA_DIR: shift it back when that is the only valid reading."""
    if args.all_vaults:
        if args.mountpoint is None:
            args.mountpoint, args.vault = args.vault, None
        elif args.vault is not None:
            raise UsageError("--all-vaults takes only MOUNTPOINT")
    elif args.mountpoint is None and args.local not in (None, default_local_dir()) and args.vault:
        from glacierfs.names import VAULT_NAME_RE as VAULT_NAME

        # `--local photos ~/mnt` (bare --local, default data dir) or `--local DATA demo` with the
        # mount point forgotten? Only the first if DATA can be a vault name and is no directory.
        if VAULT_NAME.fullmatch(args.local) and not os.path.isdir(args.local) and os.path.isdir(args.vault):
            args.vault, args.mountpoint, args.local = args.local, args.vault, default_local_dir()
        else:
            raise UsageError(
                f"the mount point is missing: glacierfs mount --local {shlex.quote(args.local)} "
                f"{shlex.quote(args.vault)} MOUNTPOINT"
            )
    if args.mountpoint is None:
        raise UsageError("the mount point is missing: glacierfs mount VAULT MOUNTPOINT (or --all-vaults MOUNTPOINT)")
    if not args.all_vaults and not args.vault:
        raise UsageError("VAULT is required (or use --all-vaults)")
    if args.vault:
        from glacierfs.names import check_vault_name

        check_vault_name(args.vault)
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")


def hint_options(args: argparse.Namespace) -> str:
    """The common options in use, shell-quoted, for hints that must work as printed.

    ``glacierfs download -v V PATH`` without the mount's ``--local``/``--cache-dir``/
    ``--endpoint-url`` would address another catalog (or a real AWS vault). Rendered by
    :mod:`glacierfs.hints` (the one renderer); ``--cache-dir`` also when it came from
    ``GLACIERFS_CACHE_DIR``: logs outlive shells.
    """
    from glacierfs.hints import CommonOptions

    return shlex.join(CommonOptions.from_args(args).argv())


def mount_state(mnt: Path) -> str:
    """``"none"``, ``"live"`` or ``"dead"`` (in the mount table, but its FUSE connection is gone: ENOTCONN)."""
    if not _in_mount_table(mnt):
        return "none"
    try:
        os.statvfs(mnt)  # statfs always reaches the daemon; stat may be answered from the kernel's cache
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):  # ECONNABORTED: aborted, being torn down
            return "dead"
        raise StateError(f"cannot check mount point {mnt}: {exc.strerror or exc}") from None
    return "live"


def _canonical(mnt: Path) -> str:
    """The resolved path the mount table shows (the mount point itself is not resolved: it may be dead)."""
    return os.path.join(os.path.realpath(mnt.parent), mnt.name)


def _in_mount_table(mnt: Path) -> bool:
    targets = {str(mnt), _canonical(mnt)}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) in targets:
                    return True
    except OSError:
        return os.path.ismount(mnt)
    return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def _fusermount() -> str:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise StateError("fusermount3 not found: install the fuse3 package")
    return tool


def detach_dead(mnt: Path) -> None:
    """Detach a mount whose process died (lazily: nothing can be flushed through it anymore)."""
    res = subprocess.run([_fusermount(), "-u", "-z", str(mnt)], capture_output=True, text=True, check=False)
    if res.returncode != 0 and _in_mount_table(mnt):
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise StateError(f"cannot detach the dead mount on {mnt}: {msg[-1] if msg else res.returncode}")
    log.warning("detached the dead mount on %s (its process had died; staged files resume at the next mount)", mnt)


def _mountpoint(path: str, nonempty: bool) -> Path:
    mnt = Path(path).expanduser().absolute()
    state = mount_state(mnt)
    if state == "dead":
        detach_dead(mnt)
    elif state == "live":
        raise StateError(f"{mnt} is already a mount point; unmount it first: glacierfs umount {shlex.quote(str(mnt))}")
    if not mnt.is_dir():
        raise UsageError(f"mount point {mnt} is not a directory")
    if not nonempty:
        try:
            entries = os.listdir(mnt)
        except OSError as exc:
            raise UsageError(f"cannot read mount point {mnt}: {exc.strerror or exc}") from None
        if entries:
            raise UsageError(
                f"mount point {mnt} is not empty ({len(entries)} {'entry' if len(entries) == 1 else 'entries'} "
                "would be hidden while mounted); "
                "use an empty directory, or -o nonempty to mount over them"
            )
    return mnt


def _fuse_options(args: argparse.Namespace) -> dict[str, Any]:
    from glacierfs.fs.fuse_adapter import parse_options

    opts: dict[str, Any] = {}
    for text in args.fuse_options:
        opts.update(parse_options(text))
    opts.pop("nonempty", None)  # ours (see _mountpoint): libfuse3 mounts over files without asking
    for bad in ("big_writes", "max_write", "writeback_cache"):
        if bad in opts:
            log.warning("ignoring FUSE option %s: libfuse3 rejects it", bad)
            opts.pop(bad)
    return opts  # --read-only is enforced by the core (EROFS), so retrievals keep working


def _log_path(args: argparse.Namespace) -> Path:
    """``<cache-dir>/logs/<endpoint>/<region>/<vault>.log``: one log per endpoint and vault."""
    from glacierfs.catalog import vault_dir
    from glacierfs.context import cache_root_for
    from glacierfs.local import default_region, endpoint_id_for

    region = getattr(args, "region", None) or default_region(getattr(args, "profile", None))
    base = vault_dir(cache_root_for(args) / "logs", endpoint_id_for(args), region, args.vault or "all-vaults")
    if not args.vault:  # "@" is not allowed in vault names: no vault's log can have this name
        base = base.with_name("@all-vaults")
    root = cache_root_for(args)
    for d in reversed(base.parents):  # every new level private (mkdir(parents=True) uses the umask)
        if d.is_relative_to(root) and d != base:
            d.mkdir(mode=0o700, exist_ok=True)
    return base.with_name(base.name + ".log")


def _rotate(log_path: Path) -> None:
    """Keep a mount log bounded: over ``LOG_MAX_BYTES`` it becomes ``.1`` (``.1`` -> ``.2``, ...)."""
    try:
        if log_path.stat().st_size < LOG_MAX_BYTES:
            return
    except FileNotFoundError:
        return
    handler = logging.handlers.RotatingFileHandler(log_path, backupCount=LOG_BACKUPS, delay=True)
    try:
        handler.doRollover()
    finally:
        handler.close()
    with contextlib.suppress(FileNotFoundError):
        os.remove(log_path)  # doRollover re-created it with the umask: _open_log makes it 0600


def _child_argv(args: argparse.Namespace, mnt: Path) -> list[str]:
    """``python -I`` running the installed package's CLI: the cwd never reaches ``sys.path``.

    The package's directory is put first only when it is not on the path already (a
    site-packages directory must not go before the standard library).
    """
    package_root = str(Path(glacierfs.__file__).resolve().parent.parent)
    bootstrap = (
        "import sys; r = sys.argv.pop(1); r in sys.path or sys.path.insert(0, r); "
        "from glacierfs.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-I", "-c", bootstrap, package_root, "mount", "--foreground"]
    # -k/-s go to the child through its environment (KEYS_ENV), never its command line: any
    # local user can read a process's command line in /proc, only its owner the environment.
    for opt in ("endpoint_url", "region", "profile", "cache_dir", "part_size", "auto_retrieve"):
        value = getattr(args, opt, None)
        if value:
            argv += [f"--{opt.replace('_', '-')}", str(value)]
    if args.local:
        argv.append(f"--local={Path(args.local).expanduser().absolute()}")
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    argv += ["--cache-size", str(args.cache_size),
             "--auto-retrieve-max", str(args.auto_retrieve_max), "--retrieve-max-jobs", str(args.retrieve_max_jobs)]
    if args.retrieve_max_bytes_per_hour:
        argv += ["--retrieve-max-bytes-per-hour", str(args.retrieve_max_bytes_per_hour)]
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
    _fusermount()
    if not os.path.exists("/dev/fuse"):
        raise StateError("/dev/fuse is missing: load the fuse module or run with --device /dev/fuse")
    from glacierfs.fs.fuse_adapter import parse_options

    nonempty = any("nonempty" in parse_options(text) for text in args.fuse_options)
    _fuse_options(args)  # its warnings, once, on the terminal
    mnt = _mountpoint(args.mountpoint, nonempty)
    from glacierfs.sizes import parse_size

    args.cache_size_bytes = parse_size(args.cache_size)
    args.part_size_bytes = parse_size(args.part_size) if args.part_size else None
    args.retrieve_max_bytes = (parse_size(args.retrieve_max_bytes_per_hour) or None
                               if args.retrieve_max_bytes_per_hour else None)
    if args.foreground:
        return run_foreground(args, mnt)
    return _daemonize(args, mnt)


def _child_env(args: argparse.Namespace, mnt: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS_ENV and k != MOUNTPOINT_ENV}
    for opt, name in zip(("access_key", "secret_key"), KEYS_ENV, strict=True):
        value = getattr(args, opt, None)
        if value:
            env[name] = value
    env[MOUNTPOINT_ENV] = _canonical(mnt)
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
    _rotate(log_path)
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
            env=_child_env(args, mnt),
        )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if mount_state(mnt) == "live":
            if not getattr(args, "quiet", False):
                print(f"glacierfs: mounted {args.vault or 'all vaults'} on {mnt} (pid {child.pid}, log {log_path})",
                      file=sys.stderr)
            return 0
        code = child.poll()
        if code is not None:
            cls = _EXIT_CLASSES.get(code, StateError)
            # the child's hints ("; run: CMD") stay at the end of the line, so they paste as printed
            why, sep, hint = _last_line(log_path, start).partition("; run: ")
            raise cls(f"mount failed: {why} (log: {log_path}){sep}{hint}")
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
    useful = [ln for ln in lines if not any(noise in ln for noise in LIBFUSE_NOISE)]
    line = (useful or lines or ["exited without a message"])[-1]
    return line.removeprefix("glacierfs: error: ").removeprefix("glacierfs: ")


def vault_state_dir(cache_root: Path, endpoint_id: str, region: str, vault: str) -> Path:
    """The per-vault state directory: the catalog's (:func:`glacierfs.catalog.vault_dir` owns the layout)."""
    from glacierfs.catalog import vault_dir

    return Path(vault_dir(cache_root, endpoint_id, region, vault))


@contextlib.contextmanager
def _mount_lock(state_dir: Path) -> Iterator[None]:
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


class _ServiceGate:
    """The Glacier client the core uses, refusing new calls once the mount stops.

    Calls in flight finish; later ones raise :class:`Unmounting`, which the upload engine
    does not retry, so a worker ends within one request and its durable state resumes at the
    next mount. Attribute reads other than public methods pass through.
    """

    _PASS = frozenset({"translate"})

    def __init__(self, glacier: Any, closed: threading.Event) -> None:
        self._glacier = glacier
        self._closed = closed

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._glacier, name)
        if name.startswith("_") or name in self._PASS or not callable(attr):
            return attr
        closed = self._closed

        def call(*a: Any, **kw: Any) -> Any:
            if closed.is_set():
                raise Unmounting(f"unmounting: {name} not sent (resumes at the next mount)")
            return attr(*a, **kw)

        return call


class _StoppingCore:
    """The core as the FUSE adapter sees it: ``stop()`` (from DESTROY) first closes the service gate."""

    def __init__(self, core: Any, gate: threading.Event) -> None:
        self._core = core
        self._gate = gate

    def stop(self, timeout: float = 5.0) -> None:
        self._gate.set()
        self._core.stop(timeout)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._core, name)
        if callable(value):
            setattr(self, name, value)  # bound methods are stable: later calls skip this hook
        return value


def build_vaultfs(
    ctx: Any, args: argparse.Namespace, vault: str, stack: contextlib.ExitStack, display_root: str = "",
    gate: threading.Event | None = None,
) -> Any:
    """Catalog, data cache, upload engine factory and job runner for one vault -> VaultFS."""
    from glacierfs.fs.datacache import DataCache
    from glacierfs.fs.vaultfs import VaultFS
    from glacierfs.jobs import Backoff, JobRunner
    from glacierfs.upload import UploadEngine

    catalog = ctx.catalog(vault, exists=True)  # the mount checked (or created) it, or listed it
    state_dir = vault_state_dir(ctx.cache_root, ctx.endpoint_id, ctx.region, vault)
    stack.enter_context(_mount_lock(state_dir))
    cache = DataCache(state_dir, args.cache_size_bytes)
    glacier: Any = _ServiceGate(ctx.glacier, gate) if gate is not None else ctx.glacier

    def engine_factory() -> Any:
        # rehash=False: staged files have one writer, the mount, which supersedes an upload its
        # file is rewritten during (glacierfs.fs.staging); the engine's own pass would be redundant
        return UploadEngine(glacier, catalog, vault, part_size=args.part_size_bytes, concurrency=args.concurrency,
                            rehash=False)

    runner = JobRunner(glacier, catalog, vault, progress=ctx.progress, poll=Backoff.local() if ctx.is_local else Backoff())
    return VaultFS(
        catalog,
        glacier,
        vault,
        cache,
        engine_factory=engine_factory,
        runner=runner,
        read_only=args.read_only,
        auto_retrieve=args.auto_retrieve,
        auto_retrieve_max=args.auto_retrieve_max,
        retrieve_max_jobs=args.retrieve_max_jobs,
        retrieve_max_bytes_per_hour=args.retrieve_max_bytes,
        poll_interval=0.5 if ctx.is_local else 60.0,
        max_poll_interval=5.0 if ctx.is_local else 900.0,
        display_root=display_root,
        hint=functools.partial(hints.command, hints.CommonOptions.from_args(args)),
    )


def _ensure_vault(ctx: Any, vault: str, local: bool) -> None:
    """A missing vault: the CLI's error (``vault V does not exist in R at E; run: glacierfs vaults
    <the mount's options>``, rendered by the error boundary); with ``--local`` it is created."""
    if not local:
        ctx.check_vault(vault)
        return
    try:
        ctx.glacier.describe_vault(vault)
    except NotFoundError:
        ctx.glacier.create_vault(vault)
        log.warning("created vault %s on the local server", vault)


_LOG_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _LibfuseLog:
    """libfuse's messages through our log: pieces joined up to their newline, known noise dropped.

    libfuse calls the log function from whichever thread logs (mostly the main thread while
    mounting); ``_lock`` guards ``_pieces`` and ``last``.
    """

    LEVELS: ClassVar[dict[int, int]] = {0: logging.CRITICAL, 1: logging.CRITICAL, 2: logging.CRITICAL, 3: logging.ERROR,
              4: logging.WARNING, 5: logging.INFO, 6: logging.INFO, 7: logging.DEBUG}

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self.last = ""  # the last complete message (named in a failed mount's error)
        self._log = logging.getLogger("glacierfs.libfuse")
        self._func: Any = None  # the C callback, kept alive while libfuse holds its pointer

    def install(self) -> None:
        try:
            import mfusepy

            setter = mfusepy._libfuse.fuse_set_log_func
            vsnprintf = ctypes.CDLL(None).vsnprintf
        except (ImportError, AttributeError, OSError):  # an old libfuse: its messages go to stderr
            return
        vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

        def emit(level: int, fmt: bytes | None, ap: int | None) -> None:
            try:
                buf = ctypes.create_string_buffer(2048)
                vsnprintf(buf, len(buf), fmt, ap)
                self._piece(level, buf.value.decode("utf-8", "replace"))
            except Exception:  # a logging failure must never reach libfuse
                pass

        self._func = _LOG_FUNC(emit)
        setter.argtypes = [_LOG_FUNC]
        setter.restype = None
        setter(self._func)

    def _piece(self, level: int, text: str) -> None:
        with self._lock:
            self._pieces.append(text)
            if not text.endswith("\n"):
                return
            line = " ".join("".join(self._pieces).split())
            self._pieces.clear()
            if not line or any(noise in line for noise in LIBFUSE_NOISE):
                return
            self.last = line
        self._log.log(self.LEVELS.get(level, logging.WARNING), "libfuse: %s", line)


_LIBFUSE_LOG = _LibfuseLog()


def _wait_for_workers(before: set[threading.Thread], deadline: float) -> list[threading.Thread]:
    """Join the threads started since ``before`` (the core's workers); returns those still running.

    libfuse's own threads appear as ``Dummy-N`` once they called into Python, and a --local
    server's request threads serve the client's keep-alive connections: neither is ours to wait for.
    """
    current = threading.current_thread()
    while True:
        busy = [
            t for t in threading.enumerate()
            if t not in before and t is not current and t.is_alive()
            and not t.name.startswith("Dummy-") and "process_request_thread" not in t.name
        ]
        if not busy or time.monotonic() >= deadline:
            return busy
        busy[0].join(max(0.0, min(1.0, deadline - time.monotonic())))


def run_foreground(args: argparse.Namespace, mnt: Path) -> int:
    from glacierfs.context import open_context
    from glacierfs.fs import fuse_adapter

    if not getattr(args, "debug", False) and not getattr(args, "quiet", False):
        logging.getLogger("glacierfs").setLevel(logging.INFO)
        # an embedded --local server logs every request at INFO: keep the mount's log readable
        logging.getLogger("glacierfs.server").setLevel(logging.WARNING)
    fmt = logging.Formatter("%(asctime)s glacierfs[%(process)d]: %(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(fmt)
    _LIBFUSE_LOG.install()
    gate = threading.Event()
    with open_context(args) as ctx, contextlib.ExitStack() as stack:
        before = set(threading.enumerate())
        core: Any
        if args.all_vaults:
            from glacierfs.fs.multivault import MultiVaultFS

            core = MultiVaultFS(
                ctx,
                lambda vault: build_vaultfs(ctx, args, vault, stack, display_root=str(mnt / vault), gate=gate),
                read_only=args.read_only,
            )
            fsname = "glacierfs"
        else:
            _ensure_vault(ctx, args.vault, bool(args.local))
            core = build_vaultfs(ctx, args, args.vault, stack, display_root=str(mnt), gate=gate)
            core.recover()  # before mounting: a damaged staging area fails the mount, not its first call
            fsname = f"glacierfs:{args.vault}"
        log.info("mounting %s on %s (endpoint %s)", fsname, mnt, ctx.endpoint_url or "AWS")
        try:
            fuse_adapter.run(_StoppingCore(core, gate), str(mnt), fsname=fsname, options=_fuse_options(args))
        except RuntimeError as exc:
            reason = _LIBFUSE_LOG.last or f"libfuse error {exc}"
            raise StateError(f"cannot mount on {mnt}: {reason}") from None
        finally:
            gate.set()
        busy = _wait_for_workers(before, time.monotonic() + STOP_TIMEOUT)
        if busy:
            # closing the catalogs under them would fail their last writes: leave as a crash would
            # (every step's state is durable), without errors in the log
            log.info("stopped with %d requests in flight; their work resumes at the next mount", len(busy))
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


# --------------------------------------------------------------------------- umount


def cmd_umount(args: argparse.Namespace) -> int:
    mnt = Path(args.mountpoint).expanduser().absolute()
    tool = _fusermount()
    state = mount_state(mnt)
    if state == "none":
        raise UsageError(f"{mnt} is not mounted")
    if state == "dead":
        detach_dead(mnt)
        return 0
    owners = processes_with_env(MOUNTPOINT_ENV, _canonical(mnt))
    cmd = [tool, "-u"] + (["-z"] if args.lazy else []) + [str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise GlacierFSError(f"unmount failed: {msg[-1] if msg else 'exit ' + str(res.returncode)}"
                             " (files still open? try --lazy)")
    if not args.lazy:
        _wait_exit(owners, time.monotonic() + UMOUNT_TIMEOUT, mnt)
    return 0


def _wait_exit(pids: list[int], deadline: float, mnt: Path, alive: Callable[[int], bool] = pid_running) -> None:
    """Return once every pid has exited: the vault's mount lock is free then."""
    while True:
        running = [p for p in pids if alive(p)]
        if not running:
            return
        if time.monotonic() >= deadline:
            raise StateError(
                f"{mnt} is unmounted but its process {running[0]} is still finishing after "
                f"{UMOUNT_TIMEOUT:.0f} s; see its log"
            )
        time.sleep(0.05)
