"""The standby MDS process (`python -m mds --standby`): its own MetaStore, fed by the
active's shipped WAL batches (mds/replication.py), its own checkpoints; it serves no
client request and does not register with the broker. Takeover is not built yet: the
standby's data directory is a complete MDS directory an MDS can be started on."""
from __future__ import annotations

import logging
import sys
from typing import Any

from .metastore import MetaStore
from .namespace import NamespaceConfig
from .replication import StandbyServer

log = logging.getLogger(__name__)


class Standby:
    def __init__(self, s: Any) -> None:
        self.store = MetaStore(s.data_dir, config=NamespaceConfig(
            replication=s.replication, block_size=s.block_size, lease=s.lease),
            checkpoint_records=s.checkpoint_records, checkpoint_bytes=s.checkpoint_bytes,
            salvage=s.salvage)
        keys = s.curve
        if keys is not None:     # the MDS member key on both ends of the link
            from broker.curve import CurveKeys
            keys = CurveKeys(keys.public, keys.secret, keys.public, keys.source)
        self.server = StandbyServer(self.store, s.ha_standby, curve=keys)
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        log.info("standby MDS at seq %d (epoch %d), taking WAL batches on %s",
                 self.store.last_seq, self.store.epoch, self.server.sock.last_endpoint)
        try:
            while not self._stop:
                self.server.serve(0.2)
                self.store.poll()
                if self.store._failed is not None:
                    log.critical("mds stopped: the standby's store failed: %r",
                                 self.store._failed)
                    sys.exit(70)
        finally:
            self.server.close()
            try:
                self.store.close(checkpoint=False)
            except Exception:
                log.exception("closing the standby's store failed")
            log.info("standby MDS stopped")
