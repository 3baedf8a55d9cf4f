"""``glacierfs check``: compare a local tree with a vault subtree by tree hash.

Each path is ``ok`` (the vault's current archive for the path has the local file's tree
hash), ``changed`` (it has another), ``missing`` (in the vault, not on disk) or ``new`` (on
disk, not in the vault). Local tree hashes are computed on all cores
(:func:`scan.hash_files`); the vault's come from the catalog (the inventory, or our uploads),
so nothing is retrieved. The "current" archive of a path is the newest one, the one the
mount and ``restore`` show under the plain name.

Threading contract: :func:`check_tree` runs in the caller's thread; :func:`scan.hash_files`
uses a private pool of hashing threads that share nothing but read-only inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from glacierfs.tree.scan import (
    ArchiveSource,
    hash_files,
    norm_prefix,
    scan_local,
    strip_prefix,
    vault_key,
    vault_tree,
)

log = logging.getLogger(__name__)

STATUSES = ("ok", "changed", "missing", "new")


@dataclass(frozen=True, slots=True)
class CheckEntry:
    path: str  # relative to DIR (and to the prefix in the vault)
    status: str  # ok | changed | missing | new
    local_tree_hash: str | None = None
    vault_tree_hash: str | None = None
    archive_id: str | None = None


@dataclass
class CheckReport:
    entries: list[CheckEntry]
    skipped: list[tuple[str, str]]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for e in self.entries:
            out[e.status] += 1
        return out

    @property
    def clean(self) -> bool:
        return all(e.status == "ok" for e in self.entries) and not self.skipped


def check_tree(catalog: ArchiveSource, root: Path, prefix: str | None = None,
               excludes: list[str] | None = None) -> CheckReport:
    prefix = norm_prefix(prefix)
    tree = scan_local(root, excludes or [])
    remote = vault_tree(catalog, prefix)
    local = {vault_key(prefix, rel): lf for rel, lf in tree.files.items()}
    both = [k for k in local if k in remote]
    hashes = hash_files((k, local[k].path) for k in both)
    skipped = list(tree.skipped)
    entries: list[CheckEntry] = []
    for key in sorted(set(local) | set(remote)):
        rel = strip_prefix(key, prefix)
        if key not in remote:
            entries.append(CheckEntry(rel, "new"))
            continue
        current = remote[key][0]
        if key not in local:
            entries.append(CheckEntry(rel, "missing", None, current.tree_hash, current.archive_id))
            continue
        digest = hashes[key]
        if isinstance(digest, OSError):
            skipped.append((rel, f"cannot read: {digest.strerror or digest}"))
            continue
        status = "ok" if digest == current.tree_hash else "changed"
        entries.append(CheckEntry(rel, status, digest, current.tree_hash, current.archive_id))
    return CheckReport(entries, skipped)
