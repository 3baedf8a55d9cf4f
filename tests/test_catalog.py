"""Catalog: names, reconciliation rules, directories, records, corruption, two processes at once."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import multiprocessing
import os
import random
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from glacierfs.catalog import Archive, Catalog, JobRecord, iso_epoch, list_vaults, vault_dir
from glacierfs.codec import DOTDOT, encode_description, variant_name
from glacierfs.errors import ConflictError, IntegrityError, NotFoundError, StateError
from glacierfs.inventory import InventoryItem, parse_inventory
from glacierfs.upload.state import Identity, UnreadableState, UploadState

H = "ab" * 32
D1 = "2026-01-10T00:00:00Z"
D2 = "2026-01-20T00:00:00Z"
D3 = "2026-01-30T00:00:00Z"


def item(
    aid: str,
    path: str | None,
    created: str = "2026-01-01T00:00:00.000Z",
    size: int = 1,
    mtime: float | None = None,
) -> InventoryItem:
    desc = encode_description(path, mtime) if path is not None else ""
    return InventoryItem(aid, desc, created, size, H)


def plain(aid: str, desc: str, created: str = "2026-01-01T00:00:00Z") -> InventoryItem:
    return InventoryItem(aid, desc, created, 3, H)


@pytest.fixture(params=["incremental", "rebuild"])
def cat(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Catalog]:
    """Every catalog test runs with both import strategies (diff and full rebuild)."""
    c = Catalog.open(tmp_path / "cache", "local:/data dir", "us-east-1", "vault-1")
    if request.param == "rebuild":
        c.incremental_limit = 0
    yield c
    c.close()


def names(c: Catalog, path: str = "") -> list[str]:
    return [n for n, _ in c.listdir(path)]


def visible_ids(c: Catalog) -> set[str]:
    return {a.archive_id for a in c.iter_archives()}


def upload(c: Catalog, aid: str, path: str, created: str, mtime: float | None = 1000.0) -> Archive:
    return c.add_uploaded(
        archive_id=aid,
        path=path,
        size=7,
        tree_hash=H,
        creation_date=created,
        mtime=mtime,
        description=encode_description(path, mtime),
    )


# ------------------------------------------------------------------------------ layout and modes


def test_layout_and_private_modes(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    c = Catalog.open(root, "local:/data dir", "us-east-1", "vault-1")
    c.import_inventory([item("a1", "x")], D1)
    assert c.directory == vault_dir(root, "local:/data dir", "us-east-1", "vault-1") / "catalog"
    assert c.directory.parent.parent.parent.name == "local%3A%2Fdata%20dir"
    for d in (root, c.directory.parent.parent.parent, c.directory):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    files = list(c.directory.iterdir())
    assert files
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert list_vaults(root, "local:/data dir", "us-east-1") == ["vault-1"]
    assert list_vaults(root, "aws", "us-east-1") == []
    c.close()
    assert vault_dir(root, "aws", "r", "..").name == "%2E."


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path, "aws", "eu-west-1", "v")
    c.import_inventory([item("a1", "dir/f.txt")], D1)
    c.put_job({"job_id": "j1", "kind": "inventory"})
    c.close()
    c2 = Catalog.open(tmp_path, "aws", "eu-west-1", "v")
    assert c2.inventory_date == D1
    assert isinstance(c2.lookup("dir/f.txt"), Archive)
    assert c2.get_job("j1") == JobRecord("j1", "inventory")
    c2.close()


def test_corrupt_catalog_is_a_state_error_saying_how_to_rebuild(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path, "aws", "r", "v")
    directory = c.directory
    c.close()
    for f in directory.iterdir():
        f.unlink()
    (directory / "cache.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StateError) as info:
        Catalog.open(tmp_path, "aws", "r", "v")
    assert info.value.hint == ("inventory", "-v", "v")  # rendered by the CLI with the options in use
    assert str(directory) in str(info.value) and "glacierfs" not in str(info.value)


def test_corrupt_pages_are_a_state_error(tmp_path: Path) -> None:
    c = Catalog.open(tmp_path, "aws", "r", "v")
    c.import_inventory([item(f"a{i}", f"d/f{i}") for i in range(300)], D1)
    directory = c.directory
    c.close()
    db = directory / "cache.db"
    size = db.stat().st_size
    assert size > 8192
    with open(db, "r+b") as f:  # keep the header page, garble every other page
        f.seek(4096)
        f.write(bytes(range(256)) * ((size - 4096) // 256))
    with pytest.raises(StateError) as info:
        c2 = Catalog.open(tmp_path, "aws", "r", "v")
        try:
            c2.listdir("d")
            list(c2.iter_archives())
        finally:
            c2.close()
    assert "delete " in str(info.value) and info.value.hint == ("inventory", "-v", "v")


# ------------------------------------------------------------------------------ listing and lookup


def test_listing_implicit_dirs_and_lookup(cat: Catalog) -> None:
    cat.import_inventory(
        [item("a1", "photos/2020/a.jpg", mtime=1234.0), item("a2", "photos/b.jpg"), item("a3", "top.txt")], D1
    )
    assert names(cat) == ["photos", "top.txt"]
    assert names(cat, "photos") == ["2020", "b.jpg"]
    assert names(cat, "/photos/2020/") == ["a.jpg"]
    assert cat.lookup("") == "dir" and cat.lookup("/") == "dir"
    assert cat.lookup("photos") == "dir" and cat.lookup("/photos/2020") == "dir"
    a = cat.lookup("/photos/2020/a.jpg")
    assert isinstance(a, Archive)
    assert (a.archive_id, a.path, a.size, a.tree_hash, a.source) == (
        "a1",
        "photos/2020/a.jpg",
        1,
        H,
        "inventory",
    )
    assert a.mtime == 1234.0  # from the description
    b = cat.lookup("photos/b.jpg")
    assert isinstance(b, Archive) and b.mtime == iso_epoch("2026-01-01T00:00:00Z")  # no mtime: creation date
    assert cat.lookup("photos/nope") is None
    assert cat.lookup("nope/a.jpg") is None
    dir_entry = dict(cat.listdir("photos"))
    assert dir_entry["2020"] is None and isinstance(dir_entry["b.jpg"], Archive)
    with pytest.raises(NotFoundError):
        cat.listdir("nope")
    with pytest.raises(NotFoundError):
        cat.listdir("top.txt")
    assert gc.isenabled()  # listdir pauses the GC only while it builds the listing
    assert [x.path for x in cat.iter_archives()] == ["top.txt", "photos/b.jpg", "photos/2020/a.jpg"]
    assert cat.get("a2") == b
    assert cat.get("nope") is None
    assert cat.count() == 3


def test_iter_archives_pages_through_everything(cat: Catalog) -> None:
    cat.import_inventory([item(f"id{i:04d}", f"d{i % 7}/f{i}") for i in range(523)], D1)
    got = list(cat.iter_archives(batch=50))
    assert len(got) == 523 and len({a.archive_id for a in got}) == 523


def test_dialects_and_hostile_paths_list_with_safe_names(cat: Catalog) -> None:
    fg = "<m><v>4</v><p>RmFzdC9nbGFjaWVyLnR4dA==</p><lm>20120821T170824Z</lm></m>"
    cat.import_inventory(
        [
            plain("p1", fg),
            plain("p2", "../../etc/passwd"),
            plain("p3", "/abs/path.txt"),
            plain("p4", ""),
            plain("p5", "with\\backslash and spaces"),
            plain("p6", '{"path": "/sample/1234.pdf", "type": "file"}'),
            InventoryItem("p7", encode_description("a/\x00nul\nline", 5.0), "2026-01-01T00:00:00Z", 1, H),
        ],
        D1,
    )
    paths = {a.archive_id: a.path for a in cat.iter_archives()}
    assert paths == {
        "p1": "Fast/glacier.txt",
        "p2": f"{DOTDOT}/{DOTDOT}/etc/passwd",
        "p3": "abs/path.txt",
        "p4": "p4",
        "p5": "with\\backslash and spaces",
        "p6": "sample/1234.pdf",
        "p7": "a/%00nul%0Aline",
    }
    fast = cat.get("p1")
    assert fast is not None and fast.mtime == 1345568904.0


# ------------------------------------------------------------------------------ duplicates


def test_duplicates_newest_keeps_plain_name_others_get_stable_variants(cat: Catalog) -> None:
    items = [
        item("old-AAAA1111", "d/photo.jpg", "2026-01-01T00:00:00Z"),
        item("new-BBBB2222", "d/photo.jpg", "2026-01-05T00:00:00Z"),
        item("tie-ZZZZ", "d/doc.txt", "2026-01-03T00:00:00Z"),
        item("tie-AAAA", "d/doc.txt", "2026-01-03T00:00:00Z"),
    ]
    cat.import_inventory(items, D1)
    listing = {n: a.archive_id for n, a in cat.listdir("d") if a}
    assert listing == {
        "photo.jpg": "new-BBBB2222",
        variant_name("photo.jpg", "old-AAAA1111"): "old-AAAA1111",
        "doc.txt": "tie-AAAA",
        variant_name("doc.txt", "tie-ZZZZ"): "tie-ZZZZ",
    }
    # every name resolves to its own archive
    for n, aid in listing.items():
        found = cat.lookup(f"d/{n}")
        assert isinstance(found, Archive) and found.archive_id == aid
    # the same set in another order, re-imported later: same names
    cat.import_inventory(list(reversed(items)), D2)
    assert {n: a.archive_id for n, a in cat.listdir("d") if a} == listing


def test_upload_of_an_existing_path_takes_the_plain_name(cat: Catalog) -> None:
    cat.import_inventory([item("inv1", "f.txt", "2026-01-01T00:00:00Z")], D1)
    a = upload(cat, "up1", "f.txt", "2026-01-15T00:00:00Z")
    assert a.path == "f.txt" and a.source == "upload"
    assert names(cat) == ["f.txt", variant_name("f.txt", "inv1")]
    cat.mark_deleted("up1")
    assert names(cat) == ["f.txt"]
    found = cat.lookup("f.txt")
    assert isinstance(found, Archive) and found.archive_id == "inv1"


def test_colliding_variant_prefixes_are_lengthened(cat: Catalog) -> None:
    ids = ["SAMEPREFIX-1", "SAMEPREFIX-2", "SAMEPREFIX-3"]
    cat.import_inventory([item(i, "x.bin") for i in ids], D1)
    got = names(cat)
    assert len(got) == 3 and len(set(got)) == 3
    assert "x.bin" in got


def test_directory_beats_file_of_same_name(cat: Catalog) -> None:
    cat.import_inventory([item("file-a", "a", "2026-01-01T00:00:00Z"), item("inner", "a/x")], D1)
    assert names(cat) == ["a", variant_name("a", "file-a")]
    assert cat.lookup("a") == "dir"
    # the directory goes away when its only archive is deleted: the file gets its name back
    cat.mark_deleted("inner")
    assert names(cat) == ["a"]
    found = cat.lookup("a")
    assert isinstance(found, Archive) and found.archive_id == "file-a"
    # an upload below it turns it into a directory again
    upload(cat, "inner2", "a/y", "2026-02-01T00:00:00Z")
    assert cat.lookup("a") == "dir"
    assert names(cat, "a") == ["y"]


def _entries_agree(c: Catalog, path: str) -> list[tuple[str, int, int, float]]:
    """listdir_entries(path) is listdir(path) without the Archive objects (same names, same order)."""
    lean = c.listdir_entries(path)
    full = c.listdir(path)
    assert [n for n, *_ in lean] == [n for n, _ in full]
    for (name, is_dir, size, mtime), (_, a) in zip(lean, full, strict=True):
        if a is None:
            assert (is_dir, size, mtime) == (1, 0, 0.0), name
        else:
            assert not is_dir and (size, mtime) == (a.size, a.mtime), name
            assert isinstance(size, int) and isinstance(mtime, float)
    return lean


def test_listdir_entries_agrees_with_listdir(cat: Catalog) -> None:
    cat.import_inventory(
        [
            item("old-AAAA1111", "d/photo.jpg", "2026-01-01T00:00:00Z", size=10, mtime=1500.5),
            item("new-BBBB2222", "d/photo.jpg", "2026-01-05T00:00:00Z", size=20, mtime=1600.25),
            item("SAMEPREFIX-1", "d/x.bin", size=31),
            item("SAMEPREFIX-2", "d/x.bin", size=32),
            item("SAMEPREFIX-3", "d/x.bin", size=33),
            item("file-sub", "d/sub", size=4),  # a file named like a directory: gets a variant
            item("inner", "d/sub/deep/y.txt", size=5),
            item("gone", "d/deleted.txt", size=6),
            item("gone-dup", "d/photo.jpg", "2026-01-09T00:00:00Z", size=7),
            item("top", "top.txt", size=8),
        ],
        D1,
    )
    cat.mark_deleted("gone")
    cat.mark_deleted("gone-dup")  # the newest duplicate deleted: the next one takes the plain name
    upload(cat, "up1", "d/new.txt", "2026-01-15T00:00:00Z")
    cat.mkdir("d/empty")
    d = _entries_agree(cat, "d")
    assert [n for n, *_ in d] == sorted(n for n, *_ in d)
    by_name = {n: (is_dir, size) for n, is_dir, size, _ in d}
    assert by_name["photo.jpg"] == (0, 20)
    assert by_name[variant_name("photo.jpg", "old-AAAA1111")] == (0, 10)
    assert by_name["sub"][0] and by_name["empty"][0]
    assert by_name[variant_name("sub", "file-sub")] == (0, 4)
    assert "deleted.txt" not in by_name and by_name["new.txt"] == (0, 7)
    assert by_name["x.bin"] == (0, 31)  # ties: the smallest id keeps the plain name
    assert sorted(size for _, size in by_name.values() if size > 30) == [31, 32, 33]  # 3 distinct names
    assert [n for n, *_ in _entries_agree(cat, "")] == ["d", "top.txt"]
    assert _entries_agree(cat, "/d/sub/") == [("deep", 1, 0, 0.0)]
    assert _entries_agree(cat, "d/empty") == []
    with pytest.raises(NotFoundError):
        cat.listdir_entries("nope")
    with pytest.raises(NotFoundError):
        cat.listdir_entries("top.txt")
    assert gc.isenabled()
    # deletions that empty a directory and give a name back agree too
    cat.mark_deleted("inner")
    assert [n for n, *_ in _entries_agree(cat, "d")].count("sub") == 1
    assert not dict((n, i) for n, i, *_ in cat.listdir_entries("d"))["sub"]


# ------------------------------------------------------------------------------ reconciliation


def test_rule_older_inventory_is_ignored(cat: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    cat.import_inventory([item("a1", "new")], D2)
    stats = cat.import_inventory([item("a0", "old")], D1)
    assert stats.ignored
    assert cat.inventory_date == D2
    assert visible_ids(cat) == {"a1"}
    assert "ignoring inventory" in caplog.text
    # the same date again is fine (idempotent)
    stats = cat.import_inventory([item("a1", "new")], D2)
    assert not stats.ignored and visible_ids(cat) == {"a1"}


def test_rule_older_inventory_with_date_after_the_list_is_ignored(cat: Catalog) -> None:
    cat.import_inventory([item("a1", "new")], D2)
    doc = {
        "ArchiveList": [
            {
                "ArchiveId": "a0",
                "ArchiveDescription": "old",
                "CreationDate": D1,
                "Size": 1,
                "SHA256TreeHash": H,
            }
        ],
        "InventoryDate": D1,
    }
    header, items = parse_inventory(io.BytesIO(json.dumps(doc).encode()), "application/json")
    stats = cat.import_inventory(items, header)
    assert stats.ignored and visible_ids(cat) == {"a1"}


def test_import_with_header_mapping_reads_date_after_items(cat: Catalog) -> None:
    doc = {
        "ArchiveList": [
            {"ArchiveId": "a0", "ArchiveDescription": "x", "CreationDate": D1, "Size": 1, "SHA256TreeHash": H}
        ],
        "VaultARN": "arn:x",
        "InventoryDate": D2,
    }
    header, items = parse_inventory(io.BytesIO(json.dumps(doc).encode()), None)
    stats = cat.import_inventory(items, header)
    assert stats.total == 1 and stats.added == 1
    assert cat.inventory_date == D2
    assert cat.inventory_header["VaultARN"] == "arn:x"
    age = cat.inventory_age()
    assert age is not None and age >= 0


def test_rule_upload_visible_until_inventory_after_creation_lists_it(cat: Catalog) -> None:
    cat.import_inventory([item("inv", "a")], D1)
    up = upload(cat, "up", "b", "2026-01-15T00:00:00Z")
    assert up.source == "upload"
    # an inventory taken before the upload does not list it: still visible
    stats = cat.import_inventory([item("inv", "a")], "2026-01-14T00:00:00Z")
    assert stats.kept_uploads == 1
    assert visible_ids(cat) == {"inv", "up"}
    # one taken after lists it: now it is the inventory entry
    later = InventoryItem("up", encode_description("b", 1000.0), "2026-01-15T00:00:01.000Z", 7, H)
    stats = cat.import_inventory([item("inv", "a"), later], D2)
    assert stats.confirmed == 1 and stats.added == 0
    got = cat.get("up")
    assert got is not None and got.source == "inventory" and got.creation_date == "2026-01-15T00:00:01.000Z"


def test_rule_upload_omitted_by_inventory_after_creation_disappears(cat: Catalog) -> None:
    upload(cat, "up", "b", "2026-01-15T00:00:00Z")
    stats = cat.import_inventory([], D2)
    assert stats.removed == 1
    assert visible_ids(cat) == set() and cat.lookup("b") is None
    assert cat.get("up") is None


def test_rule_deletion_hidden_until_inventory_after_it_omits_it(cat: Catalog) -> None:
    deleted_at = iso_epoch("2026-01-15T00:00:00Z")
    cat.import_inventory([item("a", "x"), item("b", "y")], D1)
    cat.mark_deleted("a", when=deleted_at)
    assert visible_ids(cat) == {"b"} and cat.lookup("x") is None
    # an inventory dated before the deletion still lists it: hidden
    stats = cat.import_inventory([item("a", "x"), item("b", "y")], "2026-01-14T00:00:00Z")
    assert stats.still_deleted == 1 and visible_ids(cat) == {"b"}
    # dated after the deletion and still listing it: hidden all the same
    cat.import_inventory([item("a", "x"), item("b", "y")], "2026-01-16T00:00:00Z")
    assert visible_ids(cat) == {"b"}
    assert cat.get("a") is None
    assert cat.get("a", include_deleted=True) is not None
    # dated after the deletion and omitting it: forgotten
    stats = cat.import_inventory([item("b", "y")], D2)
    assert stats.forgotten == 1
    assert cat.get("a", include_deleted=True) is None


def test_rule_deletion_kept_when_an_inventory_before_it_omits_it(cat: Catalog) -> None:
    up_time = "2026-01-15T00:00:00Z"
    upload(cat, "up", "b", up_time)
    cat.mark_deleted("up", when=iso_epoch("2026-01-16T00:00:00Z"))
    # taken before the upload: omits it, but cannot confirm the deletion
    stats = cat.import_inventory([], D1)
    assert stats.forgotten == 0
    # a later snapshot from between upload and deletion lists it: must stay hidden
    cat.import_inventory([item("up", "b", up_time)], "2026-01-15T12:00:00Z")
    assert visible_ids(cat) == set()


def test_rule_deleting_an_unknown_archive_hides_it_from_older_inventories(cat: Catalog) -> None:
    cat.mark_deleted("ghost", when=iso_epoch("2026-01-15T00:00:00Z"))
    cat.import_inventory([item("ghost", "g"), item("other", "o")], D1)
    assert visible_ids(cat) == {"other"}
    assert names(cat) == ["o"]


def test_rule_inventory_archive_omitted_later_is_dropped(cat: Catalog) -> None:
    cat.import_inventory([item("a", "dir/x"), item("b", "y")], D1)
    stats = cat.import_inventory([item("b", "y")], D2)
    assert stats.removed == 1
    assert visible_ids(cat) == {"b"}
    assert names(cat) == ["y"]  # the implicit directory went with it


def test_bad_inventory_leaves_catalog_unchanged(cat: Catalog) -> None:
    cat.import_inventory([item("a", "x")], D1)

    def broken() -> Iterator[InventoryItem]:
        yield item("b", "y")
        raise IntegrityError("inventory JSON is truncated")

    with pytest.raises(IntegrityError):
        cat.import_inventory(broken(), D2)
    with pytest.raises(IntegrityError):
        cat.import_inventory([item("b", "y"), item("b", "z")], D2)
    with pytest.raises(IntegrityError):
        cat.import_inventory([InventoryItem("c", "", "not a date", 1, H)], D2)
    with pytest.raises(IntegrityError):
        cat.import_inventory([item("c", "c")], {"VaultARN": "x"})
    assert cat.inventory_date == D1 and visible_ids(cat) == {"a"}
    # and the catalog still works afterwards
    cat.import_inventory([item("b", "y")], D2)
    assert visible_ids(cat) == {"b"}


# ------------------------------------------------------------------------------ directories


def test_mkdir_rmdir(cat: Catalog) -> None:
    cat.import_inventory([item("a", "docs/x"), item("f", "file")], D1)
    cat.mkdir("empty/nested")
    assert names(cat) == ["docs", "empty", "file"]
    assert names(cat, "empty") == ["nested"]
    assert cat.listdir("empty/nested") == []
    assert cat.lookup("/empty/nested") == "dir"
    with pytest.raises(ConflictError):
        cat.rmdir("empty")  # not empty
    with pytest.raises(ConflictError):
        cat.rmdir("docs")
    with pytest.raises(NotFoundError):
        cat.rmdir("missing")
    with pytest.raises(NotFoundError):
        cat.rmdir("file")
    with pytest.raises(ConflictError):
        cat.mkdir("file")
    with pytest.raises(ConflictError):
        cat.mkdir("file/sub")
    with pytest.raises(ConflictError):
        cat.rmdir("/")
    cat.mkdir("docs")  # existing: fine
    # mkdir'ed directories survive an inventory import; implicit ones follow the archives
    cat.import_inventory([item("f", "file")], D2)
    assert names(cat) == ["docs", "empty", "file"]
    cat.rmdir("empty/nested")
    cat.rmdir("empty")
    cat.rmdir("docs")
    assert names(cat) == ["file"]


def test_mkdir_below_an_implicit_dir_survives_its_archives(cat: Catalog) -> None:
    cat.import_inventory([item("a", "p/x")], D1)
    cat.mkdir("p/new")
    cat.import_inventory([], D2)
    assert names(cat) == ["p"]
    assert names(cat, "p") == ["new"]


# ------------------------------------------------------------------------------ uploads and jobs


def ustate(upload_id: str | None = None, **fields: object) -> UploadState:
    """A pending-upload state as the engine writes it."""
    base: dict = {"source": "/src/f", "archive_path": "f", "description": "d", "mtime": 1.5,
                  "identity": Identity(3 * 2**20, 1, 2, 3, 4), "size": 3 * 2**20, "part_size": 2**20}
    return UploadState(**{**base, "upload_id": upload_id, **fields})  # type: ignore[arg-type]


def test_upload_and_job_records(cat: Catalog) -> None:
    assert cat.list_uploads() == {}
    cat.put_upload("/src/file", ustate("u1", parts={0: "h"}, status="uploading"))
    cat.put_upload("k2", ustate("u2"))
    assert cat.get_upload("/src/file") == ustate("u1", parts={0: "h"}, status="uploading")
    assert set(cat.list_uploads()) == {"/src/file", "k2"}
    cat.remove_upload("k2")
    cat.remove_upload("k2")  # idempotent
    assert set(cat.list_uploads()) == {"/src/file"}
    assert cat.get_upload("k2") is None

    cat.put_job({"job_id": "j1", "kind": "inventory"})
    cat.put_job({"job_id": "j2", "kind": "retrieval", "archive_id": "a1"})
    cat.put_job({"JobId": "j3", "kind": "retrieval", "archive_id": "a2"})
    assert cat.get_job("j2") == JobRecord("j2", "retrieval", archive_id="a1")
    assert {j.job_id for j in cat.list_jobs()} == {"j1", "j2", "j3"}
    assert [j.job_id for j in cat.list_jobs(kind="inventory")] == ["j1"]
    assert [j.job_id for j in cat.list_jobs(kind="retrieval", archive_id="a1")] == ["j2"]
    rec = JobRecord("j4", "retrieval", archive_id="a4", tier="Bulk", recorded_at=5.0, vault="v")
    cat.put_job(rec)
    assert cat.get_job("j4") == rec == JobRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    cat.remove_job("j1")
    assert cat.get_job("j1") is None
    # records do not leak into the archive listing and vice versa
    assert cat.listdir("") == []


def test_add_uploaded_accepts_an_archive_and_defaults(cat: Catalog) -> None:
    a = Archive("idA", "dir/f.bin", 10, "2026-02-01T00:00:00Z", 99.0, H, "", "upload")
    got = cat.add_uploaded(a)
    assert got.path == "dir/f.bin" and got.mtime == 99.0 and got.size == 10
    got2 = cat.add_uploaded(archive_id="idB", size=1, tree_hash=H, description=encode_description("z/y", 5.0))
    assert got2.path == "z/y" and got2.mtime == 5.0
    assert iso_epoch(got2.creation_date) > iso_epoch("2026-01-01T00:00:00Z")


# ------------------------------------------------------------------------------ two processes


def _worker(root: str, tag: str, n: int) -> None:
    c = Catalog.open(root, "aws", "us-east-1", "shared")
    for i in range(n):
        aid = f"{tag}-{i:04d}"
        path = f"shared/f{i % 10}.txt" if i % 2 else f"{tag}/own{i}.txt"
        c.add_uploaded(
            archive_id=aid,
            path=path,
            size=i,
            tree_hash=H,
            creation_date=f"2026-03-01T00:{i // 60:02d}:{i % 60:02d}Z",
            mtime=float(i),
            description=encode_description(path, float(i)),
        )
        c.put_upload(f"{tag}-{i}", ustate(f"u{i}"))
        if i % 3 == 0:
            c.mark_deleted(aid)
            c.remove_upload(f"{tag}-{i}")
    c.close()


def test_two_processes_share_a_catalog(tmp_path: Path) -> None:
    root = str(tmp_path)
    c = Catalog.open(root, "aws", "us-east-1", "shared")
    c.import_inventory([item("base-1", "shared/f1.txt"), item("base-2", "keep.txt")], D1)
    ctx = multiprocessing.get_context("spawn")
    n = 120
    procs = [ctx.Process(target=_worker, args=(root, tag, n)) for tag in ("p1", "p2")]
    for p in procs:
        p.start()
    # read and re-import while they write: listings stay consistent, their work survives imports
    # (the inventories predate their uploads, and their deletions, so rules 3 and 4 keep both)
    k = 0
    while k < 6 or (any(p.is_alive() for p in procs) and k < 3000):
        listing = c.listdir("shared")
        assert len({name for name, _ in listing}) == len(listing)
        date = f"2026-01-10T{k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}Z"
        c.import_inventory([item("base-1", "shared/f1.txt"), item("base-2", "keep.txt")], date)
        k += 1
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert k > 6  # the imports overlapped the writers
    expected = {"base-1", "base-2"} | {f"{t}-{i:04d}" for t in ("p1", "p2") for i in range(n) if i % 3}
    archives = list(c.iter_archives())
    assert {a.archive_id for a in archives} == expected
    paths = [a.path for a in archives]
    assert len(set(paths)) == len(paths)
    for a in archives:
        found = c.lookup(a.path)
        assert isinstance(found, Archive) and found.archive_id == a.archive_id
    assert set(c.list_uploads()) == {f"{t}-{i}" for t in ("p1", "p2") for i in range(n) if i % 3}
    assert names(c) == ["keep.txt", "p1", "p2", "shared"]
    c.close()


def test_threads_share_one_catalog(cat: Catalog) -> None:
    cat.import_inventory([item(f"i{i}", f"t/f{i}") for i in range(50)], D1)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(100):
                listing = cat.listdir("t")
                assert len(listing) >= 50
                for name, a in listing[:5]:
                    assert isinstance(cat.lookup(f"t/{name}"), Archive) or a is None
        except BaseException as exc:  # reported below
            errors.append(exc)

    def writer() -> None:
        try:
            for i in range(100):
                upload(cat, f"w{i}", f"t/f{i % 60}", "2026-02-01T00:00:00Z")
                if i % 2:
                    cat.mark_deleted(f"w{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert visible_ids(cat) == {f"i{i}" for i in range(50)} | {f"w{i}" for i in range(0, 100, 2)}


def test_catalog_files_stay_private_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        c = Catalog.open(tmp_path / "c", "aws", "r", "v")
        c.put_upload("k", ustate("u", parts={i: "h" * 64 for i in range(2000)}))  # a large record
        c.close()
    finally:
        os.umask(old)
    for p in (tmp_path / "c").rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def _snapshot(c: Catalog) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []

    def walk(d: str) -> None:
        for name, a in c.listdir(d):
            path = f"{d}/{name}" if d else name
            out.append((path, a.archive_id if a else None))
            if a is None:
                walk(path)

    walk("")
    return out


def test_both_import_strategies_agree_on_random_histories(tmp_path: Path) -> None:
    rng = random.Random(42)
    inc = Catalog.open(tmp_path / "inc", "aws", "r", "v")
    reb = Catalog.open(tmp_path / "reb", "aws", "r", "v")
    reb.incremental_limit = 0
    paths = ["a", "a/x", "a/y", "b/c/d", "b/c", "e.txt", "..", "/abs", "", "a/x/z"]
    vault: dict[str, InventoryItem] = {}
    strategies = set()
    for step in range(60):
        day = f"2026-02-{1 + step // 3:02d}T{step % 3:02d}:00:00Z"
        op = rng.random()
        if op < 0.3:
            aid = f"id{rng.randint(0, 30):03d}"
            it = item(aid, rng.choice(paths) or None, created=day)
            vault.setdefault(aid, it)
            for c in (inc, reb):
                c.add_uploaded(
                    archive_id=aid,
                    path=None,
                    size=1,
                    tree_hash=H,
                    creation_date=vault[aid].creation_date,
                    description=vault[aid].description,
                )
        elif op < 0.45:
            aid = f"id{rng.randint(0, 30):03d}"
            vault.pop(aid, None)
            for c in (inc, reb):
                c.mark_deleted(aid, when=iso_epoch(day))
        elif op < 0.55:
            d = rng.choice(["m", "m/n", "a/new", "e.txt"])
            for c in (inc, reb):
                with contextlib.suppress(ConflictError):
                    c.mkdir(d)
        else:
            listed = [v for v in vault.values() if rng.random() < 0.85]
            listed += [item(f"inv{rng.randint(0, 15):02d}", rng.choice(paths) or None) for _ in range(3)]
            listed = list({i.archive_id: i for i in listed}.values())
            for c in (inc, reb):
                st = c.import_inventory(listed, f"2026-02-{1 + step // 3:02d}T{step % 3:02d}:30:00Z")
                strategies.add(st.extra.get("strategy"))
        assert _snapshot(inc) == _snapshot(reb), step
    assert strategies == {"incremental", "rebuild"}
    inc.close()
    reb.close()


def test_a_catalog_written_by_the_diskcache_version_opens_with_everything(tmp_path: Path) -> None:
    """tests/data/catalog-v1/cache.db was written by the schema-1 catalog (records in a diskcache
    Cache): archives, names, a deletion, a mkdir, a pending upload and a job all survive the
    migration to schema 2, which happens once."""
    import shutil

    from glacierfs.catalog import SCHEMA_VERSION

    directory = tmp_path / "old" / "catalog"
    directory.mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "data" / "catalog-v1" / "cache.db", directory / "cache.db")
    for _ in range(2):  # the second open finds the records already moved
        c = Catalog.open_dir(directory)
        try:
            assert c.inventory_date == "2026-01-02T00:00:00Z"
            assert [(n, a.archive_id if a else None) for n, a in c.listdir("docs")] == [
                ("f0.txt", "up1"), ("f0~inv0.txt", "inv0"), ("f1.txt", "inv1"),
            ]
            assert names(c) == ["docs", "empty"] and c.lookup("empty/dir") == "dir"
            assert c.get("inv2") is None and c.get("inv2", include_deleted=True) is not None
            state = c.get_upload("/src/big.bin")
            assert state is not None and state.upload_id == "UPLOADID" and state.parts == {0: "a" * 64}
            assert state.identity.ctime_ns == -1  # written before ctime was recorded: never matches a file
            assert list(c.list_uploads()) == ["/src/big.bin"]
            [job] = c.list_jobs(kind="retrieval", archive_id="inv0")
            assert (job.job_id, job.tier, job.recorded_at) == ("J1", "Bulk", 1767000000.0)
            assert c._storage.get("meta", "schema") == SCHEMA_VERSION == 2
        finally:
            c.close()
    for p in directory.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_upload_states_round_trip_and_damaged_ones_are_reported(cat: Catalog) -> None:
    state = ustate("u9", parts={0: "a" * 64, 2: "b" * 64}, bytes_done=5, tree_hash="c" * 64, status="completing",
                   created=10.0, updated=11.0)
    assert UploadState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    cat.put_upload("k", state)
    assert cat.get_upload("k") == state
    for garbage in ({"status": "uploading", "upload_id": "UID"}, [1, 2], {**state.to_dict(), "part_size": 3}):
        cat._storage.set("upload", "bad", garbage)
        with pytest.raises(UnreadableState) as info:
            cat.get_upload("bad")
        assert info.value.upload_id == (None if isinstance(garbage, list) else garbage.get("upload_id"))
        assert set(cat.list_uploads()) == {"k"}  # listings skip what they cannot read
