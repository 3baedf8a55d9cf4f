"""The ``staging/`` directory of a vault: staged data files and their manifests, by staging id.

``<sid>.data`` holds the bytes written into the mount; ``<sid>.json`` (a :class:`Manifest`) is
the durable record that they are complete (see the commit point in :mod:`glacierfs.fs.staging`).
No threads; callers serialize writes of one file's manifest (``Pending.io``), and temporary
names are unique, so concurrent writers never collide.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacierfs.fsutil import fsync_dir, unique_tmp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    """The durable record that a staged file is complete (``staging/<sid>.json``)."""

    path: str
    mtime: float | None = None
    generation: int = 0
    started: bool = False
    failed: bool = False
    # archives this file replaces: deleted only after it is an archive (see glacierfs.fs.replace)
    replaces: tuple[str, ...] = ()
    # the new archive's id once it exists: the deletes of ``replaces`` are what is left to do
    archived: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        mtime, path = data.get("mtime"), data.get("path")
        replaces, archived = data.get("replaces") or [], data.get("archived")
        if not isinstance(replaces, list) or not all(isinstance(r, str) and r for r in replaces):
            raise ValueError("replaces is not a list of archive ids")
        return cls(
            path=path if isinstance(path, str) else "",
            mtime=float(mtime) if isinstance(mtime, int | float) else None,
            generation=int(data.get("generation") or 0),
            started=bool(data.get("started")),
            failed=bool(data.get("failed")),
            replaces=tuple(replaces),
            archived=archived if isinstance(archived, str) and archived else None,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "mtime": self.mtime, "generation": self.generation,
                                "started": self.started, "failed": self.failed}
        if self.replaces:
            data["replaces"] = list(self.replaces)
        if self.archived:
            data["archived"] = self.archived
        return data


def pending_replacements(state_dir: Path) -> list[Manifest]:
    """The manifests under ``state_dir/staging`` that still replace archives (read only, no lock).

    For ``glacierfs wait``/``status`` in another process than the mount: a manifest with
    ``replaces`` means old archives are still to be deleted (before or after the new archive
    exists); an unreadable or vanishing manifest is skipped (the mount owns the directory).
    """
    found: list[Manifest] = []
    try:
        entries = list(os.scandir(Path(state_dir) / "staging"))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.endswith(".json"):
            continue
        try:
            m = Manifest.from_json(json.loads(Path(entry.path).read_text()))
        except (OSError, ValueError):
            continue
        if m.replaces:
            found.append(m)
    return found


class StagingArea:
    """The ``staging/`` directory: data files and manifests by staging id."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "staging"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lost = Path(root) / "lost+found"

    def new(self) -> tuple[str, Path]:
        """A fresh, empty staging file (0600) and its id."""
        sid = uuid.uuid4().hex
        path = self.data(sid)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.close(fd)
        return sid, path

    def data(self, sid: str) -> Path:
        return self.dir / f"{sid}.data"

    def manifest(self, sid: str) -> Path:
        return self.dir / f"{sid}.json"

    def write_manifest(self, sid: str, manifest: Manifest) -> None:
        """Durably record that staging file ``sid`` is complete (its bytes must be fsynced already).

        Unique temporary name, fsync, rename, fsync of the directory: after a crash the manifest
        is either absent or complete. Raises OSError (ENOSPC, EIO) when that cannot be done.
        """
        final = self.manifest(sid)
        tmp = unique_tmp(final)
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            try:
                data = json.dumps(manifest.to_json(), sort_keys=True).encode()
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write of the manifest")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(self.dir)

    def remove_manifest(self, sid: str) -> None:
        try:
            os.unlink(self.manifest(sid))
        except FileNotFoundError:
            return
        fsync_dir(self.dir)

    def remove(self, sid: str) -> None:
        """Forget a staging file and its manifest (upload aborted, or file discarded)."""
        for p in (self.manifest(sid), self.data(sid)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        try:
            fsync_dir(self.dir)
        except OSError as exc:
            log.debug("fsync of %s: %s", self.dir, exc)

    def bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".data"):
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass
        return total

    def _keep_unreadable(self, sid: str) -> Path:
        """Move a staged file whose manifest is unreadable (and the manifest) to ``lost+found/``."""
        self.lost.mkdir(exist_ok=True, mode=0o700)
        target = self.lost / f"{sid}.data"
        for suffix in (".data", ".json"):
            try:
                os.replace(self.dir / f"{sid}{suffix}", self.lost / f"{sid}{suffix}")
            except OSError as exc:
                if suffix == ".data":
                    log.warning("staging: could not move %s.data to %s (%s)", sid, self.lost, exc)
                    return self.data(sid)
        fsync_dir(self.lost)
        return target

    def recover(self) -> dict[str, Manifest]:
        """At mount start: manifests of complete staged files (and of replacements whose new archive
        exists but whose old ones may not be deleted yet: ``archived`` set, data maybe gone);
        staging files never committed are deleted."""
        manifests: dict[str, Manifest] = {}
        kept: set[str] = set()
        names = {e.name for e in os.scandir(self.dir)}
        for name in sorted(names):
            if name.endswith(".tmp"):
                os.unlink(self.dir / name)
                continue
            if not name.endswith(".json"):
                continue
            sid = name[: -len(".json")]
            try:
                m = Manifest.from_json(json.loads((self.dir / name).read_text()))
            except (OSError, ValueError) as exc:
                if f"{sid}.data" not in names:
                    log.warning("staging: unreadable manifest %s without data: dropped", name)
                    os.unlink(self.dir / name)
                    continue
                # The file was closed (it has a manifest): its bytes may be the only copy. Keep them.
                kept.add(sid)
                where = self._keep_unreadable(sid)
                log.error(
                    "staging: unreadable manifest %s (%s): the file's bytes are kept in %s, not uploaded; "
                    "copy them back into the mount to upload them",
                    name, exc, where,
                )
                continue
            if f"{sid}.data" not in names and m.archived is None:
                log.warning("staging: manifest %s without data: dropped", name)
                os.unlink(self.dir / name)
                continue
            manifests[sid] = m  # with ``archived``: only the deletes of replaced archives are left
        for name in names:
            if name.endswith(".data") and name[: -len(".data")] not in manifests.keys() | kept:
                log.warning("staging: discarding %s: its copy was cut off before close(2) returned", name)
                try:
                    os.unlink(self.dir / name)
                except OSError:
                    pass
        return manifests
