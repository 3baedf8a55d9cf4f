"""Replacing an archive in the mount: the old archive goes only after the new one exists.

A file written over an archive (``open(O_TRUNC)``: ``cp``, ``>``; or a staged file renamed
onto it: ``rsync``, editors, ``sed -i``) is staged and uploaded like any new file. Its
:class:`~glacierfs.fs.stagedir.Manifest` carries ``replaces`` (the old archive ids), so the
pending delete is as durable as the staged bytes: it is written at the same commit point
(close(2), or the rename of a committed file). Once the upload made the new archive, the
manifest is rewritten with ``archived`` (the new id) *before* the bytes move into the cache;
then the old archives are deleted and the manifest removed.

==============================================  ==========================================
crash point                                     at the next mount
==============================================  ==========================================
before the new archive exists                   the staged file is uploaded again (or
                                                found by ``_find_completed``); the old
                                                archive is never deleted before that
new archive recorded, manifest not rewritten    found by path + size + tree hash (never one
                                                of the replaced ids): no second upload, then
                                                the deletes
manifest says ``archived``, deletes not done    :meth:`Replacer.finish` deletes what is left
                                                (a delete that took effect unanswered is
                                                NotFound then: done)
==============================================  ==========================================

The first and last rows are tested with a real ``kill -9`` of the mount (tests/test_replace.py:
a paced upload; the server's ``--hold`` keeping the DeleteArchive from taking effect, or letting
it take effect unanswered); the middle one in the core. Until the
deletes are done the manifest keeps them visible to ``glacierfs wait`` and ``status``
(:func:`~glacierfs.fs.stagedir.pending_replacements`).

Glacier charges early deletion for archives younger than 90 days: every delete of a
replaced archive (and every ``rm``) of such an archive logs a warning with its age.

Threading contract
------------------
No state of its own and no locks: :meth:`Replacer.finish` runs on the thread that made the
new archive (an ``upload-N`` worker) or on the one-shot ``replaced`` thread that finishes
what an earlier run left (started by ``WriteBack.start``). One staged file's manifest is
written by one of them only: the file left the pending table before ``finish`` runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from glacierfs.errors import GlacierFSError
from glacierfs.fs.stagedir import Manifest, StagingArea
from glacierfs.timeutil import parse_iso

log = logging.getLogger(__name__)

EARLY_DELETION_DAYS = 90


def early_deletion_note(archive: Any, now: float | None = None) -> str | None:
    """A warning when deleting ``archive`` (a catalog Archive) is billed as an early deletion."""
    created = parse_iso(getattr(archive, "creation_date", "") or "")
    if created is None:
        return None
    age = ((time.time() if now is None else now) - created) / 86400
    if age >= EARLY_DELETION_DAYS:
        return None
    return (f"archive {archive.archive_id} is {max(age, 0.0):.1f} days old: Glacier charges early deletion "
            f"(the storage of the remaining {EARLY_DELETION_DAYS - max(age, 0.0):.0f} of {EARLY_DELETION_DAYS} days)")


class Replacer:
    """Deletes the archives a new archive replaced, durably recorded in its staged manifest."""

    def __init__(self, area: StagingArea, catalog: Any, delete_archive: Callable[[str], None]) -> None:
        self.area = area
        self.catalog = catalog
        self._delete_archive = delete_archive

    def record(self, sid: str, manifest: Manifest, archive_id: str) -> None:
        """The new archive exists: say so in the manifest before anything else moves (OSError logged)."""
        try:
            self.area.write_manifest(sid, Manifest(manifest.path, manifest.mtime, manifest.generation, True,
                                                   False, manifest.replaces, archive_id))
        except OSError as exc:
            log.error("%s: could not record that archive %s replaces %s (%s): deleting them now; a crash "
                      "before that completes leaves them in the vault", manifest.path, archive_id,
                      ", ".join(manifest.replaces), exc)

    def finish(self, sid: str, path: str, archive_id: str, replaces: tuple[str, ...]) -> bool:
        """Delete the replaced archives (never ``archive_id`` itself), then drop the manifest.

        False when a delete failed: the manifest stays and the next mount tries again.
        """
        ok = True
        for old in replaces:
            if old == archive_id:
                continue
            try:
                archive = self.catalog.get(old)
                note = early_deletion_note(archive) if archive is not None else None
                self._delete_archive(old)
            except (GlacierFSError, OSError) as exc:
                ok = False
                log.error("%s: could not delete the replaced archive %s: %s (tried again at the next mount)",
                          path, old, exc)
                continue
            log.info("%s: deleted archive %s, replaced by archive %s", path, old, archive_id)
            if note:
                log.warning("%s: %s", path, note)
        if ok:
            try:
                self.area.remove(sid)
            except OSError as exc:
                log.warning("could not remove the manifest of %s: %s", path, exc)
        return ok

    def finish_recovered(self, left: dict[str, Manifest]) -> None:
        """At start (one-shot thread): the deletes an earlier run recorded and did not complete."""
        for sid, m in left.items():
            if m.archived is None:
                continue
            log.info("%s: archive %s exists; deleting the archive(s) it replaced, left by the last run",
                     m.path, m.archived)
            self.finish(sid, m.path, m.archived, m.replaces)
