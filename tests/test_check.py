"""``glacierfs check`` on a prepared tree: exactly the changed, missing and new files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers.tree import Cli, make_tree


def test_check_reports_exactly_changed_missing_new(glacier_server, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(glacier_server.url, tmp_path / "cache", work)
    root = tmp_path / "tree"
    files = make_tree(root, 60, seed=8)
    cli("vaults", "create", "c1")
    cli("sync", "-v", "c1", str(root), "--prefix", "photos")
    clean = cli("check", "-v", "c1", str(root), "--prefix", "photos")
    assert clean.lines == [f"ok\t{rel}" for rel in sorted(files)]
    assert "60 ok, 0 changed, 0 missing, 0 new" in clean.stderr

    names = sorted(files)
    changed = names[:3]
    for rel in changed[:2]:  # same size, same mtime, other bytes: only the tree hash tells
        p = root / rel
        st = p.stat()
        p.write_bytes(bytes(b ^ 0xFF for b in files[rel]))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / changed[2]).write_bytes(files[changed[2]] + b"more")
    missing = names[3:5]
    for rel in missing:
        (root / rel).unlink()
    new = ["brand new.txt", "été/nouveau.bin"]
    for rel in new:
        (root / rel).parent.mkdir(exist_ok=True)
        (root / rel).write_bytes(b"new " + rel.encode())

    res = cli("check", "-v", "c1", str(root), "--prefix", "photos", code=1)
    got = {}
    for line in res.lines:
        status, path = line.split("\t")
        got.setdefault(status, set()).add(path)
    assert got["changed"] == set(changed)
    assert got["missing"] == set(missing)
    assert got["new"] == set(new)
    assert len(got["ok"]) == 60 - 5
    assert "55 ok, 3 changed, 2 missing, 2 new" in res.stderr

    as_json = json.loads(cli("check", "-v", "c1", str(root), "--prefix", "photos", "--json", code=1).stdout)
    by_path = {e["path"]: e for e in as_json}
    assert by_path[changed[0]]["status"] == "changed"
    assert by_path[changed[0]]["local_tree_hash"] != by_path[changed[0]]["vault_tree_hash"]
    assert by_path[missing[0]]["archive_id"] and by_path[new[0]]["vault_tree_hash"] is None
    # another prefix: everything on disk is new, nothing of photos/ is considered
    other = cli("check", "-v", "c1", str(root), "--prefix", "elsewhere", code=1)
    assert {ln.split("\t")[0] for ln in other.lines} == {"new"}
