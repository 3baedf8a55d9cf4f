"""``--manifest FILE``: one CSV row per archive the run dealt with.

Columns: ``archive_id,tree_hash,size,key,status``; ``status`` is ``exported`` (sent by this
run), ``present`` (already in S3 and verified), ``deleted`` (verified in S3, then the source
archive was deleted), ``failed``, ``pending`` (not finished when the run ended) or ``planned``
(``--dry-run``). Rows are written as archives finish into ``FILE.part``, which replaces FILE when
the run ends (also when it fails), so FILE is always a complete CSV.

Threading: ``write`` may be called from any thread; ``_lock`` guards the file.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import threading
from pathlib import Path
from typing import TextIO

from glacierfs.errors import UsageError
from glacierfs.export.plan import ExportItem

log = logging.getLogger(__name__)

COLUMNS = ("archive_id", "tree_hash", "size", "key", "status")


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self._lock = threading.Lock()
        try:
            self._file: TextIO | None = open(self.part, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write the manifest {self.path}: {exc.strerror or exc}") from None
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)

    def write(self, item: ExportItem, status: str) -> None:
        with self._lock:
            if self._file is not None:
                self._csv.writerow((item.archive_id, item.tree_hash, item.size, item.key, status))

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            f, self._file = self._file, None
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.replace(self.part, self.path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    f.close()
                raise UsageError(f"cannot write the manifest {self.path}: {exc.strerror or exc}") from None


class NoManifest:
    def write(self, item: ExportItem, status: str) -> None:
        pass

    def close(self) -> None:
        pass
