"""Names the user types: vault names, retrieval tiers, archive paths. One owner for each rule.

* :func:`check_vault_name`: Glacier's vault-name rule (1-255 of ``A-Z a-z 0-9 _ . -``), used by
  every command and by the mount's ``--all-vaults`` ``mkdir``.
* :data:`TIERS` / :func:`normalize_tier`: the retrieval tiers, case-insensitive on input.
* :func:`normalize_archive_path`: a FILE argument -> the archive path ``upload`` stores
  (GNU tar's member-name rule); :func:`normalize_lookup_path`: a PATH argument -> the
  catalog's spelling.

Every refusal is a :class:`~glacierfs.errors.UsageError` with one clear line; callers in the
filesystem core turn it into EINVAL.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re

from glacierfs.errors import UsageError

log = logging.getLogger(__name__)

TIERS: tuple[str, ...] = ("Expedited", "Standard", "Bulk")
DEFAULT_TIER = "Standard"

VAULT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}")
VAULT_NAME_RULE = "use 1-255 characters from A-Z a-z 0-9 _ . -"


def is_vault_name(name: object) -> bool:
    """Whether ``name`` follows Glacier's vault-name rule."""
    return isinstance(name, str) and VAULT_NAME_RE.fullmatch(name) is not None


def check_vault_name(name: str) -> str:
    """``name`` when it is a valid vault name, else :class:`UsageError`."""
    if not is_vault_name(name):
        raise UsageError(f"invalid vault name {name!r}: {VAULT_NAME_RULE}")
    return name


def normalize_tier(value: str) -> str:
    """The canonical spelling of a retrieval tier (``bulk`` -> ``Bulk``), else :class:`UsageError`."""
    text = value.strip().lower() if isinstance(value, str) else ""
    for tier in TIERS:
        if text == tier.lower():
            return tier
    raise UsageError(f"invalid tier {value!r} (choose from {', '.join(TIERS)})")


def normalize_archive_path(path: str) -> str:
    """Archive path for a FILE argument, normalized the way GNU tar names members.

    The leading ``/`` is stripped, everything up to and including the last ``..``
    component is removed (tar's "Removing leading `../'") and ``.``/empty components are
    dropped: ``/home/me/a.txt`` -> ``home/me/a.txt``, ``../x/./y`` -> ``x/y``,
    ``dir/../dir/b`` -> ``dir/b``. The result never escapes the vault root.
    """
    parts = path.replace(os.sep, "/").split("/")
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index("..") :]
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        raise UsageError(f"{path!r} does not name a file")
    return "/".join(parts)


def normalize_lookup_path(path: str) -> str:
    """A PATH argument as the catalog spells paths: relative, '/'-separated, normalized."""
    return posixpath.normpath("/" + path.replace(os.sep, "/")).lstrip("/")
