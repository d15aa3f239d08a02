"""Copy-on-write edits of an existing file: the next version as the current version's
block list with the touched blocks replaced. Only touched blocks are read (once, whole,
CRC-checked), patched and put as new blocks at commit; every other block is shared with
the current version through commit's `from` entries (mds/ops_write.py `commit`).

Public API: `CowWriter` (read, write, truncate, size, commit, close), `Changed`.
"""
from __future__ import annotations

import bisect
import errno
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from broker.limits import MDS_SERVICE

from ..blocks import Piece, Suspects
from ..mux import Mux
from ..reading import BlockReader
from ..streams import BlockWriter

ZERO_CHUNK = 1 << 20         # a hole or a growing truncate is written in chunks of this
# A rewritten block is committed as new blocks of this size (a commit that shares blocks
# may mix sizes): the first edit of a region still moves its whole old block, later edits
# there move one piece. Smaller means cheaper repeated random writes (databases) and more
# blocks for the MDS to keep and for sequential reads to fetch one by one.
EDIT_PIECE = 64 * 1024


class Changed(OSError):
    """The file got a new version between the stat this edit is based on and its commit:
    committing would mix two versions, so the flush fails (EIO) and the edit is dropped."""


@dataclass(slots=True)
class _Seg:
    """One block of the next version: shared (`base` set, no bytes here) or dirty (its
    bytes in memory, or in the spill file at `spilled` when pushed out of the window)."""
    size: int
    base: dict | None = None
    data: bytearray | None = None
    spilled: bool = False

    @property
    def clean(self) -> bool:
        return self.base is not None and self.data is None and not self.spilled


class CowWriter:
    """Edits over `info` (a stat with read=True: blocks with caps, block_size). Dirty
    blocks are kept in memory up to `window`; beyond it the least recently touched go to a
    sparse local spill file (a block's slot at index x slot size), so memory stays
    window x block size whatever the edit, and the disk holds only dirty blocks. They go
    to the DataNodes at commit: a draft block cannot be read back (no read capability
    before its commit), and a block touched again after being sent would need that."""

    def __init__(self, mux: Mux, path: str, info: dict, *, window: int = 8,
                 empty: bool = False, spool_dir: str | None = None,
                 suspects: Suspects | None = None, timeout: float | None = None,
                 piece: int = EDIT_PIECE) -> None:
        self.mux = mux
        self.piece = piece
        self.path = path
        self.block_size = int(info["block_size"])
        base = [] if empty else list(info.get("blocks") or [])
        self.segs = [_Seg(int(b["size"]), base=b) for b in base]
        self._starts = [0]
        for s in self.segs:
            self._starts.append(self._starts[-1] + s.size)
        self.window = max(1, window)
        self.spool_dir = spool_dir
        self.suspects = suspects
        self.timeout = timeout
        self._mem: OrderedDict[int, None] = OrderedDict()   # dirty in memory, LRU first
        self._slot = max([self.block_size, *(s.size for s in self.segs)])
        self._spill: Any = None
        self.fetched = 0           # bytes read from DataNodes (whole blocks and ranges)

    @property
    def size(self) -> int:
        return self._starts[-1]

    @property
    def dirty(self) -> list[int]:
        return [i for i, s in enumerate(self.segs) if not s.clean]

    # -- bytes of one block ------------------------------------------------------------

    def _fetch(self, i: int, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the current version's block i (the whole block, or a verified range)."""
        seg = self.segs[i]
        assert seg.base is not None
        length = seg.size - offset if length is None else length
        whole = offset == 0 and length == int(seg.base["size"])
        reader = BlockReader(self.mux, self.path, [seg.base],
                             [Piece(0, offset, length, whole)], window=1,
                             suspects=self.suspects, timeout=self.timeout,
                             refresh=lambda _: self._refresh(i))
        data = b"".join(bytes(v) for v in reader)
        self.fetched += len(data)
        return data

    def _refresh(self, i: int) -> list[dict]:
        info = self.mux.call(MDS_SERVICE, {"op": "stat", "path": self.path,
                                           "caps_from": i}).result or {}
        return list(info.get("blocks") or [])

    def _bytes(self, i: int) -> bytearray:
        """Block i made dirty and in memory (read once if shared, back from the spill)."""
        seg = self.segs[i]
        if seg.data is None:
            if seg.spilled:
                seg.data = bytearray(os.pread(self._spill.fileno(), seg.size, i * self._slot))
                seg.spilled = False
            elif seg.base is not None:
                seg.data = bytearray(self._fetch(i))
            else:
                seg.data = bytearray(seg.size)
            self._mem[i] = None
            self._evict(keep=i)
        else:
            self._mem.move_to_end(i)
        return seg.data

    def _evict(self, keep: int) -> None:
        while len(self._mem) > self.window:
            i = next(iter(self._mem))
            if i == keep:
                self._mem.move_to_end(i)
                continue
            del self._mem[i]
            seg = self.segs[i]
            assert seg.data is not None
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(dir=self.spool_dir, buffering=0)
            os.pwrite(self._spill.fileno(), seg.data, i * self._slot)
            seg.data, seg.spilled = None, True

    def _drop_from(self, n: int) -> None:
        for i in range(n, len(self.segs)):
            self._mem.pop(i, None)
        del self.segs[n:]
        del self._starts[n + 1:]

    # -- calls -------------------------------------------------------------------------

    def read(self, size: int, offset: int) -> bytes:
        out = bytearray()
        pos, end = offset, min(offset + size, self.size)
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            seg, at = self.segs[i], pos - self._starts[i]
            n = min(end - pos, seg.size - at)
            if seg.clean:      # a range read: a 4 KiB read costs 4 KiB, not a block
                out += self._fetch(i, at, n)
            else:
                out += self._bytes(i)[at:at + n]
            pos += n
        return bytes(out)

    def write(self, data: bytes | memoryview, offset: int) -> int:
        while offset > self.size:             # a hole: zeros (no sparse files)
            self._put(memoryview(bytes(min(offset - self.size, ZERO_CHUNK))), self.size)
        self._put(memoryview(data).cast("B"), offset)
        return len(data)

    def _put(self, view: memoryview, pos: int) -> None:
        while view.nbytes:
            last = len(self.segs) - 1
            if pos == self.size and (last < 0 or self.segs[last].size >= self.block_size):
                self.segs.append(_Seg(0, data=bytearray()))      # appending: a new block
                self._starts.append(self.size)
                self._mem[last + 1] = None
                self._evict(keep=last + 1)
                last += 1
            i = bisect.bisect_right(self._starts, pos) - 1 if pos < self.size else last
            at = pos - self._starts[i]
            room = (max(self.block_size, self.segs[i].size) if i == last
                    else self.segs[i].size)           # only the last block may grow
            n = min(view.nbytes, room - at)
            buf = self._bytes(i)
            buf[at:at + n] = view[:n]
            if len(buf) != self.segs[i].size:
                self.segs[i].size = len(buf)
                self._starts[i + 1] = self._starts[i] + len(buf)
            view, pos = view[n:], pos + n

    def truncate(self, length: int) -> None:
        if length >= self.size:
            self.write(b"", length)
            return
        i = bisect.bisect_right(self._starts, length) - 1      # the block holding the cut
        if self._starts[i] == length:
            self._drop_from(i)             # on a block boundary: whole blocks kept
            return
        self._drop_from(i + 1)
        buf = self._bytes(i)
        del buf[length - self._starts[i]:]
        self.segs[i].size = len(buf)
        self._starts[i + 1] = length

    # -- ending ------------------------------------------------------------------------

    def commit(self, open_draft: Callable[[], BlockWriter],
               then: Sequence[dict] = ()) -> tuple[dict, list]:
        """Put the dirty blocks in a new draft and commit the whole list atomically:
        -> (commit result, outcomes of `then`). Changed (EIO) when a shared block is no
        longer the file's (ENOENT) or differs (EINVAL): the file changed underneath."""
        w = open_draft()
        # only a commit that shares a block may mix sizes (mds/ns_commit.py)
        split = any(seg.clean for seg in self.segs)
        try:
            counts: dict[int, int] = {}
            for i, seg in enumerate(self.segs):
                if seg.clean or seg.size == 0:
                    continue
                data = memoryview(seg.data if seg.data is not None else
                                  os.pread(self._spill.fileno(), seg.size, i * self._slot))
                # a rewritten old block goes in pieces; appended blocks stay whole
                step = self.piece if split and seg.base is not None else seg.size
                for off in range(0, seg.size, step):
                    n = min(step, seg.size - off)
                    buf = w.buffer()
                    if n > buf.nbytes:     # an old block bigger than the draft's blocks
                        raise OSError(errno.EFBIG, f"{self.path}: block {i} of {seg.size} "
                                      f"bytes exceeds the block size {buf.nbytes}")
                    buf[:n] = data[off:off + n]
                    w.submit(n)
                    counts[i] = counts.get(i, 0) + 1
            w.drain()
            written = iter(w.blocks)
            blocks: list[dict] = []
            for i, seg in enumerate(self.segs):
                if seg.clean:
                    assert seg.base is not None
                    blocks.append({"id": seg.base["id"], "size": seg.size,
                                   "checksum": seg.base["checksum"], "from": self.path})
                else:
                    blocks += [next(written) for _ in range(counts.get(i, 0))]
            try:
                result = w.commit(then, blocks=blocks)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINVAL):
                    raise Changed(errno.EIO, f"{self.path}: the file changed since it was "
                                  f"opened ({exc.strerror or exc}); this edit is dropped, "
                                  "open it again") from exc
                raise
            return result, w.then
        except BaseException:
            w.abort()
            raise

    def close(self) -> None:
        self._mem.clear()
        self.segs = []
        if self._spill is not None:
            self._spill.close()
            self._spill = None
