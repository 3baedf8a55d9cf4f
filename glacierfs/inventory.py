"""Streaming parsers for Glacier inventory job output (JSON and Glacier's CSV).

A vault inventory can list millions of archives, so nothing here holds the document: both
parsers read the stream in chunks and yield one :class:`InventoryItem` at a time (memory is
O(chunk + one item), not O(archives)).

JSON: the top-level object is scanned key by key; every value except ``ArchiveList`` is decoded
whole into the header dict (``VaultARN``, ``InventoryDate``, ...), and ``ArchiveList`` is walked
element by element with :meth:`json.JSONDecoder.raw_decode` over a rolling buffer. The header
fields may come before *or after* the list; :func:`parse_inventory` returns the header dict
immediately and it is completed as the iterator runs: read ``header["InventoryDate"]`` after
the items are exhausted.

CSV: a header row (``ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash``, any order)
then one row per archive, LF or CRLF. Glacier does not follow RFC 4180: inside a quoted field a
quote is written ``\\"`` and backslashes are *not* escaped, so ``a,1\\"2`` is written
``"a,1\\\\"2"``. That is ambiguous for a tokenizer but not for us: only the description can hold
commas or quotes, so the fields before it are split off from the left, the ones after it from
the right, and what remains is the description; once its outer quotes are removed every ``"``
inside it is preceded by the backslash that escapes it, so replacing ``\\"`` by ``"`` is exact.
CSV output carries no ``InventoryDate``: the header dict is empty and the caller supplies the date.

Anything malformed or truncated (the service or a proxy can lie) raises :class:`IntegrityError`
with one line naming what and where, never a raw ``json``/``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import codecs
import itertools
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from glacierfs.answers import ID_RE, checked_date, shown
from glacierfs.errors import GlacierFSError, IntegrityError

log = logging.getLogger(__name__)

CHUNK = 1 << 16
MAX_HEADER_VALUE = 16 << 20  # a non-list top-level value larger than this is not an inventory
CSV_COLUMNS = ("ArchiveId", "ArchiveDescription", "CreationDate", "Size", "SHA256TreeHash")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# Glacier's ids are 138 base64url characters; accept any printable ASCII without spaces, bounded.
_ARCHIVE_ID = ID_RE  # the id alphabet of every answer: never '/', spaces or control characters
MAX_ARCHIVE_SIZE = 10_000 * 4096 * 1024 * 1024  # 10,000 parts of 4 GiB: Glacier's largest archive
_WS = " \t\r\n"


@dataclass(frozen=True, slots=True)
class InventoryItem:
    """One archive as the inventory lists it (``creation_date`` is the service's ISO 8601 text)."""

    archive_id: str
    description: str
    creation_date: str
    size: int
    tree_hash: str


_ISO_DATE = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:?[0-9]{2})?"
)


def _is_date(text: str) -> bool:
    """An ISO-8601 date (the service's shape checked by one regex: ~0.3 us, 1M archives per import)."""
    if _ISO_DATE.fullmatch(text):
        return True
    try:
        checked_date(text, "CreationDate")
    except GlacierFSError:
        return False
    return True


def _item(
    archive_id: Any, description: Any, creation_date: Any, size: Any, tree_hash: Any, where: str
) -> InventoryItem:
    """Validate one archive's fields; a lying server gets an IntegrityError naming the field."""
    if not isinstance(archive_id, str) or not _ARCHIVE_ID.fullmatch(archive_id):
        # never echo it: a control character would break the one-line error (and id columns)
        raise IntegrityError(f"inventory {where}: missing or invalid ArchiveId")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise IntegrityError(f"inventory {where}: ArchiveDescription of {archive_id} is not a string")
    if not isinstance(creation_date, str) or not creation_date:
        raise IntegrityError(f"inventory {where}: missing CreationDate for {archive_id}")
    if not _is_date(creation_date):
        raise IntegrityError(f"inventory {where}: invalid CreationDate {shown(creation_date)} for {archive_id}")
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_ARCHIVE_SIZE:
        raise IntegrityError(f"inventory {where}: invalid Size {size!r} for {archive_id}")
    if not isinstance(tree_hash, str) or not _HEX64.fullmatch(tree_hash):
        raise IntegrityError(f"inventory {where}: invalid SHA256TreeHash {tree_hash!r} for {archive_id}")
    return InventoryItem(archive_id, description, creation_date, size, tree_hash.lower())


def _chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    read = stream.read
    while True:
        data = read(size)
        if not data:
            return
        if isinstance(data, str):  # a text stream: tolerate it
            data = data.encode("utf-8")
        yield data


# ------------------------------------------------------------------------------------------- JSON


class _JsonScanner:
    """A rolling text buffer over UTF-8 chunks with the few primitives the inventory needs."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.consumed = 0  # characters dropped from the front of buf (for error positions)
        self._decoder = json.JSONDecoder()

    def more(self, at_least: int = 0) -> bool:
        """Append at least one more chunk (or ``at_least`` characters); False at end of input."""
        if self.eof:
            return False
        if self.pos:
            self.consumed += self.pos
            self.buf = self.buf[self.pos :]
            self.pos = 0
        added = 0
        while True:
            data = next(self._chunks, None)
            try:
                if data is None:
                    text = self._utf8.decode(b"", final=True)
                    self.eof = True
                else:
                    text = self._utf8.decode(data)
            except UnicodeDecodeError as exc:
                raise IntegrityError(
                    f"inventory is not valid UTF-8 near character {self.consumed + len(self.buf)}: {exc.reason}"
                ) from None
            self.buf += text
            added += len(text)
            if self.eof or (added and added >= at_least):
                return added > 0 or not self.eof

    def where(self) -> str:
        return f"at character {self.consumed + self.pos}"

    def skip_ws(self) -> str:
        """The next non-whitespace character (not consumed), or '' at end of input."""
        while True:
            buf, pos, n = self.buf, self.pos, len(self.buf)
            while pos < n and buf[pos] in _WS:
                pos += 1
            self.pos = pos
            if pos < n:
                return buf[pos]
            if not self.more():
                return ""

    def expect(self, chars: str, what: str) -> str:
        ch = self.skip_ws()
        if not ch:
            raise IntegrityError(f"inventory JSON is truncated: expected {what} at end of input")
        if ch not in chars:
            raise IntegrityError(f"inventory JSON is malformed: expected {what} {self.where()}, found {ch!r}")
        self.pos += 1
        return ch

    def value(self, what: str, limit: int | None = None) -> Any:
        """Decode one complete JSON value at the cursor, reading more input as needed.

        The buffer grows geometrically while a value is incomplete, so a value is decoded
        O(1) times on average; ``limit`` bounds values that have no business being large.
        """
        self.skip_ws()
        while True:
            try:
                value, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    state = "truncated" if exc.pos >= len(self.buf) - 1 else "malformed"
                    raise IntegrityError(
                        f"inventory JSON is {state}: {what} {self.where()}: {exc.msg}"
                    ) from None
                if limit is not None and len(self.buf) - self.pos > limit:
                    raise IntegrityError(
                        f"inventory JSON: {what} {self.where()} is larger than {limit} characters"
                    ) from None
                self.more(at_least=max(CHUNK, len(self.buf) - self.pos))
                continue
            except RecursionError:
                raise IntegrityError(f"inventory JSON: {what} {self.where()} is nested too deeply") from None
            if end == len(self.buf) and not self.eof:
                # a number or literal may continue in the next chunk: decode it again with more
                self.more()
                continue
            self.pos = end
            return value


def _iter_json(chunks: Iterator[bytes], header: dict[str, Any]) -> Iterator[InventoryItem]:
    sc = _JsonScanner(chunks)
    if sc.skip_ws() == "\ufeff":
        sc.pos += 1
    if not sc.skip_ws():
        raise IntegrityError("inventory is empty")
    sc.expect("{", "'{' at the start of the inventory")
    seen_list = False
    index = 0
    if sc.skip_ws() == "}":
        sc.pos += 1
    else:
        while True:
            key = sc.value("a key of the inventory object", limit=4096)
            if not isinstance(key, str):
                raise IntegrityError(f"inventory JSON is malformed: expected a key {sc.where()}")
            sc.expect(":", "':' after a key")
            if key != "ArchiveList":
                header[key] = sc.value(f"the value of {key!r}", limit=MAX_HEADER_VALUE)
            else:
                if seen_list:
                    raise IntegrityError("inventory JSON has two ArchiveList keys")
                seen_list = True
                ch = sc.skip_ws()
                if ch == "n":  # "ArchiveList": null - an empty vault, as some servers write it
                    if sc.value("ArchiveList") is not None:
                        raise IntegrityError(f"inventory JSON: ArchiveList {sc.where()} is not a list")
                else:
                    sc.expect("[", "'[' starting ArchiveList")
                    if sc.skip_ws() == "]":
                        sc.pos += 1
                    else:
                        while True:
                            where = f"archive #{index + 1}"
                            obj = sc.value(where, limit=1 << 20)
                            if not isinstance(obj, dict):
                                raise IntegrityError(f"inventory JSON: {where} is not an object")
                            yield _item(
                                obj.get("ArchiveId"),
                                obj.get("ArchiveDescription"),
                                obj.get("CreationDate"),
                                obj.get("Size"),
                                obj.get("SHA256TreeHash"),
                                where,
                            )
                            index += 1
                            if sc.expect(",]", "',' or ']' in ArchiveList") == "]":
                                break
            if sc.expect(",}", "',' or '}' in the inventory object") == "}":
                break
    if sc.skip_ws():
        raise IntegrityError(f"inventory JSON has trailing data {sc.where()}")
    if not seen_list:
        raise IntegrityError("inventory JSON has no ArchiveList")
    log.debug("parsed %d archives from a JSON inventory", index)


def iter_json_inventory(stream: BinaryIO, header: dict[str, Any] | None = None) -> Iterator[InventoryItem]:
    """Archives of a JSON inventory, streamed. Top-level fields other than the list go to ``header``."""
    return _iter_json(_chunks(stream), {} if header is None else header)


# -------------------------------------------------------------------------------------------- CSV


def _unquote(field: str, where: str) -> str:
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        return field[1:-1].replace('\\"', '"')
    if field.startswith('"'):
        raise IntegrityError(f"inventory CSV {where}: unterminated quoted field")
    return field


def _split_simple(text: str, n: int, from_right: bool, where: str) -> tuple[list[str], str]:
    """Split ``n`` comma-free fields off one end of ``text``; returns (fields, remainder)."""
    if n == 0:
        return [], text
    parts = text.rsplit(",", n) if from_right else text.split(",", n)
    if len(parts) != n + 1:
        raise IntegrityError(f"inventory CSV {where}: expected {len(CSV_COLUMNS)} fields")
    if from_right:
        return parts[1:], parts[0]
    return parts[:n], parts[n]


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    carry = b""
    for chunk in chunks:
        if carry:
            chunk = carry + chunk
        lines = chunk.split(b"\n")
        carry = lines.pop()
        yield from lines
    if carry:
        yield carry


def _iter_csv(chunks: Iterator[bytes]) -> Iterator[InventoryItem]:
    columns: list[str] | None = None
    desc_at = before = after = 0
    count = 0
    for lineno, raw in enumerate(_lines(chunks), 1):
        where = f"line {lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise IntegrityError(f"inventory CSV {where} is not valid UTF-8") from None
        if line.endswith("\r"):
            line = line[:-1]
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if not line.strip():
            continue
        if columns is None:
            columns = [_unquote(c.strip(), where) for c in line.split(",")]
            if sorted(columns) != sorted(CSV_COLUMNS):
                raise IntegrityError(f"inventory CSV has an unexpected header row: {line[:200]!r}")
            desc_at = columns.index("ArchiveDescription")
            before, after = desc_at, len(columns) - desc_at - 1
            continue
        left, rest = _split_simple(line, before, False, where)
        right, desc = _split_simple(rest, after, True, where)
        values = [_unquote(v, where) for v in left]
        values.append(_unquote(desc, where))
        values.extend(_unquote(v, where) for v in right)
        row = dict(zip(columns, values, strict=True))
        size = row["Size"].strip()
        yield _item(
            row["ArchiveId"].strip(),
            row["ArchiveDescription"],
            row["CreationDate"].strip(),
            int(size) if size.isdigit() else size,
            row["SHA256TreeHash"].strip(),
            where,
        )
        count += 1
    if columns is None:
        raise IntegrityError("inventory CSV is empty (no header row)")
    log.debug("parsed %d archives from a CSV inventory", count)


def iter_csv_inventory(stream: BinaryIO) -> Iterator[InventoryItem]:
    """Archives of a Glacier CSV inventory (backslash-escaped quotes), streamed line by line."""
    return _iter_csv(_chunks(stream))


# ------------------------------------------------------------------------------------------ entry


def parse_inventory(
    stream: BinaryIO, content_type: str | None
) -> tuple[dict[str, Any], Iterator[InventoryItem]]:
    """``(header, items)`` of an inventory in either format.

    ``content_type`` (``application/json`` / ``text/csv``, parameters ignored) picks the parser;
    None or anything else sniffs the first non-blank byte (``{`` means JSON). ``header`` is filled
    while ``items`` is consumed (JSON fields after ``ArchiveList`` arrive last) and stays ``{}``
    for CSV, which carries no ``InventoryDate``.
    """
    header: dict[str, Any] = {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    chunks: Iterable[bytes] = _chunks(stream)
    if ctype in ("application/json", "text/json"):
        kind = "json"
    elif ctype in ("text/csv", "application/csv"):
        kind = "csv"
    else:
        it = iter(chunks)
        head: list[bytes] = []
        kind = "csv"
        for data in it:
            head.append(data)
            stripped = data.lstrip(b" \t\r\n")
            if stripped.startswith(b"\xef\xbb\xbf"):
                stripped = stripped[3:].lstrip(b" \t\r\n")
            if stripped:
                kind = "json" if stripped[:1] == b"{" else "csv"
                break
        chunks = itertools.chain(head, it)
        if ctype:
            log.debug("inventory content type %r unknown: sniffed %s", content_type, kind)
    if kind == "json":
        return header, _iter_json(iter(chunks), header)
    return header, _iter_csv(iter(chunks))
