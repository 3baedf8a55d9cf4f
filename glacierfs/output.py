"""Result and note lines of the CLI commands: stdout for results, stderr for notes. One owner."""

from __future__ import annotations

import sys

from glacierfs.progress import end_status


def out(line: str) -> None:
    """One result line on stdout (after erasing a status line on the terminal)."""
    end_status()
    sys.stdout.write(line + "\n")


def note(line: str) -> None:
    """One informational line on stderr: not an error, not part of the parseable output."""
    end_status()
    sys.stdout.flush()
    print(f"glacierfs: {line}", file=sys.stderr)
