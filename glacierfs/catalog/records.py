"""The catalog's typed records: archives as shown, import statistics, job records.

Plain data, no threads, no I/O. A :class:`JobRecord` round-trips through JSON
(:meth:`JobRecord.to_dict` / :meth:`JobRecord.from_dict`); upload states are
:class:`glacierfs.upload.state.UploadState` (owned by the upload engine).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from glacierfs.errors import UsageError

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


@dataclass(slots=True)
class JobRecord:
    """What the catalog remembers of a Glacier job (jobs.py owns the content).

    Recorded the moment InitiateJob returns, so a re-run reattaches instead of starting (and
    paying for) a second job. ``created``/``completed`` are the service's ISO dates,
    ``recorded_at`` this machine's epoch seconds; ``forced``/``imported`` are for inventory jobs.
    """

    job_id: str
    kind: str  # "inventory" | "retrieval"
    archive_id: str | None = None
    tier: str | None = None
    status: str = "InProgress"  # the service's StatusCode
    created: str | None = None
    completed: str | None = None
    size: int | None = None
    recorded_at: float | None = None
    forced: bool = False
    imported: bool = False
    vault: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        """A record from its JSON form (or a job dict with ``job_id``/``JobId``); unknown keys are dropped."""
        job_id = data.get("job_id") or data.get("JobId")
        if not isinstance(job_id, str) or not job_id:
            raise UsageError("a job record needs a job_id")
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names and v is not None}
        fields["job_id"] = job_id
        fields.setdefault("kind", "")
        return cls(**fields)
