"""The durable state of one pending upload (stored in the catalog as JSON by ``put_upload``).

Plain data: no threads, no I/O. :meth:`UploadState.from_dict` is the one place that decides
whether a stored state is usable; anything else raises :class:`UnreadableState` (the engine
drops it with a warning, aborting the upload id it names: that id was ours).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from glacierfs.errors import StateError
from glacierfs.treehash import is_valid_part_size

Status = Literal["initiating", "uploading", "completing", "sending"]
STATUSES: tuple[Status, ...] = ("initiating", "uploading", "completing", "sending")


class UnreadableState(StateError):
    """A stored upload state that cannot be used; ``upload_id`` is the id it names, if any."""

    def __init__(self, key: str, upload_id: str | None) -> None:
        super().__init__(f"the saved upload state of {key} is unreadable")
        self.upload_id = upload_id


@dataclass(frozen=True, slots=True)
class Identity:
    """What must not change while a file is uploaded (ctime too: a rewrite that restores mtime moves it)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)

    def to_dict(self) -> dict[str, int]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns, "ino": self.ino, "dev": self.dev}

    @classmethod
    def from_dict(cls, data: Any) -> Identity:
        if not isinstance(data, dict):
            raise ValueError("identity is not an object")
        # states written before ctime was part of the identity never match: the upload restarts
        return cls(*(_int(data.get(k, -1 if k == "ctime_ns" else None)) for k in ("size", "mtime_ns", "ctime_ns", "ino", "dev")))


@dataclass(slots=True)
class UploadState:
    """One pending upload: what is uploaded as what, and how far it got.

    ``parts`` maps part index -> tree hash of the parts sent (advisory: ListParts is the
    authority on resume). ``status``: ``initiating`` (Initiate may have happened, id unknown),
    ``uploading`` (``upload_id`` known), ``completing`` (``tree_hash`` fixed, Complete may have
    happened), ``sending`` (single-request UploadArchive in flight).
    """

    source: str
    archive_path: str
    description: str
    mtime: float
    identity: Identity
    size: int
    part_size: int
    upload_id: str | None = None
    parts: dict[int, str] = field(default_factory=dict)
    bytes_done: int = 0
    tree_hash: str | None = None
    status: Status = "initiating"
    created: float = 0.0
    updated: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (part indexes as strings, as every version wrote them)."""
        return {
            "source": self.source,
            "archive_path": self.archive_path,
            "description": self.description,
            "mtime": self.mtime,
            "identity": self.identity.to_dict(),
            "size": self.size,
            "part_size": self.part_size,
            "upload_id": self.upload_id,
            "parts": {str(i): h for i, h in sorted(self.parts.items())},
            "bytes_done": self.bytes_done,
            "tree_hash": self.tree_hash,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_dict(cls, data: Any, key: str = "upload") -> UploadState:
        """Parse a stored state; UnreadableState when it lacks what resuming needs."""
        upload_id = data.get("upload_id") if isinstance(data, dict) else None
        upload_id = upload_id if isinstance(upload_id, str) and upload_id else None
        try:
            if not isinstance(data, dict):
                raise ValueError("not an object")
            status = data["status"]
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}")
            parts = data.get("parts") or {}
            if not isinstance(parts, dict):
                raise ValueError("parts is not an object")
            size, part_size = _int(data["size"]), _int(data["part_size"])
            if size <= 0 or not is_valid_part_size(part_size):
                raise ValueError("bad size or part size")
            tree = data.get("tree_hash")
            return cls(
                source=_str(data.get("source", "")),
                archive_path=_str(data["archive_path"]),
                description=_str(data["description"]),
                mtime=_float(data["mtime"]),
                identity=Identity.from_dict(data["identity"]),
                size=size,
                part_size=part_size,
                upload_id=upload_id,
                parts={_int(i): _str(h) for i, h in parts.items()},
                bytes_done=_int(data.get("bytes_done", 0)),
                tree_hash=_str(tree) if tree else None,
                status=cast(Status, status),
                created=_float(data.get("created", 0.0)),
                updated=_float(data.get("updated", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise UnreadableState(key, upload_id) from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"not an integer: {value!r}")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value
