"""Per-archive export state: the retrieval job, the S3 multipart upload and its verified parts.

One SQLite file (WAL) per vault, ``<vault dir>/export/state.db`` next to the catalog, owned by
this module only. Rows are keyed by (destination, archive id), the destination being
``<s3 endpoint or aws>|<bucket>|<prefix>``, so exports of one vault to two places never mix.
Every step is written before the next one starts (job id before waiting, upload id right after
CreateMultipartUpload, each part after S3 accepted it), so a re-run after a kill continues:
the crash table is in :mod:`glacierfs.export.stream`.

``meta`` holds ``owner``, this store's random exporter id, made once: the S3 claims it wrote
(:mod:`glacierfs.export.claims`) are recognized as its own by a re-run.

``status``: ``job`` (a retrieval job is recorded), ``uploading`` (an S3 upload is recorded),
``done`` (the object is in S3 and verified), ``deleted`` (done, and the source archive was
deleted), ``failed`` (the last attempt failed; a re-run tries again).

Threading: one connection shared by the exporter's threads; every statement runs under
``self._lock`` (the only lock here; nothing else is called while it is held). Other processes
(shards sharing a cache dir) are serialized by SQLite's own locking (busy timeout 60 s).
Directory 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from glacierfs.errors import StateError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS archives (
    dest TEXT NOT NULL, archive_id TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, job_id TEXT, job_started REAL, job_charged INTEGER NOT NULL DEFAULT 0,
    upload_id TEXT, part_size INTEGER, error TEXT, updated REAL NOT NULL,
    PRIMARY KEY (dest, archive_id)
);
CREATE INDEX IF NOT EXISTS archives_job_started ON archives (job_started);
CREATE TABLE IF NOT EXISTS parts (
    dest TEXT NOT NULL, archive_id TEXT NOT NULL, upload_id TEXT NOT NULL, number INTEGER NOT NULL,
    sha256 TEXT NOT NULL, tree_hash TEXT NOT NULL, etag TEXT NOT NULL,
    PRIMARY KEY (dest, archive_id, upload_id, number)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class PartDone:
    """A part S3 accepted: its SHA-256 (base64, as S3 spells it), Glacier tree hash and ETag."""

    number: int
    sha256: str
    tree_hash: str
    etag: str


@dataclass(frozen=True)
class ArchiveState:
    archive_id: str
    key: str
    status: str
    size: int
    job_id: str | None
    job_started: float | None
    upload_id: str | None
    part_size: int | None
    error: str | None


class ExportState:
    """The state store of one destination (see the module docstring)."""

    def __init__(self, con: sqlite3.Connection, dest: str, path: Path) -> None:
        self._con = con
        self.dest = dest
        self.path = path
        self._lock = threading.Lock()
        self._run_lock: int | None = None

    @classmethod
    def open(cls, directory: Path, dest: str) -> ExportState:
        path = Path(directory) / "state.db"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            con = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.executescript(SCHEMA)
            for p in directory.iterdir():
                with contextlib.suppress(OSError):
                    if p.is_file():
                        os.chmod(p, 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(
                f"the export state in {directory} is unusable ({exc}); delete that directory to start over "
                "(objects already in S3 are recognized and skipped)"
            ) from None
        return cls(con, dest, path)

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._con.close()
        if self._run_lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._run_lock)
            self._run_lock = None

    def claim(self, what: str) -> None:
        """One run per destination and shard (``what``) on this cache dir; StateError while another runs."""
        import fcntl
        import hashlib

        path = self.path.parent / f"run-{hashlib.sha256(f'{self.dest}|{what}'.encode()).hexdigest()[:16]}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StateError(
                f"another glacierfs export to the same destination ({what}) is running on this cache dir"
            ) from None
        self._run_lock = fd

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
                try:
                    yield self._con
                except BaseException:
                    self._con.execute("ROLLBACK")
                    raise
                self._con.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StateError(f"export state {self.path}: {exc}") from None

    def owner(self) -> str:
        """This store's exporter id (random, made once): whose S3 claims are ours (export.claims)."""
        import secrets

        with self._tx() as con:
            row = con.execute("SELECT value FROM meta WHERE name='owner'").fetchone()
            if row:
                return str(row[0])
            token = secrets.token_hex(16)
            con.execute("INSERT INTO meta (name, value) VALUES ('owner', ?)", (token,))
        return token

    # ------------------------------------------------------------------ reads

    def get(self, archive_id: str) -> ArchiveState | None:
        with self._tx() as con:
            row = con.execute(
                "SELECT archive_id, key, status, size, job_id, job_started, upload_id, part_size, error"
                " FROM archives WHERE dest=? AND archive_id=?",
                (self.dest, archive_id),
            ).fetchone()
        return ArchiveState(*row) if row else None

    def parts(self, archive_id: str, upload_id: str) -> dict[int, PartDone]:
        with self._tx() as con:
            rows = con.execute(
                "SELECT number, sha256, tree_hash, etag FROM parts WHERE dest=? AND archive_id=? AND upload_id=?",
                (self.dest, archive_id, upload_id),
            ).fetchall()
        return {r[0]: PartDone(*r) for r in rows}

    def bytes_charged_since(self, since: float) -> int:
        """Bytes of the retrieval jobs this store started after ``since`` (for --max-bytes-per-hour)."""
        with self._tx() as con:
            row = con.execute(
                "SELECT coalesce(sum(size), 0) FROM archives WHERE job_started > ? AND job_charged = 1", (since,)
            ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        with self._tx() as con:
            return dict(con.execute(
                "SELECT status, count(*) FROM archives WHERE dest=? GROUP BY status", (self.dest,)
            ).fetchall())

    # ------------------------------------------------------------------ writes

    def _upsert(self, con: sqlite3.Connection, archive_id: str, key: str, size: int) -> None:
        con.execute(
            "INSERT INTO archives (dest, archive_id, key, status, size, updated) VALUES (?,?,?,?,?,?)"
            " ON CONFLICT (dest, archive_id) DO UPDATE SET key=excluded.key, size=excluded.size",
            (self.dest, archive_id, key, "job", size, time.time()),
        )

    def set_job(self, archive_id: str, key: str, size: int, job_id: str, *, charged: bool) -> None:
        """Record the retrieval job to read from (``charged``: we started it, it counts for the pace)."""
        with self._tx() as con:
            self._upsert(con, archive_id, key, size)
            con.execute(
                "UPDATE archives SET job_id=?, job_started=?, job_charged=?, updated=?,"
                " status=CASE WHEN status IN ('done','deleted') THEN status WHEN upload_id IS NULL THEN 'job'"
                " ELSE 'uploading' END WHERE dest=? AND archive_id=?",
                (job_id, time.time(), int(charged), time.time(), self.dest, archive_id),
            )

    def clear_job(self, archive_id: str) -> None:
        with self._tx() as con:
            con.execute("UPDATE archives SET job_id=NULL WHERE dest=? AND archive_id=?", (self.dest, archive_id))

    def set_upload(self, archive_id: str, key: str, size: int, upload_id: str | None, part_size: int | None) -> None:
        """Record (or, with None, forget) the S3 multipart upload; forgetting drops its parts."""
        with self._tx() as con:
            self._upsert(con, archive_id, key, size)
            con.execute(
                "UPDATE archives SET upload_id=?, part_size=?, status=?, updated=? WHERE dest=? AND archive_id=?",
                (upload_id, part_size, "uploading" if upload_id else "job", time.time(), self.dest, archive_id),
            )
            con.execute(
                "DELETE FROM parts WHERE dest=? AND archive_id=? AND upload_id IS NOT ?",
                (self.dest, archive_id, upload_id),
            )

    def part_done(self, archive_id: str, upload_id: str, part: PartDone) -> None:
        with self._tx() as con:
            con.execute(
                "INSERT OR REPLACE INTO parts (dest, archive_id, upload_id, number, sha256, tree_hash, etag)"
                " VALUES (?,?,?,?,?,?,?)",
                (self.dest, archive_id, upload_id, part.number, part.sha256, part.tree_hash, part.etag),
            )

    def drop_parts(self, archive_id: str, upload_id: str, numbers: list[int]) -> None:
        with self._tx() as con:
            con.executemany(
                "DELETE FROM parts WHERE dest=? AND archive_id=? AND upload_id=? AND number=?",
                [(self.dest, archive_id, upload_id, n) for n in numbers],
            )

    def finish(self, archive_id: str, key: str, size: int, status: str = "done") -> None:
        """The object is verified in S3 (``done``) or, after that, the source deleted (``deleted``)."""
        with self._tx() as con:
            self._upsert(con, archive_id, key, size)
            con.execute(
                "UPDATE archives SET status=?, upload_id=NULL, error=NULL, updated=? WHERE dest=? AND archive_id=?",
                (status, time.time(), self.dest, archive_id),
            )
            con.execute("DELETE FROM parts WHERE dest=? AND archive_id=?", (self.dest, archive_id))

    def fail(self, archive_id: str, key: str, size: int, error: str) -> None:
        with self._tx() as con:
            self._upsert(con, archive_id, key, size)
            con.execute(
                "UPDATE archives SET status='failed', error=?, updated=? WHERE dest=? AND archive_id=?",
                (error[:500], time.time(), self.dest, archive_id),
            )
