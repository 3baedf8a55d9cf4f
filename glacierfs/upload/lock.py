"""Cross-process owner lock of one upload key (``fcntl.flock``).

Threading contract: an :class:`UploadLock` belongs to the thread that acquired it (the
engine's calling thread) and is released by it. flock locks belong to the open file
description, so two engines in one process exclude each other as two processes do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path

from glacierfs.errors import ConflictError, StateError


def _owner_of(fd: int) -> str:
    """The holder's "process PID on HOST" line, for the refusal message.

    The holder writes it just after its flock succeeds, so a refusal that races that write
    looks again for up to a quarter second before it says "another process".
    """
    deadline = time.monotonic() + 0.25
    while True:
        try:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            text = ""
        if text.startswith("process ") and " on " in text:
            return text
        if time.monotonic() >= deadline:
            return text or "another process"
        time.sleep(0.01)


class UploadLock:
    """The cross-process owner lock of one upload key (``fcntl.flock`` on a per-key lock file).

    The lock file is ``<lock dir>/<sha256(key)[:32]>.lock`` (0600, in a 0700 directory). It is
    taken without waiting *before* the saved state is read and held until the upload is
    recorded (or fails), so it covers "look for state" -> "state written" and marks the live
    owner for the whole upload. The kernel drops it when its holder dies, however it dies, so
    a dead owner's upload is simply resumed by the next run; no pid is guessed. The holder
    writes its pid and host into the file for the refusal message only. On release the file is
    unlinked while still locked; a process that locked the unlinked inode notices (the path no
    longer names its inode) and retries, so two holders can never coexist.
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = Path(directory)
        self.key = key
        self.path = self.directory / (hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32] + ".lock")
        self._fd: int | None = None

    def acquire(self, what: str) -> None:
        """Take the lock now or raise ConflictError naming the live owner (``what`` names the file)."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the upload lock directory {self.directory}: {exc.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StateError(f"cannot open the upload lock {self.path}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner_of(fd)
                os.close(fd)
                raise ConflictError(
                    f"{what} is being uploaded by {owner}; wait for it to finish (or stop it), then run the upload again"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise StateError(f"cannot lock {self.path}: {exc.strerror}") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder unlinked it as we locked it: take the new file
                os.close(fd)
                continue
            with contextlib.suppress(OSError):
                owner_line = f"process {os.getpid()} on {socket.gethostname()}\n".encode()
                os.pwrite(fd, owner_line, 0)  # write, then cut: a reader never sees an empty file
                os.ftruncate(fd, len(owner_line))
            self._fd = fd
            return

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still locked: nobody can take this inode for a new upload
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> UploadLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
