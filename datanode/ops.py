"""The DataNode's operations (service `dn.<id>`), each declared once with
broker.service.operation: fields with their bounds, who may call it, and a docstring that is
its protocol spec.

`DataNodeOps` is the node without sockets or threads: these handlers over a BlockStore, and
what they share with the MDS link (datanode/mdslink.py, mixed in). The process around it
is `DataNode` (datanode/server.py); tests/support/inprocess.py drives the same object
synchronously. Small blocks also come many to a request (`put_blocks`): they share one sync
in the store. Every block op checks the request's capability (`cap`, minted by the MDS) in
datanode/guard.py before touching the store; a stored block is answered with this node's
signed receipt, and `block.commit` is emitted only once the block is durable.
"""
from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Any, Callable

from broker import protocol as P
from broker.capability import MAX_TOKEN
from broker.limits import MAX_PUT_MANY, MDS_SERVICE, datanode_service
from broker.service import Bytes, Context, Int, List, Map, Service, Str, operation

from .blockid import ID_BYTES, parse_block_id
from .guard import Guard
from .mdslink import MdsLink
from .store import BlockCorrupt, BlockStore

MAX_FRAMES = 1024          # payload frames of one put_block
BLOCK = Bytes(ID_BYTES, ID_BYTES)   # parse_block_id is still the one door to a block id
CHECKSUM = Int(0, 0xFFFF_FFFF)
OFFSET = Int(0, 1 << 63)
NODE = Str(P.MAX_SERVICE_LEN - 3)
CAP = Bytes(MAX_TOKEN)     # checked by the Guard: a missing or bad one is EACCES, not EPROTO
PEERS = frozenset({P.CALLER_CLIENT, P.CALLER_DATANODE})
MDS_ONLY = frozenset({P.CALLER_MDS})


class DataNodeOps(MdsLink):
    """One DataNode's operations over its BlockStore, and the actions they share with the
    MDS link (deletes, copies, corrupt-replica reports, reports, heartbeats), with no sockets
    or threads of its own: outbound calls go to `_client()` (anything with `call(service,
    header, payload, timeout)`), events to `events.publish`, copies run where
    `_start_copy` puts them (here: at once). `DataNode` (datanode/server.py) is the
    process around it; tests/support/inprocess.py drives the same object synchronously."""

    def __init__(self, node_id: str, data_dir: Path, *, small_max: int = 128 * 1024,
                 capacity: int | None = None, fsync: bool = True, events: Any = None,
                 client: Callable[[], Any] | None = None, capabilities: bool = True,
                 heartbeat: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        P.decode_name(datanode_service(node_id).encode(), "node id")
        self.node_id = node_id
        self._now, self._wall = clock, wall_clock   # injected: tests drive a fake clock
        self.capacity_limit = capacity
        self.store = BlockStore(Path(data_dir), small_max=small_max, fsync=fsync)
        self.events = events
        self._make_client = client
        self._report_now = threading.Event()
        self._report_now.set()          # a full block report right after start
        self._deleted: list[bytes] = []  # ids deleted on the MDS's word, acked next heartbeat
        # ids handed to the deleter and not yet done: the MDS names them again in every
        # heartbeat answer until they are acked, and they must not be queued twice
        self._deleting: set[bytes] = set()
        self._copy_failed: list[bytes] = []  # copies the MDS asked for that failed
        self._acks_lock = threading.Lock()   # guards the three above
        # block payload bytes stored and served since start (info): what tests and
        # operators check a server-side copy by
        self._traffic = {"bytes_written": 0, "bytes_read": 0}
        self._traffic_lock = threading.Lock()
        # keys older than a few missed heartbeats may predate an MDS restart (guard.py)
        self.guard = Guard(node_id, stale_after=max(1.0, 3 * heartbeat), enforce=capabilities)
        # the data endpoint's address and key for the MDS (dataplane.py), once it serves
        self.advert: dict | None = None
        # the highest MDS leadership epoch seen in a heartbeat answer (mds/election.py):
        # an answer from a lower one is a deposed MDS's, its commands and keys are ignored
        self.mds_epoch = 0
        self.data_counters: Callable[[], dict] = dict
        self.service = Service.collect(f"DataNode {node_id}", self)

    # -- operations (pool threads) ------------------------------------------------------

    def _publish(self, event: tuple[str, dict]) -> None:
        self.events.publish(event[0], **event[1])

    def _check(self, h: dict, block: bytes, access: str, ctx: Context) -> None:
        self.guard.check(h.get("cap"), block, access, ctx.wall, ctx.now)

    def _receipt(self, block: bytes, size: int, crc: int) -> dict:
        receipt = self.guard.receipt(block, size, crc)
        return {} if receipt is None else {"receipt": receipt}

    @operation({"id": BLOCK, "checksum?": CHECKSUM, "cap?": CAP}, callers=PEERS,
               frames=(0, MAX_FRAMES))
    def put_block(self, h: dict, payload: list, ctx: Context) -> dict:
        """Store block `id` = the payload frames joined (checked against `checksum`, CRC32C,
        when given) with `cap`, a write capability for this block on this node -> {id,
        size, checksum, receipt}, once durable; `receipt` is this node's signature over
        (node, id, size, checksum) for the commit. A put from another DataNode is a copy
        (re-replication): this node then tells the MDS it holds the replica, receipt
        included."""
        block = parse_block_id(h["id"])
        self._check(h, block, "write", ctx)   # before a single byte is written
        info = self.store.put(block, payload, h.get("checksum"))
        self._count("bytes_written", info.size)
        ctx.emit("block.commit", node=self.node_id, block=block.hex(), size=info.size,
                 checksum=info.crc)
        signed = self._receipt(block, info.size, info.crc)
        if ctx.caller_class == P.CALLER_DATANODE:
            self._client().call(MDS_SERVICE, {"op": "replica_added", "node": self.node_id,
                                        "block": h["id"], "size": info.size,
                                        "checksum": info.crc, **signed})
        return {"id": h["id"], "size": info.size, "checksum": info.crc, **signed}

    @operation({"blocks": List(Map({"id": BLOCK, "checksum?": CHECKSUM, "cap?": CAP}),
                               MAX_PUT_MANY, 1)},
               callers=PEERS, frames=(1, MAX_PUT_MANY))
    def put_blocks(self, h: dict, payload: list, ctx: Context) -> dict:
        """Many small blocks (`blocks`: 1..256 {id, checksum?, cap}, one payload frame
        each, in order) stored with one shared sync -> {results: [{ok: {size, checksum,
        receipt}} / {err}]}: each block succeeds or fails alone (a refused capability
        fails its block only, EACCES)."""
        specs = h["blocks"]
        if len(specs) != len(payload):
            raise OSError(errno.EINVAL, f"put_blocks: {len(specs)} blocks but "
                          f"{len(payload)} payload frames")
        results: list = [None] * len(specs)
        items, where = [], []
        for i, (spec, frame) in enumerate(zip(specs, payload)):
            block = parse_block_id(spec["id"])
            try:
                self._check(spec, block, "write", ctx)
            except OSError as exc:
                results[i] = P.item_error(exc)
                continue
            items.append((block, [frame], spec.get("checksum")))
            where.append(i)
        for i, (block, _, _), out in zip(where, items, self.store.put_many(items) if items else []):
            if isinstance(out, BaseException):
                results[i] = P.item_error(out)
                continue
            self._count("bytes_written", out.size)
            ctx.emit("block.commit", node=self.node_id, block=block.hex(), size=out.size,
                     checksum=out.crc)
            results[i] = P.item_ok({"size": out.size, "checksum": out.crc,
                                    **self._receipt(block, out.size, out.crc)})
        return {"results": results}

    @operation({"id": BLOCK, "offset?": OFFSET, "length?": OFFSET, "cap?": CAP},
               callers=PEERS)
    def get_block(self, h: dict, payload: list, ctx: Context) -> tuple[dict, list]:
        """Read block `id` with `cap`, a read capability for it, verified. Whole (no
        `offset`/`length`) -> {size, checksum, length} + the block as one payload frame.
        A range (`offset`, `length` bytes or to the end) -> {size, checksum, length,
        offset: where the data starts, chunk_size, chunks: [u32 CRC32C per chunk of the
        whole block]} + the chunk-aligned data covering the range, so the reader can check
        it against the MDS's block checksum (broker/checksum.verify_range) and slice. A
        block kept in a pack file is one chunk (chunk_size = its size). A corrupt replica
        is set aside and reported to the MDS."""
        out: dict[str, Any]   # the result map: ints, and the chunk table's list
        block = parse_block_id(h["id"])
        self._check(h, block, "read", ctx)
        ranged = "offset" in h or "length" in h
        try:
            if not ranged:
                data = self.store.get(block)
            else:
                start, data, chunk_size, chunks = self.store.get_chunks(
                    block, h.get("offset") or 0, h.get("length"))
        except BlockCorrupt as exc:
            self._corrupt(block, exc)
            raise
        info = self.store.stat(block)
        self._count("bytes_read", len(data))
        out = {"size": info.size, "checksum": info.crc, "length": len(data)}
        if ranged:
            out.update(offset=start, chunk_size=chunk_size, chunks=chunks)
        return out, [data]

    @operation({"id": BLOCK}, callers=MDS_ONLY)
    def delete_block(self, h: dict, payload: list, ctx: Context) -> dict:
        """Delete block `id` -> {deleted: bool}. The MDS sends deletions in heartbeat
        replies; this op is for an MDS-class caller only."""
        return {"deleted": self._delete(parse_block_id(h["id"]))}

    @operation({"id": BLOCK, "cap?": CAP}, callers=PEERS)
    def stat_block(self, h: dict, payload: list, ctx: Context) -> dict:
        """Size and checksum of block `id`, with `cap` a read capability -> {size,
        checksum}."""
        block = parse_block_id(h["id"])
        self._check(h, block, "read", ctx)
        info = self.store.stat(block)
        return {"size": info.size, "checksum": info.crc}

    @operation({"id": BLOCK, "target": NODE, "cap?": CAP, "target_cap?": CAP},
               callers=MDS_ONLY)
    def copy_block(self, h: dict, payload: list, ctx: Context) -> dict:
        """Copy block `id` to DataNode `target` (read and verify here, put there; the target
        reports the replica) -> {size, checksum}; `cap` is a copy capability for this
        node, `target_cap` the write capability passed on to the target. Copies normally
        come in heartbeat replies; this op is for an MDS-class caller only."""
        block = parse_block_id(h["id"])
        self._check(h, block, "copy", ctx)
        return self._copy(block, h["target"], h.get("target_cap"))

    @operation(callers=PEERS)
    def info(self, h: dict, payload: list, ctx: Context) -> dict:
        """This node -> {node, capacity, used, free, blocks, bytes_written, bytes_read,
        cap_refused, cap_unready, cap_refused_by_reason}: block payload bytes stored and
        served since start; capabilities refused (EACCES) and requests answered EAGAIN
        for want of keys."""
        with self._traffic_lock:
            traffic = dict(self._traffic)
        return {**self._stats(), **traffic, **self.guard.counters(), **self.data_counters()}

    def _count(self, what: str, n: int) -> None:
        with self._traffic_lock:
            self._traffic[what] += n

    @operation(callers=MDS_ONLY)
    def block_report(self, h: dict, payload: list, ctx: Context) -> dict:
        """Send a full block report to the MDS soon -> {blocks: count held now}."""
        self._report_now.set()
        return {"blocks": self.store.usage().blocks}
