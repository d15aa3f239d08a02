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
"""
from __future__ import annotations

import errno
import fcntl
import gc
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, TypeVar, Union

from mds import opids
from mds.namespace import Namespace, NamespaceConfig
from mds.snapshot import SnapshotCorrupt, list_snapshots, load_snapshot, snapshot_name, \
    write_snapshot
from mds.wal import WriteAheadLog, decode_frames, fsync_dir, list_segments, recover

log = logging.getLogger(__name__)

DATA_FORMAT = "aegisfs-mds"
# 1: the first layout (no FORMAT file); 2: owners, groups and modes in records and
# snapshots (version 1 records and snapshots still read, see mds/inode.py)
DATA_VERSION = 2
FORMAT_FILE = "FORMAT"
EPOCH_FILE = "EPOCH"      # the highest leadership epoch, with HA (see begin_term)

Submission = Union[Mapping[str, Any], Callable[[Namespace], Mapping[str, Any]]]
T = TypeVar("T")
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


def _lock_directory(directory: Path) -> BinaryIO:
    """Hold an exclusive flock on ``LOCK``: a second MDS on the same directory would
    take the live writer's half-written record for a torn tail and cut it off. The lock
    goes with the process (and a checkpoint child still writing)."""
    f = open(directory / "LOCK", "ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OSError(errno.EBUSY, "data directory is in use by another MDS process",
                      str(directory)) from None
    return f


def read_format(directory: Path) -> int:
    """The data format version of a directory: its FORMAT file, else 1 when it holds a
    log or a snapshot (made before FORMAT existed), else the current one (a new store).
    A version newer than this code is an error before anything else is read."""
    path = directory / FORMAT_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        old = list_segments(directory) or list_snapshots(directory)
        return 1 if old else DATA_VERSION
    try:
        info = json.loads(raw)
        version = info["version"]
        if info.get("format") != DATA_FORMAT or type(version) is not int or version < 1:
            raise ValueError(info)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RecoveryError(path, f"{path} is not an AegisFS MDS format file: "
                                  f"{raw[:200]!r}") from None
    if version > DATA_VERSION:
        raise OSError(errno.EPROTONOSUPPORT, (
            f"data directory {directory} has format version {version}; this MDS reads "
            f"versions 1..{DATA_VERSION}: run the AegisFS that wrote it, or a newer one"),
            str(path))
    return version


def write_format(directory: Path) -> None:
    """FORMAT = the current version, durably (tmp, fsync, rename, fsync directory)."""
    tmp = directory / f"{FORMAT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": DATA_FORMAT, "version": DATA_VERSION}, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, directory / FORMAT_FILE)
    fsync_dir(directory)


class StaleEpoch(OSError):
    """An epoch lower than one this log already holds: a deposed leader's, or etcd reset."""

    def __init__(self, epoch: int, known: int, where: str) -> None:
        super().__init__(errno.ESTALE, f"epoch {epoch} is lower than epoch {known} already "
                                       f"in the log of {where}")
        self.epoch, self.known = epoch, known


class RecoveryError(OSError):
    """The data directory cannot be recovered without losing acknowledged records."""

    def __init__(self, path: os.PathLike | str, message: str) -> None:
        super().__init__(errno.EIO, message, str(path))


class MetaStore:
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

    # ------------------------------------------------------------------ recovery

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

    # ------------------------------------------------------------------ checkpoints

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
