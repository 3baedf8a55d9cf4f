"""``glacierfs import-journal``: an mt-aws-glacier journal makes its archives visible before any inventory."""

from __future__ import annotations

import os
from pathlib import Path

from glacierfs.codec import encode_description
from glacierfs.treehash import tree_hash
from tests.helpers.tree import Cli

GHOST = "g" * 138  # in the journal only: deleted elsewhere since; the next inventory drops it
TREE0 = "0" * 64


def upload(server, vault: str, name: str, data: bytes, mtime: int) -> str:
    resp = server.client().upload_archive(
        vaultName=vault, body=data, archiveDescription=encode_description(name, mtime), checksum=tree_hash(data)
    )
    return resp["archiveId"]


def listing(cli: Cli, vault: str, code: int) -> dict[str, str]:
    res = cli("inventory", "-v", vault, code=code)
    return {ln.split("\t")[0]: ln.split("\t")[3] for ln in res.lines}


def test_journal_archives_are_visible_at_once_and_reconciled_by_the_next_inventory(
    glacier_server, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(glacier_server.url, tmp_path / "cache", work)
    cli("vaults", "create", "mt")
    files = {"photos/été 2019/plage.jpg": (b"sea" * 50, 1_560_000_000), "docs/a b.txt": (b"text", 1_500_000_000),
             "no-mtime.bin": (b"\x00\x01", None), "old/gone.txt": (b"bye", 1_400_000_000)}
    ids = {name: upload(glacier_server, "mt", name, data, mtime or 1) for name, (data, mtime) in files.items()}
    glacier_server.client().delete_archive(vaultName="mt", archiveId=ids["old/gone.txt"])
    d, n = files["photos/été 2019/plage.jpg"], "photos/été 2019/plage.jpg"
    lines = [
        f"B\t1560000100\tCREATED\t{ids[n]}\t{len(d[0])}\t{d[1]}\t{tree_hash(d[0])}\t{n}",
        f"A\t1500000100\tCREATED\t{ids['docs/a b.txt']}\t4\t1500000000\t{tree_hash(b'text')}\tdocs/a b.txt",
        f"B\t1500000200\tCREATED\t{ids['no-mtime.bin']}\t2\tNONE\t{tree_hash(bytes([0, 1]))}\tno-mtime.bin",
        f"C\t1400000100\tCREATED\t{ids['old/gone.txt']}\t3\t1400000000\t{tree_hash(b'bye')}\told/gone.txt",
        f"B\t1400000200\tDELETED\t{ids['old/gone.txt']}\told/gone.txt",
        f"1300000000 CREATED {GHOST} 5 {TREE0} ghost dir/file with spaces.txt",
        f"B\t1560000300\tRETRIEVE_JOB\t{ids[n]}\tjobid123",
        f"1300000001 RETRIEVE_JOB {GHOST}",
        "",
    ]
    journal = tmp_path / "journal.log"
    journal.write_text("\n".join(lines), encoding="utf-8")

    # a broken journal imports nothing and names the line
    broken = tmp_path / "broken.log"
    broken.write_text("\n".join([*lines[:2], "B\t12x\tCREATED\tbad", *lines[2:]]), encoding="utf-8")
    res = cli("import-journal", "-v", "mt", str(broken), code=2)
    assert "line 3 is broken" in res.stderr and "nothing was imported" in res.stderr
    future = tmp_path / "future.log"
    future.write_text("D\t1\tCREATED\tx\n", encoding="utf-8")
    assert "future version" in cli("import-journal", "-v", "mt", str(future), code=2).stderr
    assert listing(cli, "mt", code=0) == {}

    res = cli("import-journal", "-v", "mt", str(journal))
    assert res.lines == ["import-journal: 4 archive(s) imported (0 already known), 1 deletion(s) applied, "
                         "2 retrieval record(s) ignored, 0 broken line(s) skipped"]
    seen = listing(cli, "mt", code=0)  # no inventory yet (a note, exit 0), listed from the catalog at once
    assert seen == {"photos/été 2019/plage.jpg": ids[n], "docs/a b.txt": ids["docs/a b.txt"],
                    "no-mtime.bin": ids["no-mtime.bin"], "ghost dir/file with spaces.txt": GHOST}

    # sync sees them at once: the same files (size and mtime) are unchanged, nothing is uploaded
    src = tmp_path / "src"
    for name in ("photos/été 2019/plage.jpg", "docs/a b.txt"):
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(files[name][0])
        os.utime(p, (files[name][1], files[name][1]))
    res = cli("sync", "-v", "mt", str(src))
    assert res.lines[-1].startswith("sync: 0 new, 0 replaced, 0 deleted, 2 unchanged"), str(res)

    # importing again changes nothing
    again = cli("import-journal", "-v", "mt", str(journal))
    assert "4 archive(s) imported (4 already known)" in again.lines[0]
    assert listing(cli, "mt", code=0) == seen

    # the next inventory reconciles: the ghost (created before it, not listed) goes, the rest stays
    glacier_server.snapshot("mt")
    cli("inventory", "-v", "mt", "-f")
    final = listing(cli, "mt", code=0)
    assert final == {k: v for k, v in seen.items() if v != GHOST}

    skip = tmp_path / "skip.log"
    skip.write_text("garbage line\n" + lines[0] + "\n", encoding="utf-8")
    res = cli("import-journal", "-v", "mt", str(skip), "--skip-broken")
    assert "1 broken line(s) skipped" in res.lines[0] and "line 1" in res.stderr


def test_journal_files_are_visible_in_a_running_mount_before_any_inventory(glacier_server, tmp_path: Path) -> None:
    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    vault = tm.VAULT
    glacier_server.client().create_vault(vaultName=vault)
    data = {"été/plage.jpg": (b"sand" * 10, 1_560_000_000), "docs/a b.txt": (b"words", 1_500_000_000)}
    ids = {name: upload(glacier_server, vault, name, body, mtime) for name, (body, mtime) in data.items()}
    journal = tmp_path / "journal.log"
    journal.write_text("".join(
        f"B\t{mtime + 5}\tCREATED\t{ids[name]}\t{len(body)}\t{mtime}\t{tree_hash(body)}\t{name}\n"
        for name, (body, mtime) in data.items()
    ), encoding="utf-8")
    m = tm.Mount(tmp_path / "mnt", tmp_path / "cache", glacier_server.url, vault)
    try:
        m.start()
        assert os.listdir(m.mnt) == []
        cli = Cli(glacier_server.url, tmp_path / "cache", tmp_path)
        cli("import-journal", "-v", vault, str(journal))
        for name, (body, mtime) in data.items():
            st = (m.mnt / name).stat()
            assert (st.st_size, int(st.st_mtime)) == (len(body), mtime), m.log()
            assert tm.getfattr(m.mnt / name, "user.glacier.archive_id") == ids[name]
        assert sorted(os.listdir(m.mnt)) == ["docs", "été"], m.log()
    finally:
        m.close()
