"""The MDS process: serves service `mds` from a MetaStore, one batch per loop turn.

Theory of operation. Each turn drains the requests that have arrived (up to BATCH),
handles them in order - reads answer from memory, mutations are validated, applied to
memory and appended to the WAL buffer - then one `flush()` makes the whole batch durable
with a single fsync (group commit), and only then are the replies sent and the events
published. No client can observe a change before it is durable: replies wait for the
fsync. If the fsync fails the process exits without replying (fail-stop); recovery
replays the durable prefix. Cluster upkeep (leases, dead nodes, repairs) runs between
batches. Operations are declared in mds/ops_*.py and dispatched by broker.service (schema,
caller class, one error mapping); this file is only the loop.

With `[ha] etcd` set (off by default) the MDS first wins leadership in etcd
(mds/election.py) and only then registers `mds` with the broker. Each turn starts by
checking that the lease is still valid for a margin longer than a turn: without it, every
request but ping and status is answered EAGAIN (clients wait and retry) and no upkeep
runs - nothing is changed, sent or logged. If the lease ended between that check and the
fsync of a batch that changed something, the process exits unacknowledged (fail-stop).
Shipping to a standby ([ha] peer, or [ha] standby for an MDS started as the active): a
batch the standby did not take is acknowledged only once the "ran alone" mark is in etcd
(mds/election.py); until then its replies are EAGAIN (the mutations are durable here and
a retry with the same operation id gets the same answer from the opid table) and later
batches are refused. A leader whose key another epoch now holds exits 77 (deposed).
"""
from __future__ import annotations

import errno
import logging
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.events import Publisher
from broker.limits import MDS_SERVICE
from broker.service import Outcome
from broker.worker import Request, Worker

from .cluster import ClusterView
from .election import Campaign, Election
from .etcd import Gateway
from .grants import Grants, load_ring, load_secret, save_ring
from .metastore import MetaStore
from .namespace import NamespaceConfig
from .ops import Handlers
from .quota import Allocations, Limits
from .repair import RepairPlanner
from .replication import StandbyLink
from .store_ha import StaleEpoch

log = logging.getLogger(__name__)

BATCH = 512
# what an MDS without a valid leadership lease still answers (they change nothing)
WITHOUT_LEASE = frozenset({"ping", "status"})
LEASE_LAPSED = 75     # exit status: the lease ended while a batch was being made durable
STALE_EPOCH = 76      # exit status: etcd gave an epoch lower than the log's
DEPOSED = 77          # exit status: another MDS leads with a higher epoch (restart as standby)
MARK_RETRY = 0.5      # seconds between attempts to write or clear the ran-alone mark


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
    # leadership from etcd ([ha]); "" = off: the MDS serves as soon as it has recovered
    ha_etcd: str = ""
    ha_key: str = "/aegisfs/mds/leader"
    ha_lease_ttl: int = 5
    ha_name: str = ""
    ha_standby: str = ""             # the standby's endpoint ("" = no WAL shipping)
    ha_standby_timeout: float = 2.0
    ha_peer: str = ""                # the other MDS's standby endpoint (ships there as active)


def ha_name(s: Settings) -> str:
    """This MDS in the leader key and the ran-alone mark: stable across restarts (the mark's
    writer must recognise itself), so by default the host and the data directory."""
    return s.ha_name or f"{socket.gethostname()}:{s.data_dir.resolve()}"


def election_for(s: Settings, last_seq: Any) -> Election:
    return Election(Gateway(s.ha_etcd, timeout=min(1.0, s.ha_lease_ttl / 5)),
                    s.ha_key.encode(), ha_name(s).encode(), s.ha_lease_ttl, time.monotonic,
                    last_seq=last_seq)


def stop_reason(exc: BaseException, segment: Path | None) -> str:
    """One line for people: "disk full at <file>" for ENOSPC, else the error and file."""
    where = getattr(exc, "filename", None) or segment
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full at {where}"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else repr(exc)
    return f"{text} at {where}" if where else text


def open_store(s: Settings) -> MetaStore:
    return MetaStore(s.data_dir, config=NamespaceConfig(
        replication=s.replication, block_size=s.block_size, lease=s.lease),
        checkpoint_records=s.checkpoint_records, checkpoint_bytes=s.checkpoint_bytes,
        salvage=s.salvage)


class MetadataServer:
    """`store` and `campaign` given: a standby taking over in its own process (mds/standby.py)
    with the store it replayed and the election it won; else both are made here."""

    def __init__(self, s: Settings, store: MetaStore | None = None,
                 campaign: Campaign | None = None) -> None:
        self.s = s
        started = time.monotonic()
        self.store = store if store is not None else open_store(s)
        log.info("metadata %s in %.2fs: %s", "recovered" if store is None else "taken over",
                 time.monotonic() - started, self.store.ns.counts())
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
        self.campaign: Campaign | None = None
        self.epoch: int | None = None       # the epoch this MDS last led with
        self.worker: Worker | None = None
        self.link: StandbyLink | None = None
        ship_to = s.ha_peer or s.ha_standby
        if ship_to:
            keys = s.curve
            if keys is not None:     # the standby holds the MDS key too: its public key
                from broker.curve import CurveKeys
                keys = CurveKeys(keys.public, keys.secret, keys.public, keys.source)
            self.link = StandbyLink(ship_to, self.store, s.ha_standby_timeout, curve=keys)
            self.store.on_write, self.store.on_sync = self.link.send, self.link.ship
            self.link.ring = self.ops.grants.ring_export   # the standby keeps a copy
        if campaign is not None:
            self.campaign = campaign
        elif s.ha_etcd:
            store_ = self.store
            self.campaign = Campaign(election_for(s, lambda: store_.last_seq)).start()
        # the ran-alone mark (mds/election.py): written by this process and not cleared;
        # what is durable here only and not yet covered by it (nothing may be answered)
        self.marked = False
        # a mark from this MDS's earlier life (it ran alone, died, leads again) is cleared
        # like its own once the standby is in sync: a guarded delete of nothing is harmless
        self._stale_mark = self.campaign is not None
        self._uncovered = False
        self._mark_next = 0.0        # the next attempt to write the mark, after a failed one
        self._clear_next = 0.0       # the next attempt to clear it, after a failed one
        self.ops.ha_status = self._ha_status if (self.campaign or self.link) else None
        if self.campaign is None:
            self.worker = self._register()
        self._stop = False
        self._reconnects_seen = 0
        self._pending_events: list[tuple[str, dict]] = []
        self._next_upkeep = 0.0
        self.metrics = False     # set when the process serves metrics (broker/metrics.py)

    def _ha_status(self) -> dict:
        out: dict = {"state": "active", "epoch": self.epoch}
        if self.campaign is not None:
            out = self.campaign.election.describe(time.monotonic())
        if self.link is not None:
            out["standby"] = self.link.status()
        out["alone_mark"] = self.marked     # this MDS wrote the ran-alone mark (not cleared)
        return out

    def _register(self) -> Worker:
        # with HA the epoch goes with READY: the broker routes `mds` to the highest only
        return Worker(self.s.worker_endpoint, MDS_SERVICE, heartbeat_interval=self.s.heartbeat,
                      liveness=self.s.liveness, capacity=4096, exclusive=True,
                      info={"epoch": self.epoch} if self.campaign is not None else None,
                      curve=self.s.curve)

    def stop(self) -> None:
        self._stop = True
        if self.worker is not None:
            self.worker.wake()

    def _await_leadership(self) -> bool:
        """With HA on: block until this MDS leads (False when stopped first)."""
        assert self.campaign is not None
        election = self.campaign.election
        log.info("waiting to become the MDS leader in etcd at %s (key %s)", self.s.ha_etcd,
                 self.s.ha_key)
        while not self._stop:
            epoch = election.leading(time.monotonic())
            if epoch is not None:
                self._begin_term(epoch)
                self.campaign.changes.clear()     # the first election: no safe-mode reset
                log.info("MDS leader with epoch %d: registering with the broker", epoch)
                return True
            time.sleep(0.05)
        return False

    def _leading(self) -> bool:
        """Whether this turn may change anything: always without HA; with HA, only while
        the lease is valid. Leading again after a step-down re-enters safe mode."""
        if self.campaign is None:
            return True
        election = self.campaign.election
        if election.deposed_by is not None:
            log.critical("mds stopped: deposed by epoch %d (this MDS led with epoch %s)",
                         election.deposed_by, self.epoch)
            sys.exit(DEPOSED)
        epoch = election.leading(time.monotonic())
        if epoch is not None and epoch != self.epoch:
            log.warning("leading again with epoch %d (was %s)", epoch, self.epoch)
            self._begin_term(epoch)
            if self.worker is not None:
                self.worker.update_info(epoch=epoch)
        if epoch is not None and self.campaign.changes:
            self.campaign.changes.clear()
            # stepped down and elected again: DataNodes were refused meanwhile, so all look
            # down; wait for their heartbeats as after a lost broker link
            self._pending_events.extend(self.repair.link_restored(
                time.monotonic(), 2 * self.cluster.dead_after))
        return epoch is not None

    def _begin_term(self, epoch: int) -> None:
        """The epoch goes into the WAL stream before anything of the term does; an epoch
        lower than the log's means etcd lost its data (or this log came from a newer
        leader): serving would let a lower term overwrite a higher one, so stop."""
        before = self.store.epoch
        try:
            self.store.begin_term(epoch)
        except StaleEpoch as exc:
            log.critical("mds stopped: %s (was etcd's data reset?)", exc)
            sys.exit(STALE_EPOCH)
        if self.link is not None and epoch > before:
            # our epoch record: what precedes it came from the previous leader, so a
            # standby diverging after it holds a deposed term's tail (replication.py)
            self.link.term_start = self.store.last_seq
        self.epoch = self.ops.epoch = epoch

    def _refuse(self, req: Request, why: str = "holds no leadership lease") -> Outcome:
        if req.header.get("op") in WITHOUT_LEASE:
            return self.ops.service.run(req.header, req.payload, req.context(lambda *_: None))
        reason = self.campaign.election.error if self.campaign else None
        return Outcome(error=BlockingIOError(errno.EAGAIN, (
            f"the metadata server {why}"
            + (f" (etcd: {reason})" if reason else "") + "; retry")))

    # -- the ran-alone mark ----------------------------------------------------------------

    def _covered(self) -> bool:
        """Whether everything durable here may be acknowledged: the standby holds it, or
        the ran-alone mark is written (tried at most every MARK_RETRY s). Always without
        etcd: no other MDS can take over then."""
        if self.campaign is None or self.marked:
            return True
        link = self.link
        if link is not None and link.state == "in_sync" and link.acked >= self.store.last_seq:
            return True
        now = time.monotonic()
        if now < self._mark_next or self.epoch is None:
            return False
        self._mark_next = now + MARK_RETRY
        since = link.acked if link is not None else 0
        if self.campaign.election.mark_alone(self.epoch, since, self.store.last_seq):
            self.marked = True
            log.warning("running alone from seq %d (the standby holds seq %d): the "
                        "ran-alone mark is set; no standby may take over until it is in "
                        "sync again", self.store.last_seq, since)
            return True
        if not self._uncovered:
            log.warning("cannot write the ran-alone mark: answering EAGAIN until it is")
        return False

    def _clear_mark(self) -> None:
        """At the first turn the standby is in sync again (the window in which a kill of
        this MDS leaves no standby allowed to lead stays one turn long); after a failed
        attempt, again every MARK_RETRY s."""
        link, now = self.link, time.monotonic()
        if not (self.marked or self._stale_mark) or link is None or self.campaign is None \
                or self.epoch is None \
                or link.state != "in_sync" or link.acked != self.store.last_seq \
                or now < self._clear_next:
            return
        self._clear_next = now + MARK_RETRY
        if self.campaign.election.clear_mark(self.epoch):
            self._clear_next = 0.0
            self.marked = self._stale_mark = False
            log.info("the standby is in sync at seq %d: the ran-alone mark is cleared",
                     link.acked)

    # -- the loop ------------------------------------------------------------------------

    def _batch(self) -> list[Request]:
        assert self.worker is not None
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
        assert self.worker is not None
        batch = self._batch()
        if not self._leading() or (self._uncovered and not self._covered()):
            why = None if self.epoch is None or not self._uncovered else (
                "could not record in etcd that it runs without its standby")
            for req in batch:
                self.worker.answer(req, self._refuse(req, why) if why else self._refuse(req))
            if self.metrics:
                from broker import metrics
                metrics.set_state("mds", {"leader": False})
            return
        events: list[tuple[str, dict]] = self._pending_events
        self._pending_events = []
        run, sink = self.ops.service.run, events.append
        outcomes = [(req, run(req.header, req.payload, req.context(sink))) for req in batch]
        events.extend(self._upkeep())
        if self.store.wal.pending and self.campaign is not None \
                and self.campaign.election.leading(time.monotonic()) != self.epoch:
            # the lease ended while this batch was made: it must not become durable
            # (another MDS may lead now) and memory holds it: stop, unacknowledged
            self.store.fence("the leadership lease ended during a batch")
            log.critical("mds stopped: the leadership lease ended during a batch")
            sys.exit(LEASE_LAPSED)
        self._uncovered = False
        try:
            if self.metrics and batch:
                written = self._flush_measured(len(batch))
            else:
                written = self.store.flush()
        except Exception as exc:
            log.critical("the write-ahead log cannot be made durable; exiting without "
                         "acknowledging the last batch", exc_info=True)
            # the last line of the log: what a supervisor shows as the reason it stopped
            log.critical("mds stopped: %s", stop_reason(exc, self.store.wal.segment))
            sys.exit(70)
        if written and not self._covered():
            # durable here only: no reply, no event until the mark says so (a retry with
            # the same operation id is answered from the opid table)
            self._uncovered = True
            self._pending_events = events
            why = "could not record in etcd that it runs without its standby"
            outcomes = [(req, outcome if req.header.get("op") in WITHOUT_LEASE
                         else self._refuse(req, why)) for req, outcome in outcomes]
            events = []
        for req, outcome in outcomes:
            self.worker.answer(req, outcome)
        for topic, fields in events:
            self.events.publish(topic, **fields)
        self.store.poll()
        if self.link is not None:
            self.link.upkeep()
            self._clear_mark()

    def _flush_measured(self, requests: int) -> int:
        from broker import metrics
        started = time.perf_counter()
        written = self.store.flush()
        metrics.WAL_FSYNC.observe(time.perf_counter() - started)
        metrics.WAL_BATCH.observe(requests)
        return written

    def _upkeep(self) -> list[tuple[str, dict]]:
        now = time.monotonic()
        if now < self._next_upkeep:
            return []
        self._next_upkeep = now + min(0.5, self.s.heartbeat)
        events: list[tuple[str, dict]] = []
        assert self.worker is not None
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
                # upkeep runs only while leading (HA) or always (no HA)
                "leader": True, "standby": False, "epoch": self.epoch or 0,
                **(health if isinstance(health, dict) else {})})
        return events

    def run(self) -> None:
        clean = False
        try:
            if self.campaign is not None:
                if not self._await_leadership():
                    clean = True
                    return
                self.worker = self._register()
            log.info("MDS serving (replication %d, block size %d)", self.s.replication,
                     self.s.block_size)
            while not self._stop:
                self.turn()
            clean = True
        finally:
            if self.worker is not None:
                self.worker.close()
            if self.link is not None:
                self.link.close()
                self.store.on_write = self.store.on_sync = None
            if self.campaign is not None:
                try:     # the last batch durable first: then a standby may take over at once
                    self.store.flush()
                except OSError:
                    pass          # fenced or failed: nothing more may become durable
                self.campaign.stop(resign=True)
            self.events.close()
            try:
                self.store.close(checkpoint=False)
            except Exception:
                log.exception("closing the metadata store failed")
            if clean:      # else the "mds stopped: why" line stays the last (supervisor)
                log.info("MDS stopped")
