"""The error vocabulary of glacierfs, and the one place that maps errors to exit codes and errnos.

Every failure a user can cause or meet (bad input, missing vault, a failing or lying
server, corrupt local state) is raised as a :class:`GlacierFSError` subclass carrying one
clear line of text. The CLI prints ``glacierfs: error: <line>`` and exits with
``exit_code``; the FUSE adapter returns ``errno_for(exc)``. Messages never contain
credentials.
"""

from __future__ import annotations

import errno as _errno


class GlacierFSError(Exception):
    """Base class: ``str(exc)`` is the one-line message shown to the user."""

    exit_code = 1
    errno = _errno.EIO


class UsageError(GlacierFSError):
    """Bad arguments or input the user can fix (bad vault name, bad size, missing file)."""

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
    """The service failed or refused in a way retries did not cure (throttled, 5xx, closed)."""

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


def errno_for(exc: BaseException) -> int:
    """The errno a filesystem call should return for ``exc`` (EIO for anything unexpected)."""
    if isinstance(exc, GlacierFSError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, GlacierFSError):
        return exc.exit_code
    return 1
