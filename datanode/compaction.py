"""Compaction of the pack log: which sealed packs are worth rewriting, and the rewrite of
one (live records and still-needed tombstones copied to the active pack, then the file goes).

The log's state changes stay in PackLog (move, retire); this module decides and drives.
Meant for a background thread; cheap when there is nothing to do (one pass over counters).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import crc32c

from datanode.blocks import CompactStats
from datanode.groupcommit import Ticket, later
from datanode.packformat import HEADER_SIZE, KIND_PUT, Record, Scanner

if TYPE_CHECKING:
    from datanode.packs import Pack, PackLog

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
                if crc32c.crc32c(rec.data) != rec.crc:
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
