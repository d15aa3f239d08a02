"""The standby MDS process (`python -m mds --standby`): its own MetaStore, fed by the
active's shipped WAL batches (mds/replication.py), its own checkpoints; it serves no
client request and does not register with the broker until it takes over.

Takeover (with `[ha] etcd`): the standby campaigns for the leader key like any candidate
(mds/election.py) - it can only win once the key is gone (the active's lease lapsed or it
resigned) and the ran-alone mark does not forbid it. On winning, `run` returns True: it
has stopped taking shipped batches and applied every one it took; `take_over` then makes
the active in this same process, on this store and this election (begin_term with the new
epoch, safe mode as after a restart, `mds` registered with its epoch), shipping to
`[ha] peer` from then on.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from broker.capability import KeyRing

from .election import Campaign
from .grants import save_ring
from .metastore import MetaStore
from .standby_server import StandbyServer, put_seed_in_place
from .server import MetadataServer, Settings, election_for, open_store
from .wal import truncate_after

log = logging.getLogger(__name__)


class Standby:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.store = open_store(s)
        keys = s.curve
        if keys is not None:     # the MDS member key on both ends of the link
            from broker.curve import CurveKeys
            keys = CurveKeys(keys.public, keys.secret, keys.public, keys.source)
        self.campaign: Campaign | None = None
        self.server = StandbyServer(self.store, s.ha_standby, curve=keys, info=self.describe,
                                    reopen=self._reopen, on_ring=self._keep_ring,
                                    install=self._install_seed)
        self._ring: object = None
        self.metrics = False     # set when the process serves metrics (broker/metrics.py)
        if s.ha_etcd:
            self.campaign = Campaign(election_for(s, lambda: self.store.last_seq)).start()
        self._stop = False

    def _reopen(self, seq: int) -> MetaStore:
        """The active cut us back to `seq` (mds/replication.py `truncate`): close the store,
        cut the WAL, replay it again from disk. A failure past the close is fail-stop."""
        self.store.close(checkpoint=False)
        try:
            dropped = truncate_after(self.s.data_dir, seq)
            self.store = open_store(self.s)
        except BaseException as exc:
            log.critical("mds stopped: cutting the standby's log back to seq %d failed: %r",
                         seq, exc)
            sys.exit(70)
        log.warning("standby cut back to seq %d: dropped %d records past it (a deposed "
                    "term's, never acknowledged), following the active", seq, dropped)
        return self.store

    def _install_seed(self, seq: int, path: Path) -> MetaStore:
        """The active's snapshot `seq` (checked whole and readable) replaces our state: it
        is renamed in (newer than anything we hold: recovery would pick it), the
        directory fsynced, then our older segments and snapshots go, and the store is
        reopened on it. A failure past the close is fail-stop (the seed is sent again)."""
        self.store.close(checkpoint=False)
        try:
            put_seed_in_place(Path(self.s.data_dir), path)
            self.store = open_store(self.s)
        except BaseException as exc:
            log.critical("mds stopped: installing the seed snapshot %d failed: %r", seq, exc)
            sys.exit(70)
        log.warning("standby seeded with the active's snapshot at seq %d", seq)
        return self.store

    def _keep_ring(self, export: object) -> None:
        """The active's capability key ring: saved as ours, so that after a takeover the
        capabilities it minted still verify (MetadataServer loads capability.ring)."""
        if export == self._ring:
            return
        try:
            KeyRing.load(export)
        except (ValueError, TypeError, KeyError) as exc:
            log.error("capability key ring from the active refused: %s", exc)
            return
        save_ring(self.s.data_dir / "capability.ring")(export)   # type: ignore[arg-type]
        self._ring = export

    def _gauges(self) -> None:
        """aegisfs_state{role="mds"} while a standby: leader 0, standby 1, its position."""
        from broker import metrics
        metrics.set_state("mds", {"leader": False, "standby": True,
                                  "last_seq": self.store.last_seq, "epoch": self.store.epoch})

    def describe(self) -> dict:
        """What the standby tells the active in its hello answer (shown by status)."""
        election = self.campaign.election if self.campaign else None
        return {"takeover": election.refusal if election else "no etcd: never takes over"}

    def stop(self) -> None:
        self._stop = True

    def run(self) -> bool:
        """Take batches until stopped (False) or elected (True: call take_over)."""
        log.info("standby MDS at seq %d (epoch %d), taking WAL batches on %s%s",
                 self.store.last_seq, self.store.epoch, self.server.sock.last_endpoint,
                 ", campaigning in etcd" if self.campaign else "")
        won = False
        try:
            while not self._stop and not won:
                self.server.serve(0.2)
                self.store.poll()
                if self.metrics:
                    self._gauges()
                if self.store._failed is not None:
                    log.critical("mds stopped: the standby's store failed: %r",
                                 self.store._failed)
                    sys.exit(70)
                # a stop asked for (SIGTERM) wins over an election won meanwhile
                won = not self._stop and self.campaign is not None and \
                    self.campaign.election.leading(time.monotonic()) is not None
        finally:
            self.server.close()      # no shipped batch after this: we lead, or stop
            if not won:
                if self.campaign is not None:
                    self.campaign.stop(resign=True)
                try:
                    self.store.close(checkpoint=False)
                except Exception:
                    log.exception("closing the standby's store failed")
                log.info("standby MDS stopped")
        if won:
            self.store.apply_replicated()
            log.warning("taking over as the active MDS at seq %d", self.store.last_seq)
        return won

    def take_over(self) -> MetadataServer:
        """The active, in this process: ships to [ha] peer (never to its own endpoint)."""
        assert self.campaign is not None
        return MetadataServer(replace(self.s, ha_standby=""), store=self.store,
                              campaign=self.campaign)
