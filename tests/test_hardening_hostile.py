"""Hardening: hostile inventories and hostile (lying) server answers.

Inventories: archives whose descriptions decode (mt2 and FastGlacier carry base64, so any byte
can hide in them) to ``../`` climbs, absolute paths, NUL and control characters, invalid UTF-8,
lone surrogates, 1,024-character names, deep nesting and many duplicates. ``inventory`` must list
safe, distinct names; ``download`` must write only inside ``-o DIR``; the mount (when it works)
must show the same names.

Answers: a test-only HTTP proxy in front of the real server rewrites chosen responses (tree
hash headers of UploadMultipartPart, CompleteMultipartUpload and GetJobOutput, short bodies,
wrong Content-Range, a truncated inventory). Each lie must end in one clear error line and a
non-zero exit, no traceback, nothing at the target and nothing outside it; once the proxy stops
lying, re-running the command finishes with exactly one archive.
"""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from glacierfs.treehash import MiB, tree_hash
from tests.helpers.hardening import (
    Answer,
    Cli,
    LyingProxy,
    Result,
    assert_exactly_once,
    assert_one_error,
    flip_hex,
    listing,
    open_uploads,
    random_files,
    server_archives,
)

SEED = 99


def mt2(raw: bytes) -> str:
    return "mt2 " + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def mt2_name(name: str) -> str:
    return mt2(json.dumps({"filename": name, "mtime": "20200101T000000Z"}).encode())


def fastglacier(raw: bytes) -> str:
    return f"<m><v>4</v><p>{base64.b64encode(raw).decode()}</p><lm>20200101T000000Z</lm></m>"


HOSTILE = [
    mt2_name("../../etc/x"),
    mt2_name("/abs/olute"),
    mt2_name("../../../../../../../../tmp/escape.sh"),
    mt2_name("a\u0000b"),
    mt2_name("ctl\x01\x1b[31m\n\r\t\x7f\x85end"),
    mt2_name("dir/\n/evil"),
    mt2_name(".."),
    mt2_name("."),
    mt2_name("/"),
    mt2_name("a/./b//c/../d"),
    mt2(b'{"filename": "bad\xff\xfe\xc0utf8.txt"}'),  # not UTF-8 inside the base64
    mt2(b'{"filename": "lone\\udcffsur\\ud800rogate"}'),  # JSON escapes of lone surrogates
    fastglacier(b"../../fg/escape"),
    fastglacier(b"fg\x00nul"),
    fastglacier(b"fg\xff\xfebytes"),
    "x" * 1024,  # one 1,024-character component
    "d/" * 400 + "deep.txt",  # 401 levels
    "/" * 5,
    "   ",
    "\\..\\..\\windows\\system32",
    "--help",
    "-",
]
DUPLICATES = ["dup.txt"] * 12 + ["/dup.txt", "./dup.txt", "dup.txt/", mt2_name("dup.txt"), fastglacier(b"dup.txt")]


def check_safe(paths: list[str], ctx: str) -> None:
    for p in paths:
        assert p and not p.startswith("/"), f"{ctx}: {p!r} is absolute or empty"
        parts = p.split("/")
        assert all(parts), f"{ctx}: {p!r} has an empty component"
        assert ".." not in parts and "." not in parts, f"{ctx}: {p!r} climbs"
        bad = [c for c in p if unicodedata.category(c) in ("Cc", "Cs") or c == "\0"]
        assert not bad, f"{ctx}: {p!r} has control or surrogate characters {bad!r}"
        assert all(len(c.encode("utf-8")) <= 255 for c in parts), f"{ctx}: {p!r} has a component over 255 bytes"
    assert len(set(paths)) == len(paths), f"{ctx}: duplicate names {sorted(p for p in paths if paths.count(p) > 1)}"


def download_path(cli: Cli, vault: str, path: str, out: Path) -> Result:
    """``glacierfs download ... -- PATH`` (a listed name may start with '-')."""
    argv = [*cli.argv(["download", "-q", "-v", vault, "-o", str(out)]), "--", path]
    proc = subprocess.run(argv, cwd=cli.cwd, env=cli.env(), capture_output=True, text=True, timeout=120, check=False)
    res = Result(argv[3:], proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in res.stderr, str(res)
    return res


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.timeout(240)
def test_hostile_inventory_gives_safe_distinct_names_and_confined_downloads(glacier_server, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    ctx = f"seed {SEED}"
    c = glacier_server.client(max_attempts=3)
    c.create_vault(vaultName="h")
    bodies: dict[str, bytes] = {}
    fetch: set[str] = set()  # downloaded: every hostile one, a few of the duplicates
    for i, desc in enumerate([*HOSTILE, *DUPLICATES]):
        body = rng.randbytes(rng.randrange(1, 3000))
        aid = c.upload_archive(vaultName="h", archiveDescription=desc, body=body)["archiveId"]
        bodies[aid] = body
        if i < len(HOSTILE) + 3 or desc != "dup.txt":
            fetch.add(aid)
    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(glacier_server.url, tmp_path / "cache", work)
    glacier_server.snapshot("h")
    listed = listing(cli("inventory", "-v", "h", "-f"))
    assert sorted(listed.values()) == sorted(bodies), f"{ctx}: not every archive is listed once"
    check_safe(list(listed), ctx)
    as_json = json.loads(cli("inventory", "-v", "h", "--json").stdout)
    assert {d["path"]: d["archive_id"] for d in as_json} == listed, ctx

    before = tree(tmp_path)
    jail = tmp_path / "jail"

    def fetch_one(item: tuple[int, tuple[str, str]]) -> None:
        i, (path, aid) = item
        out = jail / f"o{i:03d}"
        out.mkdir(parents=True)
        res = download_path(cli, "h", path, out)
        if res.returncode != 0:  # only a name that gives no usable file name may refuse, clearly
            assert_one_error(res, codes=(2,), match="use -o FILE", ctx=f"{ctx} {path!r}")
            res = cli("download", "-q", "-v", "h", f"-a={aid}", "-o", str(out / "named"))
        files = os.listdir(out)
        assert len(files) == 1, f"{ctx}: {path!r} left {files}"
        assert (out / files[0]).read_bytes() == bodies[aid], f"{ctx}: {path!r} has the wrong bytes"
        assert files[0] in (Path(path).name, "named"), f"{ctx}: {path!r} written as {files[0]!r}"

    todo = [(p, a) for p, a in sorted(listed.items()) if a in fetch]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(fetch_one, enumerate(todo)))
    after = tree(tmp_path)
    outside = {p for p in after - before if not p.startswith(("jail", "cache"))}
    assert not outside, f"{ctx}: written outside the targets: {sorted(outside)}"
    assert not (tmp_path / "etc").exists() and not Path("/tmp/escape.sh").exists()

    _check_mount_names(glacier_server, tmp_path, set(listed), ctx)


def _check_mount_names(server, tmp_path: Path, expected: set[str], ctx: str) -> None:
    """The mount shows the same safe names (skipped with the reason when the mount cannot run)."""
    from tests.helpers import mounts as tm

    if tm.fuse_available():
        pytest.skip(f"inventory and downloads checked; mount part skipped: {tm.fuse_available()}")
    m = tm.Mount(tmp_path / "mnt", tmp_path / "cache", server.url, "h")
    try:
        try:
            m.start()
        except AssertionError as exc:
            pytest.skip(f"inventory and downloads checked; the mount did not start: {exc}")
        shown = set()
        for root, _dirs, names in os.walk(m.mnt):
            for n in names:
                shown.add(str((Path(root) / n).relative_to(m.mnt)))
        deep = {p for p in expected if p.count("/") > 100}  # 401 levels: fine on the CLI, too deep to walk
        assert shown - deep == expected - deep, f"{ctx}: mount shows {sorted(shown ^ expected)[:10]}\n{m.log()}"
    finally:
        m.close()


# --------------------------------------------------------------------------- lying server


class Lies:
    """A switchable rewrite rule for :class:`LyingProxy`."""

    def __init__(self, op: str, how: str) -> None:
        self.op = op
        self.how = how
        self.on = True

    def __call__(self, ans: Answer) -> bool:
        if not self.on or ans.op != self.op or ans.status >= 300:
            return False
        if self.how == "tree-hash":
            if "x-amz-sha256-tree-hash" not in ans.headers:
                return False
            ans.headers["x-amz-sha256-tree-hash"] = flip_hex(ans.headers["x-amz-sha256-tree-hash"])
        elif self.how == "short-body":
            if len(ans.body) < 2:
                return False
            ans.cut = len(ans.body) // 2
        elif self.how == "content-range":
            crange = ans.headers.get("content-range")
            if not crange:
                return False
            spec, total = crange.removeprefix("bytes ").split("/")
            start, end = (int(x) for x in spec.split("-"))
            ans.headers["content-range"] = f"bytes {start + 1}-{end + 1}/{total}"
        elif self.how == "long-body":  # more bytes than asked for, headers consistent with them
            if "content-range" not in ans.headers:
                return False
            ans.body += b"trailing bytes"
        elif self.how == "flip-body":  # a body whose headers are all consistent, bytes wrong
            ans.body = bytes([ans.body[0] ^ 1]) + ans.body[1:]
        elif self.how == "truncate-json":
            ans.body = ans.body[: len(ans.body) // 2]  # consistent Content-Length, cut JSON
        else:  # pragma: no cover
            raise AssertionError(self.how)
        return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", ["UploadMultipartPart", "CompleteMultipartUpload"])
def test_upload_through_a_server_lying_about_tree_hashes(op: str, glacier_server, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}:{op}")
    ctx = f"seed {SEED} lie {op}"
    glacier_server.client().create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 1, [2 * MiB + 10])
    lie = Lies(op, "tree-hash")
    with LyingProxy(glacier_server.url, lie) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", work)
        res = cli("upload", "-q", "-v", "v", "--part-size", "1M", *files, code=None)
        assert proxy.lies >= 1, ctx
        assert_one_error(res, codes=(6,), match="tree hash", ctx=ctx)
        assert res.stdout == "", f"{ctx}: a lie was reported as an upload\n{res}"
        lie.on = False  # the service is honest again: the same command finishes the same upload
        res = cli("upload", "-q", "-v", "v", "--part-size", "1M", *files)
    ids = assert_exactly_once(glacier_server, "v", files, ctx)
    assert res.lines == [f"{ids[p]}  {tree_hash(files[p])}  {len(files[p])}  {p}" for p in files], ctx


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["tree-hash", "short-body", "content-range", "long-body"])
def test_download_from_a_lying_server_is_refused(how: str, glacier_server, tmp_path: Path) -> None:
    rng = random.Random(f"{SEED}:{how}")
    ctx = f"seed {SEED} GetJobOutput {how}"
    glacier_server.client().create_vault(vaultName="v")
    data = rng.randbytes(MiB + 77)  # two ranges
    aid = glacier_server.client().upload_archive(vaultName="v", archiveDescription="f.bin", body=data)["archiveId"]
    out = tmp_path / "out"
    out.mkdir()
    lie = Lies("GetJobOutput", how)
    with LyingProxy(glacier_server.url, lie) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", tmp_path)
        before = tree(tmp_path)
        res = cli("download", "-q", "-v", "v", f"-a={aid}", "-o", str(out / "f.bin"), code=None, timeout=120)
        assert proxy.lies >= 1, ctx
        assert_one_error(res, codes=(5, 6), ctx=ctx)
        assert not (out / "f.bin").exists(), f"{ctx}: a lying download was put in place"
        new = {p for p in tree(tmp_path) - before if not p.startswith("cache")}
        assert all(p.startswith("out/.f.bin.glacierfs-part") for p in new), f"{ctx}: written {sorted(new)}"
        lie.on = False  # honest again: the download resumes and verifies
        cli("download", "-q", "-v", "v", f"-a={aid}", "-o", str(out / "f.bin"), timeout=120)
    assert (out / "f.bin").read_bytes() == data, ctx
    assert os.listdir(out) == ["f.bin"], ctx


@pytest.mark.timeout(120)
def test_download_with_consistent_headers_but_wrong_bytes_is_refused(glacier_server, tmp_path: Path) -> None:
    """The body is changed after the server hashed it: only our own hash of the bytes can tell."""
    ctx = f"seed {SEED} flip-body"
    glacier_server.client().create_vault(vaultName="v")
    data = random.Random(SEED).randbytes(1000)
    aid = glacier_server.client().upload_archive(vaultName="v", archiveDescription="s", body=data)["archiveId"]
    lie = Lies("GetJobOutput", "flip-body")
    with LyingProxy(glacier_server.url, lie) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", tmp_path)
        res = cli("download", "-q", "-v", "v", f"-a={aid}", "-o", str(tmp_path / "s"), code=None, timeout=120)
        assert_one_error(res, codes=(6,), ctx=ctx)
        assert not (tmp_path / "s").exists(), ctx


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncate-json", "short-body"])
def test_truncated_inventory_is_refused_and_the_catalog_kept(how: str, glacier_server, tmp_path: Path) -> None:
    ctx = f"seed {SEED} inventory {how}"
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    for i in range(30):
        c.upload_archive(vaultName="v", archiveDescription=f"keep/{i:02d}", body=b"x" * (i + 1))
    glacier_server.snapshot("v")
    lie = Lies("GetJobOutput", how)
    with LyingProxy(glacier_server.url, lie) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", tmp_path)
        lie.on = False
        first = listing(cli("inventory", "-v", "v", "-f"))
        assert len(first) == 30, ctx
        c.upload_archive(vaultName="v", archiveDescription="new", body=b"n")
        glacier_server.snapshot("v")
        lie.on = True
        res = cli("inventory", "-v", "v", "-f", code=None, timeout=120)
        assert proxy.lies >= 1, ctx
        assert_one_error(res, codes=(5, 6), match="inventory", ctx=ctx)
        assert listing(cli("inventory", "-v", "v")) == first, f"{ctx}: a cut inventory changed the catalog"
        lie.on = False
        assert len(listing(cli("inventory", "-v", "v", "-f"))) == 31, ctx


def test_the_proxy_forwards_faithfully_when_not_lying(glacier_server) -> None:
    """The proxy itself is honest when told to be (a self-check of the test tool)."""
    glacier_server.client().create_vault(vaultName="v")
    with LyingProxy(glacier_server.url, lambda ans: False) as proxy:
        import boto3
        from botocore.config import Config

        c = boto3.client("glacier", region_name="us-east-1", endpoint_url=proxy.url,
                         config=Config(retries={"total_max_attempts": 1}))
        uid = c.initiate_multipart_upload(vaultName="v", partSize=str(MiB))["uploadId"]
        assert [u["MultipartUploadId"] for u in open_uploads(glacier_server, "v")] == [uid]
        c.abort_multipart_upload(vaultName="v", uploadId=uid)
        assert "InitiateMultipartUpload" in proxy.seen and "AbortMultipartUpload" in proxy.seen


# --------------------------------------------------------------------------- lying inventories


def _records(good: list[dict], case: str) -> list[dict]:
    a = dict(good[0])
    if case == "duplicate-id":
        return [*good, {**a, "ArchiveDescription": "other/name"}]
    if case == "same-record-twice":
        return [*good, dict(a)]
    if case == "negative-size":
        return [*good[1:], {**a, "Size": -5}]
    if case == "huge-size":
        return [*good[1:], {**a, "Size": 2**70}]
    if case == "bad-date":
        return [*good[1:], {**a, "CreationDate": "yesterday-ish"}]
    if case == "hostile-id":
        return [*good, {**a, "ArchiveId": "../../" + "x" * 1000 + "/\u0000\n"}]
    if case == "null-description":
        return [*good[1:], {**a, "ArchiveDescription": None}]
    raise AssertionError(case)  # pragma: no cover


class InventoryLies:
    """Rewrites inventory job output (and hides the job's InventorySizeInBytes, so only parsing can tell)."""

    def __init__(self, case: str) -> None:
        self.case = case
        self.on = False

    def __call__(self, ans: Answer) -> bool:
        if not self.on or ans.status >= 300:
            return False
        if ans.op in ("DescribeJob", "ListJobs") and b"InventorySizeInBytes" in ans.body:
            data = json.loads(ans.body)
            for job in data.get("JobList", [data]):
                job["InventorySizeInBytes"] = None
            ans.body = json.dumps(data).encode()
            return False
        if ans.op == "GetJobOutput" and ans.body.startswith(b'{"VaultARN"'):
            inv = json.loads(ans.body)
            inv["ArchiveList"] = _records(inv["ArchiveList"], self.case)
            ans.body = json.dumps(inv).encode()
            ans.headers.pop("x-amz-sha256-tree-hash", None)
            return True
        return False


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "case",
    ["duplicate-id", "same-record-twice", "negative-size", "huge-size", "bad-date", "hostile-id", "null-description"],
)
def test_lying_inventory_records_are_refused_or_made_safe(case: str, glacier_server, tmp_path: Path) -> None:
    ctx = f"inventory lie {case}"
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    for i in range(5):
        c.upload_archive(vaultName="v", archiveDescription=f"ok/{i}", body=b"y" * (i + 1))
    glacier_server.snapshot("v")
    lie = InventoryLies(case)
    with LyingProxy(glacier_server.url, lie) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", tmp_path)
        first = listing(cli("inventory", "-v", "v", "-f"))
        assert len(first) == 5, ctx
        lie.on = True
        res = cli("inventory", "-v", "v", "-f", code=None, timeout=120)
        assert proxy.lies >= 1, ctx
        if res.returncode == 0:
            check_safe(list(listing(res)), ctx)
        else:
            err = assert_one_error(res, codes=(6,), ctx=ctx)
            # the service lied; our catalog is fine: never advise deleting it
            assert "corrupt" not in err and "delete" not in err, f"{ctx}: blames the local catalog\n{res}"
            lie.on = False
            assert listing(cli("inventory", "-v", "v")) == first, f"{ctx}: a refused inventory changed the catalog"
        lie.on = False
        assert len(listing(cli("inventory", "-v", "v", "-f"))) == 5, f"{ctx}: the catalog did not recover"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("times", ["once", "always"])
def test_a_part_the_server_claimed_but_never_stored_is_sent_again(times: str, glacier_server, tmp_path: Path) -> None:
    """The service answers UploadMultipartPart for part 0 with success (and the right tree hash) but drops it.

    Complete is refused; repeating it would fail forever. The upload checks the parts the
    service really holds and sends the missing one: a one-off loss heals in the same run; a
    service that keeps dropping it gets one clear error naming the way out, and the re-run
    against an honest service finishes the same upload. Exactly one archive either way.
    """
    rng = random.Random(SEED)
    ctx = f"seed {SEED} part 0 swallowed {times}"
    glacier_server.client().create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 1, [3 * MiB])
    state = {"on": True, "swallowed": 0}

    def swallow(op: str, headers: dict[str, str]) -> tuple[int, dict[str, str]] | None:
        first_part = headers.get("content-range", "").startswith("bytes 0-")
        if state["on"] and op == "UploadMultipartPart" and first_part and (times == "always" or not state["swallowed"]):
            state["swallowed"] += 1
            return 204, {"x-amz-sha256-tree-hash": headers["x-amz-sha256-tree-hash"]}
        return None

    with LyingProxy(glacier_server.url, lambda ans: False, swallow) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", work)
        args = ("upload", "-q", "-v", "v", "--part-size", "1M", "--concurrency", "1", *files)
        res = cli(*args, code=None)
        assert state["swallowed"] >= 1 and proxy.lies >= 1, ctx
        if times == "once":
            assert res.returncode == 0, f"{ctx}: a part lost once is not sent again\n{res}"
        else:
            assert_one_error(res, codes=(6,), match="glacierfs abort", ctx=ctx)
            assert state["swallowed"] == 2, f"{ctx}: the part was not sent again exactly once"
            state["on"] = False
            res = cli(*args)
    ids = assert_exactly_once(glacier_server, "v", files, ctx)
    assert res.lines[0].split("  ")[0] == ids[next(iter(files))], ctx


CSV_HOSTILE = ['a "quoted" name', "comma, separated", "back\\slash\\", 'both \\"x\\",y', '""', ",", "\\", 'x"', "tail\\"]


@pytest.mark.timeout(120)
def test_csv_inventory_of_another_tool_gives_the_same_names_as_json(glacier_server, tmp_path: Path) -> None:
    """Descriptions with quotes, commas and backslashes survive Glacier's CSV quoting: a finished CSV
    inventory job (started by another tool) gives the very names the JSON inventory gives."""
    c = glacier_server.client()
    c.create_vault(vaultName="v")
    ids = {c.upload_archive(vaultName="v", archiveDescription=d, body=d.encode())["archiveId"]: d for d in CSV_HOSTILE}
    glacier_server.snapshot("v")
    job = c.initiate_job(vaultName="v", jobParameters={"Type": "inventory-retrieval", "Format": "CSV"})["jobId"]
    glacier_server.complete_jobs(job)
    from_csv = listing(Cli(glacier_server.url, tmp_path / "cache-csv", tmp_path)("inventory", "-v", "v"))
    assert [j["JobId"] for j in c.list_jobs(vaultName="v")["JobList"]] == [job], "the CSV job was not used"
    from_json = listing(Cli(glacier_server.url, tmp_path / "cache-json", tmp_path)("inventory", "-v", "v", "-f"))
    assert from_csv == from_json
    assert sorted(from_json.values()) == sorted(ids)
    check_safe(list(from_json), "csv")


HOSTILE_VAULTS = ["../escape", "a/b", "x\ny", "\x1b[31mred", "", "tab\tname", "v" * 300, "ok\n", None, 42]


def _lying_vault_list(ans: Answer) -> bool:
    if ans.method != "GET" or not ans.path.split("?")[0].rstrip("/").endswith("/vaults") or ans.status >= 300:
        return False
    data = json.loads(ans.body)
    if "VaultList" not in data:
        return False
    template = data["VaultList"][0]
    data["VaultList"] += [{**template, "VaultName": n, "VaultARN": f"arn:aws:glacier:us-east-1:0:vaults/{n}"}
                          for n in HOSTILE_VAULTS]
    ans.body = json.dumps(data).encode()
    return True


@pytest.mark.timeout(120)
def test_lying_vault_list_names_are_left_out(glacier_server, tmp_path: Path) -> None:
    """ListVaults answering names no vault can have: ``vaults`` lists only real names, one per line,
    with a warning; the ``--all-vaults`` mount makes no directory of them."""
    glacier_server.client().create_vault(vaultName="real")
    with LyingProxy(glacier_server.url, _lying_vault_list) as proxy:
        cli = Cli(proxy.url, tmp_path / "cache", tmp_path)
        res = cli("vaults")
        assert proxy.lies >= 1
        assert [line.split("\t")[0] for line in res.lines] == ["real"], str(res)
        assert "invalid names" in res.stderr, str(res)
        assert [v["VaultName"] for v in json.loads(cli("vaults", "--json").stdout)] == ["real"]
        from tests.helpers import mounts as tm

        if tm.fuse_available():
            return
        m = tm.Mount(tmp_path / "mnt", tmp_path / "cache", proxy.url, None, "--all-vaults")
        try:
            m.start()
            assert sorted(os.listdir(m.mnt)) == ["real"], m.log()
        finally:
            m.close()


@pytest.mark.timeout(180)
def test_mount_keeps_a_file_through_a_lying_server_then_uploads_it_once(glacier_server, tmp_path: Path) -> None:
    """The mount's uploads meet a service lying about part tree hashes: the file stays staged (listed,
    readable), nothing is archived; once the service is honest, sync uploads it exactly once."""
    from tests.helpers import mounts as tm

    tm.skip_without_fuse()
    rng = random.Random(SEED)
    glacier_server.client().create_vault(vaultName="mv")
    data = rng.randbytes(2 * MiB + 5)
    lie = Lies("UploadMultipartPart", "tree-hash")
    with LyingProxy(glacier_server.url, lie) as proxy:
        m = tm.Mount(tmp_path / "mnt", tmp_path / "cache", proxy.url, "mv", "--part-size", "1M")
        try:
            m.start()
            (m.mnt / "kept.bin").write_bytes(data)
            deadline = time.monotonic() + 30
            while proxy.lies < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert proxy.lies >= 3, f"the mount did not try to upload\n{m.log()}"
            assert (m.mnt / "kept.bin").read_bytes() == data, m.log()
            assert server_archives(glacier_server, "mv") == [], "a lying answer made an archive"
            lie.on = False
            res = subprocess.run(["sync", str(m.mnt / "kept.bin")], capture_output=True, text=True, timeout=120,
                                 check=False)
            assert res.returncode == 0, res.stderr + m.log()
            log_text = m.log()
        finally:
            m.close()
    assert "tree hash" in log_text, log_text
    assert_exactly_once(glacier_server, "mv", {"kept.bin": data}, f"seed {SEED} mount")

