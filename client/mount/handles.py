"""Open files of the mount: what a FUSE file handle holds between calls.

A handle is in one of three states. *clean*: nothing written; reads stream the version
seen at open (close-to-open) with read-ahead. *stream*: a file that was empty at open and
is written from its start: blocks go to the DataNodes as they fill, only the block being
filled is in memory, and flush/fsync commits the draft (the new version appears whole).
*spool*: any other write (random, O_RDWR, append to a non-empty file, truncate to a
size > 0): the file is rewritten from a local copy - see `rewrite`, the one place to
replace with copy-on-write of the touched blocks once the MDS can commit shared blocks.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from typing import Any

from ..files import ReadFile
from ..streams import BlockWriter, Mux
from .conn import MountClient

log = logging.getLogger(__name__)

ZEROS = bytes(1 << 20)


class StreamWriter:
    """A draft fed at increasing offsets; a write behind the block being filled is
    refused (EIO) because earlier blocks have left for the DataNodes."""

    def __init__(self, writer: BlockWriter) -> None:
        self.w = writer
        self.size = 0                 # bytes written (end of data)
        self.sent = 0                 # bytes in submitted blocks
        self._buf: memoryview | None = None

    def write(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        assert offset >= self.sent
        while offset > self.size:     # a hole: zeros (the store has no sparse files)
            gap = min(offset - self.size, len(ZEROS))
            self._append(memoryview(ZEROS)[:gap], self.size)
        self._append(view, offset)

    def _append(self, view: memoryview, offset: int) -> None:
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
        """Shrink or grow within the unsent block; False when that is not possible."""
        if length < self.sent:
            return False
        if length > self.size:
            self.write(b"", length)
        else:
            self.size = length
        return True

    def head(self) -> bytes:
        """The unsent bytes, when nothing was sent yet (to become a spool)."""
        assert self.sent == 0
        return bytes(self._buf[:self.size]) if self._buf is not None else b""

    def commit(self) -> dict:
        if self.size > self.sent:
            self._buf = None
            self.w.submit(self.size - self.sent)
            self.sent = self.size
        return self.w.commit()

    def abort(self) -> None:
        self._buf = None
        self.w.abort()


def rewrite(fs: MountClient, path: str, spool: Any) -> dict:
    """Commit the spool's whole content as the new version of `path`.

    This increment streams every byte into a new draft; with shared blocks (the MDS's
    reference-counted blocks) this becomes: put only the blocks that the handle touched
    and commit a block list that reuses the current version's others.
    """
    spool.seek(0)
    return fs.put(spool, path, parents=False)


class FileHandle:
    """One open file: its own Mux (streams keep requests in flight between calls) and a
    lock (FUSE calls on one handle may come from several threads)."""

    def __init__(self, fs: MountClient, path: str, flags: int, base_size: int,
                 spool_dir: str | None) -> None:
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
        self.dirty = False
        self.broken = False

    # -- state -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        if self.stream is not None:
            return self.stream.size
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
            spool = tempfile.TemporaryFile(dir=self.spool_dir)
            if self.stream is not None:
                spool.write(self.stream.head())
                self.stream.abort()
                self.stream = None
            elif self.base_size:
                with self.fs.using(self.mux):
                    self.fs.get(self.path, spool)
            self.spool = spool
            self._drop_reader()
        return self.spool

    def _drop_reader(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    # -- calls -------------------------------------------------------------------------

    def read(self, size: int, offset: int) -> bytes:
        if self.stream is not None:      # written and read back through one handle
            self.flush()
        if self.spool is not None:
            return os.pread(self.spool.fileno(), size, offset)
        if offset >= self.base_size:
            return b""
        r = self._open_reader()
        r.seek(offset)
        return r.read(size)

    def write(self, data: bytes, offset: int) -> int:
        # O_RDWR means random access (databases, git's packs): rewrite from the start
        if self.spool is None and self.stream is None and self.base_size == 0 \
                and not self.dirty and offset == 0 \
                and self.flags & os.O_ACCMODE == os.O_WRONLY:
            with self.fs.using(self.mux):
                self.stream = StreamWriter(self.fs._writer(self.path, None, None, False))
        if self.stream is not None:
            if offset >= self.stream.sent:
                self.stream.write(data, offset)
                self.dirty = True
                return len(data)
            raise OSError(errno.EIO, f"{self.path}: a write-only stream cannot go back "
                          "before the block being filled; open it O_RDWR to write at "
                          "random")
        spool = self._to_spool()
        n = os.pwrite(spool.fileno(), data, offset)
        self.dirty = True
        return n

    def truncate(self, length: int) -> None:
        if self.stream is not None and self.stream.truncate(length):
            self.dirty = True
            return
        if self.spool is None and length == 0:
            self._drop_reader()
            with self.fs.using(self.mux):
                self.fs.write_bytes(self.path, b"", parents=False)
            self.base_size = 0
            self.dirty = False
            return
        self._to_spool().truncate(length)
        self.dirty = True

    def flush(self) -> None:
        """Commit what was written: the new version appears whole (close-to-open)."""
        if not self.dirty:
            return
        with self.fs.using(self.mux):
            if self.stream is not None:
                stream, self.stream = self.stream, None
                try:
                    result = stream.commit()
                except BaseException:
                    stream.abort()
                    self.broken = True
                    raise
                self.base_size = int(result.get("size", stream.size))
            else:
                result = rewrite(self.fs, self.path, self.spool)
                self.base_size = int(result.get("size", self.size))
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
            if self.spool is not None:
                self.spool.close()
                self.spool = None
        finally:
            self.fs.give(self.mux, broken=self.broken)
