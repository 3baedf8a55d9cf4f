"""Realistic, opaque, seedable identifiers (reference §1 "ID shapes").

Archive ids are 138 characters, job and upload ids 92, all from the URL-safe base64
alphabet. One id in eight is forced to start with ``-`` so that clients which pass ids as
command-line arguments meet the case early instead of once in 64 ids.

The generator is seeded with ``(seed, boot)``: ``boot`` is a counter persisted by the
store and bumped on every start, so a seeded server is reproducible on a fresh data dir
yet never repeats the ids of an earlier run on the same dir.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import secrets
import threading

log = logging.getLogger(__name__)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ARCHIVE_ID_LEN = 138
JOB_ID_LEN = 92
UPLOAD_ID_LEN = 92


class IdGenerator:
    """Thread-safe id source; deterministic for a given ``seed`` and ``boot``."""

    def __init__(self, seed: int | None, boot: int = 0) -> None:
        self._rng = random.Random(f"{seed}:{boot}") if seed is not None else None
        self._lock = threading.Lock()

    def _make(self, length: int) -> str:
        if self._rng is None:
            # Unseeded: the URL-safe base64 of OS random bytes is exactly uniform over ALPHABET
            # (SystemRandom.choices costs a syscall per character: ~180 us per archive id, which
            # made populating a 1,000,000-archive vault take minutes).
            raw = os.urandom(length * 3 // 4 + 4)
            text = base64.urlsafe_b64encode(raw[1:]).decode("ascii")[:length]
            return "-" + text[1:] if raw[0] < 32 else text  # 32/256: one id in eight
        with self._lock:
            chars = self._rng.choices(ALPHABET, k=length)
            if self._rng.random() < 0.125:
                chars[0] = "-"
        return "".join(chars)

    def archive_id(self) -> str:
        return self._make(ARCHIVE_ID_LEN)

    def job_id(self) -> str:
        return self._make(JOB_ID_LEN)

    def upload_id(self) -> str:
        return self._make(UPLOAD_ID_LEN)



def request_id() -> str:
    """A request id for ``x-amzn-RequestId``; not from the seeded stream (it must not shift ids)."""
    return secrets.token_urlsafe(39)[:52]
