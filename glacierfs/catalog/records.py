"""The catalog's typed records: archives as shown, import statistics, job records.

Plain data, no threads, no I/O. A :class:`JobRecord` round-trips through JSON
(:meth:`JobRecord.to_dict` / :meth:`JobRecord.from_dict`); upload states are
:class:`glacierfs.upload.state.UploadState` (owned by the upload engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["inventory", "upload"]


@dataclass(slots=True)
class Archive:
    """An archive as the catalog shows it. ``path`` is safe and unique; ``mtime`` is epoch seconds."""

    archive_id: str
    path: str
    size: int
    creation_date: str
    mtime: float
    tree_hash: str
    description: str
    source: str  # "inventory" | "upload"


@dataclass(slots=True)
class ImportStats:
    """What an inventory import changed (see the reconciliation rules in ``reconcile.py``)."""

    inventory_date: str | None
    total: int = 0  # archives the inventory lists
    added: int = 0  # listed and new to the catalog
    confirmed: int = 0  # our uploads, now listed
    kept_uploads: int = 0  # our uploads newer than the inventory, still shown
    removed: int = 0  # shown before, omitted by the inventory: deleted elsewhere
    still_deleted: int = 0  # deleted by us, still listed: kept hidden
    forgotten: int = 0  # deletions the inventory confirmed
    ignored: bool = False  # the inventory was older than the catalog's
    seconds: float = 0.0
    previous_date: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access for callers that treat stats as a mapping."""
        return getattr(self, key, default)
