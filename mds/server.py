"""The MDS process: serves service `mds` from a MetaStore, one batch per loop turn.

Theory of operation. Each turn drains the requests that have arrived (up to BATCH),
handles them in order - reads answer from memory, mutations are validated, applied to
memory and appended to the WAL buffer - then one `flush()` makes the whole batch durable
with a single fsync (group commit), and only then are the replies sent and the events
published. No client can observe a change before it is durable: replies wait for the
fsync. If the fsync fails the process exits without replying (fail-stop); recovery
replays the durable prefix. Cluster upkeep (leases, dead nodes, repairs) runs between
batches. Operations are declared in mds/ops.py and dispatched by broker.service (schema,
caller class, one error mapping); this file is only the loop.
"""
from __future__ import annotations

import errno
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.events import Publisher
from broker.limits import MDS_SERVICE
from broker.worker import Request, Worker

from .cluster import ClusterView
from .grants import Grants, load_ring, load_secret, save_ring
from .metastore import MetaStore
from .namespace import NamespaceConfig
from .ops import Handlers
from .quota import Allocations, Limits
from .repair import RepairPlanner

log = logging.getLogger(__name__)

BATCH = 512


@dataclass
class Settings:
    data_dir: Path
    worker_endpoint: str
    events_endpoint: str
    replication: int = 2
    block_size: int = 4 * 1024 * 1024
    lease: float = 60.0
    heartbeat: float = 1.0
    liveness: int = 3
    dead_after: float = 5.0
    checkpoint_records: int = 200_000
    checkpoint_bytes: int = 64 * 1024 * 1024
    salvage: bool = False
    safemode_timeout: float = 30.0
    orphan_grace: float = 60.0
    delete_grace: float = 5.0
    max_copies_per_node: int = 4
    limits: Limits = field(default_factory=Limits)
    cap_read_ttl: float = 300.0
    cap_write_ttl: float = 120.0
    key_rotation: float = 600.0
    keys_dir: Path | None = None     # the cluster key store; else a secret in data_dir
    curve: Any = None        # broker.curve.CurveKeys of member "mds"; None = security off
    extra: dict[str, Any] = field(default_factory=dict)


def stop_reason(exc: BaseException, segment: Path | None) -> str:
    """One line for people: "disk full at <file>" for ENOSPC, else the error and file."""
    where = getattr(exc, "filename", None) or segment
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full at {where}"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
    return f"{text} at {where}" if where else text


class MetadataServer:
    def __init__(self, s: Settings) -> None:
        self.s = s
        started = time.monotonic()
        self.store = MetaStore(s.data_dir, config=NamespaceConfig(
            replication=s.replication, block_size=s.block_size, lease=s.lease),
            checkpoint_records=s.checkpoint_records, checkpoint_bytes=s.checkpoint_bytes,
            salvage=s.salvage)
        log.info("metadata recovered in %.2fs: %s", time.monotonic() - started,
                 self.store.ns.counts())
        self.cluster = ClusterView(dead_after=s.dead_after)
        self.events = Publisher(s.events_endpoint, MDS_SERVICE, curve=s.curve)
        self.repair = RepairPlanner(self.store.ns, self.cluster, clock=time.monotonic,
                                    safemode_timeout=s.safemode_timeout,
                                    orphan_grace=s.orphan_grace,
                                    delete_grace=s.delete_grace,
                                    max_copies_per_node=s.max_copies_per_node)
        # a write capability must outlive the lease a writer keeps renewing between blocks
        ring_path = s.data_dir / "capability.ring"
        ring = load_ring(ring_path)
        grants = Grants(load_secret(s.keys_dir, s.data_dir), read_ttl=s.cap_read_ttl,
                        write_ttl=max(s.cap_write_ttl, s.lease), rotate_every=s.key_rotation,
                        ring=ring, on_rotate=save_ring(ring_path))
        if ring is None:
            save_ring(ring_path)(grants.ring.export())
        self.ops = Handlers(self.store, self.cluster, self.repair, s, grants=grants,
                            allocations=Allocations(s.limits))
        self.worker = Worker(s.worker_endpoint, MDS_SERVICE, heartbeat_interval=s.heartbeat,
                             liveness=s.liveness, capacity=4096, exclusive=True,
                             curve=s.curve)
        self._stop = False
        self._reconnects_seen = 0
        self._next_upkeep = 0.0
        self.metrics = False     # set when the process serves metrics (broker/metrics.py)

    def stop(self) -> None:
        self._stop = True
        self.worker.wake()

    # -- the loop ------------------------------------------------------------------------

    def _batch(self) -> list[Request]:
        first = self.worker.recv(timeout=0.2)
        if first is None:
            return []
        batch = [first]
        while len(batch) < BATCH:
            req = self.worker.recv(timeout=0)     # what is already queued, no waiting
            if req is None:
                break
            batch.append(req)
        return batch

    def turn(self) -> None:
        batch = self._batch()
        events: list[tuple[str, dict]] = []
        run, sink = self.ops.service.run, events.append
        outcomes = [(req, run(req.header, req.payload, req.context(sink))) for req in batch]
        events.extend(self._upkeep())
        try:
            if self.metrics and batch:
                self._flush_measured(len(batch))
            else:
                self.store.flush()
        except Exception as exc:
            log.critical("the write-ahead log cannot be made durable; exiting without "
                         "acknowledging the last batch", exc_info=True)
            # the last line of the log: what a supervisor shows as the reason it stopped
            log.critical("mds stopped: %s", stop_reason(exc, self.store.wal.segment))
            sys.exit(70)
        for req, outcome in outcomes:
            self.worker.answer(req, outcome)
        for topic, fields in events:
            self.events.publish(topic, **fields)
        self.store.poll()

    def _flush_measured(self, requests: int) -> None:
        from broker import metrics
        started = time.perf_counter()
        self.store.flush()
        metrics.WAL_FSYNC.observe(time.perf_counter() - started)
        metrics.WAL_BATCH.observe(requests)

    def _upkeep(self) -> list[tuple[str, dict]]:
        now = time.monotonic()
        if now < self._next_upkeep:
            return []
        self._next_upkeep = now + min(0.5, self.s.heartbeat)
        events: list[tuple[str, dict]] = []
        if self.worker.reconnects != self._reconnects_seen:
            # cut off from the broker (it went silent, we reconnected): see link_restored;
            # two DataNode liveness periods are enough for every live one to be heard
            self._reconnects_seen = self.worker.reconnects
            events.extend(self.repair.link_restored(now, 2 * self.cluster.dead_after))
        events.extend(self.ops.upkeep(now, time.time()))
        if self.metrics:     # from the loop's own thread: no scrape races the namespace
            from broker import metrics
            health = self.repair.summary()
            metrics.set_state("mds", {
                **self.store.ns.counts(), "safe_mode": self.repair.safe_mode,
                "nodes_up": len(self.cluster.live_nodes(now)),
                "opids": len(self.store.ns.opids), "last_seq": self.store.last_seq,
                **(health if isinstance(health, dict) else {})})
        return events

    def run(self) -> None:
        log.info("MDS serving (replication %d, block size %d)", self.s.replication,
                 self.s.block_size)
        try:
            while not self._stop:
                self.turn()
        finally:
            self.worker.close()
            self.events.close()
            try:
                self.store.close(checkpoint=False)
            except Exception:
                log.exception("closing the metadata store failed")
            log.info("MDS stopped")
