"""Open files of the mount: what a FUSE file handle holds between calls.

A handle is in one of three states. *clean*: nothing written; reads stream the version
seen at open (close-to-open) with read-ahead. *stream*: a file that was empty at open and
is written from its start: the first MiB stays in memory (a small file then costs one
sized create, one put and one commit at flush), beyond that blocks go to the DataNodes
as they fill, and flush/fsync commits the draft (the new version appears whole). A file
made by create() exists only in this mount until its first flush (`fresh`).
*cow*: any other write to a file that exists in the namespace (random, O_RDWR, append,
truncate to a size > 0): copy-on-write (cow.py) - only the blocks touched are read,
patched and put; the commit shares every other block with the current version.
*spool*: random writes to a file not committed yet (nothing to share), or to a stream
that sent nothing yet: a local copy rewritten whole at flush (`rewrite`).
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

from broker.limits import MDS_SERVICE

from ..files import ReadFile
from ..mux import Mux
from ..streams import BlockWriter, name_error
from .conn import MountClient
from .cow import CowWriter

log = logging.getLogger(__name__)

ZEROS = bytes(1 << 20)


class StreamWriter:
    """A new version fed at increasing offsets: the first SMALL bytes in memory, then a
    draft whose blocks leave as they fill. A write behind the block being filled is
    refused (EIO) because earlier blocks have left for the DataNodes."""

    def __init__(self, open_draft: Callable[[int | None], BlockWriter]) -> None:
        self._open = open_draft     # called with the final size when it is known
        self.w: BlockWriter | None = None
        self.head = bytearray()     # the content while no draft exists
        self.size = 0               # bytes written (end of data)
        self.sent = 0               # bytes in submitted blocks
        self._buf: memoryview | None = None

    def write(self, data: bytes | memoryview, offset: int) -> None:
        assert offset >= self.sent
        if self.w is None:
            end = offset + len(data)
            if end <= SMALL:
                if offset > len(self.head):
                    self.head.extend(bytes(offset - len(self.head)))
                self.head[offset:end] = data
                self.size = len(self.head)
                return
            self._start(None)
        view = memoryview(data).cast("B")
        while offset > self.size:     # a hole: zeros (the store has no sparse files)
            gap = min(offset - self.size, len(ZEROS))
            self._append(memoryview(ZEROS)[:gap], self.size)
        self._append(view, offset)

    def _start(self, size: int | None) -> None:
        self.w = self._open(size)
        head, self.head = self.head, bytearray()
        self.size = 0
        if head:
            self._append(memoryview(head), 0)

    def _append(self, view: memoryview, offset: int) -> None:
        assert self.w is not None
        while view.nbytes:
            if self._buf is None:
                self._buf = self.w.buffer()
            at = offset - self.sent
            k = min(view.nbytes, self._buf.nbytes - at)
            self._buf[at:at + k] = view[:k]
            view, offset = view[k:], offset + k
            self.size = max(self.size, offset)
            if self.size - self.sent == self._buf.nbytes:
                self._buf = None
                self.w.submit(self.size - self.sent)
                self.sent = self.size

    def truncate(self, length: int) -> bool:
        """Shrink or grow within what is still here; False when that is not possible."""
        if length < self.sent:
            return False
        if self.w is None and length <= SMALL:
            del self.head[length:]
            self.head.extend(bytes(length - len(self.head)))
            self.size = length
        elif length > self.size:
            self.write(b"", length)
        else:
            self.size = length
        return True

    def unsent(self) -> bytes:
        """The content, when nothing was sent yet (to become a spool)."""
        assert self.sent == 0
        if self.w is None:
            return bytes(self.head)
        return bytes(self._buf[:self.size]) if self._buf is not None else b""

    def commit(self, then: Sequence[dict] = ()) -> tuple[dict, list]:
        if self.w is None:
            self._start(self.size)    # a small file: a sized create, one put, a commit
        assert self.w is not None
        if self.size > self.sent:
            self._buf = None
            self.w.submit(self.size - self.sent)
            self.sent = self.size
        return self.w.commit(then), self.w.then

    def abort(self) -> None:
        self._buf = None
        if self.w is not None:
            self.w.abort()


SMALL = 1 << 20        # a new file's bytes kept in memory before a draft is opened


def new_draft(fs: MountClient, mux: Mux, path: str, *, size: int | None = None,
              mode: int | None = None, kind: str | None = None,
              exclusive: bool = False, umask: int | None = None) -> BlockWriter:
    """A draft of `path` with the attributes of a new file (ignored by the MDS when it
    replaces one: a new version keeps owner, group and mode)."""
    header: dict[str, Any] = {"op": "create", "path": path, "parents": False}
    for key, value in (("size", size), ("mode", mode), ("kind", kind), ("umask", umask)):
        if value is not None:
            header[key] = value
    if exclusive:
        header["exclusive"] = True
    try:
        created = mux.call(MDS_SERVICE, header).result or {}
    except OSError as exc:
        raise name_error(exc, path)
    w = BlockWriter(mux, path, created, window=fs.window, size_hint=size,
                    suspects=fs.suspects, timeout=fs.timeout)
    w.exclusive = exclusive
    return w


def write_version(fs: MountClient, mux: Mux, path: str, src: Any, size: int,
                  then: Sequence[dict] = (), **new: Any) -> tuple[dict, list]:
    """Commit `size` bytes read from file object `src` as the new version of `path`;
    `then`: MDS operations in the commit's batch -> (commit result, their outcomes)."""
    w = new_draft(fs, mux, path, size=size, **new)
    try:
        left = size
        while left:
            buf = w.buffer()
            n = src.readinto(buf[:min(left, buf.nbytes)])
            if not n:
                raise OSError(errno.EIO, f"{path}: the local copy ended early")
            w.submit(n)
            left -= n
        return w.commit(then), w.then
    except BaseException:
        w.abort()
        raise


def rewrite(fs: MountClient, mux: Mux, path: str, spool: Any, then: Sequence[dict] = (),
            **new: Any) -> tuple[dict, list]:
    """Commit the spool's whole content as the new version of `path`: for a file with no
    committed version to share blocks with (a committed one is edited by cow.py)."""
    spool.seek(0)
    return write_version(fs, mux, path, spool, os.fstat(spool.fileno()).st_size, then,
                         **new)


class FileHandle:
    """One open file: its own Mux (streams keep requests in flight between calls) and a
    lock (FUSE calls on one handle may come from several threads). `fresh`: made by
    create() and not committed yet; `new` holds its attributes for the first commit."""

    def __init__(self, fs: MountClient, path: str, flags: int, base_size: int,
                 spool_dir: str | None, *, fresh: bool = False,
                 new: dict[str, Any] | None = None) -> None:
        self.fs = fs
        self.path = path
        self.flags = flags
        self.base_size = base_size     # the committed size when opened (or last commit)
        self.lock = threading.Lock()
        self.mux: Mux = fs.take()
        self.spool_dir = spool_dir
        self.reader: ReadFile | None = None
        self.stream: StreamWriter | None = None
        self.spool: Any = None
        self.cow: CowWriter | None = None
        self.fresh = fresh
        self.new = dict(new or {}) if fresh else {}
        self.dirty = fresh             # a new file is committed even when left empty
        self.wrote = False
        self.unlinked = False
        self.broken = False
        self.created = time.time()
        self.owner = (os.getuid(), os.getgid())     # who made a fresh file (the caller)
        self.mtime: float | None = None             # a fresh file's utimens, until commit
        self.atime: float | None = None
        self.draft_mode: int | None = None          # the mode its first draft was made with
        self.queued = False            # its content went to the background commits at close

    # -- state -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        if self.stream is not None:
            return self.stream.size
        if self.cow is not None:
            return self.cow.size
        if self.spool is not None:
            return os.fstat(self.spool.fileno()).st_size
        return self.base_size

    def _open_reader(self) -> ReadFile:
        if self.reader is None:
            with self.fs.using(self.mux):
                f = self.fs.open(self.path, "rb")
            assert isinstance(f, ReadFile)
            self.reader = f
        return self.reader

    def _to_spool(self) -> Any:
        """Switch to the spool state: a local copy of the current content."""
        if self.spool is None:
            spool = tempfile.TemporaryFile(dir=self.spool_dir, buffering=0)
            if self.stream is not None:
                spool.write(self.stream.unsent())
                with self.fs.using(self.mux):
                    self.stream.abort()
                self.stream = None
            elif self.base_size and not self.fresh:
                with self.fs.using(self.mux):
                    self.fs.get(self.path, spool)
            self.spool = spool
            self._drop_reader()
        return self.spool

    def _to_cow(self) -> CowWriter | None:
        """Switch to copy-on-write edits of the committed file (None: not possible, it
        has no committed version to share, or it is already spooled or streaming)."""
        if self.cow is None and self.spool is None and self.stream is None \
                and not self.fresh and not self.unlinked:
            with self.fs.using(self.mux):
                info = self.fs._file_info(self.path)
            self.cow = CowWriter(self.mux, self.path, info, window=self.fs.window,
                                 empty=self.base_size == 0, spool_dir=self.spool_dir,
                                 suspects=self.fs.suspects, timeout=self.fs.timeout)
            self._drop_reader()
        return self.cow

    def _drop_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _draft(self, size: int | None) -> BlockWriter:
        self.draft_mode = self.new.get("mode")
        return new_draft(self.fs, self.mux, self.path, size=size, **self.new)

    # -- calls -------------------------------------------------------------------------

    def read(self, size: int, offset: int) -> bytes:
        if self.stream is not None:      # written and read back through one handle
            self._to_spool() if self.stream.sent == 0 else self.flush()
        if self.cow is not None:
            with self.fs.using(self.mux):
                return self.cow.read(size, offset)
        if self.spool is not None:
            return os.pread(self.spool.fileno(), size, offset)
        if offset >= self.base_size or self.fresh:
            return b""
        r = self._open_reader()
        r.seek(offset)
        return r.read(size)

    def write(self, data: bytes, offset: int) -> int:
        # O_RDWR means random access (databases, git's packs): rewrite from the start
        if self.spool is None and self.stream is None and self.base_size == 0 \
                and not self.wrote and offset == 0 \
                and self.flags & os.O_ACCMODE == os.O_WRONLY:
            self.stream = StreamWriter(self._draft)
        self.wrote = True
        if self.stream is not None:
            if offset >= self.stream.sent:
                with self.fs.using(self.mux):
                    self.stream.write(data, offset)
                self.dirty = True
                return len(data)
            raise OSError(errno.EIO, f"{self.path}: a write-only stream cannot go back "
                          "before the block being filled; open it O_RDWR to write at "
                          "random")
        cow = self._to_cow()
        if cow is not None:
            with self.fs.using(self.mux):
                n = cow.write(data, offset)
        else:
            n = os.pwrite(self._to_spool().fileno(), data, offset)
        self.dirty = True
        return n

    def replace_all(self) -> None:
        """O_TRUNC: the new version starts empty, and replaces the old one whole at the
        first flush (readers elsewhere keep seeing the old one until then)."""
        self._drop_reader()
        self.base_size = 0
        self.dirty = True

    def truncate(self, length: int) -> None:
        if self.stream is not None and self.stream.truncate(length):
            self.dirty = self.wrote = True
            return
        if self.spool is None and self.stream is None and length == 0:
            if self.cow is not None:
                self.cow.close()
                self.cow = None
            self.replace_all()            # then a write from 0 may still stream
            return
        cow = self._to_cow()
        if cow is not None:
            with self.fs.using(self.mux):
                cow.truncate(length)
        else:
            self._to_spool().truncate(length)
        self.dirty = self.wrote = True

    def flush(self, then: Sequence[dict] = ()) -> list:
        """Commit what was written: the new version appears whole (close-to-open).
        `then`: MDS operations in the commit's batch; returns their outcomes."""
        if not self.dirty or self.unlinked:
            return []
        with self.fs.using(self.mux):
            if self.stream is not None:
                stream, self.stream = self.stream, None
                try:
                    result, after = stream.commit(then)
                except BaseException:
                    stream.abort()
                    self.broken = True
                    raise
                size = stream.size
            elif self.cow is not None:
                result, after = self.cow.commit(lambda: self._draft(None), then)
                size = self.cow.size
                self.cow.close()
                self.cow = None          # the next edit starts from the new version
            elif self.spool is not None:
                self.draft_mode = self.new.get("mode")
                result, after = rewrite(self.fs, self.mux, self.path, self.spool, then,
                                        **self.new)
                size = self.size
            else:
                self.draft_mode = self.new.get("mode")
                result, after = write_version(self.fs, self.mux, self.path, None, 0, then,
                                              **self.new)
                size = 0
        self.base_size = int(result.get("size", size))
        self.fresh = False
        self.new = {}
        self.dirty = False
        self._drop_reader()
        return after

    def forget_new(self, size: int) -> None:
        """The content was handed to the background commits (pending.py): the handle
        now stands for that file, as after a commit of `size` bytes."""
        self.stream = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self.base_size = size
        self.fresh = False
        self.new = {}
        self.dirty = False
        self._drop_reader()

    def release(self) -> None:
        """Last close: anything still uncommitted is dropped, never half-committed."""
        try:
            if self.stream is not None:
                with self.fs.using(self.mux):
                    self.stream.abort()
                self.stream = None
            self._drop_reader()
            if self.cow is not None:
                self.cow.close()
                self.cow = None
            if self.spool is not None:
                self.spool.close()
                self.spool = None
        finally:
            self.fs.give(self.mux, broken=self.broken)
