"""Open uploads on the service that no local state of a file names: which ones are provably its.

The local state of a pending upload can be lost (cache dir deleted, catalog rebuilt) while the
service keeps the upload and its parts until it expires. ``glacierfs abort FILE`` then looks on
the service. A description (archive path and mtime) does not prove anything: another file with
the same path and mtime (another directory, another machine) gets the same one. The project's
rule (issue 8) is that an upload is ours only when

* its id is in a saved state of ours (then the engine aborts it by that state), or
* it holds at least one part and *every* part it holds has the length and tree hash of that
  range of the local file, at the upload's own part size.

An upload another local state names belongs to that state (another key: a sync, a mount) and
is never taken for this file. Everything else is reported, never aborted: the user can abort
one by its id explicitly (``glacierfs abort --upload-id ID``).

Threading contract: :func:`open_uploads_of` runs on the caller's thread; the part verification
runs its own short-lived pool of hashing threads (:func:`~glacierfs.upload.parts.verify_server_parts`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from glacierfs.client import Glacier
from glacierfs.errors import NotFoundError
from glacierfs.progress import NULL_PROGRESS, Progress
from glacierfs.treehash import is_valid_part_size
from glacierfs.upload.parts import PartJob, verify_server_parts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenUpload:
    """An open upload with the file's description, and whether it is provably the file's."""

    upload_id: str
    ours: bool
    why: str  # why it is (or is not) provably the file's, for the one line the user reads


def open_uploads_of(
    glacier: Glacier,
    vault: str,
    source: Path,
    description: str,
    owned_elsewhere: set[str],
    progress: Progress = NULL_PROGRESS,
) -> list[OpenUpload]:
    """The service's open uploads whose description is ``description``, each judged against ``source``.

    ``owned_elsewhere``: upload ids other local states name (never this file's). Uploads gone
    meanwhile (aborted, expired) are left out.
    """
    found: list[OpenUpload] = []
    for up in glacier.list_uploads(vault):
        upload_id = str(up.get("MultipartUploadId") or "")
        if not upload_id or (up.get("ArchiveDescription") or "") != description:
            continue
        if upload_id in owned_elsewhere:
            found.append(OpenUpload(upload_id, False, "another pending upload on this machine owns it"))
            continue
        try:
            judged = _judge(glacier, vault, source, upload_id, progress)
        except NotFoundError:
            continue
        found.append(judged)
    return found


def _judge(glacier: Glacier, vault: str, source: Path, upload_id: str, progress: Progress) -> OpenUpload:
    listing = glacier.list_parts(vault, upload_id)
    parts = listing.get("Parts") or []
    if not parts:
        return OpenUpload(upload_id, False, "it holds no parts, so nothing shows whose it is")
    part_size = int(listing.get("PartSizeInBytes") or 0)
    if not is_valid_part_size(part_size):
        return OpenUpload(upload_id, False, f"its part size {part_size} is not a valid one")
    try:
        fd = os.open(source, os.O_RDONLY)
    except OSError as exc:
        return OpenUpload(upload_id, False, f"{source} cannot be read to compare ({exc.strerror or exc})")
    try:
        job = PartJob(f"abort:{upload_id}", source, fd, os.fstat(fd).st_size, part_size)
        done = verify_server_parts(job, parts, progress, strict=True)
    finally:
        os.close(fd)
    if done:
        return OpenUpload(upload_id, True, f"its {len(done)} part(s) are this file's bytes")
    return OpenUpload(upload_id, False, "its parts are not this file's bytes")
