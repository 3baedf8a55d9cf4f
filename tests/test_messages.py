"""Messages and conventions a person can trust (issue 13, CLI part; issue 10 items 3 and 4, CLI part).

* every hint the CLI prints is a command that works when pasted into the same shell;
* README's exit-code table is errors.py's; a missing local file is "not found" (3);
* help: every option described with its default, -k/-s shown, options before the command;
* waits rewrite one status line on a terminal; ``--no-wait`` ends normally with exit 0;
* ``status`` lists current jobs by path, ``--all`` the finished ones;
* ``delete -a UNKNOWN`` never says "deleted";
* text from a server is printed with its control characters escaped;
* a FIFO (or any non-regular file) is refused with one line instead of blocking.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from glacierfs import cli as cli_mod
from glacierfs import hints
from glacierfs.errors import EXIT_CODES, GlacierFSError
from glacierfs.text import shown
from tests.helpers.cli import REPO, Cli, write
from tests.helpers.shell import COMMAND_TIMEOUT, Shell, hints_in, one_hint

VENV_BIN = Path(sys.executable).parent
FIFO_TIMEOUT = 30.0  # a refused FIFO must answer well within this
CLIENT_COMMANDS = ("treehash", "upload", "abort", "inventory", "delete", "download", "vaults", "status")


# --------------------------------------------------------------------------- hints


def test_hint_renders_the_options_in_use_shell_quoted(tmp_path: Path) -> None:
    args = argparse.Namespace(
        local="my data", cache_dir="c d", endpoint_url=None, region="eu-west-1", profile="p'1",
        access_key="AKIDSECRET", secret_key="SECRETKEY",
    )
    line = hints.command(args, "download", "-v", "v", "--", "-odd name")
    words = shlex.split(line)
    assert words[:2] == ["glacierfs", "download"]
    assert words[words.index("--local") + 1] == str(Path("my data").absolute())
    assert words[words.index("--cache-dir") + 1] == str(Path("c d").absolute())
    assert words[words.index("--region") + 1] == "eu-west-1" and words[words.index("--profile") + 1] == "p'1"
    assert words[-4:] == ["-v", "v", "--", "-odd name"]
    assert "AKIDSECRET" not in line and "SECRETKEY" not in line  # credentials are never rendered
    assert hints.command(None, "status") == "glacierfs status"


def test_every_hint_the_cli_prints_works_as_printed(glacier_server_factory, tmp_path: Path) -> None:
    """Each hint is copied from stderr and run as printed, in the same shell: it works.

    Relative paths with spaces for --local and --cache-dir: the hint must quote them and make
    them absolute. ``--local`` finds the server already running on the data dir.
    """
    server = glacier_server_factory("--job-delay", "3600", data_dir=tmp_path / "my data")
    sh = Shell(tmp_path, server)
    (tmp_path / "sub dir").mkdir()
    write(tmp_path / "a.txt", 321)
    g = "glacierfs --local 'my data' --cache-dir 'my cache'"
    assert sh.run(f"{g} vaults create v && {g} vaults create v2").returncode == 0
    assert sh.run(f"{g} upload -v v a.txt").returncode == 0

    # 1. inventory before the vault has one: the catalog, exit 0, when an inventory comes, the command
    res = sh.run(f"{g} inventory -v v")
    assert res.returncode == 0 and res.stdout.startswith("a.txt\t321\t"), res.stderr
    assert "error" not in res.stderr and "within about a minute" in res.stderr
    hint = one_hint(res)
    server.snapshot("v")
    again = sh.run(hint, complete_jobs=True)
    assert again.returncode == 0 and again.stdout.startswith("a.txt\t321\t"), again.stderr

    # 2. delete of an id the catalog does not know: refused, and the suggested refresh works
    res = sh.run(f"{g} delete -v v -a=NOSUCHARCHIVE")
    assert res.returncode == 3 and res.stdout == "" and "nothing was sent" in res.stderr
    assert sh.run(one_hint(res), complete_jobs=True).returncode == 0

    # 3. download --no-wait while the job runs: pending, exit 0, and the command that downloads
    res = sh.run(f"{g} download -v v a.txt --no-wait -o 'sub dir/got.txt'")
    assert res.returncode == 0 and res.stdout.startswith("pending "), res.stderr
    assert "error" not in res.stderr
    done = sh.run(one_hint(res), complete_jobs=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sub dir" / "got.txt").read_bytes() == (tmp_path / "a.txt").read_bytes()

    # 4. status hides finished jobs and tells how to list them
    res = sh.run(f"{g} status -v v")
    listed = sh.run(one_hint(res))
    assert listed.returncode == 0 and "job Succeeded: retrieval a.txt" in listed.stdout, listed.stdout

    # 5. a path in a vault whose catalog has no inventory yet: the suggested inventory works
    res = sh.run(f"{g} download -v v2 nothing.txt")
    assert res.returncode == 3 and "no archive nothing.txt in vault v2" in res.stderr
    assert sh.run(one_hint(res)).returncode == 0


# --------------------------------------------------------------------------- exit codes


def _readme_exit_table() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `?(\d+)`? \| (.+?) \|$", text.split("| exit status | meaning |", 1)[1], re.M)
    table: dict[int, str] = {}
    for code, meaning in rows:
        if int(code) in table:
            break  # the next table
        table[int(code)] = meaning.strip()
    return table


def test_readme_exit_code_table_is_the_codes_table() -> None:
    assert _readme_exit_table() == EXIT_CODES
    for cls in [GlacierFSError, *GlacierFSError.__subclasses__()]:
        assert cls.exit_code in EXIT_CODES, cls


def test_a_missing_local_file_is_not_found(cli: Cli, work: Path) -> None:
    cli.error(3, "treehash", "missing.bin", match="missing.bin: no such file")
    cli.error(3, "upload", "-v", "v", "missing.bin", match="missing.bin: no such file")


# --------------------------------------------------------------------------- help


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_client_option_is_described_with_its_default() -> None:
    top = cli_mod.build_parser()
    commands = _subparsers(top)
    parsers = [(name, commands[name]) for name in CLIENT_COMMANDS]
    parsers += [(f"vaults {n}", p) for n, p in _subparsers(commands["vaults"]).items()]
    for name, p in parsers:
        assert p.description, name
        for action in p._actions:
            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help is not argparse.SUPPRESS, where
            if action.option_strings and not action.required:
                assert "default" in action.help, where
                if action.default not in (None, False, argparse.SUPPRESS):
                    assert str(action.default) in action.help, where


def test_help_shows_keys_and_explains_short_options(cli: Cli) -> None:
    text = cli("upload", "--help", connect=False).stdout
    assert "-k KEY, --access-key KEY" in text and "-s SECRET, --secret-key SECRET" in text
    assert "--foreground for mount" in cli("inventory", "--help", connect=False).stdout
    top = cli("--help", connect=False).stdout
    assert "-f is --force for `inventory` and --foreground for `mount`" in " ".join(top.split())


def test_common_options_before_the_command(cli: Cli, glacier_server, tmp_path: Path) -> None:
    args = cli_mod.build_parser().parse_args(["-q", "--region", "r1", "download", "-v", "v", "-a=x"])
    assert args.quiet and args.region == "r1" and args.func.__name__ == "cmd_download"
    args = cli_mod.build_parser().parse_args(["--region", "r1", "status", "--region", "r2"])
    assert args.region == "r2"  # after the command wins
    before = [sys.executable, "-m", "glacierfs", "-q", "--endpoint-url", glacier_server.url,
              "--cache-dir", str(tmp_path / "cache")]
    env = Cli.env()
    assert subprocess.run([*before, "vaults", "create", "early"], env=env, capture_output=True,
                          timeout=COMMAND_TIMEOUT, check=False).returncode == 0
    res = subprocess.run([*before, "vaults"], env=env, capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT, check=False)
    assert res.returncode == 0 and res.stdout.startswith("early\t"), res.stderr


# --------------------------------------------------------------------------- waits, --no-wait, status


def _read_all(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the other side is closed
            return
        if not data:
            return
        sink.append(data)


def test_a_wait_rewrites_one_status_line_on_a_terminal(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    server = glacier_server_factory("--job-delay", "3600")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    write(work / "w.bin", 100)
    cli("upload", "-v", "v", "w.bin")
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        cli.argv(["download", "-v", "v", "w.bin", "-o", str(tmp_path / "out.bin")]),
        cwd=work, env=cli.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while b"".join(chunks).count(b"waiting for") < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        server.complete_jobs()
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        reader.join(timeout=10)
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, err
    first, last = err.index("waiting for"), err.rindex("waiting for")
    assert last > first and "\n" not in err[first:last], repr(err)  # rewritten in place, not a line per poll
    assert "\r" in err[first:last]
    assert out.decode().split("  ")[3].strip() == str(tmp_path / "out.bin")


def test_status_lists_current_jobs_by_path_and_all_with_all(glacier_server_factory, tmp_path: Path, work: Path) -> None:
    server = glacier_server_factory("--job-delay", "3600")
    cli = Cli(server.url, tmp_path / "cache", work)
    cli("vaults", "create", "v")
    write(work / "one.txt", 10)
    write(work / "two.txt", 20, seed=1)
    cli("upload", "-v", "v", "one.txt", "two.txt")
    pending = cli("download", "-v", "v", "one.txt", "--no-wait", "-o", str(tmp_path / "one.out"))
    assert pending.lines[0].startswith("pending ")
    res = cli("status", "-v", "v")
    jobs = [ln for ln in res.lines if "job" in ln]
    assert len(jobs) == 1 and jobs[0].startswith("  job InProgress: retrieval one.txt (Standard, started "), jobs
    server.complete_jobs()
    cli("download", "-v", "v", "one.txt", "-o", str(tmp_path / "one.out"))
    res = cli("status", "-v", "v")
    assert not [ln for ln in res.lines if "job" in ln], res.stdout  # finished: not current
    assert "1 finished job(s) not listed" in res.stderr
    every = cli("status", "-v", "v", "--all")
    assert next(ln for ln in every.lines if "job" in ln).startswith("  job Succeeded: retrieval one.txt (Standard")
    as_json = json.loads(cli("status", "-v", "v", "--json", "--all").stdout)
    assert [(j["path"], j["status"]) for j in as_json["jobs"]] == [("one.txt", "Succeeded")]


# --------------------------------------------------------------------------- delete


def test_delete_of_an_unknown_id_never_says_deleted(cli: Cli, glacier_server) -> None:
    cli("vaults", "create", "v")
    glacier_server.populate("v", 1, size=5, descriptions=["kept"], snapshot=True)
    cli("inventory", "-v", "v")
    res = cli.error(3, "delete", "-v", "v", "-a=NOSUCHARCHIVE", match="is not in the catalog of vault v")
    assert res.stdout == "" and "nothing was sent" in res.stderr
    sent = cli("delete", "-v", "v", "-a=NOSUCHARCHIVE", "--unlisted")
    assert sent.lines == ["delete sent NOSUCHARCHIVE  -"]
    assert "Glacier accepted the delete, which it does for any id" in sent.stderr and "error" not in sent.stderr
    assert [ln.split("\t")[0] for ln in cli("inventory", "-v", "v").lines] == ["kept"]
    cli.error(3, "delete", "-v", "nosuchvault", "-a=X", match="vault nosuchvault does not exist")


# --------------------------------------------------------------------------- escaping


def test_shown_escapes_control_characters_only() -> None:
    assert shown("photos/été 2024.jpg") == "photos/été 2024.jpg"
    assert shown("a\x1b[31mb\tc\nd\x7f\x9b\u202e\udcff") == "a\\x1b[31mb\\tc\\nd\\x7f\\x9b\\u202e\\udcff"
    assert shown(None) == "None"


class _Hostile(BaseHTTPRequestHandler):
    """Answers ListVaults with escape sequences in its fields, anything else with an error that has them."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        vault = {
            "VaultName": "ok", "VaultARN": "arn:aws:glacier:us-east-1:0:vaults/ok",
            "CreationDate": "2020-01-01T00:00:00.000Z", "LastInventoryDate": "\x1b]0;pwned\x07\x1b[2J",
            "NumberOfArchives": 1, "SizeInBytes": 1,
        }
        self._send(200, {"VaultList": [vault], "Marker": None})

    def do_PUT(self) -> None:
        self._send(400, {"code": "InvalidParameterValueException", "message": "bad \x1b[31mred\x1b[0m\nforged line",
                         "type": "Client"})


@pytest.fixture
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_text_from_a_server_is_printed_escaped(hostile: str, tmp_path: Path, work: Path) -> None:
    cli = Cli(hostile, tmp_path / "cache", work)
    res = cli("vaults", code=None)
    both = res.stdout + res.stderr
    assert "\x1b" not in both and "\x07" not in both, both
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in both  # shown, escaped (a listing line, or an error naming it)
    res = cli.error(2, "vaults", "create", "x", match="bad \\x1b[31mred\\x1b[0m")
    assert "\x1b" not in res.stderr and len(res.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- non-regular files


@pytest.mark.parametrize("command", [["treehash"], ["upload", "-v", "v"]])
def test_a_fifo_is_refused_with_one_line(cli: Cli, work: Path, command: list[str]) -> None:
    os.mkfifo(work / "fifo")
    started = time.monotonic()
    res = cli(*command, "fifo", code=2, timeout=FIFO_TIMEOUT)
    assert time.monotonic() - started < FIFO_TIMEOUT
    assert res.stderr.splitlines() == ["glacierfs: error: fifo: is a FIFO, not a regular file (only regular files are read)"]
    res = cli(*command, "/dev/null", code=2, timeout=FIFO_TIMEOUT)
    assert "is a character device, not a regular file" in res.stderr


def test_log_lines_are_escaped_and_erase_the_status_line(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    record = logging.LogRecord("glacierfs.jobs", logging.WARNING, __file__, 1, "job %s: %s", ("id\x1b[2J", "x"), None)
    assert cli_mod._safe_record(record) is True
    assert record.getMessage() == "job id\\x1b[2J: x"


def test_errors_carry_the_service_code_as_a_typed_attribute() -> None:
    from glacierfs.errors import NotFoundError

    assert NotFoundError("gone").code is None
    err = NotFoundError("gone", code="ResourceNotFoundException")
    assert err.code == "ResourceNotFoundException" and err.exit_code == 3 and str(err) == "gone"
    assert "code" not in vars(NotFoundError("plain"))  # nothing set on an instance without one


def test_an_error_naming_a_command_gets_it_rendered_with_the_options_in_use(tmp_path: Path) -> None:
    from glacierfs.errors import StateError

    args = argparse.Namespace(local=str(tmp_path / "d d"), cache_dir=None, endpoint_url=None, region=None, profile=None)
    exc = StateError("upload state of x lost part hashes", hint=("abort", "-v", "v", "x y"))
    line = cli_mod.error_line(exc, args)
    assert line.startswith("error: upload state of x lost part hashes; run: ")
    assert shlex.split(hints_in(line)[0]) == ["glacierfs", "abort", "--local", str(tmp_path / "d d"), "-v", "v", "x y"]
    assert cli_mod.error_line(StateError("plain"), args) == "error: plain"
