"""Streaming file objects over block streams: ReadFile ("rb": read, seek, tell, with
read-ahead that ramps up) and WriteFile ("wb": blocks go out as the buffer fills, close()
commits atomically, an exception aborts). What AegisClient.open returns.
"""
from __future__ import annotations

import bisect
import errno
import io
import logging
from typing import Any, Generator

from broker.limits import MDS_SERVICE

from .blocks import Piece, Suspects
from .mux import Mux
from .reading import BlockReader
from .streams import BlockWriter

log = logging.getLogger(__name__)


class ReadFile(io.RawIOBase):
    """A committed file opened "rb": read / readinto / seek / tell over its blocks.

    Whole blocks are fetched and verified; read-ahead starts at one block after open or a
    seek and doubles with each block read in sequence, up to the window.
    """

    def __init__(self, mux: Mux, info: dict, *, window: int = 8,
                 suspects: Suspects | None = None, timeout: float | None = None) -> None:
        super().__init__()
        self.name = info["path"]
        self.size = int(info["size"])
        self._mux = mux
        self._blocks = info["blocks"]
        self._starts = [0]
        for b in self._blocks:
            self._starts.append(self._starts[-1] + int(b["size"]))
        self._max_window = window
        self._suspects = suspects
        self._timeout = timeout
        self._pos = 0
        self._cur: tuple[int, memoryview] | None = None
        self._reader: BlockReader | None = None
        self._ahead: Generator[memoryview, None, None] | None = None
        self._ahead_next = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, f"{self.name}: negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        out = memoryview(b).cast("B")
        done = 0
        while done < len(out) and self._pos < self.size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            data = self._block(i)
            off = self._pos - self._starts[i]
            n = min(len(out) - done, data.nbytes - off)
            out[done:done + n] = data[off:off + n]
            done += n
            self._pos += n
        return done

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buf = bytearray(min(size, max(0, self.size - self._pos)))
        n = self.readinto(buf)
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    def readall(self) -> bytes:
        return self.read(-1)

    def _block(self, i: int) -> memoryview:
        if self._cur is not None and self._cur[0] == i:
            return self._cur[1]
        if self._reader is None or self._ahead is None or self._ahead_next != i:
            self._drop_reader()
            pieces = [Piece(j, 0, int(self._blocks[j]["size"]), True)
                      for j in range(i, len(self._blocks))]
            self._reader = BlockReader(self._mux, self.name, self._blocks, pieces, window=1,
                                       suspects=self._suspects, timeout=self._timeout,
                                       refresh=self._refresh)
            self._ahead, self._ahead_next = iter(self._reader), i
        else:
            self._reader.window = min(self._max_window, self._reader.window * 2)
        try:
            data = next(self._ahead)
        except OSError as exc:
            self._drop_reader()
            raise self._stale(i) or exc
        self._ahead_next += 1
        self._cur = (i, data)
        return data

    def _refresh(self, index: int) -> list[dict]:
        """Fresh read capabilities (a stat) for blocks from `index` on."""
        info = self._mux.call(MDS_SERVICE, {"op": "stat", "path": self.name,
                                            "caps_from": index}).result
        return info.get("blocks") or []

    def _stale(self, i: int) -> OSError | None:
        """ESTALE if block i failed because the file was replaced or removed since open
        (its old blocks are deleted once the MDS's delete grace has passed)."""
        try:
            info = self._mux.call(MDS_SERVICE, {"op": "stat", "path": self.name}).result
        except FileNotFoundError:
            return OSError(errno.ESTALE, f"{self.name} was removed while open")
        except OSError:
            return None
        if all(b.get("id") != self._blocks[i]["id"] for b in info.get("blocks") or []):
            return OSError(errno.ESTALE, f"{self.name} was replaced while open; open it "
                           "again to read the new version")
        return None

    def _drop_reader(self) -> None:
        if self._ahead is not None:
            self._ahead.close()          # cancels the read-ahead still in flight
        self._reader = self._ahead = None
        self._ahead_next = -1

    def close(self) -> None:
        if not self.closed:
            self._drop_reader()
            self._cur = None
        super().close()


class WriteFile(io.RawIOBase):
    """A new version of a file opened "wb": blocks stream out as the buffer fills; close()
    commits (the file appears, atomically replacing any older one), and leaving a `with`
    block on an exception, or abort(), drops the draft. flush() is a no-op: nothing is
    visible before close()."""

    def __init__(self, writer: BlockWriter) -> None:
        super().__init__()
        self.name = writer.path
        self.result: dict | None = None
        self._w = writer
        self._buf: memoryview | None = None
        self._fill = 0
        self._written = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def write(self, b: Any) -> int:
        self._checkClosed()
        view = memoryview(b).cast("B")
        total = view.nbytes
        try:
            while view.nbytes:
                if self._buf is None:
                    self._buf, self._fill = self._w.buffer(), 0
                k = min(view.nbytes, self._buf.nbytes - self._fill)
                self._buf[self._fill:self._fill + k] = view[:k]
                self._fill += k
                view = view[k:]
                if self._fill == self._buf.nbytes:
                    self._buf = None
                    self._w.submit(self._fill)
        except BaseException:
            self.abort()
            raise
        self._written += total
        return total

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._buf is not None and self._fill:
                self._buf = None
                self._w.submit(self._fill)
            self.result = self._w.commit()
        except BaseException:
            self._w.abort()
            raise
        finally:
            super().close()

    def abort(self) -> None:
        """Drop the draft: the file keeps its old content (or stays absent)."""
        if not self.closed:
            self._buf = None
            self._w.abort()
            super().close()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # Never commit from the garbage collector (maybe half-written, maybe another
        # thread's socket): the draft's lease runs out and the MDS drops it.
        if not self.closed:
            log.warning("%s: write stream dropped without close(); nothing committed",
                        self.name)
            self._w.closed = True
            io.RawIOBase.close(self)
