"""The DataNode process: serves service `dn.<id>` from a BlockStore, talks to the MDS.

Threads: the main thread owns the broker socket (Worker) and only moves messages; block
I/O runs in a small pool (replies go back with `reply_threadsafe`); copies to other nodes
run in a pool of their own; one thread heartbeats the MDS and carries out what it answers
(deletes, copies, block reports) and sends a full block report every `report_interval`;
one scrubs; one compacts the pack files that hold small blocks.
Small blocks also come many to a request (`put_blocks`): they share one sync in the store.
Events (`block.commit` only once a block is durable) go out through a Publisher.
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
from broker.client import Client
from broker.events import Publisher
from broker.worker import Request, Worker

from .blockid import parse_block_id
from .scrub import Scrubber
from .store import BlockCorrupt, BlockStore

log = logging.getLogger(__name__)

PUT_SCHEMA = {"id": bytes, "checksum?": int}
GET_SCHEMA = {"id": bytes, "offset?": int, "length?": int}
ID_SCHEMA = {"id": bytes}
COPY_SCHEMA = {"id": bytes, "target": str}
PUT_MANY_SCHEMA = {"blocks": list}
MAX_PUT_MANY = 256         # blocks in one put_blocks request
COMPACT_EVERY = 10.0       # seconds between looks for pack files worth compacting
MAX_COMMANDS = 1000        # deletes carried out per heartbeat answer
SMALL_BLOCK = 256 * 1024   # requests below this size go to the small-block pool
SMALL_THREADS = 8
# A copy waits for the target's put_block; if copies ran in the request pool, two nodes
# copying to each other would fill both pools with copies waiting for puts that queue
# behind them (a deadlock until the timeout). Hence a pool of their own.
COPY_THREADS = 2


class DataNode:
    def __init__(self, node_id: str, data_dir: Path, *, worker_endpoint: str,
                 client_endpoint: str, events_endpoint: str, heartbeat: float = 1.0,
                 liveness: int = 3, scrub_rate: float = 16 * 1024 * 1024,
                 writer_threads: int = 2, capacity: int | None = None,
                 max_message_size: int | None = None, scrub_pause: float = 60.0,
                 report_interval: float = 600.0, small_max: int = 128 * 1024) -> None:
        P.decode_name(f"dn.{node_id}".encode(), "node id")
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.client_endpoint = client_endpoint
        self.capacity_limit = capacity
        self.store = BlockStore(Path(data_dir), small_max=small_max)
        self.events = Publisher(events_endpoint, node_id)
        self.worker = Worker(worker_endpoint, f"dn.{node_id}", heartbeat_interval=heartbeat,
                             liveness=liveness, capacity=64, exclusive=True,
                             info={"node": node_id},
                             max_message_size=max_message_size)
        self.pool = ThreadPoolExecutor(max(1, writer_threads), thread_name_prefix="io")
        # Small blocks are all fsync latency: many of them in flight at once let the
        # file system fold their fsyncs into shared journal commits (group commit). Big
        # blocks keep the few threads that suit memory bandwidth (shared/PERFORMANCE.md).
        self.small_pool = ThreadPoolExecutor(SMALL_THREADS, thread_name_prefix="io-small")
        self.copier = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="copy")
        self.scrub_pause = scrub_pause
        self.report_interval = report_interval
        self.scrubber = Scrubber(self.store, rate_bytes_per_s=scrub_rate,
                                 on_corrupt=self._scrub_found)
        self._local = threading.local()
        self._stop = threading.Event()
        self._report_now = threading.Event()
        self._report_now.set()          # a full block report right after start
        self._deleted: list[bytes] = []  # ids deleted on the MDS's word, acked next heartbeat
        self._copy_failed: list[bytes] = []  # copies the MDS asked for that failed
        self._copy_lock = threading.Lock()
        self.handlers: dict[str, Callable[[Request], Any]] = {
            "put_block": self._put_block, "put_blocks": self._put_blocks,
            "get_block": self._get_block,
            "delete_block": self._delete_block, "stat_block": self._stat_block,
            "copy_block": self._copy_block, "info": self._info,
            "block_report": self._request_report,
        }

    # -- request handling (pool threads) ------------------------------------------------

    def _put_block(self, req: Request) -> dict:
        P.check_fields(req.header, PUT_SCHEMA)
        block = parse_block_id(req.header["id"])
        info = self.store.put(block, req.payload, req.header.get("checksum"))
        self.events.publish("block.commit", node=self.node_id, block=block.hex(),
                            size=info.size, checksum=info.crc)
        return {"id": req.header["id"], "size": info.size, "checksum": info.crc}

    def _put_blocks(self, req: Request) -> dict:
        """Many small blocks in one request (one payload frame each), stored with one
        shared sync; each block gets its own result, so one bad block fails alone."""
        P.check_fields(req.header, PUT_MANY_SCHEMA)
        specs = req.header["blocks"]
        if not 0 < len(specs) <= MAX_PUT_MANY:
            raise OSError(errno.EINVAL, f"put_blocks takes 1..{MAX_PUT_MANY} blocks, "
                          f"got {len(specs)}")
        if len(specs) != len(req.payload):
            raise OSError(errno.EINVAL, f"put_blocks: {len(specs)} blocks but "
                          f"{len(req.payload)} payload frames")
        results: list[dict | None] = [None] * len(specs)
        items, where = [], []
        for i, spec in enumerate(specs):
            try:
                if not isinstance(spec, dict):
                    raise P.ProtocolError("each block of put_blocks is a map")
                P.check_fields(spec, PUT_SCHEMA)
                items.append((parse_block_id(spec["id"]), [req.payload[i]], spec.get("checksum")))
                where.append(i)
            except OSError as exc:
                results[i] = P.item_error(exc)
        for i, (block, _, _), out in zip(where, items, self.store.put_many(items)):
            if isinstance(out, BaseException):
                results[i] = P.item_error(out)
                continue
            self.events.publish("block.commit", node=self.node_id, block=block.hex(),
                                size=out.size, checksum=out.crc)
            results[i] = P.item_ok({"size": out.size, "checksum": out.crc})
        return {"results": results}

    def _get_block(self, req: Request) -> tuple[dict, list]:
        P.check_fields(req.header, GET_SCHEMA)
        block = parse_block_id(req.header["id"])
        try:
            data = self.store.get(block, req.header.get("offset") or 0, req.header.get("length"))
        except BlockCorrupt as exc:
            self._corrupt(block, exc)
            raise
        info = self.store.stat(block)
        return {"size": info.size, "checksum": info.crc, "length": len(data)}, [data]

    def _delete_block(self, req: Request) -> dict:
        P.check_fields(req.header, ID_SCHEMA)
        block = parse_block_id(req.header["id"])
        return {"deleted": self._delete(block)}

    def _stat_block(self, req: Request) -> dict:
        P.check_fields(req.header, ID_SCHEMA)
        info = self.store.stat(parse_block_id(req.header["id"]))
        return {"size": info.size, "checksum": info.crc}

    def _copy_block(self, req: Request) -> dict:
        P.check_fields(req.header, COPY_SCHEMA)
        return self._copy(parse_block_id(req.header["id"]), req.header["target"])

    def _info(self, req: Request) -> dict:
        return self._stats()

    def _request_report(self, req: Request) -> dict:
        self._report_now.set()
        return {"blocks": self.store.usage().blocks}

    # -- shared actions -----------------------------------------------------------------

    def _client(self) -> Client:
        """One broker client per thread (ZeroMQ sockets belong to one thread)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = Client(self.client_endpoint, timeout=30.0,
                                                 connect_timeout=2.0)
        return client

    def _delete(self, block: bytes) -> bool:
        return self._delete_many([block])[0]

    def _delete_many(self, blocks: list[bytes]) -> list[bool]:
        """Durable on return, with one shared sync for the small blocks among them."""
        done = self.store.delete_many(blocks)
        for block, deleted in zip(blocks, done):
            if deleted:
                self.events.publish("block.delete", node=self.node_id, block=block.hex())
        return done

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

    def _copy(self, block: bytes, target: str) -> dict:
        """Re-replication: read and verify here, store on `target`, tell the MDS."""
        try:
            data = self.store.get(block)
        except BlockCorrupt as exc:
            self._corrupt(block, exc)
            raise
        info = self.store.stat(block)
        self._client().call(f"dn.{target}", {"op": "put_block", "id": block,
                                             "checksum": info.crc}, [data])
        self._client().call("mds", {"op": "replica_added", "node": target, "block": block,
                                    "size": info.size, "checksum": info.crc})
        log.info("copied block %s to %s", block.hex(), target)
        return {"size": info.size, "checksum": info.crc}

    def _corrupt(self, block: bytes, exc: Exception) -> None:
        """A bad replica is never served again: set aside, published, reported."""
        log.error("corrupt replica %s: %s", block.hex(), exc)
        self.store.quarantine(block)
        self.events.publish("block.corrupt", node=self.node_id, block=block.hex(),
                            reason=str(exc))
        try:
            self._client().call("mds", {"op": "block_corrupt", "node": self.node_id,
                                        "block": block}, timeout=5.0)
        except OSError as err:
            log.warning("could not report corrupt block %s to the MDS: %s", block.hex(), err)

    def _scrub_found(self, block: bytes, exc: BlockCorrupt) -> None:
        self._corrupt(block, exc)

    def _stats(self) -> dict:
        usage = self.store.usage()
        cap = self.store.capacity()
        total = cap.total if self.capacity_limit is None else self.capacity_limit
        return {"node": self.node_id, "capacity": total, "used": usage.bytes_used,
                "free": min(cap.free, max(0, total - usage.bytes_used)),
                "blocks": usage.blocks}

    # -- MDS link (its own thread) ------------------------------------------------------

    def _send_report(self, client: Client) -> None:
        blocks = [[i.id, i.size, i.crc] for i in self.store.infos()]
        client.call("mds", {"op": "block_report", "node": self.node_id, "count": len(blocks)},
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
                    self._delete_many(ids)
                    self._deleted.extend(ids)
                elif op == "copy":
                    self.copier.submit(self._copy_logged, parse_block_id(cmd["block"]),
                                       str(cmd["target"]))
                elif op == "report":
                    self._report_now.set()
                else:
                    log.warning("unknown command from the MDS: %r", op)
            except (OSError, KeyError, TypeError) as exc:
                log.warning("command %r failed: %s", op, exc)

    def _copy_logged(self, block: bytes, target: str) -> None:
        try:
            self._copy(block, target)
        except OSError as exc:
            log.warning("copy of %s to %s failed: %s", block.hex(), target, exc)
            with self._copy_lock:     # told to the MDS with the next heartbeat: it re-plans
                self._copy_failed.append(block)

    def _mds_link(self) -> None:
        client = Client(self.client_endpoint, timeout=10.0, connect_timeout=2.0)
        next_report = time.monotonic() + self.report_interval
        try:
            while not self._stop.is_set():
                try:
                    # periodic full reports let the MDS find blocks it has no record of
                    # (e.g. written for a draft that expired meanwhile) and delete them
                    if time.monotonic() >= next_report:
                        self._report_now.set()
                    if self._report_now.is_set():
                        self._send_report(client)
                        self._report_now.clear()
                        next_report = time.monotonic() + self.report_interval
                    acked, self._deleted = self._deleted, []
                    with self._copy_lock:
                        failed, self._copy_failed = self._copy_failed, []
                    try:
                        reply = client.call("mds", {"op": "dn_heartbeat", **self._stats(),
                                                    "deleted": acked, "copy_failed": failed},
                                            timeout=max(2.0, self.heartbeat * 3))
                    except OSError:
                        self._deleted[:0] = acked     # ack them with the next heartbeat
                        with self._copy_lock:
                            self._copy_failed[:0] = failed
                        raise
                    self._carry_out(reply.result.get("commands") or [])
                except OSError as exc:
                    # MDS down or restarting: it will ask for a report when it is back
                    log.debug("heartbeat to the MDS failed: %s", exc)
                    if isinstance(exc, ConnectionRefusedError):
                        self._report_now.set()
                self._stop.wait(self.heartbeat)
        finally:
            client.close()

    # -- main loop ----------------------------------------------------------------------

    def _run_request(self, req: Request, handler: Callable[[Request], Any]) -> None:
        try:
            out = handler(req)
        except Exception as exc:
            self.worker.reply_threadsafe(req, error=exc)
            return
        if isinstance(out, tuple):
            self.worker.reply_threadsafe(req, out[0], out[1])
        else:
            self.worker.reply_threadsafe(req, out)

    def stop(self) -> None:
        self._stop.set()
        self.worker.wake()

    def run(self) -> None:
        threads = [threading.Thread(target=self._mds_link, name="mds-link", daemon=True),
                   threading.Thread(target=self.scrubber.run, args=(self.scrub_pause,),
                                    name="scrub", daemon=True),
                   threading.Thread(target=self._maintain, name="compact", daemon=True)]
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
                handler = self.handlers.get(req.op)
                if handler is None:
                    worker.reply_error(req, OSError(errno.EOPNOTSUPP,
                                                     f"DataNode has no operation {req.op!r}"))
                    continue
                if handler == self._copy_block:
                    pool = self.copier
                elif req.op == "put_blocks" or (
                        sum(len(p) for p in req.payload) < SMALL_BLOCK and req.op != "get_block"):
                    pool = self.small_pool
                else:
                    pool = self.pool
                pool.submit(self._run_request, req, handler)
        finally:
            self.scrubber.stop()
            self.copier.shutdown(wait=True)
            self.pool.shutdown(wait=True)
            self.small_pool.shutdown(wait=True)
            self.events.publish("node.down", node=self.node_id, reason="clean stop")
            time.sleep(0.05)
            worker.close()
            self.events.close()
            self.store.close()
            log.info("DataNode %s stopped", self.node_id)
