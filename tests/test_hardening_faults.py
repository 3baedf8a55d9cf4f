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
import time
from pathlib import Path

import pytest

from glacierfs.treehash import MiB
from tests.helpers.hardening import Cli, Result, assert_exactly_once, assert_one_error, listing, random_files

FAULTS = "500=0.06,throttle=0.04,408=0.03,reset=0.05,corrupt=0.25"
UPLOAD_OPS = "InitiateMultipartUpload,UploadMultipartPart,CompleteMultipartUpload,ListParts,ListMultipartUploads"
# harsh enough that uploads outlast their retries: the command fails and is re-run (resume)
HARSH_UPLOAD = ("500=0.35,throttle=0.1,reset=0.15", UPLOAD_OPS)
HARSH_JOBS = ("500=0.15,reset=0.1,corrupt=0.6", "InitiateJob,DescribeJob,GetJobOutput")
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
@pytest.mark.parametrize(
    ("seed", "faults"), [(11, (FAULTS, None)), (37, HARSH_UPLOAD), (41, HARSH_JOBS)]
)
def test_upload_inventory_download_through_faults(
    seed: int, faults: tuple[str, str | None], glacier_server_factory, tmp_path: Path
) -> None:
    ctx = f"seed {seed} faults {faults}"
    rng = random.Random(seed)
    spec, ops = faults
    server = glacier_server_factory("--faults", spec, "--seed", str(seed), *(["--faults-ops", ops] if ops else []))
    server.client(max_attempts=10).create_vault(vaultName="v")
    work = tmp_path / "work"
    files = random_files(work, rng, 4 if ops else 6, [700, MiB, 2 * MiB, 3 * MiB - 4096])
    cli = Cli(server.url, tmp_path / "cache", work)

    t0 = time.monotonic()
    up, up_failures = until_ok(cli, "upload", "-q", "-v", "v", "--part-size", "1M", "--concurrency", "2", *files,
                               ctx=ctx)
    # a failed run printed the files it finished; the final run covers the rest: every file once
    ids = assert_exactly_once(server, "v", files, ctx)
    for line in up.lines:
        aid, _tree, _size, path = line.split("  ")
        assert ids[path] == aid, f"{ctx}: {path} printed {aid}, the server has {ids[path]}"

    t1 = time.monotonic()
    inv, _ = until_ok(cli, "inventory", "-v", "v", "-f", ctx=ctx)
    t2 = time.monotonic()
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
    print(f"{ctx}: upload needed {up_failures} re-run(s); upload {t1 - t0:.1f} s, inventory {t2 - t1:.1f} s, "
          f"downloads {time.monotonic() - t2:.1f} s")
