"""Hardening: injected faults across upload, inventory and download, with several seeds.

The real ``glacierfs`` command runs against ``glacierfs serve --faults ... --seed N`` (500s,
throttling, 408s, connection resets half-way through bodies, corrupted job output). A command
may fail when the faults outlast its retries, but only with one clear error line; re-running it
must finish the job. Afterwards the *server* must hold exactly one archive per file with the
file's tree hash, no open multipart upload, and every download must be byte-identical.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from glacierfs.treehash import MiB
from tests.hardening_util import Cli, Result, assert_exactly_once, assert_one_error, listing, random_files

FAULTS = "500=0.06,throttle=0.04,408=0.03,reset=0.05,corrupt=0.25"
HARSH = "500=0.3,throttle=0.1,408=0.05,reset=0.15,corrupt=0.6"  # commands fail and must be re-run
MAX_RUNS = 12


def until_ok(cli: Cli, *args: str, ctx: str) -> tuple[Result, int]:
    """Run a command until it succeeds (each failure must be one clear error); (result, failures)."""
    for failures in range(MAX_RUNS):
        res = cli(*args, code=None, timeout=240)
        if res.returncode == 0:
            return res, failures
        assert_one_error(res, codes=(5, 6, 8), ctx=f"{ctx}: run {failures + 1} of {' '.join(args[:3])}")
    raise AssertionError(f"{ctx}: {' '.join(args[:3])} still failing after {MAX_RUNS} runs")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("seed", "faults"), [(11, FAULTS), (23, FAULTS), (37, HARSH), (41, HARSH)])
def test_upload_inventory_download_through_faults(
    seed: int, faults: str, glacier_server_factory, tmp_path: Path
) -> None:
    ctx = f"seed {seed} faults {faults}"
    rng = random.Random(seed)
    server = glacier_server_factory("--faults", faults, "--seed", str(seed))
    server.client(max_attempts=10).create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 6, [700, MiB, 2 * MiB, 3 * MiB - 4096])
    cli = Cli(server.url, tmp_path / "cache", work)

    up, up_failures = until_ok(cli, "upload", "-q", "-v", "v", "--part-size", "1M", "--concurrency", "2", *files,
                               ctx=ctx)
    # a failed run printed the files it finished; the final run covers the rest: every file once
    ids = assert_exactly_once(server, "v", files, ctx)
    for line in up.lines:
        aid, _tree, _size, path = line.split("  ")
        assert ids[path] == aid, f"{ctx}: {path} printed {aid}, the server has {ids[path]}"

    inv, _ = until_ok(cli, "inventory", "-v", "v", "-f", ctx=ctx)
    assert listing(inv) == ids, ctx

    out = tmp_path / "out"
    out.mkdir()
    stderr = ""
    for path, data in files.items():
        res, _ = until_ok(cli, "download", "-q", "-v", "v", path, "-o", str(out), ctx=f"{ctx} {path}")
        stderr += res.stderr
        assert (out / Path(path).name).read_bytes() == data, f"{ctx}: {path} differs after download"
    assert sorted(os.listdir(out)) == sorted(Path(p).name for p in files), f"{ctx}: partials left in {out}"
    assert server.log_path.read_text().count("injecting fault") >= 5, f"{ctx}: the faults did not happen"
    # nothing changed on the server by downloading (still exactly once), and no open upload
    assert_exactly_once(server, "v", files, ctx)
    print(f"{ctx}: upload needed {up_failures} re-run(s); warnings seen: {stderr.count('glacierfs: WARNING')}")
