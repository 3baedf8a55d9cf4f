"""``glacierfs import-journal``: an mt-aws-glacier journal into the catalog, no inventory job needed.

Format (mt-aws-glacier's own reader; see README "mt-aws-glacier journals"): one record per
line, UTF-8. Versions ``A``, ``B``, ``C`` are TAB separated::

    B<TAB>epoch<TAB>CREATED<TAB>archive id<TAB>size<TAB>mtime|NONE<TAB>tree hash<TAB>relative/filename
    B<TAB>epoch<TAB>DELETED<TAB>archive id<TAB>relative/filename
    B<TAB>epoch<TAB>RETRIEVE_JOB<TAB>archive id<TAB>job id

(version ``A`` has no ``NONE``; a CREATED whose filename is its archive id means "no mtime"),
version ``0`` is space separated (``epoch CREATED id size treehash filename``, ``epoch DELETED id
filename``, ``epoch RETRIEVE_JOB id``). The filename is the last field and may hold spaces.
Versions after ``C`` are refused as "from a future version", like mt-aws-glacier does.

Rules: a later DELETED cancels an earlier CREATED of the same archive; several CREATED records
for one filename are several archives (the catalog shows the newest under the plain name).
RETRIEVE_JOB records are counted and ignored (live jobs are found with ListJobs). Empty lines
are ignored. Any other line is an error naming its line number, and nothing is imported,
unless ``skip_broken`` (each skipped line is logged).

Into the catalog: each live archive is recorded like one of our uploads (visible at once, with
the path and mtime of the journal and the mt2 description mt-aws-glacier gave it), created at
the record's time. So the catalog's reconciliation treats it as usual: the next inventory
confirms the archives it lists and drops the ones it omits (they were created before it, so
they were deleted elsewhere). A DELETED archive is hidden (the deletion time is the record's)
so an older inventory cannot bring it back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from glacierfs.errors import UsageError

log = logging.getLogger(__name__)

_EPOCH = re.compile(r"[0-9]{1,20}")
_MTIME = re.compile(r"[+-]?[0-9]{1,20}")
_HASH = re.compile(r"[0-9a-fA-F]{64}")
_ID = re.compile(r"[A-Za-z0-9_-]+")


class JournalCatalog(Protocol):
    def add_uploaded(self, archive: Any = None, **fields: Any) -> Any: ...
    def mark_deleted(self, archive_id: str, when: float | None = None) -> None: ...
    def get(self, archive_id: str, include_deleted: bool = False) -> Any: ...
    @property
    def inventory_date(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Created:
    line: int
    time: int
    archive_id: str
    size: int
    mtime: int | None
    tree_hash: str | None  # None: version 0 with a malformed hash is refused, so only when unknown
    filename: str


@dataclass
class Journal:
    created: dict[str, Created] = field(default_factory=dict)  # live archives by id, journal order
    deleted: dict[str, int] = field(default_factory=dict)  # archive id -> deletion epoch
    retrieve_jobs: int = 0
    lines: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


class BrokenLine(ValueError):
    pass


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BrokenLine(what)


def parse_line(text: str, number: int) -> tuple[str, Any]:
    """One record: ("created", Created) | ("deleted", (id, epoch)) | ("retrieve", id). BrokenLine if not."""
    if "\t" in text:
        version = text.split("\t", 1)[0]
        if len(version) == 1 and version.isalpha() and version > "C":
            raise BrokenLine(f"version {version!r} is from a future version of mt-aws-glacier")
        _check(version in ("A", "B", "C"), f"unknown format (version {version[:10]!r})")
        fields = text.split("\t")
        _check(len(fields) >= 4, "too few fields")
        _, epoch, kind = fields[:3]
        _check(bool(_EPOCH.fullmatch(epoch)), f"bad record time {epoch[:25]!r}")
        if kind == "CREATED":
            parts = text.split("\t", 7)
            _check(len(parts) == 8, "a CREATED record has 8 fields")
            _, _, _, aid, size, mtime, tree, name = parts
            _check(bool(_ID.fullmatch(aid)), "bad archive id")
            _check(size.isdigit() and size.isascii(), f"bad size {size[:25]!r}")
            _check(bool(_HASH.fullmatch(tree)), "bad tree hash")
            _check(bool(name), "empty filename")
            if mtime == "NONE":
                _check(version != "A", "NONE is not allowed in version A")
                mt: int | None = None
            else:
                _check(bool(_MTIME.fullmatch(mtime)), f"bad mtime {mtime[:25]!r}")
                mt = int(mtime)
            if version == "A" and name == aid:
                mt = None
            return "created", Created(number, int(epoch), aid, int(size), mt, tree.lower(), name)
        if kind == "DELETED":
            parts = text.split("\t", 4)
            _check(len(parts) == 5 and bool(_ID.fullmatch(parts[3])) and bool(parts[4]), "bad DELETED record")
            return "deleted", (parts[3], int(epoch))
        if kind == "RETRIEVE_JOB":
            _check(len(fields) == 5 and bool(_ID.fullmatch(fields[3])), "bad RETRIEVE_JOB record")
            return "retrieve", fields[3]
        raise BrokenLine(f"unknown record type {kind[:20]!r}")
    fields = text.split(" ")
    _check(len(fields) >= 3 and bool(_EPOCH.fullmatch(fields[0])), "unknown format")
    epoch, kind, aid = fields[0], fields[1], fields[2]
    _check(bool(_ID.fullmatch(aid)), "bad archive id")
    if kind == "CREATED":
        parts = text.split(" ", 5)
        _check(len(parts) == 6, "a version-0 CREATED record has 6 fields")
        _, _, _, size, tree, name = parts
        _check(size.isdigit() and size.isascii(), "bad size")
        _check(bool(_HASH.fullmatch(tree)), "bad tree hash")
        _check(bool(name), "empty filename")
        return "created", Created(number, int(epoch), aid, int(size), None, tree.lower(), name)
    if kind == "DELETED":
        parts = text.split(" ", 3)
        _check(len(parts) == 4 and bool(parts[3]), "bad DELETED record")
        return "deleted", (aid, int(epoch))
    if kind == "RETRIEVE_JOB":
        _check(len(fields) == 3, "bad RETRIEVE_JOB record")
        return "retrieve", aid
    raise BrokenLine(f"unknown record type {kind[:20]!r}")


def read_journal(path: Path, skip_broken: bool = False) -> Journal:
    """Parse the whole journal first (nothing is imported from a broken one unless ``skip_broken``)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    return parse_journal(raw.split(b"\n"), str(path), skip_broken)


def parse_journal(lines: Iterable[bytes], name: str = "journal", skip_broken: bool = False) -> Journal:
    j = Journal()
    for number, data in enumerate(lines, 1):
        if data.endswith(b"\r"):
            data = data[:-1]
        if not data:
            continue
        j.lines += 1
        try:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise BrokenLine("not UTF-8") from None
            kind, rec = parse_line(text, number)
        except BrokenLine as exc:
            if not skip_broken:
                raise UsageError(
                    f"{name}: line {number} is broken ({exc}); nothing was imported"
                    " (--skip-broken imports the other lines)"
                ) from None
            log.warning("%s: skipping broken line %d (%s)", name, number, exc)
            j.skipped.append((number, str(exc)))
            continue
        if kind == "created":
            j.created.pop(rec.archive_id, None)
            j.created[rec.archive_id] = rec
        elif kind == "deleted":
            aid, when = rec
            j.created.pop(aid, None)
            j.deleted[aid] = when
        else:
            j.retrieve_jobs += 1
    for aid in j.created:  # re-created after a deletion record: alive
        j.deleted.pop(aid, None)
    return j


@dataclass
class ImportResult:
    imported: int = 0
    known: int = 0
    deleted: int = 0
    retrieve_jobs: int = 0
    skipped: int = 0

    def summary(self) -> str:
        return (f"import-journal: {self.imported} archive(s) imported ({self.known} already known),"
                f" {self.deleted} deletion(s) applied, {self.retrieve_jobs} retrieval record(s) ignored,"
                f" {self.skipped} broken line(s) skipped")


def _iso(epoch: int) -> str:
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    except (OverflowError, OSError, ValueError):
        raise UsageError(f"record time {epoch} is out of range") from None


def import_journal(catalog: JournalCatalog, journal: Journal) -> ImportResult:
    from glacierfs.codec import encode_description

    res = ImportResult(retrieve_jobs=journal.retrieve_jobs, skipped=len(journal.skipped))
    inv = catalog.inventory_date
    inv_epoch = datetime.fromisoformat(inv.replace("Z", "+00:00")).timestamp() if inv else None
    for rec in journal.created.values():
        known = catalog.get(rec.archive_id, include_deleted=True) is not None
        try:
            description = encode_description(rec.filename, rec.mtime)
        except UsageError:
            description = ""  # too long for one: the path still comes from the journal
        catalog.add_uploaded(
            archive_id=rec.archive_id, path=rec.filename, size=rec.size, tree_hash=rec.tree_hash or "",
            creation_date=_iso(rec.time), mtime=None if rec.mtime is None else float(rec.mtime),
            description=description,
        )
        res.known += known
        res.imported += 1
    for aid, when in journal.deleted.items():
        if inv_epoch is not None and when <= inv_epoch and catalog.get(aid, include_deleted=True) is None:
            continue  # the current inventory postdates the deletion and does not list it: nothing to hide
        catalog.mark_deleted(aid, when=float(when))
        res.deleted += 1
    return res
