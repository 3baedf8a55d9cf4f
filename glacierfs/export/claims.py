"""Claims: two exporters of one archive (the same shard run twice, on two machines) never meet.

There is no coordinator, so S3 itself is the lock: before an exporter starts a retrieval job
for an archive it creates ``PREFIX/_glacierfs-claims/<archive id>`` with ``PutObject
If-None-Match: *`` (S3's conditional write: exactly one of several concurrent creators
succeeds, the others get 412). The claim's body (JSON) names its ``owner``, the ``run`` (a
random id per process), ``host``, ``pid``, ``since`` (when the owner claimed it) and
``renewed`` (when the holder last wrote it). The claim is deleted once the object is verified
in S3; whoever claims after that finds the object (the claimer HEADs the key again after
claiming) and skips it.

Owners (:func:`claim_owner`). ``--claim-owner NAME`` (or ``GLACIERFS_CLAIM_OWNER``); under
``--shard auto/N`` in AWS Batch, ``aws-batch:<AWS_BATCH_JOB_ID>`` (an array child keeps its job
id, ``<parent>:<index>``, across attempts); else the random id of the exporter's state store
(:meth:`ExportState.owner`), so only a re-run from the same cache dir is the same owner. A claim
of our owner written by another run is an earlier run of ours that died: we continue it,
rewriting it with our run id (a compare-and-swap on its ETag, ``If-Match``). Because that run's
state may be gone, the caller re-checks what it would have known: the object (HEAD), the
multipart uploads on the key (ours to abort: only the claim holder touches the key) and the
vault's retrieval jobs (one ListJobs per run: a live job is reused, never a second one started).
One owner name must not run twice at once (AWS Batch runs the attempts of a job one after
another); if it does, the conditional final writes still keep one object.

Take-over (``--take-over-claims-older-than``): a claim of another owner that its holder has not
written for longer than the given time is replaced the same way (``If-Match`` on the ETag we
read, so of two exporters taking it over at once one wins), read back, and reported in one
warning line naming the old holder. A live holder rewrites its claims every
:data:`CLAIM_RENEW` (``renewed``), so a take-over time of at least :data:`MIN_TAKE_OVER` never
takes a live exporter's claim; a holder that finds its claim taken stops waiting for that
archive. If an endpoint ignored ``If-Match``, two exporters taking over at once could both write
the claim; the read-back leaves it to the last writer, and the final CompleteMultipartUpload /
PutObject are conditional (``If-None-Match: *``), so still only one object is ever written.
A claim is given up on failure only while it is still ours (DeleteObject ``If-Match``).

Threading: :class:`Claims` methods run in the exporter's check, transfer and scheduler threads
at once (boto3 clients are thread-safe). ``_etags`` / ``_since`` (the ETag and ``since`` of the
claims this run wrote) are guarded by ``_lock``; no S3 call is made while it is held.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from glacierfs.errors import ServiceError, UsageError
from glacierfs.export.plan import CLAIMS
from glacierfs.export.s3 import ObjectStore

log = logging.getLogger(__name__)

CLAIM_RENEW = 15 * 60.0  # a live holder rewrites its claims this often
MIN_TAKE_OVER = 4 * CLAIM_RENEW  # --take-over-claims-older-than: at least this (1 h)
OWNER_ENV = "GLACIERFS_CLAIM_OWNER"
MAX_OWNER = 200


def claim_owner(explicit: str | None, shard: str | None, store_owner: str,
                environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(owner, a warning or None): ``--claim-owner``, else the batch engine's job id, else the store's id."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    name = explicit if explicit is not None else env.get(OWNER_ENV, "").strip() or None
    if name is not None:
        if not name or len(name) > MAX_OWNER or not name.isprintable():
            raise UsageError(f"--claim-owner {name!r}: expected 1 to {MAX_OWNER} printable characters")
        return name, None
    auto = bool(shard) and str(shard).startswith("auto/")
    job = env.get("AWS_BATCH_JOB_ID", "").strip()
    if auto and job:
        return f"aws-batch:{job}", None
    if auto and env.get("JOB_COMPLETION_INDEX", "").strip():
        return store_owner, (
            "the claims of this run belong to its cache dir: a pod that starts again with a new cache dir "
            "will find them busy; pass --claim-owner (e.g. the job name and $JOB_COMPLETION_INDEX, see README)"
        )
    return store_owner, None


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim, from its body, and the claim's ETag."""

    owner: str
    host: str
    pid: int
    since: float
    run: str = ""
    renewed: float = 0.0
    etag: str | None = None

    @property
    def written(self) -> float:
        """When its holder last wrote it (a take-over compares this)."""
        return max(self.since, self.renewed)

    def describe(self) -> str:
        return (f"owner {self.owner}, process {self.pid} on {self.host}, since {_when(self.since)}, "
                f"last renewed {_when(self.written)}")


@dataclass(frozen=True)
class Acquired:
    """The claim is ours now; ``previous``: the claim we continued or took over (None: we created it)."""

    previous: Holder | None = None
    taken_over: bool = False


class Claims:
    """Claims of one destination (``bucket``, ``prefix`` '' or ending with '/') for one owner."""

    def __init__(self, s3: ObjectStore, bucket: str, prefix: str, owner: str, *,
                 take_over_after: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix
        self.owner = owner
        self.take_over_after = take_over_after
        self.clock = clock
        self.run = secrets.token_hex(8)
        self._lock = threading.Lock()
        self._etags: dict[str, str] = {}
        self._since: dict[str, float] = {}

    def key(self, archive_id: str) -> str:
        return f"{self.prefix}{CLAIMS}/{archive_id}"

    def where(self, archive_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(archive_id)}"

    def existing(self) -> set[str]:
        """The archive ids that have a claim now (one ListObjectsV2 page per 1,000 claims)."""
        base = f"{self.prefix}{CLAIMS}/"
        return {k[len(base):] for k in self.s3.list_keys(self.bucket, base) if "/" not in k[len(base):]}

    # ------------------------------------------------------------------ taking

    def _body(self, since: float | None = None) -> bytes:
        now = self.clock()
        return json.dumps({"owner": self.owner, "run": self.run, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": since or now, "renewed": now}).encode()

    def _read(self, archive_id: str) -> Holder | None:
        found = self.s3.read_small(self.bucket, self.key(archive_id))
        return None if found is None else _parse(found[0], found[1])

    def _remember(self, archive_id: str, etag: str, since: float) -> None:
        with self._lock:
            self._etags[archive_id] = etag
            self._since[archive_id] = since

    def acquire(self, archive_id: str) -> Acquired | Holder:
        """Acquired if the claim is ours now (created, continued or taken over); else its holder (busy)."""
        key = self.key(archive_id)
        for _ in range(4):
            now = self.clock()
            etag = self.s3.create_small(self.bucket, key, self._body(now))
            if etag is not None:
                self._remember(archive_id, etag, now)
                return Acquired()
            found = self._read(archive_id)
            if found is None:
                continue  # released between our PutObject and GetObject: try again
            if found.owner == self.owner and found.run == self.run:
                self._remember(archive_id, found.etag or "", found.since)
                return Acquired()
            mine = found.owner == self.owner
            stale = self.take_over_after is not None and now - found.written > self.take_over_after
            if not mine and not stale:
                return found
            since = found.since if mine and found.since else now
            got = self._swap(archive_id, found, since)
            if got is None:
                continue  # it changed under us: look again
            if isinstance(got, Holder):
                return got  # another exporter took it over at the same moment, and won
            if mine:
                log.info("archive %s: continuing the claim an earlier run of this owner left (%s)",
                         archive_id, found.describe())
            else:
                log.warning("archive %s: took over the claim %s of %s", archive_id, self.where(archive_id),
                            found.describe())
            return Acquired(found, taken_over=not mine)
        raise ServiceError(f"{self.where(archive_id)} kept changing while we tried to claim it")

    def _swap(self, archive_id: str, found: Holder, since: float) -> Acquired | Holder | None:
        """Replace ``found`` with our claim: Acquired, the winner if another exporter's write won, None if it changed."""
        key = self.key(archive_id)
        if found.etag:
            etag = self.s3.replace_small(self.bucket, key, self._body(since), found.etag)
            if etag is None:
                return None
        else:  # no ETag to compare: delete it and create ours (a loser of that race sees the winner's claim)
            self.s3.delete_object(self.bucket, key)
            etag = self.s3.create_small(self.bucket, key, self._body(since))
            if etag is None:
                return None
        back = self._read(archive_id)  # an endpoint that ignores If-Match: the last writer holds it
        if back is None:
            return None
        if back.run != self.run:
            return back
        self._remember(archive_id, back.etag or etag, since)
        return Acquired()

    # ------------------------------------------------------------------ keeping

    def renew(self, archive_id: str) -> Holder | None:
        """Rewrite our claim (``renewed`` = now); the holder if another exporter took it over, else None."""
        with self._lock:
            etag, since = self._etags.get(archive_id), self._since.get(archive_id)
        if etag is None:
            return None  # released meanwhile
        new = self.s3.replace_small(self.bucket, self.key(archive_id), self._body(since), etag) if etag else None
        if new is None:
            found = self._read(archive_id)
            if found is None:
                return None  # released by our transfer meanwhile (or removed by hand)
            if found.run != self.run:
                with self._lock:
                    self._etags.pop(archive_id, None)
                log.warning("archive %s: its claim %s was taken over (%s)", archive_id, self.where(archive_id),
                            found.describe())
                return found
            new = found.etag or ""
        with self._lock:
            if archive_id in self._etags:
                self._etags[archive_id] = new
        return None

    # ------------------------------------------------------------------ letting go

    def release(self, archive_id: str) -> None:
        """Delete the claim once the object is verified (whoever holds it now: the object is there)."""
        with self._lock:
            self._etags.pop(archive_id, None)
            self._since.pop(archive_id, None)
        self.s3.delete_object(self.bucket, self.key(archive_id))

    def give_up(self, archive_id: str) -> None:
        """Delete our claim after a failure, only while it is ours (another exporter may try the archive)."""
        with self._lock:
            etag = self._etags.pop(archive_id, None)
            self._since.pop(archive_id, None)
        if etag and self.s3.delete_if(self.bucket, self.key(archive_id), etag):
            return
        found = self._read(archive_id)  # our renewal may have moved the ETag, or we never knew it
        if found is None:
            return
        if found.run == self.run:
            if found.etag:
                self.s3.delete_if(self.bucket, self.key(archive_id), found.etag)
            else:  # an endpoint that sends no ETag: nothing to compare, and it is ours
                self.s3.delete_object(self.bucket, self.key(archive_id))
        else:
            log.info("archive %s: its claim is held by %s now; left", archive_id, found.describe())

    def release_if_ours(self, archive_id: str) -> None:
        """Delete a claim of our owner that an earlier run left after the object was written."""
        found = self._read(archive_id)
        if found is not None and found.owner == self.owner:
            log.info("archive %s: releasing the claim an earlier run left", archive_id)
            self.release(archive_id)


def _parse(body: bytes, etag: str | None) -> Holder:
    try:
        d = json.loads(body)
        return Holder(str(d["owner"]), str(d.get("host") or "?"), int(d.get("pid") or 0),
                      float(d.get("since") or 0), str(d.get("run") or ""), float(d.get("renewed") or 0), etag)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Holder("?", "?", 0, 0.0, etag=etag)  # not ours, whatever wrote it
