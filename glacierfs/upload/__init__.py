"""Uploads to a vault: the engine (``engine.py``), its durable state (``state.py``), parts (``parts.py``) and the owner lock (``lock.py``)."""

from glacierfs.upload.engine import CHANGE_RESTARTS, STATE_INTERVAL, UploadCatalog, UploadEngine, UploadStats
from glacierfs.upload.lock import UploadLock
from glacierfs.upload.parts import (
    BUFFER_LIMIT,
    MAX_PARTS,
    THROUGHPUT_PART_SIZE,
    choose_part_size,
    default_concurrency,
    default_part_size,
)
from glacierfs.upload.state import Identity, UnreadableState, UploadState

__all__ = [
    "BUFFER_LIMIT",
    "CHANGE_RESTARTS",
    "MAX_PARTS",
    "STATE_INTERVAL",
    "THROUGHPUT_PART_SIZE",
    "Identity",
    "UnreadableState",
    "UploadCatalog",
    "UploadEngine",
    "UploadLock",
    "UploadState",
    "UploadStats",
    "choose_part_size",
    "default_concurrency",
    "default_part_size",
]
