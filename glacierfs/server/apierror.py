"""The service's error vocabulary: one exception type that carries status, code and message.

Handlers and the store raise :class:`ApiError`; the HTTP layer renders it in the wire format
of reference §1.1 (lower-case ``code``/``message``/``type`` body plus ``x-amzn-ErrorType``).
Messages follow the strings the real service is known to send (reference §1.3).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A Glacier error response: ``status`` HTTP code, ``code`` error code, ``message`` text."""

    def __init__(self, status: int, code: str, message: str, kind: str = "Client") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.kind = kind


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameterValueException", message)


def missing(message: str) -> ApiError:
    return ApiError(400, "MissingParameterValueException", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", message)


def vault_not_found(arn: str) -> ApiError:
    return not_found(f"Vault not found for ARN: {arn}")


def job_not_found(job_id: str) -> ApiError:
    return not_found(f"The job ID was not found: {job_id}")


def upload_not_found(upload_id: str) -> ApiError:
    # Undocumented; 404 by analogy with jobs (reference §1.3).
    return not_found(f"The upload ID was not found: {upload_id}")
