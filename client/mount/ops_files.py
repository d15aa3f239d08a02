"""The mount's open files: create, open, read, write, truncate, flush, fsync, release,
and the table of open handles (files: see handles.py). A part of
``client.mount.ops.AegisOperations`` (a mixin). A small new file closed without fsync is
queued (pending.py) and committed in batches by one committer thread (background.py),
its failures a restart explains tried again for RETRY_FOR seconds; any other close
commits before it returns.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any, Sequence

import mfusepy

from broker.crc import crc32c
from broker.limits import MAX_FILE_BLOCKS

from ..retry import retryable
from .background import MountBatch, times_op
from .cache import parent_of
from .handles import SMALL, FileHandle
from .ops_attrs import NEW_FILE_MODE
from .ops_state import MountState
from .pending import PendingFile

log = logging.getLogger(__name__)

RETRY_FOR = 120.0             # seconds a background commit rides through an outage


class FileOps(MountState):
    """The FUSE calls on files and their handles, mixed into AegisOperations."""

    # -- handles ---------------------------------------------------------------------

    def _open_on(self, path: str) -> list[FileHandle]:
        with self._lock:
            return [self._handles[i] for i in self._by_path.get(path, ())]

    def _fresh_on(self, path: str) -> FileHandle | None:
        return next((h for h in self._open_on(path) if h.fresh and not h.unlinked), None)

    def _register(self, h: FileHandle) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = h
            self._by_path.setdefault(h.path, set()).add(fh)
        return fh

    def _handle(self, fh: int) -> FileHandle:
        h = self._handles.get(fh)
        if h is None:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return h

    # -- FUSE calls ------------------------------------------------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """A new file exists in this mount at once and in the namespace from its first
        flush (close or fsync), whole (close-to-open); O_EXCL is checked again there."""
        flags = int(getattr(fi, "flags", fi or 0)) or os.O_WRONLY
        new = {"mode": mode & 0o7777, "umask": 0, "exclusive": bool(flags & os.O_EXCL)}
        h = FileHandle(self.fs, path, flags, 0, self.spool_dir, fresh=True, new=new)
        uid, gid, _ = mfusepy.fuse_get_context()
        h.owner = (uid, gid)
        # the parent's cached attributes stay (a new mtime): no MDS stat of the directory
        # at the next create's permission check
        self.cache.drop_entry(path)
        self.cache.touch(parent_of(path), int(h.created * 1e9))
        self.known.add(path)
        return self._register(h)

    def open(self, path: str, flags: int) -> int:
        self._commit_open(path)          # another handle's new file or unflushed writes
        self.pending.raise_error(path, exact=True)     # its background commit failed
        with self.fs.using():
            info = self.fs._mds(path, "stat", path=path, blocks=False)
        if info["type"] == "dir":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        h = FileHandle(self.fs, path, flags, int(info.get("size") or 0), self.spool_dir)
        if flags & os.O_TRUNC and h.base_size:
            h.replace_all()
        return self._register(h)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        h = self._handle(fh)
        self._unqueue(h)
        with h.lock:
            return h.read(size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        h = self._handle(fh)
        self._check_size(offset + len(data), path)
        self._unqueue(h)
        with h.lock:
            return h.write(data, offset)

    def _check_size(self, end: int, path: str) -> None:
        """EFBIG past the largest file the cluster holds (MAX_FILE_BLOCKS of its block
        size), before a byte is written: a truncate to a petabyte fails at once."""
        if self._max_file_size is None:
            with self.fs.using():
                block = int(self.fs.status().get("block_size") or 4 << 20)
            self._max_file_size = MAX_FILE_BLOCKS * block
            self._block_size = block
        if end > self._max_file_size:
            raise OSError(errno.EFBIG, f"File too large (the largest is "
                          f"{self._max_file_size} bytes)", path)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check_size(length, path)
        h = self._handles.get(fh) if fh else None
        if h is not None:
            self._unqueue(h)
            with h.lock:
                h.truncate(length)
        else:
            self._commit_open(path)
            tmp = FileHandle(self.fs, path, os.O_RDWR, self._size(path), self.spool_dir)
            try:
                tmp.truncate(length)
                tmp.flush()
            finally:
                tmp.release()
        self.cache.drop(path)
        return 0

    def _size(self, path: str) -> int:
        with self.fs.using():
            info = self.fs._mds(path, "stat", path=path, blocks=False)
        if info["type"] == "dir":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        return int(info.get("size") or 0)

    def flush(self, path: str, fh: int) -> int:
        """close(): a small new file is queued for a background commit (pending.py), any
        other change is committed before close returns."""
        h = self._handle(fh)
        if not self._defer(h):
            self._flush(h)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        """Returns when the file is durable: committed, on R DataNodes and in the MDS's
        log (a queued one: once its batch is)."""
        h = self._handle(fh)
        self._unqueue(h, raise_errors=True)
        self._flush(h)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        """fsync of a directory (`sync DIR`): every file closed below it is committed
        when this returns; a failed background commit there is reported (EIO)."""
        self.pending.settle(path)
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is not None:
                ids = self._by_path.get(h.path)
                if ids is not None:
                    ids.discard(fh)
                    if not ids:
                        del self._by_path[h.path]
        if h is not None:
            with h.lock:
                try:
                    if h.dirty and not h.unlinked:   # flush failed (reported then)
                        log.warning("%s: closed with uncommitted writes; dropped", h.path)
                finally:
                    h.release()
            self.cache.drop_entry(h.path)
        return 0

    # -- commits ---------------------------------------------------------------------

    def _commit_open(self, path: str, below: bool = False) -> None:
        """Commit this mount's writes to `path` (and, `below`, under it) first: what the
        MDS changes next is the file the caller sees."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            handles = [self._handles[i] for p, ids in self._by_path.items()
                       if p == path or (below and p.startswith(prefix)) for i in ids]
        for h in handles:
            if h.dirty:
                self._flush(h)
        self.pending.settle(path, exact=not below, raise_errors=False,
                            timeout=self.fs.timeout)

    def _flush(self, h: FileHandle) -> None:
        with h.lock:
            then = self._settle_ops(h) if h.fresh and not h.unlinked else []
            after = h.flush(then)
        self.cache.drop(h.path)
        for op, got in zip(then, after):
            if isinstance(got, OSError) and not (op["op"] == "chown"
                                                 and got.errno == errno.EPERM):
                raise OSError(got.errno, f"{op['op']}: {got.strerror}", h.path)

    def _settle_ops(self, h: FileHandle) -> list[dict[str, Any]]:
        """What was set on a new file before its first commit (tar: futimens, fchown,
        fchmod before close): the mode goes with the create (unless it changed after a
        big file's first blocks had left), the rest in the commit's batch."""
        ops: list[dict[str, Any]] = []
        mode = h.new.get("mode")
        if h.draft_mode is not None and mode is not None and mode != h.draft_mode:
            ops.append({"op": "chmod", "path": h.path, "mode": mode})
        names = self._chown_names(h.owner)
        if names is not None:             # a plain user's mount: EPERM, kept
            ops.append({"op": "chown", "path": h.path, "owner": names[0], "group": names[1]})
        times = times_op(h.path, h.mtime, h.atime)
        if times is not None:
            ops.append(times)
        return ops

    def _chown_names(self, owner: tuple[int, int]) -> tuple[str, str] | None:
        """The owner and group names a new file's commit must set, None: the mount's."""
        if owner == (self.ids.uid, self.ids.gid):
            return None
        return self.ids.user_name(owner[0]), self.ids.group_name(owner[1])

    def _unqueue(self, h: FileHandle, raise_errors: bool = False) -> None:
        """A handle whose content was queued at its close and is used again (fsync, a
        read or write after close through a dup): wait for that commit first."""
        if h.queued:
            self.pending.settle(h.path, exact=True, raise_errors=raise_errors)
            h.queued = False

    def _defer(self, h: FileHandle) -> bool:
        """Queue a new file closed with all of its (small) content in memory."""
        if not self.background:
            return False
        with h.lock:
            if not (h.fresh and h.dirty and not h.unlinked and not h.broken) \
                    or h.draft_mode is not None or h.cow is not None:
                return False
            if h.stream is not None:
                if h.stream.w is not None:
                    return False
                data = bytes(h.stream.head)
            elif h.spool is not None:
                if h.size > SMALL:
                    return False
                data = os.pread(h.spool.fileno(), h.size, 0)
            else:
                data = b""
            if len(data) > min(SMALL, self._block_size or SMALL):
                return False
            p = PendingFile(h.path, data, int(h.new.get("mode", NEW_FILE_MODE)), h.owner,
                            h.created, mtime=h.mtime, atime=h.atime,
                            exclusive=bool(h.new.get("exclusive")),
                            chown=self._chown_names(h.owner))
            if not self._committer_started:
                self._committer_started = True
                self.pending.start()
            self.pending.add(p)
            h.queued = True
            h.forget_new(len(data))
        return True

    def _commit_batch(self, batch: Sequence[PendingFile]) -> list[OSError | None]:
        """Commit a batch; files that failed for a reason a restart explains (the MDS or
        broker away: refused, reset, timed out, EAGAIN) stay queued and are tried again
        with backoff for up to RETRY_FOR seconds, so an outage delays them instead of
        losing them. A retried O_EXCL create answered EEXIST is checked against what
        is there: our own earlier attempt, committed but unanswered, is a success."""
        for p in batch:         # before the commit: its event may come before the reply
            self.own.add(p.path)
        out: list[OSError | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        tried: set[int] = set()
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.2
        while True:
            files = [batch[i] for i in todo]
            try:
                with self.fs.using() as mux:
                    errors = MountBatch(mux, files, timeout=self.fs.timeout,
                                        suspects=self.fs.suspects,
                                        window=self.fs.window).run()
            except OSError as exc:
                errors = [exc] * len(files)
            again = []
            for i, err in zip(todo, errors):
                if err is not None and retryable(err) and time.monotonic() < deadline:
                    again.append(i)
                elif err is not None and err.errno == errno.EEXIST and i in tried \
                        and self._already_there(batch[i]):
                    out[i] = None
                else:
                    out[i] = err
            if not again:
                break
            log.warning("background commit of %d files: %s; trying again", len(again),
                        errors[todo.index(again[0])])
            tried.update(again)
            todo = again
            time.sleep(delay)
            delay = min(2 * delay, 2.0)
        for p in batch:
            self.cache.drop_entry(p.path)
        return out

    def _already_there(self, p: PendingFile) -> bool:
        """The file at p.path is p's content (an earlier attempt of ours committed it)."""
        try:
            with self.fs.using():
                info = self.fs._mds(p.path, "stat", path=p.path)
        except OSError:
            return False
        blocks = info.get("blocks") or []
        if int(info.get("size") or 0) != p.size or len(blocks) != (1 if p.size else 0):
            return False
        return not blocks or int(blocks[0].get("checksum", -1)) == crc32c(p.data)
