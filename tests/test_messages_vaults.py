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

from tests.helpers.shell import Shell, one_hint

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


def test_a_policy_denying_describe_vault_alone_does_not_stop_an_upload(glacier_server_module, tmp_path: Path) -> None:
    """An upload-only IAM user may not describe vaults: the check before the first catalog steps aside."""
    from tests.helpers.hardening import LyingProxy

    def deny(op: str, headers: dict[str, str]) -> tuple[int, dict[str, str]] | None:
        if op != "VaultGET":  # DescribeVault, as the proxy names it
            return None
        return 403, {"x-amzn-errortype": "AccessDeniedException:", "content-type": "application/json"}

    glacier_server_module.client().create_vault(vaultName="upload-only")
    (tmp_path / "a.txt").write_bytes(b"hello")
    with LyingProxy(glacier_server_module.url, lambda answer: False, deny) as proxy:
        sh = Shell(tmp_path, glacier_server_module)
        g = f"glacierfs --endpoint-url {proxy.url} --cache-dir cache"
        res = sh.run(f"{g} upload -v upload-only a.txt")
        assert res.returncode == 0 and res.stdout.endswith("  5  a.txt\n"), res.stderr
        assert "VaultGET" in proxy.seen  # DescribeVault was asked, and denied
        res = sh.run(f"{g} upload -v {VAULT} a.txt")  # a missing vault still fails with one line
        assert res.returncode == 3 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def _skip_without_fuse() -> None:
    if not os.path.exists("/dev/fuse") or subprocess.run(["which", "fusermount3"], capture_output=True).returncode:
        pytest.skip("FUSE is not available")


def test_mount_of_a_missing_vault_says_so_and_leaves_no_state(glacier_server_module, tmp_path: Path) -> None:
    """The CLI's wording (vault, region, endpoint) and its hint, which works as printed in the
    same shell (relative --cache-dir with a space: quoted, made absolute); only the mount's log
    stays (the error names it); no catalog, lock or cache folder."""
    from tests.helpers.mounts import MountSet

    _skip_without_fuse()
    mounts = MountSet()
    try:
        url = glacier_server_module.url
        res = mounts.mount("--endpoint-url", url, "--region", "us-east-1", "--cache-dir", "my cache", VAULT,
                           mnt=tmp_path / "mnt", cwd=tmp_path, check=False)
        assert res.returncode == 3, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("glacierfs: error: mount failed: "), lines
        assert f"vault {VAULT} does not exist in us-east-1 at {url} (log: " in lines[0], lines
        sh = Shell(tmp_path, glacier_server_module)
        cli_line = sh.run(f"glacierfs inventory --endpoint-url {url} --region us-east-1 --cache-dir 'my cache' "
                          f"-v {VAULT}").stderr.strip()
        assert cli_line.split("; run: ") == [f"glacierfs: error: vault {VAULT} does not exist in us-east-1 at {url}",
                                             lines[0].split("; run: ")[1]], (cli_line, lines)
        hint = one_hint(res)
        assert "--cache-dir" in hint and str(tmp_path / "my cache") in hint, hint
        listed = sh.run(hint)
        assert listed.returncode == 0, listed.stderr
        left = _files_under(tmp_path / "my cache")
        assert left and all(p == "logs" or p.startswith("logs/") for p in left), left
        assert os.listdir(tmp_path / "mnt") == []
    finally:
        mounts.cleanup()


def _state(path: Path) -> str:
    res = subprocess.run(["getfattr", "--only-values", "-n", "user.glacier.state", str(path)],
                         capture_output=True, text=True, timeout=30)
    return res.stdout.strip() if res.returncode == 0 else f"error: {res.stderr.strip()}"


def test_cache_size_holds_from_the_mount_start(glacier_server_module, tmp_path: Path) -> None:
    """Issue 13 item 9, first half: 3 cached archives and a remount with a bound that fits one: at
    most one stays cached once the mount is up, before any write (was: all until the next write)."""
    from tests.helpers.mounts import MountSet, cli, wait_until

    _skip_without_fuse()
    vault = "cache-bound"
    opts = ["--local", str(glacier_server_module.data_dir), "--cache-dir", str(tmp_path / "cache")]
    names = [f"f{i}.bin" for i in range(3)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * 60_000)
    assert cli("vaults", "create", vault, *opts).returncode == 0
    up = cli("upload", "-q", "-v", vault, *opts, *names, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    mnt = tmp_path / "mnt"
    mounts = MountSet()
    try:
        mounts.mount(*opts, vault, mnt=mnt)
        for name in names:
            res = subprocess.run(["setfattr", "-n", "user.glacier.retrieve", "-v", "Standard", str(mnt / name)],
                                 capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stderr
        wait_until(lambda: all(_state(mnt / n) == "cached" for n in names), 120, "the three retrievals")
        assert cli("umount", str(mnt)).returncode == 0
        mounts.mount(*opts, "--cache-size", "100K", vault, mnt=mnt)
        wait_until(lambda: sum(_state(mnt / n) == "cached" for n in names) <= 1, 60, "the bound at mount start")
        states = [_state(mnt / n) for n in names]
        assert states.count("cached") == 1 and all(not s.startswith("error") for s in states), states
        assert cli("umount", str(mnt)).returncode == 0
    finally:
        mounts.cleanup()
