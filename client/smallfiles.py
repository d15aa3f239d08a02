"""The small-file path: a thread's BlockPool of blocks allocated ahead (the MDS's `pool`
op), then one `put_small` request per file that creates and commits it (one MDS fsync).
api_write.py calls put_small for a file of one block and falls back to streams.py's
BlockWriter when this path cannot take the file; the pools live on the thread's Mux.
"""
from __future__ import annotations

import errno
import logging
import time
from collections import deque
from typing import Any, Callable

from broker.crc import crc32c
from broker.limits import MDS_SERVICE, datanode_service

from .blocks import Suspects, put_refusal, put_spec, reason_of
from .mux import Mux
from .retry import stamp_opids
from .streams import _allocated, draft_geometry, name_error

log = logging.getLogger(__name__)

POOL_BLOCKS = 16           # most blocks a pool asks for at a time (the MDS allows 1..16)
POOL_FIRST = 2             # what a new pool asks for; each refill doubles, up to POOL_BLOCKS,
                           # so a process that writes one file (a CLI call) holds 1 spare
                           # block until the lease ends, not 15
POOL_LIFE = 30.0           # seconds a pool is used at most (then aborted, a new one opened)
SMALL_MAX = 1 << 20        # files up to this size (and one block) take the pool path


class BlockPool:
    """Block ids with their targets and write capabilities, allocated ahead of the small
    files this thread will write (the MDS's `pool` op), so that such a file is its block
    puts to every target in parallel, then ONE `put_small` request that creates and
    commits it (one MDS fsync). A pool is a draft without a path on the MDS: its unused
    blocks count toward our allocation limits and are deleted when it ends. It is used
    for at most min(POOL_LIFE, lease / 2) seconds (write capabilities last longer than
    the lease), then aborted; a pool the MDS no longer knows (ESTALE) is dropped."""

    def __init__(self, mux: Mux, replication: int | None, block_size: int | None,
                 *, clock: Callable[[], float] | None = None) -> None:
        # the retry policy's clock: a test's fake clock moves pools' time too
        self.mux = mux
        self.clock = clock or (mux.retry.clock if mux.retry is not None else time.monotonic)
        self.ask = POOL_FIRST
        header: dict[str, Any] = {"op": "pool", "count": self.ask}
        if replication is not None:
            header["replication"] = replication
        if block_size is not None:
            header["block_size"] = block_size
        got = mux.call(MDS_SERVICE, header).result
        self.handle = str(got["handle"])
        self.replication, self.block_size = draft_geometry(got)
        lease = got.get("lease")
        life = POOL_LIFE if not isinstance(lease, (int, float)) else min(POOL_LIFE, lease / 2)
        self.until = self.clock() + max(1.0, life)
        self.blocks: deque[tuple[bytes, list[str], dict[str, bytes]]] = deque(
            _allocated(b) for b in got.get("blocks") or [])

    def fresh(self) -> bool:
        return self.clock() < self.until

    def take(self) -> tuple[bytes, list[str], dict[str, bytes]]:
        if not self.blocks:
            self.ask = min(POOL_BLOCKS, 2 * self.ask)
            got = self.mux.call(MDS_SERVICE, {"op": "allocate", "handle": self.handle,
                                              "count": self.ask}).result
            self.blocks.extend(_allocated(b) for b in got.get("blocks") or [])
            if not self.blocks:
                raise OSError(errno.EIO, "the MDS allocated no block to the pool")
        return self.blocks.popleft()

    def release(self) -> bool:
        """On the way out: ask the MDS to end the pool without waiting for its answer
        (never blocks, even with the cluster down; the lease ends the pool anyway).
        False when there was no connection to ask over."""
        self.blocks.clear()
        post = getattr(self.mux.rpc, "post", None)
        return bool(post and post(MDS_SERVICE, stamp_opids({"op": "abort",
                                                            "handle": self.handle})))

    def close(self) -> None:
        """Give the unused blocks back (best effort: the lease ends the pool anyway)."""
        self.blocks.clear()
        try:
            self.mux.call(MDS_SERVICE, {"op": "abort", "handle": self.handle}, timeout=5.0)
        except OSError as exc:
            log.info("could not abort block pool %s: %s", self.handle, exc)


def pool_for(mux: Mux, replication: int | None, block_size: int | None) -> BlockPool:
    """This thread's pool for (replication, block_size): a fresh one when it has none or
    its time is over."""
    key = (replication, block_size)
    pool = mux.pools.get(key)
    if pool is not None and not pool.fresh():
        del mux.pools[key]
        pool.close()
        pool = None
    if pool is None:
        pool = mux.pools[key] = BlockPool(mux, replication, block_size)
    return pool


def put_small(mux: Mux, path: str, data: bytes | memoryview, *,
              replication: int | None, block_size: int | None, parents: bool,
              exclusive: bool, suspects: Suspects,
              timeout: float | None = None) -> dict | None:
    """Write a small file through this thread's block pool: its block to every target at
    once, then one `put_small` (create + commit, one MDS fsync). Returns the MDS's answer,
    or None when this path cannot take the file (too big for one block, a target failed
    or is suspect, the pool is gone): then nothing is visible and the caller writes it the
    usual way (create, put with failover, commit). Errors about the file (EACCES, EEXIST,
    ENOENT, ...) are raised."""
    size = len(data)
    if size > SMALL_MAX or (block_size is not None and size > block_size):
        return None
    pool = pool_for(mux, replication, block_size)
    if size > pool.block_size:
        return None
    blocks: list[dict] = []
    if size:
        try:
            bid, nodes, caps = pool.take()
        except OSError as exc:
            if exc.errno != errno.ENOENT:     # the pool ended under us: a new one next
                raise name_error(exc, path)
            mux.pools.pop((replication, block_size), None)
            return None
        if not nodes or len(nodes) < pool.replication or set(nodes) & suspects.current():
            return None        # the streaming writer swaps targets and fails over
        crc = crc32c(data)
        view = memoryview(data)
        owner = object()
        rids: dict[int, str] = {}
        for node in nodes:
            header = {"op": "put_block", **put_spec(bid, crc, caps.get(node))}
            rids[mux.send(owner, datanode_service(node), header, [view], timeout)] = node
        receipts: dict[str, bytes] = {}
        failed = False
        while rids:
            reply = mux.next(owner, timeout)
            if reply is None:        # silent: give up on this path; late replies dropped
                mux.cancel(owner, list(rids))
                return None
            who = rids.pop(reply.rid, None)
            if who is None:
                continue
            refusal: str | None
            if reply.error is not None:
                refusal = reason_of(reply.error)
                if isinstance(reply.error, (ConnectionError, TimeoutError)):
                    suspects.mark(who)
            else:
                refusal = put_refusal(reply.result, size, crc)
            if refusal is not None:
                log.info("%s: block %s on %s failed (%s); writing it the streaming way",
                         path, bid.hex(), who, refusal)
                failed = True
            else:
                receipts[who] = reply.result.get("receipt") or b""
        if failed:
            return None
        blocks.append({"id": bid, "size": size, "checksum": crc, "replicas": list(nodes),
                       "receipts": [receipts[n] for n in nodes]})
    header = {"op": "put_small", "path": path, "pool": pool.handle, "blocks": blocks,
              "parents": parents}
    if exclusive:
        header["exclusive"] = True
    try:
        return mux.call(MDS_SERVICE, header).result
    except OSError as exc:
        if exc.errno == errno.ESTALE:      # the pool ended (expired, an MDS lost it)
            mux.pools.pop((replication, block_size), None)
            return None
        raise name_error(exc, path)
