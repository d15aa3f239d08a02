"""The HA hooks of a MetaStore: the leadership epoch (``EPOCH`` file, `begin_term`,
`StaleEpoch`), a standby's intake of the batches its primary ships (`replicate`,
`apply_replicated`) and `fence`, stopping without making the unflushed submissions
durable. A part of mds.metastore.MetaStore (a mixin); mds/replication.py, mds/standby.py
and mds/server.py drive it.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mds.store_files import RecoveryError
from mds.wal import decode_frames, fsync_dir

if TYPE_CHECKING:
    from mds.namespace import Namespace
    from mds.wal import WriteAheadLog

log = logging.getLogger(__name__)

EPOCH_FILE = "EPOCH"      # the highest leadership epoch, with HA (see begin_term)


class StaleEpoch(OSError):
    """An epoch lower than one this log already holds: a deposed leader's, or etcd reset."""

    def __init__(self, epoch: int, known: int, where: str) -> None:
        super().__init__(errno.ESTALE, f"epoch {epoch} is lower than epoch {known} already "
                                       f"in the log of {where}")
        self.epoch, self.known = epoch, known


class HighAvailability:
    """Epochs, shipped batches and fencing, mixed into MetaStore."""

    if TYPE_CHECKING:    # what this part uses of the MetaStore
        dir: Path
        ns: Namespace
        wal: WriteAheadLog
        epoch: int
        last_seq: int
        _log_epoch: int
        _unapplied: list[dict]
        _failed: BaseException | None

        def _ensure_usable(self) -> None: ...

        def flush(self) -> int: ...

        def _replay(self, ns: Namespace, rec: Mapping[str, Any]) -> None: ...

    def replicate(self, first: int, frames: bytes, defer: bool = False) -> int:
        """A standby takes a batch its primary shipped (mds/replication.py): the raw
        frames of records first.. are checked (CRC, consecutive seqs from last_seq + 1,
        no lower epoch), written to this log as they are and fsynced, and replayed into
        the namespace by the code recovery uses - at once, or with `defer` by the next
        apply_replicated() (the standby answers in between: the replay is then off the
        active's critical path). Returns the new last_seq. A batch that does not fit
        raises ValueError or StaleEpoch and changes nothing; a durable record that does
        not apply stops the store (fail-stop, as in submit)."""
        self._ensure_usable()
        self.apply_replicated()
        if first != self.last_seq + 1:
            raise ValueError(f"batch starts at seq {first}, this log is at {self.last_seq}")
        records = decode_frames(frames, first)
        epoch = self._log_epoch
        for rec in records:
            if rec.get("op") == "epoch":
                e = rec.get("epoch")
                if type(e) is not int or e < 1:
                    raise ValueError(f"record seq {rec['seq']}: bad epoch {e!r}")
                if e < max(epoch, self.epoch):
                    raise StaleEpoch(e, max(epoch, self.epoch), str(self.dir))
                epoch = e
        self.wal.append_frames(frames, first, len(records))
        self.flush()
        if records:
            self.last_seq = first + len(records) - 1
        self._unapplied.extend(records)
        if epoch > self.epoch:
            self.epoch = self._log_epoch = epoch
            self._save_epoch()
        if not defer:
            self.apply_replicated()
        return self.last_seq

    def apply_replicated(self) -> None:
        """Replay what replicate(defer=True) made durable and not yet applied."""
        records, self._unapplied = self._unapplied, []
        for rec in records:
            if rec.get("op") == "epoch":
                continue      # checked and taken when it was received
            try:
                self._replay(self.ns, rec)
            except BaseException as exc:   # durable and refused: this copy has diverged
                self._failed = exc
                log.critical("a shipped record seq %d does not apply: %s; stopping",
                             rec["seq"], exc)
                raise

    def _save_epoch(self) -> None:
        """EPOCH = the highest epoch, durably: snapshots do not carry it, and the log that
        held its record may be pruned by a checkpoint."""
        tmp = self.dir / f"{EPOCH_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self.epoch}\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.dir / EPOCH_FILE)
        fsync_dir(self.dir)

    def _load_epoch(self) -> int:
        path = self.dir / EPOCH_FILE
        try:
            raw = path.read_text().strip()
        except FileNotFoundError:
            return 0
        if not raw.isdigit():
            raise RecoveryError(path, f"{path} does not hold an epoch: {raw[:100]!r}")
        return int(raw)

    def begin_term(self, epoch: int) -> None:
        """A leader starts serving with `epoch`: logged (and fsynced) when higher than the
        log's; the same epoch continues the term; a lower one raises StaleEpoch and
        changes nothing."""
        self._ensure_usable()
        if epoch < self.epoch:
            raise StaleEpoch(epoch, self.epoch, str(self.dir))
        if epoch == self.epoch:
            return
        self.last_seq = self.wal.append({"op": "epoch", "epoch": epoch})
        self.flush()
        self.epoch = self._log_epoch = epoch
        self._save_epoch()

    def fence(self, reason: str) -> None:
        """Stop for good without making durable what was submitted since the last flush
        (it was made without the right to: e.g. the leadership lease ended meanwhile).
        Every later call raises; close() drops the buffer."""
        if self._failed is None:
            self._failed = OSError(errno.ESTALE, reason, str(self.dir))
