"""The catalog keeps one SQLite connection per live thread, not one per call.

A FUSE callback runs on a libfuse thread that Python sees only for the length of the call
(ctypes makes a new thread state, so a new ``threading.local``, each time). With connections in
a ``threading.local`` every lookup opened a connection (two descriptors, a page cache and a
64 MiB mmap of ``cache.db``) that the storage kept for ``close``: 1,000 stats of a mounted
300,000-archive vault took the mount from 103 to 397 MiB and 2,580 descriptors
(docs/performance.md). Here: threads that exit give their connection back, and a real mount
answering hundreds of lookups keeps its ``cache.db`` descriptors to about one per thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from glacierfs.catalog import Catalog
from glacierfs.catalog.storage import PRUNE_AT, TASK_DIR
from tests.helpers import mounts as tm

VAULT = "conns"
DIRS = 20
PER_DIR = 20


def _use(c: Catalog) -> None:
    assert c.lookup("nothing/here") is None


def test_a_thread_keeps_its_connection_and_exited_threads_give_theirs_back(tmp_path: Path) -> None:
    if not os.path.isdir(TASK_DIR):
        pytest.skip(f"{TASK_DIR} is missing: connections of exited threads are not pruned here")
    c = Catalog.open_dir(tmp_path / "cat")
    try:
        storage = c._storage
        assert storage.con is storage.con  # the same thread, the same connection
        seen: list[sqlite3.Connection] = []
        for _ in range(3 * PRUNE_AT):
            t = threading.Thread(target=lambda: (_use(c), seen.append(storage.con)))
            t.start()
            t.join()
        assert len(set(map(id, seen))) == len(seen)  # each thread had its own
        assert storage.connection_count() <= PRUNE_AT, storage.connection_count()
        closed = [con for con in seen[:PRUNE_AT] if con not in storage._cons.values()]
        assert closed, "no connection of an exited thread was closed"
        for con in closed:
            with pytest.raises(sqlite3.ProgrammingError):
                con.execute("SELECT 1")
        _use(c)  # this thread's connection survived the pruning
    finally:
        c.close()


def _catalog_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/cache.db"):
                n += 1
        except OSError:
            pass  # closed meanwhile
    return n


@pytest.mark.timeout(180)
def test_lookups_on_a_mount_do_not_open_a_connection_each(glacier_server, tmp_path: Path) -> None:
    tm.skip_without_fuse()
    glacier_server.client().create_vault(vaultName=VAULT)
    paths = [f"d{d:02d}/f{i:02d}.txt" for d in range(DIRS) for i in range(PER_DIR)]
    glacier_server.populate(VAULT, len(paths), size=1, descriptions=paths, snapshot=True)
    cache = tmp_path / "cache"
    tm.glacierfs("inventory", "-q", "--endpoint-url", glacier_server.url, "--region", "us-east-1",
                 "--cache-dir", str(cache), "-v", VAULT)
    m = tm.Mount(tmp_path / "mnt", cache, glacier_server.url, VAULT)
    try:
        m.start()
        assert m.proc is not None
        for p in paths:  # each a lookup the kernel has not cached: a getattr callback
            assert os.stat(m.mnt / p).st_size == 1
        for d in range(DIRS):
            assert len(os.listdir(m.mnt / f"d{d:02d}")) == PER_DIR
        threads = len(os.listdir(f"/proc/{m.proc.pid}/task"))
        fds = _catalog_fds(m.proc.pid)
        # one connection per thread that used the catalog, plus the exited threads' not yet pruned
        assert fds <= max(PRUNE_AT, 2 * threads), f"{fds} cache.db descriptors, {threads} threads\n{m.log()}"
    finally:
        m.close()
