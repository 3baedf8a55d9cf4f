"""Is another process still there? Used to tell a live owner of local state from a dead one.

Lock-like records (an upload's owner, the server advertised in a data dir) store a pid and
the process's start time, so a pid reused by an unrelated process is not mistaken for the owner.
"""

from __future__ import annotations

import os
from typing import Any


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def pid_running(pid: Any) -> bool:
    """Like :func:`pid_alive`, but a zombie (exited, not yet reaped by its parent) counts as gone.

    A daemonized mount is reparented to init or a subreaper, which may reap it late: waiting
    for "the process stopped" must not wait for the reaping.
    """
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    return state not in (b"Z", b"X")


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of this user's processes started with ``name=value`` in their environment.

    ``/proc/PID/environ`` is readable only by the process's owner (and root), so this finds
    our own processes only; it shows the environment the process was started with.
    """
    needle = f"{name}={value}".encode()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            found.append(int(entry))
    return found
