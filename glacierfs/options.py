"""The common options every client command accepts (connection, state, output), defined once.

``glacierfs`` accepts them before the sub-command (``glacierfs -q --local D download ...``)
and after it (``glacierfs download --local D ...``): the top-level parser holds them with
their defaults, and each sub-command a copy whose defaults are ``SUPPRESS`` (see
:func:`common_options`), so a value given before the sub-command is not overwritten by the
sub-command's default. A value given after the sub-command wins.

Each help text states its default, because the sub-command's copy has none argparse could show.
"""

from __future__ import annotations

import argparse
import logging
import os

from glacierfs.errors import UsageError
from glacierfs.names import normalize_tier

log = logging.getLogger(__name__)

#: The destinations of the common options (what :mod:`glacierfs.hints` re-renders, minus secrets).
COMMON_DESTS = (
    "endpoint_url",
    "local",
    "region",
    "profile",
    "cache_dir",
    "access_key",
    "secret_key",
    "timeout",
    "quiet",
    "debug",
)


def add_common_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """Add the common options to ``p``; ``nested``: a sub-command's copy (defaults suppressed)."""
    g = p.add_argument_group("connection and state (also accepted before the command)")
    g.add_argument(
        "--endpoint-url",
        metavar="URL",
        help="Glacier endpoint, e.g. a `glacierfs serve` (default: AWS for --region)",
    )
    g.add_argument(
        "--local",
        metavar="DATA_DIR",
        help="use the local Glacier over DATA_DIR: the `glacierfs serve` running on it, else an "
        "embedded one for this command (default: off)",
    )
    g.add_argument("--region", help="AWS region (default: from the AWS config, else us-east-1)")
    g.add_argument("--profile", metavar="NAME", help="AWS profile (default: the AWS chain's)")
    env_cache = os.environ.get("GLACIERFS_CACHE_DIR")
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=env_cache,
        help="local state and cache directory (default: env GLACIERFS_CACHE_DIR, else ~/.cache/glacierfs)",
    )
    g.add_argument(
        "-k",
        "--access-key",
        metavar="KEY",
        help="AWS access key id (default: the AWS chain; for compatibility with the original "
        "glacier script: prefer the chain, a command line is visible to other users)",
    )
    g.add_argument(
        "-s",
        "--secret-key",
        metavar="SECRET",
        help="AWS secret access key (default: the AWS chain; see -k)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="give up any one wait (a job, a transfer, a stalled body) after SECONDS (default: none)",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or status output (default: off)")
    g.add_argument("--debug", action="store_true", help="verbose logging to stderr, tracebacks (default: off)")
    if nested:
        for action in p._actions:
            if action.dest in COMMON_DESTS:
                action.default = argparse.SUPPRESS


def common_options(*, nested: bool = True) -> argparse.ArgumentParser:
    """A parent parser holding the common options (``nested``: for a sub-command, the default)."""
    p = argparse.ArgumentParser(add_help=False)
    add_common_options(p, nested=nested)
    return p


def tier_type(value: str) -> str:
    """argparse ``type=`` for a retrieval tier (case-insensitive; the rule is :mod:`glacierfs.names`)."""
    try:
        return normalize_tier(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_type(value: str) -> int:
    """argparse ``type=`` for a count (0 or more)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {n}")
    return n


def positive_type(value: str) -> int:
    """argparse ``type=`` for a count of 1 or more."""
    n = count_type(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n
