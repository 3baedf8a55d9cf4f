"""Inventory parsers: JSON (streamed, header before or after the list) and Glacier CSV quoting."""

from __future__ import annotations

import io
import json
import random
import tracemalloc
from collections.abc import Iterator

import pytest

from glacierfs.errors import IntegrityError
from glacierfs.inventory import (
    InventoryItem,
    iter_csv_inventory,
    iter_json_inventory,
    parse_inventory,
)

H1 = "a" * 64
H2 = "B" * 64
ARN = "arn:aws:glacier:us-west-2:012345678901:vaults/examplevault"


def _archive(i: int, desc: str = "") -> dict:
    return {
        "ArchiveId": f"id-{i:06d}",
        "ArchiveDescription": desc or f"file {i}",
        "CreationDate": "2012-05-15T17:19:46.700Z",
        "Size": i * 10,
        "SHA256TreeHash": H1,
    }


class Trickle(io.RawIOBase):
    """A stream that returns at most ``n`` bytes per read (splits tokens across chunks)."""

    def __init__(self, data: bytes, n: int) -> None:
        self.data, self.n, self.pos = data, n, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = self.data[self.pos : self.pos + min(self.n, size if size > 0 else self.n)]
        self.pos += len(out)
        return out


def _doc(archives: list[dict], header_first: bool = True, indent: int | None = None) -> bytes:
    if header_first:
        doc = {"VaultARN": ARN, "InventoryDate": "2011-12-12T14:19:01Z", "ArchiveList": archives}
    else:
        doc = {"ArchiveList": archives, "VaultARN": ARN, "InventoryDate": "2011-12-12T14:19:01Z"}
    return json.dumps(doc, indent=indent, ensure_ascii=False).encode()


@pytest.mark.parametrize("header_first", [True, False])
@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_json_inventory_any_layout_any_chunking(header_first: bool, indent: int | None, chunk: int) -> None:
    archives = [_archive(i) for i in range(30)]
    archives[3]["ArchiveDescription"] = 'héllo "quoted" \\ ünïcode 😀'
    archives[4]["Size"] = 12345678901234
    data = _doc(archives, header_first, indent)
    header, items = parse_inventory(Trickle(data, chunk), "application/json")
    got = list(items)
    assert [g.archive_id for g in got] == [a["ArchiveId"] for a in archives]
    assert got[3].description == 'héllo "quoted" \\ ünïcode 😀'
    assert got[4].size == 12345678901234
    assert got[0] == InventoryItem("id-000000", "file 0", "2012-05-15T17:19:46.700Z", 0, H1)
    assert header == {"VaultARN": ARN, "InventoryDate": "2011-12-12T14:19:01Z"}


def test_json_header_after_list_is_known_only_after_iteration() -> None:
    header, items = parse_inventory(io.BytesIO(_doc([_archive(1)], header_first=False)), None)
    assert "InventoryDate" not in header
    assert len(list(items)) == 1
    assert header["InventoryDate"] == "2011-12-12T14:19:01Z"


def test_json_empty_and_null_list_and_bom() -> None:
    for body in (
        b'{"VaultARN":"x","InventoryDate":"2020-01-01T00:00:00Z","ArchiveList":[]}',
        b'\xef\xbb\xbf {"InventoryDate":"2020-01-01T00:00:00Z","ArchiveList":null}',
    ):
        header, items = parse_inventory(io.BytesIO(body), None)
        assert list(items) == []
        assert header["InventoryDate"] == "2020-01-01T00:00:00Z"


def test_json_tolerates_null_description_and_lowercases_hash() -> None:
    a = _archive(1)
    a["ArchiveDescription"] = None
    a["SHA256TreeHash"] = H2
    (item,) = iter_json_inventory(io.BytesIO(_doc([a])))
    assert item.description == "" and item.tree_hash == H2.lower()


def _bad_json_cases() -> Iterator[tuple[str, bytes]]:
    good = _doc([_archive(i) for i in range(5)])
    yield "truncated-mid-item", good[: len(good) // 2]
    yield "truncated-before-close", good[:-1]
    yield "truncated-after-list", good[: good.index(b"]") + 1]
    yield "empty", b""
    yield "not-object", b"[1,2,3]"
    yield "garbage", b"<html>503 Service Unavailable</html>"
    yield "trailing", good + b"{}"
    yield "no-list", b'{"InventoryDate":"2020-01-01T00:00:00Z"}'
    yield "item-not-object", b'{"ArchiveList":[1]}'
    yield "bad-size", _doc([{**_archive(1), "Size": -5}])
    yield "bool-size", _doc([{**_archive(1), "Size": True}])
    yield "no-id", _doc([{k: v for k, v in _archive(1).items() if k != "ArchiveId"}])
    yield "bad-hash", _doc([{**_archive(1), "SHA256TreeHash": "xyz"}])
    yield "no-date", _doc([{**_archive(1), "CreationDate": None}])
    yield "bad-utf8", good.replace(b"file 1", b"file \xff")
    yield "missing-comma", good.replace(b"}, {", b"} {", 1)
    yield "two-lists", b'{"ArchiveList":[],"ArchiveList":[]}'


@pytest.mark.parametrize(("name", "data"), list(_bad_json_cases()))
def test_bad_json_raises_integrity_error(name: str, data: bytes) -> None:
    with pytest.raises(IntegrityError) as info:
        _header, items = parse_inventory(io.BytesIO(data), "application/json")
        list(items)
    assert "\n" not in str(info.value)
    assert str(info.value)


def test_json_streaming_memory_is_bounded() -> None:
    """Python-level allocations stay far below the document size while iterating."""
    n = 40000

    def gen() -> Iterator[bytes]:
        yield b'{"VaultARN":"x","ArchiveList":['
        for i in range(n):
            sep = b"," if i else b""
            yield sep + json.dumps(_archive(i, "d" * 200)).encode()
        yield b'],"InventoryDate":"2020-01-01T00:00:00Z"}'

    class GenStream(io.RawIOBase):
        def __init__(self) -> None:
            self.it, self.buf = gen(), b""

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            while len(self.buf) < size:
                nxt = next(self.it, None)
                if nxt is None:
                    break
                self.buf += nxt
            out, self.buf = self.buf[:size], self.buf[size:]
            return out

    total_doc = n * 400  # roughly 16 MB of JSON
    tracemalloc.start()
    try:
        header, items = parse_inventory(GenStream(), None)
        count = 0
        for _ in items:
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n
    assert header["InventoryDate"] == "2020-01-01T00:00:00Z"
    assert peak < total_doc / 10, peak


# -------------------------------------------------------------------------------------------- CSV

CSV_HEADER = "ArchiveId,ArchiveDescription,CreationDate,Size,SHA256TreeHash"


def _csv_quote(desc: str) -> str:
    """Glacier's writer: quote when needed, escape quotes with a backslash, leave backslashes."""
    if any(c in desc for c in ',"') or random.random() < 0.3:
        return '"' + desc.replace('"', '\\"') + '"'
    return desc


def test_csv_documented_quoting_example() -> None:
    body = f'{CSV_HEADER}\nid1,"a,1\\\\"2",2012-05-15T17:19:46.700Z,10,{H1}\n'
    (item,) = iter_csv_inventory(io.BytesIO(body.encode()))
    assert item.description == 'a,1\\"2'


@pytest.mark.parametrize(
    "desc",
    [
        "plain",
        "with,comma",
        'with "quotes"',
        "trailing backslash\\",
        '\\"',
        '","',
        ",,,",
        "",
        "mt2 eyJmaWxlbmFtZSI6ImEifQ",
        '<m><v>4</v><p>YQ==</p></m> "x",\\',
    ],
)
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_csv_round_trip(desc: str, eol: str) -> None:
    quoted = '"' + desc.replace('"', '\\"') + '"'
    rows = [
        CSV_HEADER,
        f"id1,{quoted},2012-05-15T17:19:46Z,5,{H1}",
        f'"id2","x","2012-05-15T17:19:47Z","6","{H2}"',
    ]
    items = list(iter_csv_inventory(Trickle(eol.join(rows).encode(), 5)))
    assert items == [
        InventoryItem("id1", desc, "2012-05-15T17:19:46Z", 5, H1),
        InventoryItem("id2", "x", "2012-05-15T17:19:47Z", 6, H2.lower()),
    ]


def test_csv_random_descriptions_round_trip() -> None:
    rng = random.Random(5)
    random.seed(5)
    alphabet = 'ab ,"\\/.-~'
    descs = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(500)]
    lines = [CSV_HEADER] + [
        f"id{i},{_csv_quote(d)},2020-01-01T00:00:00Z,{i},{H1}" for i, d in enumerate(descs)
    ]
    data = ("\r\n".join(lines) + "\r\n").encode()
    got = list(iter_csv_inventory(io.BytesIO(data)))
    # unquoted fields cannot hold quotes/commas, so _csv_quote quoted every such description
    assert [g.description for g in got] == descs


def test_csv_other_column_order_and_sniffing() -> None:
    body = f'Size,SHA256TreeHash,ArchiveDescription,ArchiveId,CreationDate\n7,{H1},"a,b",idX,2020-01-01T00:00:00Z\n'
    header, items = parse_inventory(io.BytesIO(body.encode()), None)
    assert list(items) == [InventoryItem("idX", "a,b", "2020-01-01T00:00:00Z", 7, H1)]
    assert header == {}


@pytest.mark.parametrize(
    "body",
    [
        "",
        "foo,bar\n1,2\n",
        f"{CSV_HEADER}\nid1,desc,2020-01-01T00:00:00Z\n",
        f"{CSV_HEADER}\nid1,desc,2020-01-01T00:00:00Z,notanumber,{H1}\n",
        f"{CSV_HEADER}\nid1,desc,2020-01-01T00:00:00Z,5,{H1[:30]}",
        f'{CSV_HEADER}\nid1,"unterminated,2020-01-01T00:00:00Z,5,{H1}\n',
    ],
)
def test_bad_csv_raises_integrity_error(body: str) -> None:
    with pytest.raises(IntegrityError):
        list(iter_csv_inventory(io.BytesIO(body.encode())))


def test_csv_bad_utf8() -> None:
    with pytest.raises(IntegrityError):
        list(iter_csv_inventory(io.BytesIO(f"{CSV_HEADER}\nid,\xff,d,1,{H1}\n".encode("latin-1"))))
