"""The ``user.glacier.*`` extended attributes: names, values and which errno each refusal gets.

Read: ``treehash``, ``archive_id``, ``description`` (archives), ``state`` (everything but
directories). Write: ``retrieve`` (value: a tier) starts a retrieval. Other namespaces are
EOPNOTSUPP (so ``cp -a`` and SELinux probes go on), other ``user.`` names ENODATA.
No threads, no state: the core passes what it found.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from glacierfs import names
from glacierfs.errors import InvalidArgument, NoAttribute, NotSupported, UsageError
from glacierfs.fs.staging import Pending
from glacierfs.fs.types import DIR

log = logging.getLogger(__name__)

PREFIX = "user.glacier."
ARCHIVE_NAMES = ("treehash", "archive_id", "state", "description")
def normalize_tier(tier: str) -> str:
    """The tier rule of :mod:`glacierfs.names`, as EINVAL for a setxattr value."""
    try:
        return names.normalize_tier(tier)
    except UsageError as exc:
        raise InvalidArgument(str(exc)) from None


def listxattr(found: Any) -> list[str]:
    if found == DIR:
        return []
    if isinstance(found, Pending):
        return [PREFIX + "state"]
    return [PREFIX + n for n in ARCHIVE_NAMES]


def getxattr(found: Any, name: str, state_of: Callable[[Any], str]) -> bytes:
    if found == DIR or not name.startswith(PREFIX):
        raise NoAttribute()
    key = name[len(PREFIX):]
    if key == "state":
        return state_of(found).encode()
    if isinstance(found, Pending):
        raise NoAttribute()
    value = {
        "treehash": found.tree_hash,
        "archive_id": found.archive_id,
        "description": getattr(found, "description", None),
    }.get(key)
    if value is None:
        raise NoAttribute()
    return str(value).encode()


def check_namespace(name: str) -> None:
    if not name.startswith("user."):
        raise NotSupported()


def retrieve_tier(name: str, value: bytes) -> str | None:
    """The tier asked for by ``setfattr -n user.glacier.retrieve -v TIER``; None for another name."""
    if name != PREFIX + "retrieve":
        return None
    return normalize_tier(value.decode("utf-8", "replace").strip().strip("\0"))
