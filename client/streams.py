"""Writing blocks over the broker: BlockWriter (a draft written block by block through a
bounded window, with failover to replacement DataNodes). The small-file path (a thread's
BlockPool of pre-allocated blocks, then one `put_small`) is smallfiles.py. Streams share a
thread's broker Client through a Mux (mux.py); reading is reading.py.

Decisions (geometry, window, replica order) live in blocks.py; this module does the I/O;
files.py wraps it as file objects. Every block request carries the capability the MDS gave
for it (`cap`); a write collects each replica's receipt for the commit.
"""
from __future__ import annotations

import errno
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from broker.crc import crc32c

from broker import protocol as P
from broker.client import BrokerUnavailable, Reply
from broker.limits import MDS_SERVICE, datanode_service

from .blocks import (OrderedWindow, ReplicaWrite, Suspects, alloc_batch, block_ranges,
                     put_refusal, put_spec, reason_of, renew_period)
from .mux import Mux

log = logging.getLogger(__name__)

Progress = Callable[[int], None]        # called with the bytes just finished


def name_error(exc: OSError, path: str | None) -> OSError:
    """Make sure an error names the path (the MDS may name a parent, a draft, or nothing).
    Not for BrokerUnavailable: that one is about the cluster, not the file."""
    if path and exc.filename is None and path not in str(exc) \
            and not isinstance(exc, BrokerUnavailable):
        exc.filename = path
    return exc


def draft_geometry(created: dict) -> tuple[int, int]:
    """(replication, block size) of a new draft, from the MDS's create reply: the values the
    caller asked for, or the cluster's defaults when it asked for none."""
    try:
        replication, block_size = int(created["replication"]), int(created["block_size"])
    except (KeyError, TypeError, ValueError):
        raise P.ProtocolError("the MDS's create reply has no valid replication and "
                              "block_size") from None
    if replication < 1 or block_size < 1:
        raise P.ProtocolError(f"the MDS's create reply has replication {replication}, "
                              f"block_size {block_size}")
    return replication, block_size


# ---------------------------------------------------------------------------------------
# I/O: writing

@dataclass(slots=True)
class _PutBlock:
    seq: int
    id: bytes
    size: int
    checksum: int
    data: memoryview
    replicas: ReplicaWrite
    caps: dict[str, bytes] = field(default_factory=dict)       # node -> write capability
    receipts: dict[str, bytes] = field(default_factory=dict)   # node -> its receipt
    rids: dict[int, str] = field(default_factory=dict)


class BlockWriter:
    """One draft on the MDS, written block by block through a window of slot buffers.

        w = BlockWriter.create(mux, "/a", replication=2)
        buf = w.buffer(); n = f.readinto(buf); w.submit(n)   # repeat
        w.commit()            # or w.abort() on any failure

    Each slot buffer is reused once its block is acked by every replica it will get, so
    memory is window x block size whatever the file size.
    """

    def __init__(self, mux: Mux, path: str, created: dict, *, window: int = 8,
                 size_hint: int | None = None, progress: Progress | None = None,
                 suspects: Suspects | None = None, timeout: float | None = None) -> None:
        self.mux = mux
        self.path = path
        self.handle = created["handle"]
        self.replication, self.block_size = draft_geometry(created)
        self.timeout = timeout
        self.window: OrderedWindow[dict] = OrderedWindow(window)
        self.progress = progress
        self.suspects = suspects or Suspects()
        self._buffers: list[bytearray | None] = [None] * window
        self._alloc: deque[tuple[bytes, list[str], dict[str, bytes]]] = deque()
        self._allocated = 0
        self._remaining = (None if size_hint is None
                           else len(block_ranges(size_hint, self.block_size)))
        for b in created.get("blocks") or []:      # allocated together with the create
            self._alloc.append(_allocated(b))
        if self._alloc:
            self._allocated = len(self._alloc)
            if self._remaining is not None:
                self._remaining = max(0, self._remaining - self._allocated)
        self._tasks: dict[int, _PutBlock] = {}          # rid -> block
        self._renew_every = renew_period(created.get("lease"))
        self._renew_at = time.monotonic() + self._renew_every
        self.blocks: list[dict] = []
        self.size = 0
        self.closed = False
        self.exclusive = False
        self.then: list[Any] = []        # outcomes of commit(then=...)

    @classmethod
    def create(cls, mux: Mux, path: str, *, replication: int | None = None,
               block_size: int | None = None, parents: bool = True, exclusive: bool = False,
               **kw: Any) -> "BlockWriter":
        """A new draft of `path`; `exclusive`: fail EEXIST if something is there at the
        create or by the commit (O_EXCL)."""
        header: dict[str, Any] = {"op": "create", "path": path, "parents": parents}
        if exclusive:
            header["exclusive"] = True
        if replication is not None:
            header["replication"] = replication
        if block_size is not None:
            header["block_size"] = block_size
        if kw.get("size_hint") is not None:
            # the MDS allocates the first blocks with the create: one round trip (and one
            # MDS fsync) less per file, which is most of the cost of small files
            header["size"] = kw["size_hint"]
        created = mux.call(MDS_SERVICE, header).result
        writer = cls(mux, path, created, **kw)
        writer.exclusive = exclusive
        return writer

    # -- feeding -------------------------------------------------------------------------

    def buffer(self) -> memoryview:
        """The buffer for the next block (block_size bytes); waits for a free slot."""
        while self.window.full():
            self._pump(block=True)
        slot = self.window.next_slot()
        buf = self._buffers[slot]
        if buf is None:
            buf = self._buffers[slot] = self.mux.buffers.take(self.block_size)
        return memoryview(buf)

    def submit(self, n: int) -> None:
        """Send the first n bytes (1..block_size) of the last buffer() as the next block."""
        if not 0 < n <= self.block_size:
            raise ValueError(f"block of {n} bytes (block size {self.block_size})")
        buf = self._buffers[self.window.next_slot()]
        if buf is None:
            raise RuntimeError("submit() without buffer()")   # a bug in the caller
        view = memoryview(buf)[:n]
        bid, nodes, caps = self._next_id()
        seq = self.window.start()
        task = _PutBlock(seq, bid, n, crc32c(view), view,
                         ReplicaWrite(nodes, self.replication), caps)
        if not nodes:
            self._replace(task)
        for node in set(nodes) & self.suspects.current():
            self._avoid(task, node)
        self._send(task)
        self._settle(task)
        self._pump(block=False)

    def _next_id(self) -> tuple[bytes, list[str], dict[str, bytes]]:
        if not self._alloc:
            count = alloc_batch(self._remaining, self.window.size, self._allocated)
            exclude = sorted(self.suspects.current())
            try:
                got = self._mds({"op": "allocate", "handle": self.handle, "count": count,
                                 "exclude": exclude})
            except OSError as exc:
                if not exclude or exc.errno != errno.ENOSPC:
                    raise
                # our suspects may be back and needed to place R replicas: ask again
                got = self._mds({"op": "allocate", "handle": self.handle, "count": count})
            self._renewed(got)                                      # allocate renews
            for b in got["blocks"]:
                self._alloc.append(_allocated(b))
            self._allocated += len(got["blocks"])
            if self._remaining is not None:
                self._remaining = max(0, self._remaining - len(got["blocks"]))
            if not self._alloc:
                raise OSError(errno.EIO, f"{self.path}: the MDS allocated no block")
        return self._alloc.popleft()

    # -- replies -------------------------------------------------------------------------

    def _send(self, task: _PutBlock) -> None:
        for node in task.replicas.take_queue():
            spec = put_spec(task.id, task.checksum, task.caps.get(node))
            header = {"op": "put_block", **spec}
            rid = self.mux.send(self, datanode_service(node), header, [task.data], self.timeout)
            task.rids[rid] = node
            self._tasks[rid] = task

    def _on_reply(self, reply: Reply) -> None:
        task = self._tasks.pop(reply.rid, None)
        if task is None:
            log.debug("reply %d matches no block of %s; ignored", reply.rid, self.path)
            return
        node = task.rids.pop(reply.rid)
        if reply.error is not None:
            self._failed(task, node, reason_of(reply.error), reply.error)
        elif (refusal := put_refusal(reply.result, task.size, task.checksum)) is not None:
            self._failed(task, node, refusal, None)
        else:
            task.receipts[node] = reply.result.get("receipt") or b""
            task.replicas.ack(node)
        self._settle(task)

    def _failed(self, task: _PutBlock, node: str, reason: str, exc: BaseException | None) -> None:
        log.warning("%s: block %s on %s failed (%s); looking for a replacement",
                    self.path, task.id.hex(), node, reason)
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self.suspects.mark(node)
        task.replicas.fail(node, reason)
        if task.replicas.wants_replacement():
            self._replace(task)
            self._send(task)

    def _replacement(self, task: _PutBlock) -> str | None:
        """A live node the MDS offers for this block, none of those already tried."""
        try:
            got = self._mds({"op": "replace_target", "handle": self.handle, "block": task.id,
                             "exclude": task.replicas.exclude()})
        except OSError as exc:
            log.warning("%s: no replacement for block %s: %s", self.path, task.id.hex(), exc)
            return None
        node = got.get("node")
        if not node:
            return None
        if isinstance(got.get("cap"), bytes):
            task.caps[str(node)] = got["cap"]
        return str(node)

    def _replace(self, task: _PutBlock) -> None:
        node = self._replacement(task)
        if node:
            task.replicas.add(node)

    def _avoid(self, task: _PutBlock, node: str) -> None:
        """A target that failed us moments ago: swap it for another node if there is one
        (else keep it: it may be back, and a replica is better than none)."""
        new = self._replacement(task)
        if new and task.replicas.swap(node, new, "recently down"):
            log.info("%s: block %s goes to %s instead of %s (recently down)", self.path,
                     task.id.hex(), new, node)

    def _settle(self, task: _PutBlock) -> None:
        if not task.replicas.done:
            return
        if not task.replicas.acked:
            raise OSError(errno.EIO, f"{self.path}: block {task.seq} could not be stored on any "
                          f"DataNode: {task.replicas.describe_failures()}")
        if len(task.replicas.acked) < self.replication:
            log.warning("%s: block %s committed with %d of %d replicas; the MDS re-replicates",
                        self.path, task.id.hex(), len(task.replicas.acked), self.replication)
        acked = list(task.replicas.acked)
        self.window.complete(task.seq, {"id": task.id, "size": task.size,
                                        "checksum": task.checksum, "replicas": acked,
                                        "receipts": [task.receipts.get(n, b"") for n in acked]})
        for _, block in self.window.release():
            self.blocks.append(block)
            self.size += block["size"]
            if self.progress:
                self.progress(block["size"])

    def _pump(self, block: bool) -> None:
        """Handle the replies that are in (block: wait for at least one); renew the lease."""
        if time.monotonic() >= self._renew_at:
            self._renewed(self._mds({"op": "renew", "handle": self.handle}))
        wait = max(0.0, self._renew_at - time.monotonic()) if block else 0.0
        reply = self.mux.next(self, wait)
        while reply is not None:
            self._on_reply(reply)
            reply = self.mux.next(self, 0)
        if block and not self._tasks and self.window.full():
            raise RuntimeError("write window is full with nothing in flight")   # a bug

    def _renewed(self, reply: dict) -> None:
        """The lease was just extended; a reply that says for how long sets the period."""
        if "lease" in reply:
            self._renew_every = renew_period(reply["lease"])
        self._renew_at = time.monotonic() + self._renew_every

    def _mds(self, header: dict) -> dict:
        try:
            return self.mux.call(MDS_SERVICE, header).result
        except OSError as exc:
            raise name_error(exc, self.path)

    # -- ending --------------------------------------------------------------------------

    def drain(self) -> None:
        """Wait until every block submitted is stored (then in `self.blocks`, in order)."""
        while not self.window.empty():
            self._pump(block=True)

    def commit(self, then: Sequence[dict] = (), blocks: Sequence[dict] | None = None) -> dict:
        """Wait for every block, then make the file visible; returns the MDS's answer.
        `then`: MDS operations to run right after the commit, in the same batch (one
        round trip and one fsync for all); their outcomes are left in `self.then`.
        `blocks`: the list to commit instead of the blocks written in order (copy-on-write
        mixes entries of `self.blocks` with shared `from` entries; drain() first)."""
        self.drain()
        commit: dict[str, Any] = {"op": "commit", "handle": self.handle,
                                  "blocks": self.blocks if blocks is None else list(blocks)}
        if self.exclusive:
            commit["exclusive"] = True
        if then:
            from .batch import mds_batch
            got = mds_batch(self.mux, [commit, *then])
            if isinstance(got[0], OSError):
                raise name_error(got[0], self.path)
            result, self.then = got[0], got[1:]
        else:
            result = self._mds(commit)
        if result.get("refused"):   # replicas the MDS found no proof for: it re-replicates
            log.warning("%s: the MDS refused %d replicas without a valid receipt", self.path,
                        len(result["refused"]))
        self.closed = True
        self._give_buffers()
        return result

    def _give_buffers(self) -> None:
        # After an abort a zero-copy frame may still point into a buffer; reusing it can
        # only send bytes that fail the DataNode's checksum check for a dropped draft.
        for i, buf in enumerate(self._buffers):
            if buf is not None:
                self.mux.buffers.give(buf)
                self._buffers[i] = None

    def abort(self) -> None:
        """Drop the draft (best effort: an expired lease drops it anyway)."""
        if self.closed:
            return
        self.closed = True
        self.mux.cancel(self, list(self._tasks))
        self._tasks.clear()
        self._give_buffers()
        try:
            self.mux.call(MDS_SERVICE, {"op": "abort", "handle": self.handle}, timeout=5.0)
        except OSError as exc:
            log.warning("%s: could not abort draft %s: %s", self.path, self.handle, exc)


def _allocated(b: dict) -> tuple[bytes, list[str], dict[str, bytes]]:
    """(id, target nodes, node -> write capability) of one block of an allocate reply."""
    nodes = list(b.get("nodes") or [])
    return bytes(b["id"]), nodes, dict(zip(nodes, b.get("caps") or []))
