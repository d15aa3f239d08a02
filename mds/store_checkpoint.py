"""Checkpoints of a MetaStore: when one is due (records or WAL bytes since the last), the
forked child writing the snapshot of its copy-on-write memory, reaping it, and pruning
the snapshots and WAL segments no longer needed; and the GC freeze around forks. A part
of mds.metastore.MetaStore (a mixin).
"""
from __future__ import annotations

import errno
import gc
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mds.snapshot import list_snapshots, snapshot_name, write_snapshot
from mds.wal import fsync_dir, list_segments

if TYPE_CHECKING:
    from mds.namespace import Namespace
    from mds.wal import WriteAheadLog

log = logging.getLogger(__name__)

RETRY_AFTER_FAILED_CHECKPOINT = 30.0


def _freeze_heap() -> None:
    """Collect, then move every live object to the GC's permanent generation.

    Why: full collections would otherwise walk the whole namespace (0.66 s a pass at 1M
    files, recurring as it grows), and a forked checkpoint child would copy every page
    whose GC header such a pass touches. The namespace holds no reference cycles, and
    the collection first means no cyclic garbage is frozen for good; it only walks the
    objects created since the last freeze, so its pause is bounded by the checkpoint
    interval."""
    gc.collect()
    gc.freeze()


class Checkpoints:
    """Snapshots by a forked child and pruning, mixed into MetaStore."""

    if TYPE_CHECKING:    # what this part uses of the MetaStore
        dir: Path
        ns: Namespace
        wal: WriteAheadLog
        last_seq: int
        snapshot_seq: int
        checkpoint_records: int
        checkpoint_bytes: int
        keep_snapshots: int
        _clock: Callable[[], float]
        _failed: BaseException | None
        _child: tuple[int, int, float] | None
        _child_bytes: int
        _retry_at: float
        _bytes: int
        _bytes_at_snapshot: int
        _unapplied: list[dict]

        def flush(self) -> int: ...

        def apply_replicated(self) -> None: ...

    @property
    def checkpointing(self) -> bool:
        return self._child is not None

    def _due(self) -> bool:
        return (self.last_seq > self.snapshot_seq and self._clock() >= self._retry_at
                and (self.last_seq - self.snapshot_seq >= self.checkpoint_records
                     or self._bytes - self._bytes_at_snapshot >= self.checkpoint_bytes))

    def poll(self) -> None:
        """Reap a finished checkpoint child; start a checkpoint when one is due."""
        if self._unapplied and self._failed is None:
            self.apply_replicated()     # a snapshot must hold everything up to last_seq
        if self._child is not None:
            self._reap(block=False)
        if (self._child is None and self._failed is None and self.wal.pending == 0
                and self._due()):
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        seq = self.last_seq
        self.wal.rotate()  # later records go to a segment the snapshot does not cover
        _freeze_heap()
        try:
            pid = os.fork()
        except OSError as exc:
            self._retry_at = self._clock() + RETRY_AFTER_FAILED_CHECKPOINT
            log.error("cannot fork a checkpoint child: %s; retrying in %.0f s", exc,
                      RETRY_AFTER_FAILED_CHECKPOINT)
            return
        if pid == 0:  # child: write the copy-on-write image of the namespace, then leave
            code = 1
            try:
                # a GC pass would write to every object header and copy the parent's pages
                gc.disable()
                write_snapshot(self.dir, self.ns, seq, clock=self._clock)
                code = 0
            except BaseException:
                log.exception("checkpoint child failed writing the snapshot at seq %d", seq)
            finally:
                os._exit(code)
        self._child = (pid, seq, time.monotonic())
        self._child_bytes = self._bytes
        log.info("checkpoint at seq %d started in child %d", seq, pid)

    def _reap(self, block: bool) -> bool | None:
        """None while the child runs, else whether it succeeded (False with no child: the
        fork failed)."""
        if self._child is None:
            return False
        pid, seq, started = self._child
        try:
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its exit status is lost
            done, status = pid, -1
        if done == 0:
            return None
        self._child = None
        ok = (status != -1 and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
              and (self.dir / snapshot_name(seq)).exists())
        if not ok:
            self._retry_at = self._clock() + RETRY_AFTER_FAILED_CHECKPOINT
            log.error("checkpoint at seq %d failed (child status %#x); the WAL is kept and "
                      "a new attempt follows in %.0f s", seq, status,
                      RETRY_AFTER_FAILED_CHECKPOINT)
            return False
        self.snapshot_seq = seq
        self._bytes_at_snapshot = self._child_bytes
        log.info("checkpoint at seq %d durable after %.2f s", seq, time.monotonic() - started)
        self._prune()
        return True

    def _prune(self) -> None:
        """Drop snapshots beyond the newest few, and the segments the oldest kept one
        covers: a damaged newest snapshot can still fall back to the one before."""
        snaps = list_snapshots(self.dir)
        if len(snaps) < self.keep_snapshots:
            return  # the fallback for a damaged snapshot is then a replay from seq 1
        for _, path in snaps[:-self.keep_snapshots]:
            path.unlink()
        oldest = snaps[-self.keep_snapshots][0]
        segs = list_segments(self.dir)
        removed = []
        for (_, path), (next_first, _) in zip(segs, segs[1:]):
            if next_first <= oldest + 1:
                path.unlink()
                removed.append(path.name)
        fsync_dir(self.dir)
        if removed:
            log.info("removed WAL segments covered by snapshot %d: %s", oldest, removed)

    def checkpoint_now(self, wait: bool = True) -> bool:
        """Flush and snapshot the current state; False when there was nothing new."""
        self.flush()
        self.apply_replicated()
        if self._child is not None:
            self._reap(block=True)
        if self.last_seq == self.snapshot_seq:
            return False
        self._start_checkpoint()
        if wait and not self._reap(block=True):
            raise OSError(errno.EIO, "checkpoint failed; see the log", str(self.dir))
        return True
