"""Commands on a vault that does not exist (issue 13 item 9): one line, exit 3, nothing left behind.

Every command that works on one vault used to create the vault's catalog (and ``locks/``)
folder in the cache dir before the service said the vault did not exist, so each typo left an
empty folder (and ``status -v TYPO`` even reported the typo as a vault with no inventory). A
catalog is now created only for a vault the service has; the error names the vault, the
region and the endpoint, and its hint (``glacierfs vaults`` with the options in use) works as
printed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.test_messages import Shell, one_hint

VAULT = "no-such-vault"
#: every command that takes one vault (-v), with the arguments it needs to reach the vault
COMMANDS = [
    f"inventory -v {VAULT}",
    f"inventory -f -v {VAULT}",
    f"upload -v {VAULT} file.txt",
    f"abort -v {VAULT} file.txt",
    f"status -v {VAULT}",
    f"status --wait -v {VAULT}",
    f"delete -v {VAULT} file.txt",
    f"delete -v {VAULT} -a=SOMEID",
    f"delete -v {VAULT} --unlisted -a=SOMEID",
    f"download -v {VAULT} file.txt",
    f"download -v {VAULT} -a=SOMEID --no-wait",
    f"sync -v {VAULT} tree",
    f"check -v {VAULT} tree",
    f"restore -v {VAULT} -o out",
    f"wait -v {VAULT}",
    f"import-journal -v {VAULT} journal.log",
    f"export -v {VAULT} s3://bucket/prefix",
]


def _files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def shell(glacier_server_module, tmp_path: Path) -> tuple[Shell, str]:
    (tmp_path / "file.txt").write_bytes(b"some bytes\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "journal.log").write_text(
        "A\t1500000100\tCREATED\tARCHIVEID\t4\t1500000000\t"
        "0f1e7a3c8a3e0d4e3d4f1c7b9c8a3e0d4e3d4f1c7b9c8a3e0d4e3d4f1c7b9c8a\tdoc.txt\n"
    )
    g = f"glacierfs --local {glacier_server_module.data_dir} --cache-dir 'my cache'"
    return Shell(tmp_path, glacier_server_module), g


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_on_a_missing_vault_says_so_and_leaves_no_folder(shell: tuple[Shell, str], command: str) -> None:
    sh, g = shell
    res = sh.run(f"{g} {command}")
    assert res.returncode == 3, f"$ {command}\n{res.stderr}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"glacierfs: error: vault {VAULT} does not exist in us-east-1"), lines
    assert res.stdout == ""
    assert _files_under(sh.cwd / "my cache") == []  # no catalog, locks or region folder for the typo
    listed = sh.run(one_hint(res))  # the hint lists the vaults there are, with the same options
    assert listed.returncode == 0, listed.stderr
    assert _files_under(sh.cwd / "my cache") == []


def test_an_existing_vault_without_a_catalog_still_gets_one(glacier_server_module, tmp_path: Path) -> None:
    sh = Shell(tmp_path, glacier_server_module)
    g = f"glacierfs --local {glacier_server_module.data_dir} --cache-dir cache"
    assert sh.run(f"{g} vaults create fresh-vault").returncode == 0
    res = sh.run(f"{g} status -v fresh-vault")
    assert res.returncode == 0 and res.stdout.startswith("vault fresh-vault: inventory none"), res.stderr
    res = sh.run(f"{g} status")  # the catalog made for it is listed from now on (no request)
    assert "vault fresh-vault:" in res.stdout, res.stderr


def _skip_without_fuse() -> None:
    if not os.path.exists("/dev/fuse") or subprocess.run(["which", "fusermount3"], capture_output=True).returncode:
        pytest.skip("FUSE is not available")


def test_mount_of_a_missing_vault_says_so_and_leaves_no_state(glacier_server_module, tmp_path: Path) -> None:
    """Only the mount's log stays (the error names it); no catalog, lock or cache folder."""
    from tests.helpers.mounts import MountSet

    _skip_without_fuse()
    mounts = MountSet()
    try:
        cache = tmp_path / "cache"
        res = mounts.mount("--endpoint-url", glacier_server_module.url, "--cache-dir", str(cache), VAULT,
                           mnt=tmp_path / "mnt", check=False)
        assert res.returncode == 3, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "mount failed" in lines[0] and f"{VAULT!r} does not exist" in lines[0], lines
        left = _files_under(cache)
        assert left and all(p == "logs" or p.startswith("logs/") for p in left), left
        assert os.listdir(tmp_path / "mnt") == []
    finally:
        mounts.cleanup()
