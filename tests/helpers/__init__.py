"""Helpers shared by test modules (no fixtures with side effects at import): test modules import
these, never each other; the fixtures built on them live once, in tests/conftest.py.

* :mod:`.cli`: the real ``glacierfs`` command in a subprocess (:class:`~.cli.Cli`, :class:`~.cli.Result`);
* :mod:`.mounts`: real FUSE mounts (foreground :class:`~.mounts.Mount`, daemon :class:`~.mounts.MountSet`)
  and the cleanup that detaches them whatever happened;
* :mod:`.glacier_server`, :mod:`.s3_server`: the real ``glacierfs serve`` and an S3 for export;
* :mod:`.hardening`: server-side "exactly once" checks, the lying proxy, secret scans;
* :mod:`.tree`: random trees and the whole-tree commands (sync, check, restore);
* :mod:`.vectors`: the tree-hash test vectors in tests/data.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
