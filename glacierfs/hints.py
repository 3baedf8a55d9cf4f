"""The one place that renders a ``glacierfs ...`` command the user is told to run.

A hint is only useful if it works when pasted into the same shell: it must address the same
endpoint, region, profile, local server and cache as the command (or mount) that printed it,
else it fails, or worse, with AWS keys in the environment, addresses a real AWS vault.
:func:`command` renders the words given plus the common options actually in use
(``--local DIR``, ``--cache-dir DIR``, ``--endpoint-url URL``, ``--region R``,
``--profile P``), every word shell-quoted. Credentials (``-k``/``-s``) are never rendered:
a hint printed with them relies on the AWS chain of the shell it is pasted into.

The options go right after the first word (the command's name): every sub-command accepts
them there, ``mount`` included. Callers pass ``--`` before a positional argument that
starts with ``-``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from glacierfs.errors import GlacierFSError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommonOptions:
    """The common options that select endpoint and state (what a hint must repeat)."""

    local: str | None = None
    cache_dir: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace | None) -> CommonOptions:
        """The options of a parsed command line; paths made absolute (the shell may ``cd``)."""
        if args is None:
            return cls()

        def opt(name: str) -> str | None:
            value = getattr(args, name, None)
            return str(value) if value else None

        local, cache_dir = opt("local"), opt("cache_dir")
        return cls(
            local=str(Path(local).expanduser().absolute()) if local else None,
            cache_dir=str(Path(cache_dir).expanduser().absolute()) if cache_dir else None,
            endpoint_url=opt("endpoint_url"),
            region=opt("region"),
            profile=opt("profile"),
        )

    def argv(self) -> list[str]:
        out: list[str] = []
        for flag, value in (
            ("--local", self.local),
            ("--endpoint-url", self.endpoint_url),
            ("--region", self.region),
            ("--profile", self.profile),
            ("--cache-dir", self.cache_dir),
        ):
            if value:
                out += [flag, value]
        return out


def command(options: CommonOptions | argparse.Namespace | None, *words: str) -> str:
    """``glacierfs WORD0 <common options in use> WORD1 ...``, shell-quoted, ready to paste."""
    opts = options if isinstance(options, CommonOptions) else CommonOptions.from_args(options)
    argv = ["glacierfs"]
    if words:
        argv += [words[0], *opts.argv(), *words[1:]]
    else:
        argv += opts.argv()
    return shlex.join(argv)


def error_line(exc: GlacierFSError, args: argparse.Namespace | None) -> str:
    """``error: <message>`` plus the commands the error names: ``; run: <command>[, then: <command>]``."""
    line = f"error: {exc}"
    for i, words in enumerate(exc.hints):
        line += f"{'; run' if i == 0 else ', then'}: {command(args, *words)}"
    return line
