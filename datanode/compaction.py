"""Compaction of the pack log: which sealed packs are worth rewriting, and the rewrite of
one (live records and still-needed tombstones copied to the active pack, then the file goes).

`compact` decides and drives; the log's state changes it needs (move, retire, ...) are
PackLog methods, written here as `PackCompaction`, a part of ``datanode.packs.PackLog`` (a
mixin: its methods run on the log, under its lock). Meant for a background thread; cheap
when there is nothing to do (one pass over counters).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Sequence

from broker.crc import crc32c
from datanode.blocks import CompactStats
from datanode.groupcommit import Ticket, later
from datanode.packformat import HEADER_SIZE, KIND_PUT, KIND_TOMB, Record, Scanner, header

if TYPE_CHECKING:
    import threading
    from collections import OrderedDict

    from datanode.groupcommit import GroupCommit
    from datanode.packs import Entry, Pack, PackLog

log = logging.getLogger(__name__)

_COPY_BATCH = 4 << 20   # bytes of records copied per append


def compact(packs: PackLog, min_garbage: float = 0.5) -> CompactStats:
    """Rewrite each sealed pack whose dead bytes are >= min_garbage of its size.

    Live records are copied to the active pack (the index is re-checked under the lock, so
    a racing delete is never undone), tombstones whose target pack still exists are carried
    forward, the copies are synced, then the old pack is unlinked and the directory fsynced.
    """
    if not 0 <= min_garbage <= 1:
        raise ValueError(f"min_garbage must be in 0..1, got {min_garbage}")
    with packs.compact_lock:
        victims = [p for p in packs.sealed_packs()
                   if p.size - p.live > 0 and p.size - p.live >= min_garbage * p.size]
        stats = CompactStats()
        for pack in victims:
            try:
                copied = _rewrite(packs, pack)
            except OSError as exc:
                if packs.broken:
                    raise
                # e.g. EIO reading it: the others are still worth doing
                log.error("compaction of %s failed, kept: %s", pack.path, exc)
                continue
            if copied is not None:
                stats = CompactStats(stats.packs_removed + 1, stats.bytes_freed + pack.size,
                                     stats.bytes_copied + copied)
        if stats.packs_removed:
            log.info("compaction: %d packs removed, %d bytes freed, %d bytes copied", *stats)
        return stats


def _rewrite(packs: PackLog, pack: Pack) -> int | None:
    """Move what is live out of pack, then remove it; bytes copied, None if kept."""
    packs.pin(pack)
    try:
        ticket: Ticket = None
        copied = 0
        batch: list[Record] = []
        nbytes = 0
        scan = Scanner(pack.fd, pack.path, pack.seq, pack.size, with_data=True, verify=False)
        for rec in scan:
            if rec.kind == KIND_PUT:
                assert rec.data is not None   # with_data=True: every put comes with its data
                if not packs.is_current(rec.rid, pack.seq << 32 | rec.off):
                    continue
                if crc32c(rec.data) != rec.crc:
                    log.warning("compaction: block %s in %s fails its checksum; moved as "
                                "is (reads and the scrubber report it)", rec.rid.hex(),
                                pack.path)
            elif (rec.ref >> 32) == pack.seq or not packs.has_pack(rec.ref >> 32):
                continue
            batch.append(rec)
            nbytes += HEADER_SIZE + rec.size
            if nbytes >= _COPY_BATCH:
                t, n = packs.move(pack, batch)
                ticket, copied = later(ticket, t), copied + n
                batch, nbytes = [], 0
        if batch:
            t, n = packs.move(pack, batch)
            ticket, copied = later(ticket, t), copied + n
        packs.wait(ticket)  # the copies are durable before the original goes
        if not packs.retire(pack):
            return None
    finally:
        packs.unpin(pack)  # closes the fd once the last reader is done
    packs.remove_file(pack)
    return copied


class PackCompaction:
    """PackLog's side of compaction (`compact` above decides and drives), mixed into
    PackLog."""

    if TYPE_CHECKING:    # what this part uses of the PackLog
        _fsync: bool
        _dir_fd: int
        _lock: threading.Lock
        _commit: GroupCommit
        _index: dict[bytes, Entry]
        _packs: dict[int, Pack]
        _idle: OrderedDict[int, Pack]
        _active: Pack | None
        _disk_bytes: int

        def _apply(self, pack: Pack, off: int, kind: int, bid: bytes, size: int, crc: int,
                   ref: int) -> None: ...
        def _pin_locked(self, pack: Pack) -> None: ...
        def _append_locked(self, recs: Sequence[tuple[bytes, Sequence[memoryview], int]]
                           ) -> tuple[list[tuple[Pack, int]], OSError | None]: ...
        def wait(self, ticket: Ticket) -> None: ...

    @property
    def broken(self) -> bool:
        return self._commit.broken

    def sealed_packs(self) -> list[Pack]:
        """The packs compaction may rewrite (all but the active one), in seq order."""
        with self._lock:
            self._commit.check()
            return sorted((p for p in self._packs.values() if p is not self._active),
                          key=lambda p: p.seq)

    def has_pack(self, seq: int) -> bool:
        return seq in self._packs

    def is_current(self, bid: bytes, loc: int) -> bool:
        """True if loc holds the id's live record (unlocked: a hint, move() re-checks)."""
        entry = self._index.get(bid)
        return entry is not None and entry[0] == loc

    def pin(self, pack: Pack) -> None:
        """Keep pack's fd open until unpin(), even if the pack is removed meanwhile."""
        with self._lock:
            self._pin_locked(pack)

    def move(self, pack: Pack, batch: list[Record]) -> tuple[Ticket, int]:
        """Append copies of pack's records that still matter: puts still current (checked
        under the lock, so a racing delete is never undone) and tombstones whose target
        pack still exists. (ticket of the copies, bytes copied); not yet durable."""
        recs: list[tuple[bytes, Sequence[memoryview], int]] = []
        who: list[tuple[Record, bytes]] = []
        ticket: Ticket = None
        with self._lock:
            for rec in batch:
                bid = rec.rid
                if rec.kind == KIND_PUT:
                    entry = self._index.get(bid)
                    if entry is None or entry[0] != (pack.seq << 32 | rec.off):
                        continue  # deleted or replaced meanwhile: do not bring it back
                    assert rec.data is not None   # compaction scans puts with their data
                    recs.append((header(KIND_PUT, rec.rid, rec.size, rec.crc, 0),
                                 (rec.data,), HEADER_SIZE + rec.size))
                elif (rec.ref >> 32) in self._packs:
                    recs.append((header(KIND_TOMB, rec.rid, 0, 0, rec.ref), (), HEADER_SIZE))
                else:
                    continue
                who.append((rec, bid))
            placed, err = self._append_locked(recs)
            copied = 0
            for (rec, bid), (dest, off) in zip(who, placed):
                self._apply(dest, off, rec.kind, bid, rec.size, rec.crc, rec.ref)
                ticket = later(ticket, (dest.seq, off + HEADER_SIZE + rec.size))
                copied += HEADER_SIZE + rec.size
        if err is not None:
            self.wait(ticket)
            raise err
        return ticket, copied

    def retire(self, pack: Pack) -> bool:
        """Drop a pack whose live records have all been moved (False, kept, if some have
        not); its fd closes at the last unpin. The file is left to remove_file()."""
        with self._lock:
            if pack.live_records:
                log.error("compaction: %s still holds %d live blocks (unreadable "
                          "records?); kept", pack.path, pack.live_records)
                return False
            del self._packs[pack.seq]
            pack.removed = True
            self._idle.pop(pack.seq, None)
            self._disk_bytes -= pack.size
            for other in self._packs.values():  # tombstones into it are dead now
                other.live -= other.tombs.pop(pack.seq, 0)
            return True

    def remove_file(self, pack: Pack) -> None:
        """Unlink a retired pack durably (best effort)."""
        try:
            os.unlink(pack.path)
            if self._fsync:
                os.fsync(self._dir_fd)
        except OSError as exc:  # harmless: a resurrected pack replays as all garbage
            log.warning("compaction: could not remove %s durably: %s", pack.path, exc)
