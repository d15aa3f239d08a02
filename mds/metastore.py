"""Durable metadata store: a Namespace kept in memory, made durable by the WAL and
checkpointed to snapshots by a forked child. The MDS server's single-threaded loop
drives it; nothing here blocks on the network.

Public API (one MetaStore per data directory; not thread-safe, by design):
    MetaStore(data_dir, *, config=NamespaceConfig(), clock=time.time,
              random_bytes=os.urandom, checkpoint_records=200_000,
              checkpoint_bytes=64 MiB, salvage=False, keep_snapshots=2)
        Opens or recovers: newest valid snapshot + replay of the later WAL records
        (a torn tail is cut; other damage raises WalCorruption unless salvage=True).
    .ns                       the Namespace: call its prepare_*/reads directly
    .submit(record | prepare) -> result
        ``prepare`` is a callable ``ns -> record`` (e.g. ``lambda ns: ns.prepare_rm(p)``)
        whose record is trusted; a plain record is validated first. Applies to memory
        and buffers the record in the WAL. The caller must NOT reply before flush().
    .once(opid, wall, call) -> result
        runs ``call`` (a handler making submissions) at most once per operation id: its
        records and answer are logged as one ``once`` record (mds/opids.py); a known id
        gets the first answer again (its result, or its error raised) without running.
    .flush() -> bytes         one write + one fsync for everything submitted since the
                              last flush (group commit), with ``on_write(first, frames)``
                              between write and fsync and ``on_sync(first, frames)`` after
                              it, when set (shipping to a standby). Then reply.
    .poll()                   call every loop turn: reaps a checkpoint child, starts a
                              checkpoint when due (records or WAL bytes since the last one)
    .checkpoint_now(wait=True) -> bool   for tests and clean shutdown
    .fence(reason)            stop without making the unflushed submissions durable
    .begin_term(epoch)        HA: log ``{op: epoch, epoch}`` durably when a higher epoch
                              starts; a lower one than the log holds raises StaleEpoch
    .epoch                    the highest epoch in the log (0: never led under HA)
    .replicate(first, frames) -> last_seq   a standby: a shipped batch, replayed and logged
    .close(checkpoint=False)
    .last_seq, .snapshot_seq, .checkpointing, .stats()

Data directory: ``wal-<seq>.log`` segments and ``snapshot-<seq>.msgpack`` files side by
side, a ``FORMAT`` file naming the data format version (JSON ``{"format":
"aegisfs-mds", "version": 2}``; a directory without one is version 1, from before owners
and modes; a newer version is refused with EPROTONOSUPPORT before anything is read, and
an older one is rewritten as the current version once recovered), and a ``LOCK`` file held with flock (a second opener gets OSError EBUSY). A checkpoint rotates the WAL, forks, and the child writes the snapshot of its
copy-on-write memory (tmp, fsync, rename, fsync dir) and exits 0/1; the parent keeps
serving. Only after the child succeeded are snapshots beyond the newest
``keep_snapshots`` deleted, and the segments the oldest kept snapshot covers: so a
damaged newest snapshot can fall back to the older one plus the WAL. Recovery does that
fallback (renaming the damaged file ``*.corrupt``) only when the WAL still reaches back
to the older snapshot, else it raises RecoveryError naming the file.

GC: after recovery and before each checkpoint fork the store runs gc.collect() and
gc.freeze() (see _freeze_heap): a process-wide choice, made here because the namespace
is by far the largest object population of the MDS process.

Failure model (fail-stop): memory cannot be rolled back. If a write or fsync of the WAL
fails, or apply raises on a record that validated (a bug), flush()/submit() raise and
every later call raises too: the server must exit without replying to anything it
submitted since the last successful flush; restart recovers the durable prefix.

This module holds the write path (submit, once, flush: group commit) and the open/close;
the other parts of MetaStore are mixins: recovery and replay in mds/store_recovery.py,
checkpoints in mds/store_checkpoint.py, the HA hooks (begin_term, replicate, fence) in
mds/store_ha.py, the FORMAT and LOCK files in mds/store_files.py.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, Union

from mds import opids
from mds.namespace import Namespace, NamespaceConfig
from mds.store_checkpoint import Checkpoints, _freeze_heap
from mds.store_files import DATA_VERSION, FORMAT_FILE, _lock_directory, read_format, \
    write_format
from mds.store_ha import HighAvailability
from mds.store_recovery import Recovery
from mds.wal import WriteAheadLog, list_segments

log = logging.getLogger(__name__)

Submission = Union[Mapping[str, Any], Callable[[Namespace], Mapping[str, Any]]]
T = TypeVar("T")


class MetaStore(Recovery, HighAvailability, Checkpoints):
    def __init__(self, data_dir: os.PathLike | str, *,
                 config: NamespaceConfig = NamespaceConfig(),
                 clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 checkpoint_records: int = 200_000, checkpoint_bytes: int = 64 << 20,
                 salvage: bool = False, keep_snapshots: int = 2) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._config, self._clock, self._random = config, clock, random_bytes
        self.checkpoint_records = checkpoint_records
        self.checkpoint_bytes = checkpoint_bytes
        self.keep_snapshots = max(1, keep_snapshots)
        self._failed: BaseException | None = None
        self._child: tuple[int, int, float] | None = None  # pid, seq, start (monotonic)
        self._child_bytes = 0  # self._bytes when the running checkpoint started
        self._retry_at = 0.0
        self._collect: list[bytes] | None = None   # inside once(): the records it made
        self.epoch = 0        # the highest leadership epoch seen (mds/election.py)
        self._log_epoch = 0   # the last epoch record replayed: they only grow in a log
        self._unapplied: list[dict] = []   # replicated (durable), not yet replayed
        # called with (first seq, frames) after each flush made them durable here, and
        # (on_write) between their write and fdatasync
        self.on_sync: Callable[[int, bytes], None] | None = None
        self.on_write: Callable[[int, bytes], None] | None = None
        self._lock = _lock_directory(self.dir)
        try:
            self.format_version = read_format(self.dir)
            self.epoch = self._load_epoch()
            self.ns, self.snapshot_seq, self.last_seq = self._recover(salvage)
            self._log_epoch = self.epoch
            if self.format_version != DATA_VERSION or not (self.dir / FORMAT_FILE).exists():
                if self.format_version != DATA_VERSION:
                    log.info("data directory %s upgraded from format version %d to %d",
                             self.dir, self.format_version, DATA_VERSION)
                write_format(self.dir)
            _freeze_heap()
            self.wal = WriteAheadLog(self.dir, self.last_seq + 1)
        except BaseException:
            self._lock.close()
            raise
        # WAL bytes written since the newest snapshot, for the checkpoint_bytes trigger
        self._bytes = sum(p.stat().st_size for first, p in list_segments(self.dir)
                          if first > self.snapshot_seq)
        self._bytes_at_snapshot = 0

    def _new_namespace(self) -> Namespace:
        return Namespace(self._config, clock=self._clock, random_bytes=self._random)

    # ------------------------------------------------------------------ mutations

    def _ensure_usable(self) -> None:
        if self._failed is not None:
            raise OSError(errno.EIO, f"metadata store stopped after a fatal error: "
                                     f"{self._failed!r}", str(self.dir))

    def submit(self, record_or_prepare: Submission) -> dict:
        """Validate, apply to memory, buffer in the WAL; reply only after flush()."""
        self._ensure_usable()
        if callable(record_or_prepare):
            record = record_or_prepare(self.ns)
        else:
            record = record_or_prepare
            self.ns.validate(record)
        # encode before mutating: a bad value changes nothing
        if self._collect is not None:
            packed = opids.pack({k: v for k, v in record.items() if k != "seq"})
            seq = self.wal.next_seq
        else:
            seq = self.wal.append(record)
        try:
            result = self.ns.apply(record)
        except BaseException as exc:
            self._failed = exc
            log.critical("apply failed for a validated %s record (seq %d): memory may be "
                         "inconsistent, stopping", record.get("op"), seq, exc_info=True)
            raise
        if self._collect is not None:
            self._collect.append(packed)
        else:
            self.last_seq = seq
        return result

    def once(self, opid: bytes, wall: float, call: Callable[[], T]) -> T:
        """Run ``call`` once per operation id (see the module doc and mds/opids.py)."""
        known = self.ns.opids.get(opid)
        if known is not None:
            return opids.result_of(known)  # type: ignore[return-value]
        if self._collect is not None:
            raise RuntimeError("MetaStore.once does not nest")
        self._ensure_usable()
        self._collect = []
        result: Any = None
        error: BaseException | None = None
        try:
            result = call()
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            records, self._collect = self._collect, None
            if records and self._failed is None:
                # what changed memory must reach the log even when the handler then failed
                answer = opids.answer_of(result, error)
                try:
                    self.last_seq = self.wal.append({"op": "once", "id": opid, "wall": wall,
                                                     "records": records, "answer": answer})
                except BaseException as exc:   # memory moved on without its log record
                    self._failed = exc
                    raise
                self.ns.opids.add(opid, wall, answer)

    def flush(self) -> int:
        """Make everything submitted durable (one write, one fsync); bytes written."""
        self._ensure_usable()
        try:
            written = self.wal.sync(self.on_write)
        except BaseException as exc:
            self._failed = exc
            raise
        self._bytes += written
        if written and self.on_sync is not None:
            self.on_sync(*self.wal.last_batch)     # a primary ships it to its standby
        return written

    # ------------------------------------------------------------------ misc

    def stats(self) -> dict:
        return {"last_seq": self.last_seq, "snapshot_seq": self.snapshot_seq,
                "wal_bytes_since_snapshot": self._bytes - self._bytes_at_snapshot,
                "checkpointing": self.checkpointing, **self.ns.counts()}

    def close(self, checkpoint: bool = False) -> None:
        """Flush, optionally checkpoint, wait for a running checkpoint, close the WAL."""
        try:
            if self._failed is None:
                if checkpoint:
                    self.checkpoint_now(wait=True)
                else:
                    self.flush()
            if self._child is not None:
                self._reap(block=True)
        finally:
            try:
                # after a fatal error the buffer may hold a record memory did not take
                self.wal.close(sync=self._failed is None)
            finally:
                self._lock.close()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()