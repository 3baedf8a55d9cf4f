"""The error vocabulary of glacierfs, and the one place that maps errors to exit codes and errnos.

Every failure a user can cause or meet (bad input, missing vault, a failing or lying
server, corrupt local state) is raised as a :class:`GlacierFSError` subclass carrying one
clear line of text. The CLI prints ``glacierfs: error: <line>`` and exits with
``exit_code``; the FUSE adapter returns ``errno_for(exc)``. Messages never contain
credentials.

Three class attributes make an error typed, so nothing is ever patched onto an instance:

* ``exit_code``: the process exit status (:data:`EXIT_CODES` is the table the README shows);
* ``errno``: what a filesystem call returns (:func:`errno_for` is the one errno table);
* ``code``: the service's error code (``ResourceNotFoundException``...) when the error came
  from the service, else None; set through the constructor: ``NotFoundError(msg, code=...)``;
* ``hints``: the ``glacierfs`` commands that would help, in the order to run them, each as its
  words (``(("abort", "-v", vault, "--upload-id", upload_id),)``), or empty; set through the
  constructor (``hint=`` one command, ``hints=`` several). Library code does not know the
  options in use (``--local``, ``--endpoint-url``, ``--cache-dir``...), so it never writes a
  command into its message: the CLI renders each with :func:`glacierfs.hints.command` and
  appends ``; run: <command>`` (``, then: <command>`` for the next ones) to the message.
  ``hint`` is the first of them.
"""

from __future__ import annotations

import errno as _errno
import logging
import os

log = logging.getLogger(__name__)


class GlacierFSError(Exception):
    """Base class: ``str(exc)`` is the one-line message shown to the user."""

    exit_code: int = 1
    errno: int = _errno.EIO
    code: str | None = None
    hints: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        hint: tuple[str, ...] = (),
        hints: tuple[tuple[str, ...], ...] = (),
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        commands = ((tuple(hint),) if hint else ()) + tuple(tuple(h) for h in hints if h)
        if commands:
            self.hints = commands

    @property
    def hint(self) -> tuple[str, ...]:
        """The first command of :attr:`hints` (empty if none)."""
        return self.hints[0] if self.hints else ()


class UsageError(GlacierFSError):
    """Bad arguments or input the user can fix (bad vault name, bad size, not a regular file)."""

    exit_code = 2
    errno = _errno.EINVAL


class NotFoundError(GlacierFSError):
    """A vault, archive, job, upload or local path that does not exist."""

    exit_code = 3
    errno = _errno.ENOENT


class CredentialsError(GlacierFSError):
    """No usable credentials in the AWS chain, or the service refused them."""

    exit_code = 4
    errno = _errno.EACCES


class ServiceError(GlacierFSError):
    """The service failed or refused in a way retries did not cure (throttled, 5xx, closed, unreachable)."""

    exit_code = 5
    errno = _errno.EIO


class IntegrityError(GlacierFSError):
    """A tree hash, length or range did not match: the server or the disk lied. Never ignored."""

    exit_code = 6
    errno = _errno.EIO


class StateError(GlacierFSError):
    """Local state is corrupt, locked by another process, or conflicts with the request."""

    exit_code = 7
    errno = _errno.EIO


class NotReadyError(GlacierFSError):
    """The data needs a retrieval job that has not finished (or not started) yet."""

    exit_code = 8
    errno = _errno.EAGAIN


class ConflictError(GlacierFSError):
    """The operation is refused by policy or state (e.g. vault not empty, archive busy)."""

    exit_code = 9
    errno = _errno.EPERM


EXIT_OK = 0
EXIT_INTERNAL = 70  # a bug (EX_SOFTWARE): one line, the traceback only with --debug
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

#: Every exit status a glacierfs command can end with, and what it means (README's table).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    GlacierFSError.exit_code: "other error",
    UsageError.exit_code: "usage: bad arguments or input (bad name or size, not a regular file)",
    NotFoundError.exit_code: "not found: vault, archive, job, upload or local file",
    CredentialsError.exit_code: "credentials missing or refused",
    ServiceError.exit_code: "service failed or unreachable (after retries)",
    IntegrityError.exit_code: "integrity: a tree hash or length did not match",
    StateError.exit_code: "local state: corrupt, locked or in use",
    NotReadyError.exit_code: "not ready: a job is still running or Glacier has no inventory yet",
    ConflictError.exit_code: "refused: conflict with the vault's or archive's state",
    EXIT_INTERNAL: "internal error (a bug; --debug shows the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


# --------------------------------------------------------------------------- POSIX answers of the mount core


class FSError(OSError):
    """A POSIX answer of the mount core: ``errno`` is what the FUSE call returns.

    The core raises a named subclass (``NoEntry()``, ``NotPermitted("archives are immutable")``):
    it says what happened, :data:`FS_ERRNOS` says which errno that is. ``FSError(number)`` is
    left for errnos passed through from the OS (a failed fsync keeps its own errno).
    """

    def __init__(self, err: int, message: str | None = None) -> None:
        super().__init__(err, message or os.strerror(err))


class _PosixAnswer(FSError):
    """An :class:`FSError` whose errno comes from :data:`FS_ERRNOS` by its class."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(FS_ERRNOS[type(self)], message)

    def __reduce__(self) -> tuple[type[_PosixAnswer], tuple[str | None]]:
        return type(self), (self.strerror,)  # copy/pickle: OSError's default would pass (errno, text)


class NoEntry(_PosixAnswer):
    """No such file or directory."""


class Exists(_PosixAnswer):
    """The name is taken."""


class NotPermitted(_PosixAnswer):
    """Refused by the mount's rules (archives are immutable, no links, no moves between vaults)."""


class Busy(_PosixAnswer):
    """In use: open for writing, being uploaded, or a vault with a live mount."""


class TryAgain(_PosixAnswer):
    """Not yet: the archive is not retrieved, the vault is still being opened."""


class IOFailure(_PosixAnswer):
    """The bytes could not be written or uploaded (unmounting, upload failed or cancelled)."""


class InvalidArgument(_PosixAnswer):
    """A bad value: a name with control characters, a bad xattr value, renaming into itself."""


class NoAttribute(_PosixAnswer):
    """No such extended attribute."""


class NotSupported(_PosixAnswer):
    """The operation or attribute namespace is not supported here."""


class NotADirectory(_PosixAnswer):
    """A path component or target is a file."""


class IsADirectory(_PosixAnswer):
    """A file operation on a directory."""


class NotEmpty(_PosixAnswer):
    """The directory (or vault) still holds entries."""


class BadHandle(_PosixAnswer):
    """The file handle is unknown or closed."""


class ReadOnly(_PosixAnswer):
    """The place is read-only (the root of an all-vaults mount)."""


class NameTooLong(_PosixAnswer):
    """The path does not fit in an archive description."""


class BadName(_PosixAnswer):
    """The name is not valid UTF-8."""


#: Which errno each POSIX answer of the mount core is (EOPNOTSUPP is ENOTSUP on Linux).
FS_ERRNOS: dict[type[FSError], int] = {
    NoEntry: _errno.ENOENT,
    Exists: _errno.EEXIST,
    NotPermitted: _errno.EPERM,
    Busy: _errno.EBUSY,
    TryAgain: _errno.EAGAIN,
    IOFailure: _errno.EIO,
    InvalidArgument: _errno.EINVAL,
    NoAttribute: _errno.ENODATA,
    NotSupported: _errno.EOPNOTSUPP,
    NotADirectory: _errno.ENOTDIR,
    IsADirectory: _errno.EISDIR,
    NotEmpty: _errno.ENOTEMPTY,
    BadHandle: _errno.EBADF,
    ReadOnly: _errno.EROFS,
    NameTooLong: _errno.ENAMETOOLONG,
    BadName: _errno.EILSEQ,
}


def errno_for(exc: BaseException) -> int:
    """The errno a filesystem call returns for ``exc``: THE errno table.

    A :class:`GlacierFSError` gives its class's ``errno``; an ``OSError`` keeps its own (a
    :class:`FSError` got its own from :data:`FS_ERRNOS`); anything else is unexpected and EIO.
    """
    if isinstance(exc, GlacierFSError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO


def exit_code_for(exc: BaseException) -> int:
    """The exit status for ``exc`` (see :data:`EXIT_CODES`)."""
    if isinstance(exc, GlacierFSError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_INTERNAL
