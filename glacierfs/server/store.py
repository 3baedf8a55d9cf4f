"""Persistent state of the server: SQLite metadata (WAL) plus the body files of :mod:`bodies`.

Threading contract: called from every request thread and from the ticker. ``_lock`` (RLock)
guards the one SQLite connection (every query and transaction); ``_complete_lock`` serializes
job completion (an output file is written once); ``_periodic_lock`` serializes the periodic
run. Order: ``_periodic_lock`` -> ``_complete_lock`` -> ``_lock``; never the reverse. Body
files are written outside ``_lock`` (into private temp files) and renamed before the commit.

One place owns every rule that is about *state* (reference §5 items 2, 3, 5, 8, 12); the
HTTP layer owns the wire format and request validation.

Crash safety: a body is received into ``tmp/``, verified, renamed into place, and only then
is the metadata row committed in one transaction. A kill -9 at any point leaves either the
old state or the new one; a temp file (removed at startup) or an unreferenced body file
(removed by the startup orphan sweep) is all that can be left over.

Decisions on undocumented points (reference §8):

* Writes, for the DeleteVault rule, are archive creations and deletions. Open multipart
  uploads do not block DeleteVault; deleting a vault drops its uploads, jobs and config.
* A completed or aborted upload id is remembered for ``IDEMPOTENCY_WINDOW`` (24 h): a
  repeated Complete returns the same archive id, a repeated Abort succeeds, Abort after
  Complete and ListParts of either give 404.
* A deleted archive's bytes stay until no unexpired archive-retrieval job references it;
  a job still in progress when its archive is deleted ends ``Failed``.
* An open upload with no activity for 24 h is reclaimed. Jobs disappear 24 h after completion.
* SNS is a sink: completion messages are recorded (``GET /_admin/sns``), never sent anywhere,
  and the job's ``SNSTopic`` and the vault's notification topic both get one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacierfs.treehash import TreeHasher, combine, is_tree_hash_aligned

from .apierror import ApiError, invalid, job_not_found, not_found, upload_not_found, vault_not_found
from .bodies import FILE_MODE, BodyStore, Received, gen_bytes
from .clock import Clock, iso_ms, iso_s
from .ids import IdGenerator
from .inventory import Item, write_inventory

log = logging.getLogger(__name__)

DAY = 86400.0
JOB_RETENTION = DAY
UPLOAD_IDLE_EXPIRY = DAY
IDEMPOTENCY_WINDOW = DAY
MAX_VAULTS = 1000
MAX_PARTS = 10_000
SWEEP_EVERY = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vaults (
    name TEXT PRIMARY KEY, created REAL NOT NULL,
    inv_date REAL, inv_count INTEGER NOT NULL DEFAULT 0, inv_size INTEGER NOT NULL DEFAULT 0,
    dirty INTEGER NOT NULL DEFAULT 0, notifications TEXT);
CREATE TABLE IF NOT EXISTS archives (
    id TEXT PRIMARY KEY, vault TEXT NOT NULL, description TEXT NOT NULL, created REAL NOT NULL,
    size INTEGER NOT NULL, tree_hash TEXT NOT NULL, body TEXT NOT NULL, deleted REAL);
CREATE INDEX IF NOT EXISTS archives_by_vault ON archives (vault, deleted);
CREATE TABLE IF NOT EXISTS inventory (
    vault TEXT NOT NULL, archive_id TEXT NOT NULL, description TEXT NOT NULL, created REAL NOT NULL,
    size INTEGER NOT NULL, tree_hash TEXT NOT NULL, PRIMARY KEY (vault, created, archive_id));
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, vault TEXT NOT NULL, description TEXT, part_size INTEGER NOT NULL,
    created REAL NOT NULL, touched REAL NOT NULL, state TEXT NOT NULL, archive_id TEXT,
    tree_hash TEXT, finished REAL);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, start INTEGER NOT NULL, size INTEGER NOT NULL, tree_hash TEXT NOT NULL,
    file TEXT NOT NULL, PRIMARY KEY (upload_id, start));
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, vault TEXT NOT NULL,
    action TEXT NOT NULL, created REAL NOT NULL, due REAL NOT NULL, completed REAL,
    status TEXT NOT NULL, status_message TEXT NOT NULL, description TEXT, sns_topic TEXT,
    tier TEXT, archive_id TEXT, archive_size INTEGER, archive_tree_hash TEXT, archive_description TEXT,
    range_start INTEGER, range_end INTEGER, tree_hash TEXT,
    format TEXT, inv_params TEXT, next_marker TEXT, output_file TEXT, output_size INTEGER);
CREATE TABLE IF NOT EXISTS sns (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, created REAL NOT NULL, message TEXT NOT NULL);
"""


@dataclass
class Settings:
    """Knobs of the state rules (the CLI maps its options onto these)."""

    account: str = "012345678901"
    region: str = "us-east-1"
    job_delay: float = 5.0
    inventory_interval: float = 60.0


def is_disk_full(exc: BaseException) -> bool:
    """Out of space (or over a quota or the file-size limit) while writing a body file or SQLite."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


def _inv_marker_key(created: float, archive_id: str) -> str:
    return json.dumps([created, archive_id])


class Store:
    """All metadata access goes through one connection under one lock (SQLite is fast enough)."""

    def __init__(self, root: Path, settings: Settings, seed: int | None = None) -> None:
        self.root = root
        self.settings = settings
        self.bodies = BodyStore(root)
        db_path = root / "meta.sqlite3"
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{db_path}{suffix}")
            if p.exists():
                os.chmod(p, FILE_MODE)
        self._lock = threading.RLock()
        self._complete_lock = threading.Lock()
        self._periodic_lock = threading.Lock()
        # Renders a completed job row as the DescribeJob JSON for SNS; set by the HTTP layer.
        self.describe_job: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        boot = int(self._meta("boot", "0")) + 1
        self._set_meta("boot", str(boot))
        self.ids = IdGenerator(seed, boot)
        self.clock = Clock(float(self._meta("clock_offset", "0")), lambda off: self._set_meta("clock_offset", repr(off)))
        self._last_sweep = 0.0
        last_run = self._meta("last_inventory_run", "")
        if last_run == "" or not math.isfinite(float(last_run)) or float(last_run) > self.now() + DAY:
            self._set_meta("last_inventory_run", repr(self.now()))  # the schedule starts at the first boot
        self.bodies.clean_temp()
        self._sweep_orphans()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing ----------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (SQLITE_FULL, a failed COMMIT): keep the first error
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _meta(self, key: str, default: str) -> str:
        row = self._one("SELECT value FROM meta WHERE key=?", (key,))
        return row["value"] if row else default

    def _set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def now(self) -> float:
        return self.clock.now()

    def arn(self, vault: str) -> str:
        return f"arn:aws:glacier:{self.settings.region}:{self.settings.account}:vaults/{vault}"

    def _sweep_orphans(self) -> None:
        """Delete body files no metadata row refers to (left by a crash between rename and commit)."""
        live: set[str] = set()
        for row in self._q("SELECT body FROM archives"):
            body = json.loads(row["body"])
            if "file" in body:
                live.add(body["file"])
            live.update(rel for rel, _ in body.get("parts", ()))
        live.update(r["file"] for r in self._q("SELECT file FROM parts"))
        live.update(r["output_file"] for r in self._q("SELECT output_file FROM jobs WHERE output_file IS NOT NULL"))
        removed = 0
        for rel in list(self.bodies.all_files()):
            if rel not in live:
                self.bodies.remove_rel(rel)
                removed += 1
        if removed:
            log.info("removed %d unreferenced body files", removed)

    # -- vaults ------------------------------------------------------------------------
    def _vault(self, name: str) -> sqlite3.Row:
        row = self._one("SELECT * FROM vaults WHERE name=?", (name,))
        if row is None:
            raise vault_not_found(self.arn(name))
        return row

    def vault(self, name: str) -> dict[str, Any]:
        return dict(self._vault(name))

    def create_vault(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM vaults WHERE name=?", (name,)).fetchone():
                return  # idempotent: keeps archives and settings
            (count,) = db.execute("SELECT count(*) FROM vaults").fetchone()
            if count >= MAX_VAULTS:
                raise ApiError(400, "LimitExceededException", f"The maximum number of vaults ({MAX_VAULTS}) has been reached.")
            db.execute("INSERT INTO vaults (name, created) VALUES (?, ?)", (name, self.now()))

    def list_vaults(self, start: str | None, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Vaults in ASCII name order from ``start`` (inclusive); returns (page, next name or None)."""
        rows = self._q(
            "SELECT * FROM vaults WHERE name >= ? ORDER BY name COLLATE BINARY LIMIT ?", (start or "", limit + 1)
        )
        page = [dict(r) for r in rows[:limit]]
        return page, (rows[limit]["name"] if len(rows) > limit else None)

    def delete_vault(self, name: str) -> None:
        with self._tx() as db:
            v = db.execute("SELECT * FROM vaults WHERE name=?", (name,)).fetchone()
            if v is None:
                raise vault_not_found(self.arn(name))
            if v["inv_count"] or v["dirty"]:
                raise invalid(f"Vault not empty or recently written to: {self.arn(name)}")
            bodies = [json.loads(r["body"]) for r in db.execute("SELECT body FROM archives WHERE vault=?", (name,))]
            files = [r["file"] for r in db.execute(
                "SELECT p.file FROM parts p JOIN uploads u ON p.upload_id=u.id WHERE u.vault=? AND u.state!='completed'",
                (name,))]
            files += [r["output_file"] for r in db.execute(
                "SELECT output_file FROM jobs WHERE vault=? AND output_file IS NOT NULL", (name,))]
            db.execute("DELETE FROM parts WHERE upload_id IN (SELECT id FROM uploads WHERE vault=?)", (name,))
            for table in ("archives", "inventory", "uploads", "jobs"):
                db.execute(f"DELETE FROM {table} WHERE vault=?", (name,))
            db.execute("DELETE FROM vaults WHERE name=?", (name,))
        for body in bodies:
            self.bodies.remove_body(body)
        for rel in files:
            self.bodies.remove_rel(rel)

    def get_notifications(self, name: str) -> dict[str, Any] | None:
        raw = self._vault(name)["notifications"]
        return json.loads(raw) if raw else None

    def set_notifications(self, name: str, config: dict[str, Any] | None) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE vaults SET notifications=? WHERE name=?", (json.dumps(config) if config else None, name)
            )
            if cur.rowcount == 0:
                raise vault_not_found(self.arn(name))

    # -- archives ----------------------------------------------------------------------
    def add_archive(self, vault: str, received: Received, description: str) -> str:
        """Move a verified received body into place and commit it as a new archive."""
        self._vault(vault)
        archive_id = self._unique_id("archives", self.ids.archive_id)
        rel = self.bodies.place_archive(received.path, archive_id)
        try:
            with self._tx() as db:
                if not db.execute("SELECT 1 FROM vaults WHERE name=?", (vault,)).fetchone():
                    raise vault_not_found(self.arn(vault))
                db.execute(
                    "INSERT INTO archives (id, vault, description, created, size, tree_hash, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (archive_id, vault, description, self.now(), received.size, received.tree_hash,
                     json.dumps({"file": rel})),
                )
                db.execute("UPDATE vaults SET dirty=1 WHERE name=?", (vault,))
        except BaseException:
            self.bodies.remove_rel(rel)
            raise
        return archive_id

    def _unique_id(self, table: str, make: Any) -> str:
        while True:
            ident = make()
            if not self._one(f"SELECT 1 FROM {table} WHERE id=?", (ident,)):
                return str(ident)

    def archive(self, archive_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM archives WHERE id=?", (archive_id,))
        return dict(row) if row else None

    def delete_archive(self, vault: str, archive_id: str) -> None:
        """Idempotent; an id of another vault's archive is ``Invalid vault name``."""
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM vaults WHERE name=?", (vault,)).fetchone():
                raise vault_not_found(self.arn(vault))
            row = db.execute("SELECT vault, deleted FROM archives WHERE id=?", (archive_id,)).fetchone()
            if row is None or row["deleted"] is not None:
                return
            if row["vault"] != vault:
                raise invalid(f"Invalid vault name: {self.arn(vault)}")
            db.execute("UPDATE archives SET deleted=? WHERE id=?", (self.now(), archive_id))
            db.execute("UPDATE vaults SET dirty=1 WHERE name=?", (vault,))

    def populate(self, vault: str, count: int, size: int, descriptions: list[str]) -> list[str]:
        """Add ``count`` archives with generated bodies of ``size`` bytes (no upload, no files)."""
        self._vault(vault)
        rows = []
        now = self.now()
        for i in range(count):
            archive_id = self._unique_id("archives", self.ids.archive_id)
            seed = archive_id
            hasher = TreeHasher()
            for data in gen_bytes(seed, 0, size):
                hasher.update(data)
            desc = descriptions[i % len(descriptions)] if descriptions else f"populated archive {i}"
            rows.append((archive_id, vault, desc, now, size, hasher.hexdigest(), json.dumps({"gen": seed})))
        with self._tx() as db:
            db.executemany(
                "INSERT INTO archives (id, vault, description, created, size, tree_hash, body) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
            db.execute("UPDATE vaults SET dirty=1 WHERE name=?", (vault,))
        return [r[0] for r in rows]

    # -- inventory ---------------------------------------------------------------------
    def snapshot(self, vault: str, force: bool = False) -> bool:
        """Take the vault's inventory if it changed (or, with ``force``, if it has none yet)."""
        with self._tx() as db:
            v = db.execute("SELECT * FROM vaults WHERE name=?", (vault,)).fetchone()
            if v is None:
                raise vault_not_found(self.arn(vault))
            if not v["dirty"] and not (force and v["inv_date"] is None):
                return False
            db.execute("DELETE FROM inventory WHERE vault=?", (vault,))
            db.execute(
                "INSERT INTO inventory (vault, archive_id, description, created, size, tree_hash)"
                " SELECT vault, id, description, created, size, tree_hash FROM archives"
                " WHERE vault=? AND deleted IS NULL",
                (vault,),
            )
            count, size = db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM inventory WHERE vault=?", (vault,)
            ).fetchone()
            db.execute(
                "UPDATE vaults SET inv_date=?, inv_count=?, inv_size=?, dirty=0 WHERE name=?",
                (self.now(), count, size, vault),
            )
        log.info("inventory of vault %s: %d archives, %d bytes", vault, count, size)
        return True

    def snapshot_all(self) -> list[str]:
        """The periodic inventory run: every vault written since its last inventory."""
        names = [r["name"] for r in self._q("SELECT name FROM vaults WHERE dirty=1")]
        return [n for n in names if self._try_snapshot(n)]

    def _try_snapshot(self, name: str) -> bool:
        try:
            return self.snapshot(name)
        except ApiError:
            return False  # deleted meanwhile

    def periodic(self) -> None:
        """Run whatever the clock says is due: inventories, job completions, retention.

        Serialized, so a caller (the ticker, or an admin clock advance) returns only once the
        work that became due is done, whichever of them noticed it first.
        """
        with self._periodic_lock:
            self._periodic()

    def _periodic(self) -> None:
        now = self.now()
        last = float(self._meta("last_inventory_run", "0"))
        if now - last >= self.settings.inventory_interval:
            self._set_meta("last_inventory_run", repr(now))
            self.snapshot_all()
        self.complete_jobs()
        self.maybe_sweep()

    def maybe_sweep(self) -> None:
        """Sweep at most every ``SWEEP_EVERY`` virtual seconds (a sweep is a write transaction)."""
        now = self.now()
        if now - self._last_sweep >= SWEEP_EVERY or now < self._last_sweep:
            self._last_sweep = now
            self.sweep()

    # -- multipart ---------------------------------------------------------------------
    def initiate_upload(self, vault: str, part_size: int, description: str | None) -> str:
        self._vault(vault)
        upload_id = self._unique_id("uploads", self.ids.upload_id)
        now = self.now()
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM vaults WHERE name=?", (vault,)).fetchone():
                raise vault_not_found(self.arn(vault))
            db.execute(
                "INSERT INTO uploads (id, vault, description, part_size, created, touched, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'open')",
                (upload_id, vault, description, part_size, now, now),
            )
        return upload_id

    def open_upload(self, vault: str, upload_id: str) -> dict[str, Any]:
        """The upload if it is in progress in this vault, else 404."""
        self._vault(vault)
        row = self._one("SELECT * FROM uploads WHERE id=? AND vault=?", (upload_id, vault))
        if row is None or row["state"] != "open":
            raise upload_not_found(upload_id)
        return dict(row)

    def put_part(self, vault: str, upload_id: str, start: int, received: Received) -> None:
        """Store a verified part; re-uploading a range replaces the earlier data."""
        rel = self.bodies.place_part(received.path, upload_id, start)
        old = None
        try:
            with self._tx() as db:
                row = db.execute("SELECT state FROM uploads WHERE id=? AND vault=?", (upload_id, vault)).fetchone()
                if row is None or row["state"] != "open":
                    raise upload_not_found(upload_id)  # aborted or completed while the body arrived
                prev = db.execute("SELECT file FROM parts WHERE upload_id=? AND start=?", (upload_id, start)).fetchone()
                old = prev["file"] if prev else None
                db.execute(
                    "INSERT OR REPLACE INTO parts (upload_id, start, size, tree_hash, file) VALUES (?, ?, ?, ?, ?)",
                    (upload_id, start, received.size, received.tree_hash, rel),
                )
                db.execute("UPDATE uploads SET touched=? WHERE id=?", (self.now(), upload_id))
        except BaseException:
            self.bodies.remove_rel(rel)
            raise
        if old:
            self.bodies.remove_rel(old)

    def complete_upload(self, vault: str, upload_id: str, archive_size: int, tree_hash: str) -> tuple[str, str]:
        """Assemble the parts into an archive (no copy); idempotent. Returns (archive id, tree hash)."""
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM vaults WHERE name=?", (vault,)).fetchone():
                raise vault_not_found(self.arn(vault))
            up = db.execute("SELECT * FROM uploads WHERE id=? AND vault=?", (upload_id, vault)).fetchone()
            if up is None or up["state"] == "aborted":
                raise upload_not_found(upload_id)
            if up["state"] == "completed":
                return up["archive_id"], up["tree_hash"]
            parts = db.execute(
                "SELECT start, size, tree_hash, file FROM parts WHERE upload_id=? ORDER BY start", (upload_id,)
            ).fetchall()
            part_size = up["part_size"]
            pos = 0
            for i, p in enumerate(parts):
                if p["start"] != pos:
                    raise invalid(f"Missing part for range starting at byte {pos} of upload {upload_id}")
                if i < len(parts) - 1 and p["size"] != part_size:
                    raise invalid(
                        f"Invalid part size: part at byte {p['start']} has {p['size']} bytes but is not the last part"
                        f" (part size {part_size})"
                    )
                pos += p["size"]
            if not parts or pos != archive_size:
                raise invalid(f"Invalid x-amz-archive-size: {archive_size}; the uploaded parts hold {pos} bytes")
            computed = combine(p["tree_hash"] for p in parts)
            if computed != tree_hash.lower():
                raise invalid(f"Invalid x-amz-sha256-tree-hash: {tree_hash}")
            archive_id = self.ids.archive_id()
            while db.execute("SELECT 1 FROM archives WHERE id=?", (archive_id,)).fetchone():
                archive_id = self.ids.archive_id()
            now = self.now()
            body = {"parts": [[p["file"], p["size"]] for p in parts]}
            db.execute(
                "INSERT INTO archives (id, vault, description, created, size, tree_hash, body) VALUES (?,?,?,?,?,?,?)",
                (archive_id, vault, up["description"] or "", now, archive_size, computed, json.dumps(body)),
            )
            db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            db.execute(
                "UPDATE uploads SET state='completed', archive_id=?, tree_hash=?, finished=? WHERE id=?",
                (archive_id, computed, now, upload_id),
            )
            db.execute("UPDATE vaults SET dirty=1 WHERE name=?", (vault,))
        return archive_id, computed

    def abort_upload(self, vault: str, upload_id: str) -> None:
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM vaults WHERE name=?", (vault,)).fetchone():
                raise vault_not_found(self.arn(vault))
            up = db.execute("SELECT state FROM uploads WHERE id=? AND vault=?", (upload_id, vault)).fetchone()
            if up is None or up["state"] == "completed":
                raise upload_not_found(upload_id)
            if up["state"] == "aborted":
                return
            files = [r["file"] for r in db.execute("SELECT file FROM parts WHERE upload_id=?", (upload_id,))]
            db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            db.execute("UPDATE uploads SET state='aborted', finished=? WHERE id=?", (self.now(), upload_id))
        for rel in files:
            self.bodies.remove_rel(rel)

    def list_parts(self, vault: str, upload_id: str, after: int, limit: int) -> tuple[dict[str, Any], list[dict[str, Any]], int | None]:
        """Parts with start ≥ ``after`` in range order; returns (upload, page, next start or None)."""
        up = self.open_upload(vault, upload_id)
        rows = self._q(
            "SELECT start, size, tree_hash FROM parts WHERE upload_id=? AND start>=? ORDER BY start LIMIT ?",
            (upload_id, after, limit + 1),
        )
        page = [dict(r) for r in rows[:limit]]
        return up, page, (rows[limit]["start"] if len(rows) > limit else None)

    def list_uploads(self, vault: str, after: str, limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Open uploads ordered by id, i.e. in no meaningful order (reference §4.4)."""
        self._vault(vault)
        rows = self._q(
            "SELECT * FROM uploads WHERE vault=? AND state='open' AND id>=? ORDER BY id LIMIT ?",
            (vault, after, limit + 1),
        )
        return [dict(r) for r in rows[:limit]], (rows[limit]["id"] if len(rows) > limit else None)

    # -- jobs --------------------------------------------------------------------------
    def initiate_job(self, vault: str, fields: dict[str, Any]) -> str:
        """Insert a validated job; with a zero job delay it completes before this returns."""
        v = self._vault(vault)
        if fields["action"] == "InventoryRetrieval" and v["inv_date"] is None:
            raise not_found(
                f"Inventory retrieval jobs for vault {self.arn(vault)} cannot be initiated yet, as Amazon Glacier"
                " has not yet generated an initial inventory for this vault."
            )
        job_id = self._unique_id("jobs", self.ids.job_id)
        now = self.now()
        row = {
            "id": job_id, "vault": vault, "created": now, "due": now + self.settings.job_delay,
            "status": "InProgress", "status_message": "Operation in progress.", **fields,
        }
        cols = ", ".join(row)
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM vaults WHERE name=?", (vault,)).fetchone():
                raise vault_not_found(self.arn(vault))
            db.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        if self.settings.job_delay <= 0:
            self.complete_jobs(job_id=job_id)
        return job_id

    def job(self, vault: str, job_id: str) -> dict[str, Any]:
        self._vault(vault)
        self.complete_jobs()
        row = self._one("SELECT * FROM jobs WHERE id=? AND vault=?", (job_id, vault))
        if row is None or (row["completed"] is not None and row["completed"] + JOB_RETENTION <= self.now()):
            raise job_not_found(job_id)
        return dict(row)

    def list_jobs(
        self, vault: str, status: str | None, completed: bool | None, after_seq: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        self._vault(vault)
        self.complete_jobs()
        self.maybe_sweep()
        sql = "SELECT * FROM jobs WHERE vault=? AND seq>=? AND (completed IS NULL OR completed>?)"
        args: list[Any] = [vault, after_seq, self.now() - JOB_RETENTION]
        if status:
            sql += " AND status=?"
            args.append(status)
        if completed is not None:
            sql += " AND completed IS NOT NULL" if completed else " AND completed IS NULL"
        rows = self._q(sql + " ORDER BY seq LIMIT ?", (*args, limit + 1))
        return [dict(r) for r in rows[:limit]], (rows[limit]["seq"] if len(rows) > limit else None)

    def complete_jobs(self, force: bool = False, job_id: str | None = None, fail: bool = False) -> list[str]:
        """Complete due jobs (all in-progress ones with ``force``, or just ``job_id``); ``fail`` ends them Failed."""
        with self._complete_lock:  # one completer at a time: an output file is written once
            return self._complete_jobs(force, job_id, fail)

    def _complete_jobs(self, force: bool, job_id: str | None, fail: bool) -> list[str]:
        now = self.now()
        if job_id is not None:
            rows = self._q("SELECT * FROM jobs WHERE id=? AND status='InProgress'", (job_id,))
        elif force:
            rows = self._q("SELECT * FROM jobs WHERE status='InProgress' ORDER BY seq")
        else:
            rows = self._q("SELECT * FROM jobs WHERE status='InProgress' AND due<=? ORDER BY seq", (now,))
        done = []
        for row in rows:
            try:
                if self._complete_job(dict(row), fail):
                    done.append(row["id"])
            except Exception as exc:
                if is_disk_full(exc):  # out of space: the job stays in progress, completes on a later tick
                    log.warning("job %s not completed yet: the data dir is full: %s", row["id"], exc)
                    continue
                # a bug or a vanished body file: fail this job, keep going with the others
                log.exception("completing job %s failed", row["id"])
                with contextlib.suppress(Exception):
                    with self._tx() as db:
                        db.execute(
                            "UPDATE jobs SET status='Failed', status_message=?, completed=? WHERE id=? AND status='InProgress'",
                            ("The job output could not be prepared.", self.now(), row["id"]),
                        )
        return done

    def _complete_job(self, job: dict[str, Any], fail: bool = False) -> bool:
        updates: dict[str, Any]
        if fail:
            updates = {"status": "Failed", "status_message": "The job failed (injected by the admin hook)."}
        elif job["action"] == "ArchiveRetrieval":
            arch = self.archive(job["archive_id"])
            if arch is None or arch["deleted"] is not None:
                updates = {"status": "Failed", "status_message": "The archive was deleted before the job completed."}
            else:
                start, end = job["range_start"], job["range_end"]
                th = None
                if start == 0 and end == arch["size"] - 1:
                    th = arch["tree_hash"]
                elif is_tree_hash_aligned(start, end, arch["size"]):
                    th = self.bodies.tree_hash_range(json.loads(arch["body"]), start, end + 1)
                updates = {"status": "Succeeded", "status_message": "Succeeded", "tree_hash": th}
        else:
            v = self._one("SELECT * FROM vaults WHERE name=?", (job["vault"],))
            if v is None:
                return False
            params = json.loads(job["inv_params"] or "{}")
            items, next_marker = self._inventory_items(job["vault"], params)
            tmp = self.bodies.new_temp()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                with os.fdopen(fd, "wb") as f:
                    size = write_inventory(f, job["format"], self.arn(job["vault"]), iso_s(v["inv_date"]), items)
                    f.flush()
                    os.fsync(f.fileno())
                out_path, rel = self.bodies.job_output_path(job["id"])
                os.rename(tmp, out_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            updates = {"status": "Succeeded", "status_message": "Succeeded", "output_file": rel,
                       "output_size": size, "next_marker": next_marker}
        updates["completed"] = self.now()
        with self._tx() as db:
            sets = ", ".join(f"{k}=?" for k in updates)
            cur = db.execute(f"UPDATE jobs SET {sets} WHERE id=? AND status='InProgress'", (*updates.values(), job["id"]))
            changed = cur.rowcount == 1
            if changed:
                self._notify(db, {**job, **updates})
        return changed

    def _notify(self, db: sqlite3.Connection, job: dict[str, Any]) -> None:
        """The SNS sink (reference §5 item 9): record the DescribeJob JSON for the job's topic and
        for the vault's topic if it has the job's event enabled (both if both apply)."""
        if self.describe_job is None:
            return
        topics = [job["sns_topic"]] if job.get("sns_topic") else []
        row = db.execute("SELECT notifications FROM vaults WHERE name=?", (job["vault"],)).fetchone()
        cfg = json.loads(row["notifications"]) if row and row["notifications"] else None
        event = "ArchiveRetrievalCompleted" if job["action"] == "ArchiveRetrieval" else "InventoryRetrievalCompleted"
        if cfg and event in cfg.get("Events", ()):
            topics.append(cfg["SNSTopic"])
        if not topics:
            return
        message = json.dumps(self.describe_job(job))
        for topic in topics:
            db.execute("INSERT INTO sns (topic, created, message) VALUES (?, ?, ?)", (topic, self.now(), message))

    def sns_messages(self, topic: str | None = None) -> list[dict[str, Any]]:
        """Recorded SNS notifications, oldest first: ``{"Topic", "Date", "Message"}`` (Message is JSON text)."""
        sql, args = "SELECT * FROM sns", tuple[str, ...]()
        if topic:
            sql, args = sql + " WHERE topic=?", (topic,)
        return [{"Topic": r["topic"], "Date": iso_ms(r["created"]), "Message": r["message"]}
                for r in self._q(sql + " ORDER BY seq", args)]

    def _inventory_items(self, vault: str, params: dict[str, Any]) -> tuple[list[Item], str | None]:
        """Snapshot items for an inventory job, honouring StartDate/EndDate/Limit/Marker."""
        sql = "SELECT * FROM inventory WHERE vault=?"
        args: list[Any] = [vault]
        if params.get("start") is not None:
            sql += " AND created>=?"
            args.append(params["start"])
        if params.get("end") is not None:
            sql += " AND created<?"
            args.append(params["end"])
        if params.get("after"):
            created, aid = params["after"]
            sql += " AND (created>? OR (created=? AND archive_id>=?))"
            args += [created, created, aid]
        sql += " ORDER BY created, archive_id"
        limit = params.get("limit")
        if limit:
            sql += " LIMIT ?"
            args.append(limit + 1)
        rows = self._q(sql, tuple(args))
        next_marker = None
        if limit and len(rows) > limit:
            nxt = rows[limit]
            next_marker = _inv_marker_key(nxt["created"], nxt["archive_id"])
            rows = rows[:limit]
        items = [Item(r["archive_id"], r["description"], iso_ms(r["created"]), r["size"], r["tree_hash"]) for r in rows]
        return items, next_marker

    def iter_job_output(self, job: dict[str, Any], start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of a succeeded job's output."""
        if job["action"] == "ArchiveRetrieval":
            arch = self.archive(job["archive_id"])
            if arch is None:
                raise job_not_found(job["id"])
            base = job["range_start"]
            yield from self.bodies.iter_range(json.loads(arch["body"]), base + start, base + end)
        else:
            yield from self.bodies.iter_file(job["output_file"], start, end)

    def archive_body(self, archive_id: str) -> dict[str, Any]:
        arch = self.archive(archive_id)
        if arch is None:
            raise not_found(f"The archive ID was not found: {archive_id}")
        body: dict[str, Any] = json.loads(arch["body"])
        return body

    # -- retention ---------------------------------------------------------------------
    def sweep(self) -> None:
        """Forget expired jobs, idle uploads, old idempotency records and unreferenced deleted archives."""
        now = self.now()
        files: list[str] = []
        bodies: list[dict[str, Any]] = []
        with self._tx() as db:
            for r in db.execute(
                "SELECT output_file FROM jobs WHERE completed IS NOT NULL AND completed<=? AND output_file IS NOT NULL",
                (now - JOB_RETENTION,),
            ):
                files.append(r["output_file"])
            db.execute("DELETE FROM jobs WHERE completed IS NOT NULL AND completed<=?", (now - JOB_RETENTION,))
            db.execute("DELETE FROM sns WHERE created<=?", (now - JOB_RETENTION,))
            idle = [r["id"] for r in db.execute(
                "SELECT id FROM uploads WHERE state='open' AND touched<=?", (now - UPLOAD_IDLE_EXPIRY,))]
            for uid in idle:
                files += [r["file"] for r in db.execute("SELECT file FROM parts WHERE upload_id=?", (uid,))]
                db.execute("DELETE FROM parts WHERE upload_id=?", (uid,))
                db.execute("DELETE FROM uploads WHERE id=?", (uid,))
            db.execute(
                "DELETE FROM uploads WHERE state!='open' AND finished<=?", (now - IDEMPOTENCY_WINDOW,)
            )
            for r in db.execute(
                "SELECT id, body FROM archives a WHERE deleted IS NOT NULL AND NOT EXISTS"
                " (SELECT 1 FROM jobs j WHERE j.archive_id=a.id AND j.status!='Failed')"
            ).fetchall():
                bodies.append(json.loads(r["body"]))
                db.execute("DELETE FROM archives WHERE id=?", (r["id"],))
        for rel in files:
            self.bodies.remove_rel(rel)
        for body in bodies:
            self.bodies.remove_body(body)
