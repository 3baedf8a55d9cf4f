"""Claims: two exporters of one archive (the same shard run twice, on two machines) never meet.

There is no coordinator, so S3 itself is the lock: before an exporter starts a retrieval job
for an archive it creates ``PREFIX/_glacierfs-claims/<archive id>`` with ``PutObject
If-None-Match: *`` (S3's conditional write: exactly one of several concurrent creators
succeeds, the others get 412). The claim's body names its owner: the random id of the
exporter's state store (:meth:`ExportState.owner`), so a re-run from the same cache dir after
a kill recognizes its own claim and continues. A claim held by another owner makes this run
skip the archive (reported, exit status 8: run again later). The claim is deleted once the
object is verified in S3; whoever claims after that finds the object (the claimer HEADs the
key again after claiming) and skips it.

Because only the claim holder touches a key, the holder may abort any multipart upload it
finds on that key (left by its own killed run, never another live exporter's), and the final
CompleteMultipartUpload / PutObject are conditional too (``If-None-Match: *``), so even a
stale claim that was removed by hand cannot make a second object replace the first.

A claim left by a machine that will never come back stays until it is deleted
(``aws s3 rm s3://BUCKET/PREFIX/_glacierfs-claims/<archive id>``); the skip message names it.

Threading: :class:`Claims` holds no mutable state; its methods run in the exporter's check
and transfer threads at once (boto3 clients are thread-safe).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from glacierfs.errors import ServiceError
from glacierfs.export.plan import CLAIMS
from glacierfs.export.s3 import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, from its body (for the skip message)."""

    owner: str
    host: str
    pid: int
    since: float


class Claims:
    """Claims of one destination (``bucket``, ``prefix`` '' or ending with '/') for one owner."""

    def __init__(self, s3: ObjectStore, bucket: str, prefix: str, owner: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix
        self.owner = owner

    def key(self, archive_id: str) -> str:
        return f"{self.prefix}{CLAIMS}/{archive_id}"

    def where(self, archive_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(archive_id)}"

    def acquire(self, archive_id: str) -> Holder | None:
        """None if the claim is ours now (created, or ours from an earlier run); else its holder."""
        body = json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": time.time()}).encode()
        key = self.key(archive_id)
        for _ in range(3):
            if self.s3.create_small(self.bucket, key, body):
                return None
            found = self.s3.read_small(self.bucket, key)
            if found is None:
                continue  # released between our PutObject and GetObject: try again
            holder = _parse(found)
            if holder.owner == self.owner:
                return None
            return holder
        raise ServiceError(f"{self.where(archive_id)} was created and deleted three times while we read it")

    def release(self, archive_id: str) -> None:
        """Delete our claim (once the object is verified); deleting a missing claim is fine."""
        self.s3.delete_object(self.bucket, self.key(archive_id))

    def release_if_ours(self, archive_id: str) -> None:
        """Delete the claim only if it is ours: one a run killed after the object was written left.

        Safe against races: only a claim's owner deletes it, so a claim that is ours when read
        stays ours until we delete it.
        """
        found = self.s3.read_small(self.bucket, self.key(archive_id))
        if found is not None and _parse(found).owner == self.owner:
            log.info("archive %s: releasing the claim an earlier run left", archive_id)
            self.release(archive_id)


def _parse(body: bytes) -> Holder:
    try:
        d = json.loads(body)
        return Holder(str(d["owner"]), str(d.get("host") or "?"), int(d.get("pid") or 0), float(d.get("since") or 0))
    except (ValueError, KeyError, TypeError):
        return Holder("?", "?", 0, 0.0)  # not ours, whatever wrote it
