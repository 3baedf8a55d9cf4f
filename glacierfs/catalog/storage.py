"""Where a vault's client state lives on disk, and the SQLite database of its catalog.

Threading contract
    :class:`Storage` is shared by every thread of a process (FUSE threads, upload workers, the
    CLI's main thread) and by other processes opening the same directory. Each OS thread gets
    its own ``sqlite3.Connection`` (SQLite connections must not be shared between threads
    mid-transaction), keyed by its native thread id, not ``threading.local``: a FUSE callback
    runs on a libfuse thread that Python knows only for the length of the call (ctypes makes a
    new thread state, hence a new ``threading.local``, for every callback), so a local would
    open a connection per callback and the list kept for :meth:`Storage.close` would hold them
    all. ``_lock`` guards ``_cons``; connections of threads that have exited are closed when
    the table grows (:meth:`Storage._prune`). Cross-thread and cross-process consistency is
    SQLite's: WAL mode (readers never block, one writer at a time), every write in
    ``BEGIN IMMEDIATE`` (:meth:`Storage.transact`, re-entrant per thread), a 60 s busy timeout.
    No Python lock is held while SQLite waits.

Layout
    ``<cache root>/<endpoint id>/<region>/<vault>/`` (:func:`vault_dir`, each part
    percent-encoded) is the vault's state directory; the catalog is its ``catalog/cache.db``
    (0700 directory, 0600 files). Records (``meta``, ``upload`` and ``job``) are JSON values in
    the ``gfs_record`` table, keyed by (kind, key); archives and directories are SQL tables
    (``catalog.py``). A catalog written by glacierfs <= 0.x kept its records in a diskcache
    ``Cache`` inside the same ``cache.db``: they are copied into ``gfs_record`` once, through
    diskcache's public API (:func:`_migrate_diskcache`), in one transaction.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from glacierfs.errors import StateError

log = logging.getLogger(__name__)

DBNAME = "cache.db"
DIR_MODE = 0o700
FILE_MODE = 0o600
BUSY_TIMEOUT = 60.0
# SQLite's page cache is per connection, and the mount has one connection per FUSE thread (up
# to 64): 8 MiB each (a listing of 100,000 archives reads ~40 MB of pages through it; at 32 MiB
# the cache kept 25 MiB more of them afterwards, at the same listing speed). An inventory
# import has the 32 MiB diskcache had (:meth:`Storage.bulk`).
CACHE_KIB = 8192
BULK_CACHE_KIB = 32768
PRUNE_AT = 16  # connections before those of exited threads are looked for (then twice the live ones)
TASK_DIR = "/proc/self/task"  # Linux: one entry per live thread, named by its native id
SCHEMA_VERSION = 2  # 1: records in a diskcache Cache (migrated on open); 2: gfs_record
JSON = dict[str, Any]


def _component(text: str) -> str:
    """One safe, reversible directory name for an endpoint id, region or vault name."""
    out = quote(text, safe="")
    if out.startswith("."):
        out = "%2E" + out[1:]
    return out or "%00"


def vault_dir(cache_root: Path | str, endpoint_id: str, region: str, vault: str) -> Path:
    """``cache_root/<endpoint-id>/<region>/<vault>``: where one vault's client state lives.

    The one owner of this path. Each part is percent-encoded (``local:/data`` ->
    ``local%3A%2Fdata``) so it is one safe, reversible path component. The catalog is in
    ``catalog/`` below it; upload locks, data caches, staging and partial downloads go next to it.
    """
    return Path(cache_root) / _component(endpoint_id) / _component(region) / _component(vault)


def remove_vault_state(path: Path) -> str | None:
    """Remove the client state of a vault the service has just deleted; why it was kept, if kept.

    A stale catalog would show the deleted vault's archives again if a vault of the same name is
    created later. Kept: while a mount of it runs (its ``mount.lock`` is held), and while its
    ``staging/`` holds files written into a mount that never became archives (their only copy,
    perhaps: ``mv`` into the mount removed the source). Logs (``<cache root>/logs``) stay.
    """
    if not path.is_dir():
        return None
    try:
        fd = os.open(path / "mount.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        return f"its lock cannot be opened ({exc.strerror})"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return f"it is mounted (process {pid or '?'})"
        try:
            staged = sum(1 for e in os.scandir(path / "staging") if e.name.endswith(".data"))
        except FileNotFoundError:
            staged = 0
        if staged:
            return f"{staged} file(s) written into a mount that are not archives are in its staging/"
        shutil.rmtree(path)
        log.info("removed the local state of a deleted vault: %s", path)
        return None
    except OSError as exc:
        return f"it cannot be removed ({exc.strerror}: {exc.filename})"
    finally:
        os.close(fd)


def list_vaults(cache_root: Path | str, endpoint_id: str, region: str) -> list[str]:
    """Names of the vaults that have a catalog under ``cache_root`` for this endpoint and region."""
    base = Path(cache_root) / _component(endpoint_id) / _component(region)
    try:
        entries = list(base.iterdir())
    except OSError:
        return []
    return sorted(unquote(p.name) for p in entries if (p / "catalog" / DBNAME).exists())


def makedirs_private(path: Path) -> None:
    """Create ``path`` and missing parents as 0700 (only the ones we create are chmod'ed)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)


def unusable(directory: Path, what: str) -> StateError:
    """The StateError for a catalog that cannot be used: delete it, rebuild it from an inventory.

    The command to rebuild names the vault (the directory is ``<vault dir>/catalog``); the CLI
    renders it with the options in use. The catalog also held the states of pending uploads:
    the message says what becomes of them.
    """
    hint: tuple[str, ...] = ()
    if directory.name == "catalog" and directory.parent.name:
        hint = ("inventory", "-v", unquote(directory.parent.name))
    return StateError(
        f"the catalog in {directory} {what}: delete {directory} and run an inventory to rebuild it"
        " (pending uploads it recorded are found again on the service: re-run their upload to resume,"
        " or abort them)",
        hint=hint,
    )


def create_archive_table(con: sqlite3.Connection, table: str, indexes: bool = True) -> None:
    """``gfs_archive`` (or a rebuild's ``gfs_archive_next``): one row per archive we know of."""
    con.execute(
        f"CREATE TABLE {table} ("
        " archive_id TEXT NOT NULL, dir TEXT NOT NULL, base TEXT NOT NULL, name TEXT,"
        " size INTEGER NOT NULL, creation_date TEXT NOT NULL, created REAL NOT NULL,"
        " mtime REAL NOT NULL, tree_hash TEXT NOT NULL, description TEXT NOT NULL,"
        " source TEXT NOT NULL, deleted REAL)"
    )
    if indexes:
        create_archive_indexes(con, table)


def create_archive_indexes(con: sqlite3.Connection, table: str) -> None:
    # Index names are global in SQLite and survive a table rename: make them unique per build.
    tok = uuid.uuid4().hex[:12]
    con.execute(f"CREATE UNIQUE INDEX gfs_archive_id_{tok} ON {table}(archive_id)")
    con.execute(f"CREATE UNIQUE INDEX gfs_archive_name_{tok} ON {table}(dir, name) WHERE name IS NOT NULL")
    con.execute(f"CREATE INDEX gfs_archive_base_{tok} ON {table}(dir, base)")
    con.execute(f"CREATE INDEX gfs_archive_unnamed_{tok} ON {table}(dir) WHERE name IS NULL AND deleted IS NULL")


def create_dir_table(con: sqlite3.Connection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS gfs_dir ("
        " path TEXT PRIMARY KEY, parent TEXT NOT NULL, name TEXT NOT NULL,"
        " explicit INTEGER NOT NULL DEFAULT 0)"
    )
    con.execute("CREATE INDEX IF NOT EXISTS gfs_dir_parent ON gfs_dir(parent, name)")


class Storage:
    """The catalog database of one directory: per-thread connections, transactions, JSON records."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / DBNAME
        self._lock = threading.Lock()  # guards _cons and _prune_at
        self._cons: dict[int, sqlite3.Connection] = {}  # native thread id -> that thread's connection
        self._prune_at = PRUNE_AT
        self._closed = False

    @classmethod
    def open(cls, directory: Path) -> Storage:
        """Open (creating 0700/0600 if new) the database in ``directory``; StateError if unusable."""
        try:
            makedirs_private(directory)
            os.chmod(directory, DIR_MODE)
            fd = os.open(directory / DBNAME, os.O_RDWR | os.O_CREAT, FILE_MODE)  # -wal/-shm get its mode
            os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot create the catalog directory {directory}: {exc.strerror}") from None
        self = cls(directory)
        try:
            self.con  # noqa: B018 - opens and checks the database now
        except BaseException:
            self.close()
            raise
        return self

    # ---------------------------------------------------------------------------- connections

    @property
    def con(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, kept until the thread exits or :meth:`close`)."""
        tid = threading.get_native_id()
        with self._lock:
            con = self._cons.get(tid)
        if con is not None:
            return con
        if self._closed:
            raise StateError(f"the catalog in {self.directory} is closed")
        with self.guard():
            con = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                con.execute("PRAGMA journal_mode = WAL").fetchone()
                con.execute("PRAGMA synchronous = NORMAL")
                con.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                con.execute("PRAGMA mmap_size = 67108864")
                con.execute("PRAGMA temp_store = FILE")
                con.execute("PRAGMA journal_size_limit = 67108864")  # an import's big WAL is cut back
            except BaseException:
                con.close()
                raise
        with self._lock:
            self._cons[tid] = con
            dead = self._prune() if len(self._cons) >= self._prune_at else []
        for old in dead:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        return con

    def _prune(self) -> list[sqlite3.Connection]:
        """Take out the connections of threads that have exited (caller holds ``_lock``).

        Checked under the lock, so a thread cannot fetch a connection that is being taken out:
        a live thread's id is never in ``dead``. Without ``/proc/self/task`` nothing is pruned.
        """
        dead: list[sqlite3.Connection] = []
        if os.path.isdir(TASK_DIR):
            for tid in [t for t in self._cons if not os.path.exists(f"{TASK_DIR}/{t}")]:
                dead.append(self._cons.pop(tid))
        self._prune_at = max(PRUNE_AT, 2 * len(self._cons))
        return dead

    @contextlib.contextmanager
    def bulk(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection with the large page cache of a bulk merge, for the block."""
        con = self.con
        con.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
        try:
            yield con
        finally:
            with contextlib.suppress(sqlite3.Error):
                con.execute(f"PRAGMA cache_size = -{CACHE_KIB}")

    def connection_count(self) -> int:
        """Open connections of this process (one per thread that used the catalog and is alive)."""
        with self._lock:
            return len(self._cons)

    def close(self) -> None:
        """Close every connection of this process (a thread's next use opens a new one)."""
        with self._lock:
            cons, self._cons = list(self._cons.values()), {}
            self._prune_at = PRUNE_AT
        for con in cons:
            with contextlib.suppress(sqlite3.Error):
                con.close()

    def fix_modes(self) -> None:
        for p in self.directory.iterdir():
            with contextlib.suppress(OSError):
                if p.is_file() and stat.S_IMODE(p.stat().st_mode) != FILE_MODE:
                    os.chmod(p, FILE_MODE)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Map storage failures to one-line StateErrors."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StateError(
                    f"the catalog in {self.directory} stayed locked by another process ({exc}); try again"
                ) from None
            raise unusable(self.directory, f"failed ({exc})") from None
        except (sqlite3.DatabaseError, ValueError) as exc:  # ValueError: a record that is not JSON
            raise unusable(self.directory, f"is corrupt ({exc})") from None

    @contextlib.contextmanager
    def transact(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested use joins the outer one."""
        con = self.con
        if con.in_transaction:
            yield con
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # ---------------------------------------------------------------------------- records

    def setup_records(self) -> int | None:
        """Create ``gfs_record`` (migrating an old diskcache catalog); the stored schema version."""
        con = self.con
        con.execute(
            "CREATE TABLE IF NOT EXISTS gfs_record (kind TEXT NOT NULL, key TEXT NOT NULL,"
            " value TEXT NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID"
        )
        version = self.get("meta", "schema")
        if version is None and con.execute("SELECT 1 FROM sqlite_master WHERE name = 'Cache'").fetchone():
            version = _migrate_diskcache(self)
        return version if isinstance(version, int) else None

    def get(self, kind: str, key: str) -> Any:
        row = self.con.execute("SELECT value FROM gfs_record WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def set(self, kind: str, key: str, value: Any) -> None:
        self.con.execute(
            "INSERT OR REPLACE INTO gfs_record (kind, key, value) VALUES (?, ?, ?)",
            (kind, key, json.dumps(value, separators=(",", ":"), default=str)),
        )

    def delete(self, kind: str, key: str) -> None:
        self.con.execute("DELETE FROM gfs_record WHERE kind = ? AND key = ?", (kind, key))

    def items(self, kind: str) -> list[tuple[str, Any]]:
        rows = self.con.execute("SELECT key, value FROM gfs_record WHERE kind = ? ORDER BY key", (kind,)).fetchall()
        return [(k, json.loads(v)) for k, v in rows]


_OLD_SETTINGS: dict[str, Any] = {  # what glacierfs opened its diskcache with (no eviction, no side files)
    "eviction_policy": "none",
    "size_limit": 1 << 62,
    "disk_min_file_size": 1 << 40,
}


def _migrate_diskcache(storage: Storage) -> int | None:
    """Copy the records of a schema-1 catalog (diskcache keys) into ``gfs_record``; its version.

    Read through diskcache's public API (``iterkeys``/``get``); only ``(kind, key)`` tuples of
    the kinds glacierfs wrote are copied. The copy and the new schema mark commit together, so
    an interrupted migration is simply done again at the next open.
    """
    import pickle

    import diskcache

    try:
        old = diskcache.Cache(str(storage.directory), timeout=BUSY_TIMEOUT, **_OLD_SETTINGS)
    except diskcache.Timeout:
        raise StateError(f"the catalog in {storage.directory} is locked by another process; try again") from None
    except (sqlite3.DatabaseError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise unusable(storage.directory, f"is unreadable ({exc})") from None
    try:
        records: list[tuple[str, str, Any]] = []
        for key in list(old.iterkeys()):
            if isinstance(key, tuple) and len(key) == 2 and key[0] in ("meta", "upload", "job") and isinstance(key[1], str):
                value = old.get(key)
                if value is not None:
                    records.append((key[0], key[1], value))
    except (sqlite3.DatabaseError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise unusable(storage.directory, f"is unreadable ({exc})") from None
    finally:
        old.close()
    version = next((v for k, n, v in records if (k, n) == ("meta", "schema")), None)
    with storage.transact():
        for kind, key, value in records:
            if (kind, key) != ("meta", "schema"):
                storage.set(kind, key, value)
        if version == 1:
            storage.set("meta", "schema", SCHEMA_VERSION)
    log.info("catalog in %s: %d records moved out of diskcache (schema %s -> %d)",
             storage.directory, len(records), version, SCHEMA_VERSION)
    return SCHEMA_VERSION if version == 1 else version if isinstance(version, int) else None
