"""The DataNode process: serves service `dn.<id>` from a BlockStore, talks to the MDS.

`DataNodeOps` is the node without sockets or threads: the declared operations (run
through `self.service`) and what they share with the MDS link. `DataNode` is the process.
Threads: the main thread owns the broker socket (Worker) and only moves messages; the
operations (declared with broker.service, run through `self.service`) and block I/O run in
a small pool (replies go back with `reply_threadsafe`); copies to other nodes
run in a pool of their own; one thread heartbeats the MDS and carries out what it answers
(deletes, copies, block reports) and sends a full block report every `report_interval`;
one scrubs; one compacts the pack files that hold small blocks.
Small blocks also come many to a request (`put_blocks`): they share one sync in the store.
Outbound calls (heartbeats, reports, copies) go through MemberClients on the broker's
worker endpoint, so the MDS and peers see them as this DataNode's.
Events (`block.commit` only once a block is durable) go out through a Publisher.
Every block op checks the request's capability (`cap`, minted by the MDS) in datanode/guard.py
before touching the store; a stored block is answered with this node's signed receipt.
"""
from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import msgpack

from broker import protocol as P
from broker.capability import MAX_TOKEN
from broker.limits import MAX_DELETES, MAX_PUT_MANY, MDS_SERVICE, datanode_service
from broker.client import MemberClient
from broker.config import endpoint_list
from broker.events import Publisher
from broker.service import (Bytes, Context, Int, List, Map, Outcome, Service, Str,
                            operation)
from broker.worker import Request, Worker

from .blockid import ID_BYTES, parse_block_id
from .dataplane import AdmittedKeys, DataEndpoint, advertised_host, route_source
from .guard import Guard
from .scrub import Scrubber
from .store import BlockCorrupt, BlockStore

log = logging.getLogger(__name__)

MAX_FRAMES = 1024          # payload frames of one put_block
BLOCK = Bytes(ID_BYTES, ID_BYTES)   # parse_block_id is still the one door to a block id
CHECKSUM = Int(0, 0xFFFF_FFFF)
OFFSET = Int(0, 1 << 63)
NODE = Str(P.MAX_SERVICE_LEN - 3)
CAP = Bytes(MAX_TOKEN)     # checked by the Guard: a missing or bad one is EACCES, not EPROTO
PEERS = frozenset({P.CALLER_CLIENT, P.CALLER_DATANODE})
MDS_ONLY = frozenset({P.CALLER_MDS})
COMPACT_EVERY = 10.0       # seconds between looks for pack files worth compacting
MAX_COMMANDS = MAX_DELETES  # deletes carried out per heartbeat answer
SMALL_BLOCK = 256 * 1024   # requests below this size go to the small-block pool
SMALL_THREADS = 8
# A copy waits for the target's put_block; if copies ran in the request pool, two nodes
# copying to each other would fill both pools with copies waiting for puts that queue
# behind them (a deadlock until the timeout). Hence a pool of their own.
COPY_THREADS = 2
REGISTRY_EVERY = 1.0       # seconds between looks at the broker's key registry (revocation)


class DataNodeOps:
    """One DataNode's operations over its BlockStore, and the actions they share with the
    MDS link (deletes, copies, corrupt-replica reports, reports, heartbeats), with no sockets
    or threads of its own: outbound calls go to `_client()` (anything with `call(service,
    header, payload, timeout)`), events to `events.publish`, copies run where
    `_start_copy` puts them (here: at once). `DataNode` below is the process around it;
    tests/support/inprocess.py drives the same object synchronously."""

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

    # -- shared actions -----------------------------------------------------------------

    def _client(self) -> Any:
        """Where this node's own calls go (the MDS, a copy's target), as this DataNode."""
        if self._make_client is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"DataNode {self.node_id} "
                                         "has no connection for its own calls")
        return self._make_client()

    def _delete(self, block: bytes) -> bool:
        return self._delete_many([block])[0]

    def _delete_many(self, blocks: list[bytes]) -> list[bool]:
        """Durable on return, with one shared sync for the small blocks among them."""
        done = self.store.delete_many(blocks)
        for block, deleted in zip(blocks, done):
            if deleted:
                self.events.publish("block.delete", node=self.node_id, block=block.hex())
        return done

    def _copy(self, block: bytes, target: str, target_cap: bytes | None = None) -> dict:
        """Re-replication: read and verify here, store on `target`, tell the MDS."""
        try:
            data = self.store.get(block)
        except BlockCorrupt as exc:
            self._corrupt(block, exc)
            raise
        info = self.store.stat(block)
        # the target tells the MDS it holds the replica (a node speaks only for itself)
        put = {"op": "put_block", "id": block, "checksum": info.crc}
        if target_cap is not None:
            put["cap"] = target_cap
        self._client().call(datanode_service(target), put, [data])
        log.info("copied block %s to %s", block.hex(), target)
        return {"size": info.size, "checksum": info.crc}

    def _corrupt(self, block: bytes, exc: Exception) -> None:
        """A bad replica is never served again: set aside, published, reported."""
        log.error("corrupt replica %s: %s", block.hex(), exc)
        self.store.quarantine(block)
        self.events.publish("block.corrupt", node=self.node_id, block=block.hex(),
                            reason=str(exc))
        try:
            self._client().call(MDS_SERVICE, {"op": "block_corrupt", "node": self.node_id,
                                        "block": block}, timeout=5.0)
        except OSError as err:
            log.warning("could not report corrupt block %s to the MDS: %s", block.hex(), err)

    def _stats(self) -> dict:
        usage = self.store.usage()
        cap = self.store.capacity()
        total = cap.total if self.capacity_limit is None else self.capacity_limit
        return {"node": self.node_id, "capacity": total, "used": usage.bytes_used,
                "free": min(cap.free, max(0, total - usage.bytes_used)),
                "blocks": usage.blocks}

    def _send_report(self, client: Any) -> None:
        blocks = [[i.id, i.size, i.crc] for i in self.store.infos()]
        client.call(MDS_SERVICE, {"op": "block_report", "node": self.node_id, "count": len(blocks)},
                    [msgpack.packb(blocks, use_bin_type=True)], timeout=60.0)
        log.info("block report sent: %d blocks", len(blocks))

    def _carry_out(self, commands: list) -> None:
        for cmd in commands[:MAX_COMMANDS]:
            if not isinstance(cmd, dict):
                continue
            op = cmd.get("op")
            try:
                if op == "delete":
                    ids = [parse_block_id(raw) for raw in cmd.get("blocks", [])[:MAX_COMMANDS]]
                    with self._acks_lock:
                        ids = [b for b in ids if b not in self._deleting]
                        self._deleting.update(ids)
                    if ids:
                        self._start_delete(ids)
                elif op == "copy":
                    block = parse_block_id(cmd["block"])
                    try:
                        self.guard.check(cmd.get("cap"), block, "copy", self._wall(),
                                         self._now())
                    except OSError:
                        with self._acks_lock:     # the MDS re-plans it with fresh caps
                            self._copy_failed.append(block)
                        raise
                    self._start_copy(block, str(cmd["target"]), cmd.get("target_cap"))
                elif op == "report":
                    self._report_now.set()
                else:
                    log.warning("unknown command from the MDS: %r", op)
            except (OSError, KeyError, TypeError) as exc:
                log.warning("command %r failed: %s", op, exc)

    def _delete_logged(self, blocks: list[bytes]) -> None:
        """Carry out deletes the MDS asked for; acked with the next heartbeat once durable.
        A failure is logged and the ids forgotten: the MDS names them again."""
        try:
            self._delete_many(blocks)
        except OSError as exc:
            log.warning("deleting %d blocks failed: %s", len(blocks), exc)
            self._forget_deleting(blocks)
        else:
            self._forget_deleting(blocks, done=True)

    def _forget_deleting(self, blocks: list[bytes], done: bool = False) -> None:
        """The ids are no longer being deleted: acked with the next heartbeat when `done`,
        else left for the MDS to name again."""
        with self._acks_lock:
            self._deleting.difference_update(blocks)
            if done:
                self._deleted.extend(blocks)

    def _start_delete(self, blocks: list[bytes]) -> None:
        """Carry out deletes the MDS asked for (the process runs them in a thread of
        their own, so that a slow disk never holds up its heartbeat)."""
        self._delete_logged(blocks)

    def _copy_logged(self, block: bytes, target: str,
                     target_cap: bytes | None = None) -> None:
        try:
            self._copy(block, target, target_cap)
        except OSError as exc:
            log.warning("copy of %s to %s failed: %s", block.hex(), target, exc)
            with self._acks_lock:     # told to the MDS with the next heartbeat: it re-plans
                self._copy_failed.append(block)

    def _start_copy(self, block: bytes, target: str, target_cap: bytes | None = None) -> None:
        """Carry out a copy the MDS asked for (the process runs it in its copy pool)."""
        self._copy_logged(block, target, target_cap)

    def report_if_due(self, client: Any) -> bool:
        """The full block report, when one was asked for; whether it was sent."""
        if not self._report_now.is_set():
            return False
        self._send_report(client)
        self._report_now.clear()
        return True

    def beat(self, client: Any, timeout: float) -> None:
        """One heartbeat to the MDS (acknowledging deletions and failed copies), whose
        commands are carried out; the OSError of a failed call is raised."""
        with self._acks_lock:
            acked, self._deleted = self._deleted, []
            failed, self._copy_failed = self._copy_failed, []
        try:
            extra = {"data": self.advert} if self.advert else {}
            reply = client.call(MDS_SERVICE, {"op": "dn_heartbeat", **self._stats(),
                                        "deleted": acked, "copy_failed": failed, **extra},
                                timeout=timeout)
        except OSError:
            with self._acks_lock:         # ack them with the next heartbeat
                self._deleted[:0] = acked
                self._copy_failed[:0] = failed
            raise
        if not self._current_epoch(reply.result.get("epoch")):
            with self._acks_lock:         # a deposed MDS heard them: tell the leader
                self._deleted[:0] = acked
                self._copy_failed[:0] = failed
            return
        self.guard.install(reply.result.get("keys"), self._now())
        self._carry_out(reply.result.get("commands") or [])

    def _current_epoch(self, epoch: Any) -> bool:
        """Whether a heartbeat answer may be acted on: no epoch (an MDS without HA) or one
        at least the highest seen; a lower one is refused and logged."""
        if epoch is None:
            return True
        if type(epoch) is not int or epoch < 1:
            log.warning("heartbeat answer with a malformed epoch %r ignored", epoch)
            return False
        if epoch < self.mds_epoch:
            log.warning("heartbeat answer of a deposed MDS (epoch %d < %d): its commands "
                        "and keys are ignored", epoch, self.mds_epoch)
            return False
        self.mds_epoch = epoch
        return True


class DataNode(DataNodeOps):
    def __init__(self, node_id: str, data_dir: Path, *, worker_endpoint: str,
                 events_endpoint: str, heartbeat: float = 1.0,
                 liveness: int = 3, scrub_rate: float = 16 * 1024 * 1024,
                 writer_threads: int = 2, capacity: int | None = None,
                 max_message_size: int | None = None, scrub_pause: float = 60.0,
                 report_interval: float = 600.0, small_max: int = 128 * 1024,
                 capabilities: bool = True, curve: Any = None,
                 data_bind: str | None = "127.0.0.1", data_port: int = 0,
                 advertise: str = "") -> None:
        super().__init__(node_id, data_dir, small_max=small_max, capacity=capacity,
                         capabilities=capabilities, heartbeat=heartbeat)
        self.heartbeat = heartbeat
        self.worker_endpoint = worker_endpoint
        self.curve = curve    # broker.curve.CurveKeys of member dn.<id>; None = security off
        self.events = Publisher(events_endpoint, node_id, curve=curve)
        self.worker = Worker(worker_endpoint, datanode_service(node_id), heartbeat_interval=heartbeat,
                             liveness=liveness, capacity=64, exclusive=True,
                             info={"node": node_id},
                             max_message_size=max_message_size, curve=curve)
        self.pool = ThreadPoolExecutor(max(1, writer_threads), thread_name_prefix="io")
        # Small blocks are all fsync latency: many of them in flight at once let the
        # file system fold their fsyncs into shared journal commits (group commit). Big
        # blocks keep the few threads that suit memory bandwidth (shared/PERFORMANCE.md).
        self.small_pool = ThreadPoolExecutor(SMALL_THREADS, thread_name_prefix="io-small")
        self.copier = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="copy")
        # The MDS's deletes: on a disk busy with gigabytes of dirty pages each directory
        # sync can wait seconds for the journal, and done in the heartbeat thread they once
        # kept every DataNode silent past dead_after at the same time (issue 16).
        self.deleter = ThreadPoolExecutor(1, thread_name_prefix="delete")
        self.scrub_pause = scrub_pause
        self.report_interval = report_interval
        self.scrubber = Scrubber(self.store, rate_bytes_per_s=scrub_rate,
                                 on_corrupt=self._scrub_found)
        self._local = threading.local()
        self._stop = threading.Event()
        # data_bind None: no data endpoint, every byte through the broker
        self.data: DataEndpoint | None = None
        self.admitted: AdmittedKeys | None = None
        if data_bind is not None:
            self.admitted = AdmittedKeys() if curve is not None else None
            # with several brokers, the first one's route stands for all (same network)
            first_broker = endpoint_list(worker_endpoint)[0]
            host = data_bind or route_source(first_broker)
            self.data = DataEndpoint(
                node_id, host, data_port, submit=self._dispatch,
                server_keys=(curve.public, curve.secret) if curve is not None else None,
                keys=self.admitted, advertise=advertised_host(host, advertise, first_broker),
                max_message_size=max_message_size)
            self.data_counters = self.data.core.counters

    # -- the process's own connections and threads ---------------------------------------

    def _client(self) -> MemberClient:
        """One broker connection per thread (ZeroMQ sockets belong to one thread), on the
        worker endpoint as this DataNode: the broker stamps our calls as ours."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._member(timeout=30.0)
        return client

    def _member(self, timeout: float) -> MemberClient:
        return MemberClient(self.worker_endpoint, datanode_service(self.node_id), timeout=timeout,
                            connect_timeout=2.0, curve=self.curve)

    def _scrub_found(self, block: bytes, exc: BlockCorrupt) -> None:
        self._corrupt(block, exc)

    def _maintain(self) -> None:
        """Reclaim the space of deleted small blocks: rewrite pack files that are mostly
        dead (the store decides which); off the request path, in its own thread."""
        while not self._stop.wait(COMPACT_EVERY):
            try:
                self.store.compact()
            except OSError as exc:
                log.warning("pack compaction failed: %s", exc)
            except Exception:
                log.exception("pack compaction failed")

    def _start_copy(self, block: bytes, target: str, target_cap: bytes | None = None) -> None:
        self.copier.submit(self._copy_logged, block, target, target_cap)

    def _start_delete(self, blocks: list[bytes]) -> None:
        try:
            self.deleter.submit(self._delete_logged, blocks)
        except RuntimeError:        # shutting down: the MDS names them again after restart
            self._forget_deleting(blocks)

    def _mds_link(self) -> None:
        client = self._member(timeout=10.0)
        next_report = time.monotonic() + self.report_interval
        try:
            while not self._stop.is_set():
                try:
                    # periodic full reports let the MDS find blocks it has no record of
                    # (e.g. written for a draft that expired meanwhile) and delete them
                    if time.monotonic() >= next_report:
                        self._report_now.set()
                    if self.report_if_due(client):
                        next_report = time.monotonic() + self.report_interval
                    self.beat(client, timeout=max(2.0, self.heartbeat * 3))
                except OSError as exc:
                    # MDS down or restarting: it will ask for a report when it is back
                    log.debug("heartbeat to the MDS failed: %s", exc)
                    if isinstance(exc, ConnectionRefusedError):
                        self._report_now.set()
                self._stop.wait(self.heartbeat)
        finally:
            client.close()

    def _registry_link(self) -> None:
        """Keep the data endpoint's admitted keys equal to the broker's registry (a second
        late at most), and advertise the endpoint once it admits anyone."""
        assert self.data is not None
        client = self._member(timeout=5.0)
        try:
            while not self._stop.is_set():
                if self.admitted is None:
                    self.advert = self.data.advert()
                    return
                try:
                    answer = client.call("broker", {"op": "registry",
                                                    **({"since": self.admitted.digest}
                                                       if self.admitted.digest else {})}).result
                    if answer.get("secure") is False:
                        log.error("the broker runs without security but this DataNode with "
                                  "it: the data endpoint stays closed")
                    elif "ids" in answer:
                        self.admitted.update(answer)
                        self.advert = self.data.advert()
                except OSError as exc:
                    log.debug("registry from the broker: %s", exc)
                self._stop.wait(REGISTRY_EVERY)
        finally:
            client.close()

    # -- main loop ----------------------------------------------------------------------

    def _run_request(self, req: Request, replier: Any = None) -> None:
        outcome: Outcome = self.service.run(req.header, req.payload, req.context(self._publish))
        (replier or self.worker).reply_threadsafe(req, outcome)

    def _pool_for(self, req: Request) -> ThreadPoolExecutor:
        # only picks a pool: the service checks the op (and everything else)
        op = req.op
        if op == "copy_block":
            return self.copier
        if op == "put_blocks" or (
                op != "get_block" and sum(len(p) for p in req.payload) < SMALL_BLOCK):
            return self.small_pool
        return self.pool

    def _dispatch(self, req: Request, replier: Any) -> None:
        """A request from the data endpoint: the same pools and service as the broker's."""
        try:
            self._pool_for(req).submit(self._run_request, req, replier)
        except RuntimeError:        # shutting down
            pass

    def stop(self) -> None:
        self._stop.set()
        self.worker.wake()

    def run(self) -> None:
        threads = [threading.Thread(target=self._mds_link, name="mds-link", daemon=True),
                   threading.Thread(target=self.scrubber.run, args=(self.scrub_pause,),
                                    name="scrub", daemon=True),
                   threading.Thread(target=self._maintain, name="compact", daemon=True)]
        if self.data is not None:
            threads += [threading.Thread(target=self.data.run, args=(self._stop,),
                                         name="data", daemon=True),
                        threading.Thread(target=self._registry_link, name="registry",
                                         daemon=True)]
        for t in threads:
            t.start()
        self.events.publish("node.up", **self._stats())
        log.info("DataNode %s serving %s", self.node_id, self.store.root)
        worker = self.worker
        try:
            while not self._stop.is_set():
                req = worker.recv(timeout=0.5)
                if req is None:
                    continue
                self._pool_for(req).submit(self._run_request, req)
        finally:
            self.scrubber.stop()
            for t in threads[3:]:
                t.join(timeout=2)
            self.copier.shutdown(wait=True)
            self.deleter.shutdown(wait=True)
            self.pool.shutdown(wait=True)
            self.small_pool.shutdown(wait=True)
            self.events.publish("node.down", node=self.node_id, reason="clean stop")
            time.sleep(0.05)
            worker.close()
            self.events.close()
            if self.data is not None:
                self.data.close()
            self.store.close()
            log.info("DataNode %s stopped", self.node_id)
