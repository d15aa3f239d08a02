"""The DataNode process: serves service `dn.<id>` from a BlockStore, talks to the MDS.

`DataNode` is the process around `DataNodeOps` (datanode/ops.py: the declared operations
and the MDS-link work of datanode/mdslink.py, with no sockets or threads of their own).
Threads: the main thread owns the broker socket (Worker) and only moves messages; the
operations (declared with broker.service, run through `self.service`) and block I/O run in
a small pool (replies go back with `reply_threadsafe`); copies to other nodes
run in a pool of their own; one thread heartbeats the MDS and carries out what it answers
(deletes, copies, block reports) and sends a full block report every `report_interval`;
one scrubs; one compacts the pack files that hold small blocks.
Outbound calls (heartbeats, reports, copies) go through MemberClients on the broker's
worker endpoint, so the MDS and peers see them as this DataNode's.
Events go out through a Publisher.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker.client import MemberClient
from broker.config import endpoint_list
from broker.events import Publisher
from broker.limits import datanode_service
from broker.service import Outcome
from broker.worker import Request, Worker

from .dataplane import AdmittedKeys, DataEndpoint, advertised_host, route_source
from .ops import DataNodeOps
from .scrub import Scrubber
from .store import BlockCorrupt

log = logging.getLogger(__name__)

COMPACT_EVERY = 10.0       # seconds between looks for pack files worth compacting
SMALL_BLOCK = 256 * 1024   # requests below this size go to the small-block pool
SMALL_THREADS = 8
# A copy waits for the target's put_block; if copies ran in the request pool, two nodes
# copying to each other would fill both pools with copies waiting for puts that queue
# behind them (a deadlock until the timeout). Hence a pool of their own.
COPY_THREADS = 2
REGISTRY_EVERY = 1.0       # seconds between looks at the broker's key registry (revocation)


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
