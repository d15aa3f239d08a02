"""Recovery of a MetaStore at open: the newest valid snapshot (falling back to an older
one when the WAL still reaches back to it), then a replay of the later WAL records; and
`_replay`, the one way a logged record enters the namespace, which a standby's shipped
batches (mds/store_ha.py) use too. A part of mds.metastore.MetaStore (a mixin).
"""
from __future__ import annotations

import errno
import gc
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mds.namespace import Namespace
from mds.snapshot import SnapshotCorrupt, list_snapshots, load_snapshot
from mds.store_files import RecoveryError
from mds.store_ha import StaleEpoch
from mds.wal import list_segments, recover

log = logging.getLogger(__name__)


class Recovery:
    """Snapshot + WAL replay at open, mixed into MetaStore."""

    if TYPE_CHECKING:    # what this part uses of the MetaStore
        dir: Path
        epoch: int
        _log_epoch: int

        def _new_namespace(self) -> Namespace: ...

    def _recover(self, salvage: bool) -> tuple[Namespace, int, int]:
        for tmp in self.dir.glob("*.tmp"):
            log.warning("removing %s left by an interrupted checkpoint", tmp)
            tmp.unlink()
        snaps = list_snapshots(self.dir)
        segs = list_segments(self.dir)
        wal_start = segs[0][0] if segs else None
        started = time.monotonic()
        ns, base = None, 0
        for seq, path in reversed(snaps):
            candidate = self._new_namespace()
            try:
                load_snapshot(path, candidate)
                # objects born while the GC was paused sit in generation 0: without this
                # the next young collection would walk all of them (~0.5 s at 1M files)
                gc.freeze()
                ns, base = candidate, seq
                break
            except SnapshotCorrupt as exc:
                older = [s for s, _ in snaps if s < seq]
                fallback = older[-1] if older else 0
                if wal_start is None or wal_start > fallback + 1:
                    raise RecoveryError(path, (
                        f"{exc.strerror}; the WAL in {self.dir} starts at seq {wal_start}, "
                        f"so it cannot rebuild from "
                        f"{'snapshot ' + str(fallback) if older else 'an empty namespace'}: "
                        "restore the snapshot from a backup (refusing to lose records)")
                    ) from exc
                log.error("%s; falling back to %s and replaying the WAL from seq %d; the "
                          "damaged file is renamed *.corrupt", exc.strerror,
                          f"snapshot {fallback}" if older else "an empty namespace",
                          fallback + 1)
                path.rename(path.with_name(path.name + ".corrupt"))
        if ns is None:
            if wal_start is not None and wal_start > 1:
                raise RecoveryError(self.dir, f"the WAL begins at seq {wal_start} but no "
                                              f"snapshot covers seqs 1..{wal_start - 1}")
            ns = self._new_namespace()
        loaded = time.monotonic()
        last, count = base, 0
        for rec in recover(self.dir, base, salvage=salvage):
            try:
                self._replay(ns, rec)
            except OSError as exc:
                raise RecoveryError(self.dir, f"WAL record seq {rec['seq']} does not apply "
                                              f"to the recovered state: {exc}") from exc
            last, count = rec["seq"], count + 1
        log.info("recovered %s: snapshot seq %d loaded in %.2f s, %d WAL records replayed in "
                 "%.2f s, last seq %d, %s", self.dir, base, loaded - started, count,
                 time.monotonic() - loaded, last, ns.counts())
        return ns, base, last

    def _replay(self, ns: Namespace, rec: Mapping[str, Any]) -> None:
        """One logged record into `ns`: what recovery and a standby (replicate) both do.
        Raises OSError when it does not apply (nothing changed)."""
        if rec.get("op") == "epoch":    # not namespace state: the log's own term
            epoch = rec.get("epoch")
            if type(epoch) is not int or epoch < 1:
                raise OSError(errno.EINVAL, f"bad epoch {epoch!r}")
            if epoch < self._log_epoch:
                raise StaleEpoch(epoch, self._log_epoch, str(self.dir))
            self._log_epoch = epoch
            self.epoch = max(self.epoch, epoch)
            return
        ns.validate(rec)
        ns.apply(rec)
