"""Naming rules shared by the CLI and the mount: the vault-name rule (one owner)."""

from __future__ import annotations

import re

from glacierfs.errors import UsageError

VAULT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def check_vault_name(name: str) -> str:
    """``name`` if it is a valid vault name, else :class:`UsageError` (one line)."""
    if not VAULT_NAME.fullmatch(name or ""):
        raise UsageError(f"invalid vault name {name!r}: use 1-255 characters from A-Z a-z 0-9 _ . -")
    return name
