"""Display names: which archive shows under which name, and which directories exist.

Each archive's path comes from its description (``codec.decode_description``), made safe with
``codec.safe_relpath``: its directory ``dir`` and base name ``base`` are columns of
``gfs_archive``. Within a directory, the visible archive with the newest creation date (ties:
smallest archive id) keeps the plain name and every other archive with the same path is shown
as ``codec.variant_name`` (a longer id prefix is used if that collides). A directory beats a
file of the same name (the file gets its variant name). Every ancestor of an archive's path is
a directory (``gfs_dir`` rows, ``explicit = 0``); directories made with ``mkdir`` (``mkdir -p``
semantics) have ``explicit = 1`` and stay while empty.

These functions run inside the caller's transaction, on the caller's connection; they hold no
state and start no threads.
"""

from __future__ import annotations

import sqlite3

from glacierfs.codec import variant_name


def join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


def norm(path: str) -> str:
    """'/a//b/' -> 'a/b': the catalog's spelling of a display path ('' is the root)."""
    if "//" in path or path.startswith("/") or path.endswith("/"):
        return "/".join(p for p in path.split("/") if p)
    return path


def is_dir(con: sqlite3.Connection, path: str) -> bool:
    return not path or con.execute("SELECT 1 FROM gfs_dir WHERE path = ?", (path,)).fetchone() is not None


def taken(con: sqlite3.Connection, d: str, name: str) -> bool:
    if con.execute("SELECT 1 FROM gfs_archive WHERE dir = ? AND name = ?", (d, name)).fetchone():
        return True
    return is_dir(con, join(d, name))


def free_variant(con: sqlite3.Connection, d: str, base: str, aid: str) -> str:
    for length in (8, 16, 32, len(aid)):
        v = variant_name(base, aid, length)
        if not taken(con, d, v):
            return v
    n = 2
    while True:
        v = variant_name(base, f"{aid}~{n}", len(aid) + 8)
        if not taken(con, d, v):
            return v
        n += 1


def resolve(con: sqlite3.Connection, d: str, base: str) -> None:
    """Re-assign the display names of every visible archive whose safe path is ``d/base``."""
    ids = [
        r[0]
        for r in con.execute(
            "SELECT archive_id FROM gfs_archive WHERE dir = ? AND base = ? AND deleted IS NULL"
            " ORDER BY created DESC, archive_id",
            (d, base),
        )
    ]
    con.execute(
        "UPDATE gfs_archive SET name = NULL WHERE dir = ? AND base = ? AND name IS NOT NULL", (d, base)
    )
    if not ids:
        return
    rest = ids
    evicted: list[tuple[str, str]] = []
    if not is_dir(con, join(d, base)):
        # plain names beat variants: a variant of another path that happens to spell `base` moves
        holder = con.execute(
            "SELECT archive_id, base FROM gfs_archive WHERE dir = ? AND name = ?", (d, base)
        ).fetchone()
        if holder is not None:
            con.execute("UPDATE gfs_archive SET name = NULL WHERE archive_id = ?", (holder[0],))
            evicted.append(holder)
        con.execute("UPDATE gfs_archive SET name = ? WHERE archive_id = ?", (base, ids[0]))
        rest = ids[1:]
    for aid in sorted(rest):
        con.execute(
            "UPDATE gfs_archive SET name = ? WHERE archive_id = ?",
            (free_variant(con, d, base, aid), aid),
        )
    for aid, other_base in evicted:
        v = free_variant(con, d, other_base, aid)
        con.execute("UPDATE gfs_archive SET name = ? WHERE archive_id = ?", (v, aid))


def yield_name_to_dir(con: sqlite3.Connection, parent: str, name: str) -> None:
    """A directory ``parent/name`` appeared: the archive holding that name takes another."""
    row = con.execute(
        "SELECT base FROM gfs_archive WHERE dir = ? AND name = ?", (parent, name)
    ).fetchone()
    if row is not None:
        resolve(con, parent, row[0])


def ensure_dirs(con: sqlite3.Connection, d: str, explicit: bool = False) -> None:
    """Make ``d`` and its ancestors directories (``explicit`` marks them all as mkdir'ed)."""
    while d:
        row = con.execute("SELECT explicit FROM gfs_dir WHERE path = ?", (d,)).fetchone()
        if row is not None:
            if not explicit:
                return
            if not row[0]:
                con.execute("UPDATE gfs_dir SET explicit = 1 WHERE path = ?", (d,))
        else:
            parent, _, name = d.rpartition("/")
            con.execute(
                "INSERT INTO gfs_dir (path, parent, name, explicit) VALUES (?, ?, ?, ?)",
                (d, parent, name, int(explicit)),
            )
            yield_name_to_dir(con, parent, name)
        d = d.rpartition("/")[0]


def dir_empty(con: sqlite3.Connection, d: str) -> bool:
    if con.execute(
        "SELECT 1 FROM gfs_archive WHERE dir = ? AND name IS NOT NULL LIMIT 1", (d,)
    ).fetchone():
        return False
    return con.execute("SELECT 1 FROM gfs_dir WHERE parent = ? LIMIT 1", (d,)).fetchone() is None


def prune_dirs(con: sqlite3.Connection, d: str) -> None:
    """Drop implicit directories left empty, upward from ``d``; freed names go back to files."""
    while d:
        row = con.execute("SELECT explicit FROM gfs_dir WHERE path = ?", (d,)).fetchone()
        if row is None or row[0] or not dir_empty(con, d):
            return
        con.execute("DELETE FROM gfs_dir WHERE path = ?", (d,))
        parent, _, name = d.rpartition("/")
        resolve(con, parent, name)
        d = parent
