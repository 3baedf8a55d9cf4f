"""Both sides of a tree comparison: the files of a local directory and the archives of a vault subtree.

Local side (:func:`scan_local`): regular files under DIR, walked without following symlinks,
as '/'-separated relative paths. ``--exclude`` globs follow rsync's habit: a pattern without
``/`` matches a name at any depth, one with ``/`` matches the whole relative path; an excluded
directory is not entered. Empty files (Glacier stores no empty archive), symlinks, other
non-regular files and unreadable entries are *skipped* and reported, never silently dropped.

Vault side (:func:`vault_tree`): the catalog's visible archives under a prefix, grouped by the
*safe path* their description decodes to (``codec.safe_relpath``), the same key the catalog
derives display names from. Several archives can share a path (re-uploads); the group keeps
all of them, newest first, so callers can tell the current one from older versions.

The key of a local file is ``safe_relpath(prefix/rel)``, so a name that the catalog would
escape (control characters, very long components) still pairs with its archive.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from glacierfs.codec import decode_description, safe_relpath
from glacierfs.errors import UsageError

log = logging.getLogger(__name__)


class ArchiveLike(Protocol):
    archive_id: str
    path: str
    size: int
    creation_date: str
    mtime: float
    tree_hash: str
    description: str


class ArchiveSource(Protocol):
    """The catalog queries the tree commands read."""

    def iter_archives(self) -> Iterator[ArchiveLike]: ...


@dataclass(frozen=True, slots=True)
class LocalFile:
    rel: str  # '/'-separated, relative to DIR
    path: Path  # on disk
    size: int
    mtime: float


@dataclass
class LocalTree:
    root: Path
    files: dict[str, LocalFile] = field(default_factory=dict)  # by rel
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rel, reason)
    excluded: list[str] = field(default_factory=list)  # rel paths (files and directories)


def norm_prefix(prefix: str | None) -> str:
    """``--prefix`` as a relative '/'-separated path without leading/trailing slashes ('' = root)."""
    if not prefix:
        return ""
    parts = [p for p in prefix.replace(os.sep, "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"--prefix {prefix!r} must not contain '..'")
    return "/".join(parts)


def vault_key(prefix: str, rel: str) -> str:
    """The safe vault path a local file at ``rel`` is stored under."""
    return safe_relpath(f"{prefix}/{rel}" if prefix else rel, "-")


def archive_key(archive: ArchiveLike) -> str:
    """The safe path an archive's description names (what :func:`vault_key` is compared with)."""
    return safe_relpath(decode_description(archive.description or "").path, archive.archive_id)


def _excluded(rel: str, name: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        target = rel if "/" in pat.strip("/") else name
        if fnmatch.fnmatchcase(target, pat.strip("/")):
            return True
    return False


def scan_local(root: Path, excludes: Iterable[str] = ()) -> LocalTree:
    """Every regular, non-empty file under ``root`` (see the module docstring for the rules)."""
    root = Path(root)
    try:
        st = root.stat()
    except OSError as exc:
        raise UsageError(f"{root}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{root} is not a directory")
    patterns = [p for p in excludes if p]
    tree = LocalTree(root=root)
    stack = [("", root)]
    while stack:
        rel_dir, path = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            tree.skipped.append((rel_dir or ".", f"cannot list: {exc.strerror or exc}"))
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if patterns and _excluded(rel, entry.name, patterns):
                tree.excluded.append(rel)
                continue
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError as exc:
                tree.skipped.append((rel, exc.strerror or str(exc)))
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append((rel, Path(entry.path)))
            elif stat.S_ISLNK(est.st_mode):
                tree.skipped.append((rel, "symbolic link (not followed)"))
            elif not stat.S_ISREG(est.st_mode):
                tree.skipped.append((rel, "not a regular file"))
            elif est.st_size == 0:
                tree.skipped.append((rel, "empty file (Glacier stores no empty archive)"))
            else:
                tree.files[rel] = LocalFile(rel, Path(entry.path), est.st_size, est.st_mtime)
    return tree


def under(key: str, prefix: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


def vault_tree(catalog: ArchiveSource, prefix: str) -> dict[str, list[ArchiveLike]]:
    """Visible archives whose safe path is under ``prefix``, by safe path, newest first.

    The display path's directory is the safe path's directory (variants only rename the last
    component), so the cheap display-path test filters before any description is decoded.
    """
    out: dict[str, list[ArchiveLike]] = {}
    head = prefix + "/" if prefix else ""
    for a in catalog.iter_archives():
        if head and not a.path.startswith(head):
            continue
        key = archive_key(a)
        if under(key, prefix):
            out.setdefault(key, []).append(a)
    for group in out.values():
        if len(group) > 1:  # newest first; ties: smallest id first, as the catalog names them
            group.sort(key=lambda a: a.archive_id)
            group.sort(key=lambda a: a.creation_date, reverse=True)
    return out


def same_stat(local: LocalFile, archive: ArchiveLike) -> bool:
    """Same size and the same whole-second mtime (descriptions keep whole seconds)."""
    return local.size == archive.size and int(local.mtime // 1) == int(archive.mtime // 1)


def hash_files(paths: Iterable[tuple[str, Path]], workers: int | None = None) -> dict[str, str | OSError]:
    """Tree hashes of many files on all cores: ``{name: hash}``, or the OSError reading it gave.

    One file per worker thread (hashlib releases the GIL), each hashed on one thread, so a
    tree of small files uses every core; a file over 64 MiB is split on all cores by itself.
    """
    from concurrent.futures import ThreadPoolExecutor

    from glacierfs.treehash import default_workers, tree_hash_file

    items = list(paths)
    n = workers or default_workers()

    def one(item: tuple[str, Path]) -> tuple[str, str | OSError]:
        name, path = item
        try:
            size = os.path.getsize(path)
            return name, tree_hash_file(path, workers=n if size > 64 << 20 else 1)
        except OSError as exc:
            return name, exc

    if len(items) <= 1:
        return dict(map(one, items))
    with ThreadPoolExecutor(max_workers=min(n, len(items)), thread_name_prefix="treehash") as pool:
        return dict(pool.map(one, items))


def strip_prefix(key: str, prefix: str) -> str:
    return key[len(prefix) + 1 :] if prefix else key
