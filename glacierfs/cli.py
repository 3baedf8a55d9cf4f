"""The ``glacierfs`` command: argument parsing and the top-level error boundary.

Each command family registers its own sub-parsers so that the modules stay independent:

* ``glacierfs.server.command`` - ``serve``;
* ``glacierfs.commands``       - treehash, upload, abort, inventory, delete, download, vaults, status;
* ``glacierfs.mount``          - mount, umount.

A registered command sets ``func`` (``args -> int``) with ``parser.set_defaults``. Every
:class:`~glacierfs.errors.GlacierFSError` becomes one line on stderr and its exit code;
anything else is a bug and is reported as one line too (the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from glacierfs import __version__
from glacierfs.errors import GlacierFSError

log = logging.getLogger(__name__)


def common_options() -> argparse.ArgumentParser:
    """Options every client command accepts (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and state")
    g.add_argument("--endpoint-url", metavar="URL", help="Glacier endpoint (e.g. a local `glacierfs serve`)")
    g.add_argument(
        "--local",
        metavar="DATA_DIR",
        help="use the embedded local Glacier over DATA_DIR (reuses a server already running on it)",
    )
    g.add_argument("--region", help="AWS region (default: from the AWS config, else us-east-1)")
    g.add_argument("--profile", help="AWS profile name")
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=os.environ.get("GLACIERFS_CACHE_DIR"),
        help="local state and cache directory (env GLACIERFS_CACHE_DIR; default ~/.cache/glacierfs)",
    )
    g.add_argument("-k", "--access-key", help=argparse.SUPPRESS)
    g.add_argument("-s", "--secret-key", help=argparse.SUPPRESS)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    g.add_argument("--debug", action="store_true", help="verbose logging to stderr")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glacierfs",
        description="Browse, upload to, verify and retrieve from Amazon Glacier vaults.",
    )
    parser.add_argument("--version", action="version", version=f"glacierfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = common_options()

    from glacierfs.server.command import register as register_server

    register_server(sub)
    try:
        from glacierfs.commands import register as register_commands
    except ImportError as exc:  # pragma: no cover - only while the package is incomplete
        log.debug("client commands unavailable: %s", exc)
    else:
        register_commands(sub, common)
    try:
        from glacierfs.mount import register as register_mount
    except ImportError as exc:  # pragma: no cover
        log.debug("mount commands unavailable: %s", exc)
    else:
        register_mount(sub, common)
    from glacierfs.exportcmd import register as register_export

    register_export(sub, common)
    return parser


def setup_logging(debug: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="glacierfs: %(levelname)s: %(message)s", stream=sys.stderr)
    # botocore logs request headers at DEBUG; keep it quiet even with --debug.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "debug", False), getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except GlacierFSError as exc:
        print(f"glacierfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("glacierfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"glacierfs: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 70
