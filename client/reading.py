"""Reading blocks over the broker: BlockReader fetches the pieces of a file's blocks
through a bounded window, verifies each (a whole block by its CRC32C, a range through the
chunk table the DataNode sends: broker/checksum.verify_range), and falls back to the
other replicas, reporting bad ones to the MDS. Decisions (pieces, replica order) live in
blocks.py; files.py wraps it as file objects.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

from broker.checksum import verify_range
from broker.client import Reply
from broker.crc import crc32c
from broker.limits import MDS_SERVICE, datanode_service

from .blocks import OrderedWindow, Piece, Suspects, reason_of, replica_order
from .mux import Mux

log = logging.getLogger(__name__)

BAD_REPLICA_ERRNOS = frozenset({errno.ENOENT, errno.EIO, errno.EBADMSG})
# A DataNode refused the capability (expired, or keys from a restarted MDS it has not
# heard of yet) or has no keys yet: fetch fresh capabilities and ask again, a few times.
CAP_RETRY_ERRNOS = frozenset({errno.EACCES, errno.EAGAIN})
CAP_RETRIES = 3
CAP_RETRY_PAUSE = 0.3      # seconds, times the attempt: a DataNode heartbeat or so

Refresh = Callable[[int], "Sequence[dict] | None"]   # block index -> fresh stat blocks


@dataclass(slots=True)
class _GetPiece:
    seq: int
    piece: Piece
    block: dict
    order: list[str]
    tried: list[str] = field(default_factory=list)
    retries: int = 0           # capability refreshes so far (CAP_RETRIES at most)


class BlockReader:
    """Fetches pieces of a file's blocks through a window and yields their bytes in order.

    Each piece is read from its replicas in `replica_order`; a whole block is verified
    (size and CRC32C), a range against the block's CRC32C from the MDS through the chunk
    table the DataNode returns (broker/checksum.verify_range), then sliced. A missing,
    corrupt or silent replica is reported to the MDS and the next one tried. A block whose
    capability a DataNode refuses (EACCES: expired, or none because it is past the 4096 a
    stat carries; EAGAIN: the node has no keys yet) gets fresh ones from `refresh(block
    index)` (a stat from that block on) and is asked again. The `window` attribute may be
    raised while iterating (read-ahead ramp-up).
    """

    def __init__(self, mux: Mux, path: str, blocks: Sequence[dict], pieces: Sequence[Piece],
                 *, window: int = 8, suspects: Suspects | None = None,
                 timeout: float | None = None, rng: random.Random | None = None,
                 refresh: Refresh | None = None) -> None:
        self.refresh = refresh
        self.mux = mux
        self.path = path
        self.blocks = blocks
        self.pieces = list(pieces)
        self.window = window
        self.timeout = timeout
        self.suspects = suspects or Suspects()
        self.rng = rng
        self._tasks: dict[int, _GetPiece] = {}
        self._started = 0

    def __iter__(self) -> Generator[memoryview, None, None]:   # close() cancels read-ahead
        win: OrderedWindow[memoryview] = OrderedWindow(max(1, self.window))
        try:
            emitted = 0
            while emitted < len(self.pieces):
                win.size = max(1, self.window)
                while self._started < len(self.pieces) and not win.full():
                    self._start(win.start())
                reply = self.mux.next(self, None)
                if reply is None:
                    raise RuntimeError("read window has nothing in flight")   # a bug
                done = self._on_reply(reply)
                if done is not None:
                    win.complete(*done)
                for _, data in win.release():
                    emitted += 1
                    yield data
        finally:
            self.close()

    def close(self) -> None:
        self.mux.cancel(self, list(self._tasks))
        self._tasks.clear()

    def _start(self, seq: int) -> None:
        piece = self.pieces[self._started]
        self._started += 1
        block = self.blocks[piece.index]
        order = replica_order(block.get("replicas") or [], self.suspects.current(), self.rng)
        self._fetch(_GetPiece(seq, piece, block, order))

    def _fetch(self, task: _GetPiece) -> None:
        if len(task.tried) >= len(task.order):
            raise OSError(errno.EIO, f"{self.path}: block {task.piece.index} "
                          f"({bytes(task.block['id']).hex()}) cannot be read: "
                          + ("; ".join(task.tried) or "it has no replica"))
        node = task.order[len(task.tried)]
        header: dict[str, Any] = {"op": "get_block", "id": task.block["id"]}
        if task.block.get("cap") is not None:
            header["cap"] = task.block["cap"]
        if not task.piece.whole:
            header.update(offset=task.piece.offset, length=task.piece.length)
        rid = self.mux.send(self, datanode_service(node), header, (), self.timeout)
        self._tasks[rid] = task
        task.tried.append(node)

    def _on_reply(self, reply: Reply) -> tuple[int, memoryview] | None:
        task = self._tasks.pop(reply.rid, None)
        if task is None:
            return None
        node = task.tried[-1]
        err = reply.error
        if (err is not None and getattr(err, "errno", None) in CAP_RETRY_ERRNOS
                and self.refresh is not None
                and task.retries < CAP_RETRIES):
            task.retries += 1
            log.info("%s: block %s on %s: %s; asking again with fresh capabilities",
                     self.path, bytes(task.block["id"]).hex(), node, reason_of(err))
            if err.errno == errno.EAGAIN:
                time.sleep(CAP_RETRY_PAUSE * task.retries)
            self._renew(task.piece.index)
            task.tried.pop()                 # the same node again
            self._fetch(task)
            return None
        problem, report, data = self._check(task, reply)
        if problem is None:
            return task.seq, data
        log.warning("%s: block %s on %s: %s; trying another replica", self.path,
                    bytes(task.block["id"]).hex(), node, problem)
        task.tried[-1] = f"{node}: {problem}"
        if report:
            self._report(task.block["id"], node, problem)
        else:
            self.suspects.mark(node)
        self._fetch(task)
        return None

    def _renew(self, index: int) -> None:
        """Fresh read capabilities for block `index` and those after it (one stat)."""
        try:
            fresh = self.refresh(index) if self.refresh is not None else None
        except OSError as exc:
            log.warning("%s: could not renew block capabilities: %s", self.path, exc)
            return
        caps = {bytes(b["id"]): b["cap"] for b in fresh or ()
                if isinstance(b, dict) and "id" in b and b.get("cap") is not None}
        for b in self.blocks:
            cap = caps.get(bytes(b["id"]))
            if cap is not None:
                b["cap"] = cap

    @staticmethod
    def _check(task: _GetPiece, reply: Reply) -> tuple[str | None, bool, memoryview]:
        """(problem or None, whether the replica itself is bad and the MDS should know,
        the piece's verified bytes)."""
        empty = memoryview(b"")
        if reply.error is not None:
            exc = reply.error
            # Only a replica that is missing or damaged is the replica's fault; a timeout,
            # a busy broker or a node that is down says nothing about the stored copy, and
            # reporting it would make the MDS drop a good replica.
            return reason_of(exc), exc.errno in BAD_REPLICA_ERRNOS, empty
        data = reply.payload[0] if reply.payload else empty
        if len(reply.payload) > 1:
            return f"{len(reply.payload)} payload frames", True, empty
        piece, block = task.piece, task.block
        if piece.whole:
            if data.nbytes != piece.length:
                return f"{data.nbytes} bytes instead of {piece.length}", True, empty
            if crc32c(data) != block["checksum"]:
                return "checksum mismatch", True, empty
            return None, False, data
        return _verified_range(piece, block, reply.result or {}, data)

    def _report(self, block_id: bytes, node: str, reason: str) -> None:
        try:
            self.mux.call(MDS_SERVICE, {"op": "bad_replica", "block": block_id, "node": node,
                                "reason": reason}, timeout=5.0)
        except OSError as exc:
            log.warning("could not report bad replica %s on %s: %s", bytes(block_id).hex(),
                        node, exc)


def _verified_range(piece: Piece, block: dict, result: dict,
                    data: memoryview) -> tuple[str | None, bool, memoryview]:
    """Check a range read against the MDS's size and checksum of the block and return the
    piece's bytes: the DataNode's chunk table must fold to that checksum and every chunk
    sent must match its entry (EIO otherwise: this replica is bad)."""
    empty = memoryview(b"")
    start, chunk_size, chunks = result.get("offset"), result.get("chunk_size"), result.get("chunks")
    size = int(block["size"])
    if type(start) is not int or type(chunk_size) is not int or chunk_size <= 0 \
            or not 0 <= start <= piece.offset:
        return "range reply without a valid chunk table", True, empty
    try:
        verify_range(chunks, chunk_size, size, int(block["checksum"]), start, data)
    except (OSError, ValueError) as exc:
        return f"range verification failed: {exc}", True, empty
    lo = piece.offset - start
    if data.nbytes < lo + piece.length:
        return f"range reply of {data.nbytes} bytes does not cover the piece", True, empty
    return None, False, data[lo:lo + piece.length]
