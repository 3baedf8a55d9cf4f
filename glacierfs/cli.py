"""The ``glacierfs`` command: the parser, the common options and the top-level error boundary.

Imported by nobody (only ``__main__`` and the console script). Each command family registers
its own sub-parsers with one line in :data:`REGISTER`: a function ``register(sub, common)``
that adds sub-parsers to ``sub`` (``common``: the parent parser of the common options, see
:mod:`glacierfs.options`; deep-copy it per sub-parser) and sets ``func`` (``args -> int``)
with ``parser.set_defaults``.

Every :class:`~glacierfs.errors.GlacierFSError` becomes one line on stderr and its exit code
(:data:`glacierfs.errors.EXIT_CODES`); anything else is a bug and is reported as one line too
(the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from glacierfs import __version__, commands, exportcmd, hints, mount, statuscmd, treecmds
from glacierfs.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, GlacierFSError
from glacierfs.options import add_common_options, common_options
from glacierfs.progress import end_status
from glacierfs.server import command as server_command
from glacierfs.text import shown

log = logging.getLogger(__name__)

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]", argparse.ArgumentParser], None]


def _register_server(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    server_command.register(sub)  # `serve` takes none of the client's common options


#: The command families, in the order ``--help`` lists them. One line per family.
REGISTER: list[Register] = [
    commands.register,
    statuscmd.register,  # status
    mount.register,
    treecmds.register,  # sync, check, restore, import-journal, wait
    exportcmd.register,  # export to S3
    _register_server,
]

EPILOG = """\
The connection and state options (--local, --endpoint-url, --region, --profile, --cache-dir,
-k/-s, -q, --debug) are accepted before or after COMMAND. Short options mean one thing per
command: -f is --force for `inventory` and --foreground for `mount`; -v is --vault for the
client commands and --verbose for `serve`. Exit status: 0 success, 2 usage, 3 not found,
4 credentials, 5 service, 6 integrity, 7 local state, 8 not ready, 9 refused (see README).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glacierfs",
        description="Browse, upload to, verify and retrieve from Amazon Glacier vaults.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"glacierfs {__version__}")
    add_common_options(parser, nested=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options(nested=True)
    for register in REGISTER:
        register(sub, common)
    return parser


def _safe_record(record: logging.LogRecord) -> bool:
    """Handler filter: erase a status line first, and escape control characters (ids, server text)."""
    end_status()
    message = record.getMessage()
    safe = shown(message)
    if safe != message:
        record.msg, record.args = safe, None
    return True


def setup_logging(debug: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="glacierfs: %(levelname)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_safe_record)
    # botocore logs request headers at DEBUG; keep it quiet even with --debug.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


error_line = hints.error_line  # the one renderer of an error line (also per-file lines of upload)


def _fail(line: str) -> None:
    end_status()
    print(f"glacierfs: {shown(line)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(debug, bool(getattr(args, "quiet", False)))
    try:
        code = int(args.func(args) or 0)
        end_status()
        return code
    except GlacierFSError as exc:
        _fail(error_line(exc, args))
        return exc.exit_code
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return EXIT_INTERNAL
