"""The mount's core: one vault as a directory tree. No FUSE import: paths in, plain data out.

Every method takes a '/'-rooted path (or a handle number) and returns an :class:`Attr`, a list,
bytes or None, or raises :class:`~glacierfs.fs.types.FSError` / a
:class:`~glacierfs.errors.GlacierFSError` (errno via :func:`glacierfs.errors.errno_for`; the
README's Semantics table lists them). :mod:`glacierfs.fs.fuse_adapter` only translates.

Where things live:

* archives: the catalog (last inventory + uploads/deletes since), looked up per call;
* files written into the mount and not yet archives: :class:`~glacierfs.fs.staging.WriteBack`
  (staged bytes, the commit at close(2), upload workers);
* archive bytes: :class:`~glacierfs.fs.datacache.DataCache` (uploaded from here or retrieved by
  :class:`~glacierfs.fs.retrievals.Retrievals`); a read of anything else fails at once (EAGAIN,
  never waits for Glacier) and the log prints a command that retrieves it.

Threading contract
------------------
FUSE calls arrive on many threads. ``VaultFS._lock`` guards the handle table ``_handles``,
``_generation``, ``_intact``, ``_hinted`` and ``_seen_token``; it is a leaf lock, never held
across network calls or file I/O. The workers are owned by ``WriteBack`` (uploads) and
``Retrievals`` (retrievals, first inventory); see their module docstrings. Lock order:
``Pending.io`` -> ``WriteBack.lock`` -> ``VaultFS._lock``; ``Retrievals._lock`` and the data
cache's lock are leaves.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacierfs import hints
from glacierfs.errors import (
    BadHandle,
    Busy,
    Exists,
    GlacierFSError,
    InvalidArgument,
    IsADirectory,
    NoEntry,
    NotADirectory,
    NotEmpty,
    NotFoundError,
    NotPermitted,
    NotSupported,
    ReadOnly,
    TryAgain,
)
from glacierfs.fs import xattrs
from glacierfs.fs.datacache import DataCache
from glacierfs.fs.replace import early_deletion_note
from glacierfs.fs.retrievals import Retrievals, Runner
from glacierfs.fs.stagedir import StagingArea
from glacierfs.fs.staging import Engine, Pending, WriteBack
from glacierfs.fs.types import (
    DIR,
    HIDDEN_PREFIX,
    Attr,
    check_name,
    rel,
    split,
    statfs_answer,
    undecodable,
)

log = logging.getLogger(__name__)

HINT_INTERVAL = 30.0  # seconds between two "not cached" hints for one archive


@dataclass(eq=False)
class Handle:
    fd: int
    path: str
    pending: Pending | None
    writer: bool
    archive_id: str | None = None
    flushed: bool = False


class VaultFS:
    """One vault as a filesystem. Start workers with :meth:`start`, stop them with :meth:`stop`."""

    def __init__(
        self,
        catalog: Any,
        glacier: Any,
        vault: str,
        cache: DataCache,
        *,
        engine_factory: Callable[[], Engine],
        runner: Runner | None = None,
        read_only: bool = False,
        auto_retrieve: str | None = None,
        auto_retrieve_max: int = 10,
        retrieve_max_jobs: int = 100,
        retrieve_max_bytes_per_hour: int | None = None,
        upload_workers: int = 2,
        upload_delay: float = 0.5,
        retry_delay: float = 2.0,
        poll_interval: float = 2.0,
        max_poll_interval: float = 300.0,
        display_root: str = "",
        hint: Callable[..., str] | None = None,
    ) -> None:
        self.display_root = display_root  # where the user sees this vault (for log hints)
        # renders ``glacierfs WORD...`` with the mount's options (hints.command, bound by mount.py)
        self._hint: Callable[..., str] = hint or functools.partial(hints.command, None)
        self.catalog = catalog
        self.glacier = glacier
        self.vault = vault
        self.cache = cache
        self.read_only = read_only
        self.auto_retrieve = xattrs.normalize_tier(auto_retrieve) if auto_retrieve else None
        self.staging = StagingArea(cache.root)
        cache.staged_bytes = self.staging.bytes
        self.writeback = WriteBack(
            self.staging, cache, catalog, engine_factory,
            delete_archive=self._delete_archive, on_archived=self._archived,
            workers=upload_workers, upload_delay=upload_delay, retry_delay=retry_delay,
        )
        self.retrievals = (
            Retrievals(runner, catalog, vault, cache, on_cached=self._intact_add, on_inventory=self._bump,
                       poll_interval=poll_interval, max_poll_interval=max_poll_interval,
                       auto_max=auto_retrieve_max, tree_max=retrieve_max_jobs,
                       tree_max_bytes_per_hour=retrieve_max_bytes_per_hour)
            if runner is not None else None
        )
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._generation = 0  # bumped by every namespace change made here
        self._recovered = False
        self._started = False
        self._intact: set[str] = set()  # cached archives whose tree hash was checked by this mount
        self._hinted: dict[str, float] = {}
        self._invalidate: Callable[[str], None] | None = None
        self._seen_token: Any = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Recover staged files, resume their uploads, start the workers (call after daemonizing)."""
        if self._started:
            return
        self._started = True
        self.recover()
        self.cache.evict()  # --cache-size holds from the start, not from the next write
        self.writeback.start(self.read_only)
        if self.retrievals is not None:
            self.retrievals.start_threads()
        self._seen_token = self.change_token()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers. Running uploads are interrupted; they resume at the next mount."""
        deadline = time.monotonic() + timeout
        self.writeback.stop(deadline)
        if self.retrievals is not None:
            self.retrievals.stop(deadline)
        with self._lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            try:
                os.close(h.fd)
            except OSError:
                pass

    def recover(self) -> None:
        """Take over the staged files of earlier runs (once; :meth:`start` calls it if needed)."""
        if self._recovered:
            return
        self._recovered = True
        if self.read_only:  # staged files wait for the next writable mount, untouched
            return
        self.writeback.recover()

    def set_invalidator(self, invalidate: Callable[[str], None] | None) -> None:
        """The adapter's way to drop a path from the kernel's caches (entries removed by another process)."""
        self._invalidate = invalidate

    # ------------------------------------------------------------------ lookups

    def _bump(self) -> None:
        with self._lock:
            self._generation += 1

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly()

    def _lookup(self, path: str) -> Any:
        """``Pending`` | catalog ``Archive`` | ``DIR`` | None."""
        if path == "/":
            return DIR
        if undecodable(path):
            return None  # never stored: such names are refused at create (EILSEQ)
        p = self.writeback.get(path)
        if p is not None:
            return p
        found = self.catalog.lookup(rel(path))
        if found is not None:
            return found
        if self.writeback.has_under(path + "/"):
            return DIR
        return None

    def _found(self, path: str) -> Any:
        found = self._lookup(path)
        if found is None:
            raise NoEntry()
        return found

    def _lookup_dir(self, path: str) -> None:
        if self._found(path) != DIR:
            raise NotADirectory()

    @staticmethod
    def _pending_attr(p: Pending) -> Attr:
        final = p.final
        if final is not None:
            return Attr(False, final[0], final[1])
        try:
            st = os.stat(p.staging)
            size, mtime = st.st_size, st.st_mtime
        except FileNotFoundError:
            size, mtime = 0, time.time()
        if p.mtime is not None:
            mtime = p.mtime
        return Attr(False, size, mtime)

    def _attr_of(self, found: Any) -> Attr:
        if found == DIR:
            return Attr(True, 0, self.started_at)
        if isinstance(found, Pending):
            return self._pending_attr(found)
        return Attr(False, int(found.size), float(found.mtime or 0.0))

    # ------------------------------------------------------------------ metadata

    def getattr(self, path: str) -> Attr:
        return self._attr_of(self._found(path))

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        """Entries of a directory with their attributes (for readdirplus), catalog order."""
        self._lookup_dir(path)
        dir_attr = Attr(True, 0, self.started_at)
        try:
            listed = self.catalog.listdir_entries(rel(path))  # (name, is_dir, size, mtime), no Archive objects
        except NotFoundError:  # a directory that only holds files not uploaded yet
            listed = []
        new = tuple.__new__  # Attr(...) costs 1.4 us through NamedTuple.__new__; this is 5x cheaper
        entries = [
            (name, dir_attr if is_dir else new(Attr, (False, size, mtime or 0.0))) for name, is_dir, size, mtime in listed
        ]
        prefix = "/" if path == "/" else path + "/"
        pend = self.writeback.under(prefix)
        if not pend:
            return entries
        extra: dict[str, Attr] = {}
        for k, p in pend:
            name, sep, _ = k[len(prefix):].partition("/")
            if sep:
                extra.setdefault(name, dir_attr)
            else:
                extra[name] = self._pending_attr(p)
        merged = [(n, a) for n, a in entries if n not in extra or (a.is_dir and extra[n].is_dir)]
        have = {n for n, _ in merged}
        merged.extend((n, a) for n, a in extra.items() if n not in have)
        return merged

    def listing_token(self, path: str) -> Any:
        """A value equal between two readdirs of ``path`` only if the listing cannot differ; None
        while files not yet uploaded live in the directory (their sizes change as they are written)."""
        prefix = "/" if path == "/" else path + "/"
        if self.writeback.has_under(prefix, direct=True):
            return None
        with self._lock:
            generation = self._generation
        return generation, self.change_token()

    def statfs(self) -> dict[str, int]:
        return statfs_answer()

    def mkdir(self, path: str) -> None:
        self._check_writable()
        if self._lookup(path) is not None:
            raise Exists()
        self._lookup_dir(split(path)[0])
        check_name(path)
        self.catalog.mkdir(rel(path))
        self._bump()

    def rmdir(self, path: str) -> None:
        self._check_writable()
        if path == "/":
            raise Busy()
        if self._found(path) != DIR:
            raise NotADirectory()
        if self.readdir(path):
            raise NotEmpty()
        self.catalog.rmdir(rel(path))
        self._bump()

    def chmod(self, path: str, mode: int) -> None:
        """Accepted and ignored: Glacier keeps no permissions (so ``cp -p``/``rsync -a`` work)."""
        self._check_writable()
        self.getattr(path)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Accepted and ignored, like chmod."""
        self._check_writable()
        self.getattr(path)

    def utimens(self, path: str, mtime: float | None) -> None:
        """Sets the mtime of a file not yet uploaded (it goes into the description); directories
        accept and ignore; an archive's mtime is immutable (EPERM)."""
        self._check_writable()
        found = self._found(path)
        if found == DIR:
            return
        if isinstance(found, Pending):
            self.writeback.set_mtime(found, mtime)
            return
        raise NotPermitted("archives are immutable")

    # ------------------------------------------------------------------ files: open/create

    def _new_handle(self, h: Handle) -> int:
        with self._lock:
            fh = next(self._fh)
            self._handles[fh] = h
        return fh

    def _handle(self, fh: int) -> Handle:
        with self._lock:
            h = self._handles.get(fh)
        if h is None:
            raise BadHandle()
        return h

    def create(self, path: str, flags: int = os.O_WRONLY) -> int:
        """A new file: staged on local disk, committed at close(2), uploaded after its last close."""
        self._check_writable()
        check_name(path)
        if self._lookup(path) is not None:
            raise Exists()
        self._lookup_dir(split(path)[0])
        p, fd = self.writeback.create(path)
        return self._new_handle(Handle(fd=fd, path=path, pending=p, writer=True))

    def open(self, path: str, flags: int) -> int:
        found = self._found(path)
        if found == DIR:
            raise IsADirectory()
        write = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if isinstance(found, Pending):
            return self._open_pending(found, flags, write)
        if write:
            self._check_writable()
            if flags & os.O_TRUNC:  # cp, cp -f, `>`: a new file replaces the archive (glacierfs.fs.replace)
                p, fd = self.writeback.create(path, replaces=(found.archive_id,))
                log.info("%s: replacing archive %s; it is deleted once the new content is archived", path,
                         found.archive_id)
                return self._new_handle(Handle(fd=fd, path=path, pending=p, writer=True))
            log.warning("%s is an archive: changing it in place (>>, writes without O_TRUNC) is refused (EPERM); "
                        "replace it whole instead: cp -f NEW %s, or write a new file and mv it over", path,
                        shlex.quote(self._shown(path)))
            raise NotPermitted()
        archive_id = found.archive_id
        if not self.cache.has(archive_id):
            self._not_cached(path, archive_id)
        try:
            fd = os.open(self.cache.path_for(archive_id), os.O_RDONLY)
        except FileNotFoundError:  # evicted just now
            self._not_cached(path, archive_id)
        if not self._cached_intact(fd, found, path):
            os.close(fd)
            self._not_cached(path, archive_id)
        self.cache.touch(archive_id)
        return self._new_handle(Handle(fd=fd, path=path, pending=None, writer=False, archive_id=archive_id))

    def _cached_intact(self, fd: int, archive: Any, path: str) -> bool:
        """Cached bytes are the archive's: the size at every open, the tree hash at the first open
        in this mount. Damaged bytes are dropped from the cache, so the file reads as not cached."""
        archive_id = archive.archive_id
        ok = os.fstat(fd).st_size == archive.size
        with self._lock:
            known = archive_id in self._intact
        if ok and archive.tree_hash and not known:
            from glacierfs.treehash import tree_hash_file

            ok = tree_hash_file(self.cache.path_for(archive_id)) == archive.tree_hash
            if ok:
                self._intact_add(archive_id)
        if not ok:
            log.error("%s: the cached bytes of archive %s are damaged (size or tree hash differs); "
                      "dropped from the cache", path, archive_id)
            self.cache.discard(archive_id)
        return bool(ok)

    def _intact_add(self, archive_id: str) -> None:
        with self._lock:
            self._intact.add(archive_id)

    def hint_command(self, path: str) -> str:
        """``glacierfs download`` of ``path`` as a command that works when pasted (the mount's options)."""
        rel = path.lstrip("/")
        return self._hint("download", "-v", self.vault, *(["--"] if rel.startswith("-") else []), rel)

    def _not_cached(self, path: str, archive_id: str) -> None:
        """Fail at once (EAGAIN), say how to retrieve, maybe start the retrieval."""
        if self.auto_retrieve and self.retrievals is not None:
            self.retrievals.auto_start(archive_id, self.auto_retrieve, self._shown(path))  # capped, logged
            raise TryAgain("archive not retrieved")
        now = time.monotonic()
        with self._lock:
            hint = now - self._hinted.get(archive_id, -1e9) > HINT_INTERVAL
            if hint:
                self._hinted[archive_id] = now
        if hint:
            shown = self._shown(path)
            if self.retrievals is not None and self.retrievals.running(archive_id):
                log.warning("%s is in Glacier and not cached locally; its retrieval is running, reads work once "
                            "it is downloaded (watch: getfattr -n user.glacier.state %s)", shown, shlex.quote(shown))
            else:
                log.warning("%s is in Glacier and not cached locally; retrieve it with: "
                            "setfattr -n user.glacier.retrieve -v Standard %s (or Expedited/Bulk), or: %s",
                            shown, shlex.quote(shown), self.hint_command(path))
        raise TryAgain("archive not retrieved")

    def _shown(self, path: str) -> str:
        """Where the user sees ``path`` (the mount point's path, for hints in the log)."""
        return os.path.join(self.display_root, path.lstrip("/")) if self.display_root else path

    def _open_pending(self, p: Pending, flags: int, write: bool) -> int:
        if not write:
            try:
                fd = os.open(p.staging, os.O_RDONLY)
            except FileNotFoundError:
                # the upload finished between lookup and open: the bytes are in the cache now
                p.done.wait(5)
                if p.archive_id is None or not self.cache.has(p.archive_id):
                    raise NoEntry() from None
                fd = os.open(self.cache.path_for(p.archive_id), os.O_RDONLY)
                return self._new_handle(Handle(fd=fd, path=p.path, pending=None, writer=False,
                                               archive_id=p.archive_id))
            return self._new_handle(Handle(fd=fd, path=p.path, pending=p, writer=False))
        self._check_writable()
        fd = self.writeback.open_writer(p, bool(flags & os.O_TRUNC))
        return self._new_handle(Handle(fd=fd, path=p.path, pending=p, writer=True))

    # ------------------------------------------------------------------ files: I/O

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return os.pread(self._handle(fh).fd, size, offset)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        fd = self.write_fd(fh)
        try:
            done = os.pwrite(fd, data, offset)
        except OSError as exc:
            self.write_failed(fh, exc.errno or errno.EIO)
            raise
        if done < len(data):
            self.write_failed(fh, errno.EIO)
        return done

    def write_fd(self, fh: int) -> int:
        """The staged file's descriptor for a write through handle ``fh`` (the file is dirty now)."""
        h = self._handle(fh)
        if not h.writer or h.pending is None:
            raise BadHandle()
        h.pending.dirty = True  # a bool store; read at the commit (see WriteBack.commit)
        return h.fd

    def write_failed(self, fh: int, code: int) -> None:
        """A write through ``fh`` failed or was short: the file must not become an archive.

        With the kernel's writeback cache the program's write(2) returned long ago; the kernel
        reports the error at close(2) and then sends no FLUSH, so the commit (at FLUSH or, for
        a handle never flushed, at RELEASE) must know the staged bytes have a gap.
        """
        h = self._handle(fh)
        if h.pending is not None:
            self.writeback.write_failed(h.pending, code)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            h = self._handle(fh)
            if h.writer and h.pending is not None:
                h.pending.dirty = True
                os.ftruncate(h.fd, length)
                return
        found = self._found(path)
        if found == DIR:
            raise IsADirectory()
        self._check_writable()
        if isinstance(found, Pending):
            self.writeback.truncate(found, length)
            return
        raise NotPermitted("archives are immutable")

    def flush(self, fh: int) -> None:
        """close(2): the last writer's close commits the staged file (never waits for the upload)."""
        h = self._handle(fh)
        if h.writer and h.pending is not None:
            first = not h.flushed
            h.flushed = True
            self.writeback.flush(h.pending, h.fd, first)

    def fsync(self, fh: int, datasync: bool = False) -> None:
        """Blocks until the archive exists; EIO if its upload failed for good.

        On a handle still open for writing (or while another writer has not closed the file)
        the staged bytes are made durable locally and 0 is returned: the archive can only be
        made after the last close.
        """
        h = self._handle(fh)
        p = h.pending
        if p is None:
            return
        with self.writeback.lock:
            still_writing = p.state == "writing" and (h.writer or p.unflushed > 0)
        if still_writing:
            os.fsync(h.fd)
            return
        self.writeback.expedite(p)
        self.writeback.wait_uploaded(p)

    def release(self, fh: int) -> None:
        """Last close of a handle; the last writer's release queues the upload."""
        with self._lock:
            h = self._handles.pop(fh, None)
        if h is None:
            return
        try:
            os.close(h.fd)
        except OSError:
            pass
        if h.pending is not None and h.writer:
            self.writeback.release(h.pending, h.flushed)

    # ------------------------------------------------------------------ namespace changes

    def unlink(self, path: str) -> None:
        """rm: deletes the archive in Glacier; for a file still uploading, aborts its upload."""
        self._check_writable()
        found = self._found(path)
        if found == DIR:
            raise IsADirectory()
        if isinstance(found, Pending):
            if self.writeback.cancel(found):
                self._drop_replaced(found, path)
                return
            found = self._found(path)  # it became an archive meanwhile: delete that
            if isinstance(found, Pending) or found == DIR:
                raise Busy()
        self._delete_archive(found.archive_id)
        log.info("deleted archive %s (%s)", found.archive_id, path)
        note = early_deletion_note(found)
        if note:
            log.warning("%s: %s", path, note)

    def _drop_replaced(self, p: Pending, path: str) -> None:
        """rm of a file that was to replace archives: the path goes, so do they (at once)."""
        with self.writeback.lock:
            replaced, p.replaces = p.replaces, ()
        for archive_id in replaced:
            archive = self.catalog.get(archive_id)
            self._delete_archive(archive_id)
            log.info("deleted archive %s (%s, its replacement was removed before it was archived)", archive_id, path)
            note = early_deletion_note(archive) if archive is not None else None
            if note:
                log.warning("%s: %s", path, note)

    def _delete_archive(self, archive_id: str) -> None:
        try:
            self.glacier.delete_archive(self.vault, archive_id)
        except NotFoundError:
            pass  # already gone: the catalog catches up below
        self.catalog.mark_deleted(archive_id)
        self._bump()
        self.cache.discard(archive_id)
        if self.retrievals is not None:
            self.retrievals.forget(archive_id)

    def _archived(self, archive: Any) -> None:
        """An upload worker made ``archive`` from a staged file (the engine hashed these very bytes)."""
        with self._lock:
            self._intact.add(archive.archive_id)
            self._generation += 1

    def rename(self, old: str, new: str) -> None:
        """Files not yet archives and empty directories can be renamed; archives cannot (EPERM).
        A file not yet an archive renamed onto an archive replaces it (editors, rsync, sed -i).

        Never EXDEV: ``mv`` would fall back to copy+delete, which needs a retrieval.
        """
        self._check_writable()
        if undecodable(new):
            check_name(new)
        found = self._found(old)
        if old == new:
            return
        if new.startswith(old + "/"):
            raise InvalidArgument()
        self._lookup_dir(split(new)[0])
        target = self._lookup(new)
        if found == DIR:
            if target is not None:
                raise Exists() if target != DIR else NotEmpty()
            if self.readdir(old):
                log.warning("rename %s: directories holding archives cannot be renamed (archives are immutable)", old)
                raise NotPermitted()
            check_name(new)
            self.catalog.mkdir(rel(new))
            self.catalog.rmdir(rel(old))
            self._bump()
            return
        hidden = split(new)[1].startswith(HIDDEN_PREFIX)
        if not isinstance(found, Pending):
            if hidden:
                # libfuse "hides" a file that is rm'ed while open instead of removing it: the rm
                # is meant, the reader keeps its descriptor on the cached bytes
                self.unlink(old)
                return
            log.warning("rename %s: archives are immutable in Glacier (retrieve, copy, then rm)", old)
            raise NotPermitted()
        if hidden:  # rm'ed while open: what it was to replace goes now
            self._drop_replaced(found, old)
        if hidden and found.writers == 0:
            self.writeback.cancel(found)  # rm'ed while a reader has it open: that reader keeps its descriptor
            return
        if target == DIR:
            raise IsADirectory()
        replaces: tuple[str, ...] = ()
        if target is not None and not isinstance(target, Pending):
            replaces = (target.archive_id,)
            log.info("%s: replacing archive %s with %s; it is deleted once the new content is archived", new,
                     target.archive_id, old)
        if not hidden:
            check_name(new)
        self.writeback.rename(found, old, new, target if isinstance(target, Pending) else None, replaces)

    def link(self, target: str, source: str) -> None:
        raise NotPermitted("hard links are not supported")

    def symlink(self, target: str, source: str) -> None:
        raise NotPermitted("symbolic links are not supported")

    # ------------------------------------------------------------------ retrievals and xattrs

    def retrieve(self, path: str, tier: str) -> None:
        """Start (or join) a retrieval job; the background worker downloads into the cache.

        Allowed on a ``--read-only`` mount: it changes nothing in the vault.
        """
        tier = xattrs.normalize_tier(tier)
        found = self._found(path)
        if isinstance(found, Pending):
            raise InvalidArgument("only archives can be retrieved")
        if self.retrievals is None:
            raise NotSupported()
        if found == DIR:  # the subtree, within --retrieve-max-jobs (see Retrievals.start_tree)
            self.retrievals.start_tree(rel(path), tier, self._shown(path))
            return
        archive_id = found.archive_id
        if self.cache.has(archive_id):
            return
        if self.retrievals.start(archive_id, tier):
            log.info("retrieval (%s) started for %s (%s)", tier, path, archive_id)

    def state_of(self, found: Any) -> str:
        if isinstance(found, Pending):
            return "failed" if found.state == "failed" else "uploading"
        archive_id = found.archive_id
        if self.cache.has(archive_id):
            return "cached"
        state = self.retrievals.state(archive_id) if self.retrievals is not None else None
        return state or "archived"

    def listxattr(self, path: str) -> list[str]:
        return xattrs.listxattr(self._found(path))

    def getxattr(self, path: str, name: str) -> bytes:
        xattrs.check_namespace(name)
        return xattrs.getxattr(self._found(path), name, self.state_of)

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        xattrs.check_namespace(name)
        tier = xattrs.retrieve_tier(name, value)
        if tier is not None:
            self.retrieve(path, tier)
            return
        self._found(path)
        raise NotSupported()

    def removexattr(self, path: str, name: str) -> None:
        self._found(path)
        raise NotSupported()

    # ------------------------------------------------------------------ status

    def change_token(self) -> Any:
        """Changes whenever the catalog's files change (any process): listings are then rebuilt
        and :meth:`notice_changes` drops what the kernel caches. Cheap: two stats."""
        directory = getattr(self.catalog, "directory", None)
        if directory is None:
            return None
        token: list[tuple[int, int, int] | None] = []
        for name in ("cache.db", "cache.db-wal"):
            try:
                st = os.stat(Path(directory) / name)
                token.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                token.append(None)
        return tuple(token)

    def notice_changes(self, known: Callable[[], list[tuple[str, list[str]]]]) -> None:
        """When another process changed the catalog, drop kernel entries of names that are gone.

        ``known()`` lists the directories (and their names) the kernel may cache entries for:
        one catalog listing per directory, compared with what was shown.
        """
        token = self.change_token()
        with self._lock:
            changed = token != self._seen_token
            self._seen_token = token
        if not changed or self._invalidate is None:
            return
        for directory, names in known():
            try:
                current = {n for n, _ in self.readdir(directory)}
            except (OSError, GlacierFSError):
                current = set()
            prefix = "/" if directory == "/" else directory + "/"
            for name in names:
                if name not in current:
                    try:
                        self._invalidate(prefix + name)
                    except Exception as exc:
                        log.debug("invalidate %s%s: %s", prefix, name, exc)

    def archive_count(self) -> int | None:
        """Number of archives in the catalog (None if it cannot tell cheaply)."""
        count = getattr(self.catalog, "count", None)
        return count() if count else None

    def pending(self) -> dict[str, str]:
        return self.writeback.states()
