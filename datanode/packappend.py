"""The write path of the pack log: records appended to the active pack (puts, tombstones),
one write per batch, made durable by the caller's wait on the ticket.

A part of ``datanode.packs.PackLog`` (a mixin: its methods run on the log and use its
index, counters, packs and group commit); the API and the rules (a same-content put is a
no-op, a failed write is cut off again, nothing acknowledged before the sync) are in that
module's docstring.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING, Sequence

from datanode.blocks import BlockCorrupt, cannot_store, different_content
from datanode.fileio import write_all
from datanode.groupcommit import Ticket, later
from datanode.packformat import HEADER_SIZE, KIND_PUT, KIND_TOMB, header
from datanode.packread import record_end

if TYPE_CHECKING:
    import threading

    from datanode.groupcommit import GroupCommit
    from datanode.packs import Entry, Pack

log = logging.getLogger(__name__)


class PackAppends:
    """Appends of puts and tombstones, mixed into PackLog."""

    if TYPE_CHECKING:    # what this part uses of the PackLog
        pack_size: int
        _lock: threading.Lock
        _commit: GroupCommit
        _index: dict[bytes, Entry]
        _packs: dict[int, Pack]
        _active: Pack | None
        _live_bytes: int
        _disk_bytes: int

        def _apply(self, pack: Pack, off: int, kind: int, bid: bytes, size: int, crc: int,
                   ref: int) -> None: ...
        def _unlive(self, entry: Entry) -> None: ...
        def _create_pack_locked(self) -> Pack: ...
        def _seal_locked(self) -> None: ...
        def wait(self, ticket: Ticket) -> None: ...
        def check(self, bid: bytes) -> tuple[int, int] | None: ...

    # ---- appending (caller holds self._lock) ------------------------------------------------

    def _append_locked(self, recs: Sequence[tuple[bytes, Sequence[memoryview], int]]
                       ) -> tuple[list[tuple[Pack, int]], OSError | None]:
        """Write records (header, data views, total bytes) at the end of the log.

        Returns where each record of the written prefix went, and the error that stopped
        the rest (None if all were written). A failed write is cut off again (ftruncate).
        """
        placed: list[tuple[Pack, int]] = []
        if not recs:  # nothing to write: a broken log does not matter
            return placed, None
        i = 0
        try:
            self._commit.check()
            while i < len(recs):
                pack = self._active
                if pack is not None and pack.size and pack.size + recs[i][2] > self.pack_size:
                    self._seal_locked()
                    pack = None
                if pack is None:
                    pack = self._create_pack_locked()
                j, total, iov = i, 0, []
                room = self.pack_size - pack.size
                while j < len(recs) and (j == i or total + recs[j][2] <= room):
                    head, views, n = recs[j]
                    iov.append(memoryview(head))
                    iov.extend(views)
                    total += n
                    j += 1
                try:
                    write_all(pack.fd, iov, pack.size)
                except OSError as exc:
                    try:
                        os.ftruncate(pack.fd, pack.size)
                    except OSError as texc:
                        self._commit.fail(texc, f"ftruncate of {pack.path} after a failed write")
                    if exc.errno == errno.EIO:
                        self._commit.fail(exc, f"write to {pack.path}")
                    raise
                off = pack.size
                for k in range(i, j):
                    placed.append((pack, off))
                    off += recs[k][2]
                pack.size += total
                self._disk_bytes += total
                i = j
        except OSError as exc:
            return placed, exc
        return placed, None

    # ---- writes -------------------------------------------------------------------------

    def append_puts(self, items: Sequence[tuple[bytes, Sequence[memoryview], int, int]]
                    ) -> tuple[list[OSError | None], Ticket]:
        """Append put records for (id, data views, size, crc) items; not yet durable.

        Per item: None (appended, or the same block was already here) or an OSError. Pass
        the ticket to wait() before acknowledging anything.
        """
        # A stored copy with the same size and CRC is verified (outside the lock); one that
        # fails is replaced by the new record rather than kept as "already there".
        suspect: dict[bytes, int] = {}
        for bid, _, size, crc in items:
            entry = self._index.get(bid)
            if entry is not None and (entry[1], entry[2]) == (size, crc):
                try:
                    self.check(bid)
                except BlockCorrupt as exc:
                    log.warning("replacing corrupt copy on put: %s", exc)
                    suspect[bid] = entry[0]
        results: list[OSError | None] = [None] * len(items)
        recs: list[tuple[bytes, Sequence[memoryview], int]] = []
        who: list[int] = []
        batch: dict[bytes, tuple[int, int, int]] = {}  # id -> (size, crc, item) put by this call
        repeats: list[tuple[int, int]] = []  # (item, earlier item of the same id in this call)
        ticket: Ticket = None
        with self._lock:
            for i, (bid, views, size, crc) in enumerate(items):
                if bid in batch:
                    have = batch[bid]
                    if have[:2] == (size, crc):
                        repeats.append((i, have[2]))
                    else:
                        results[i] = different_content(bid, have[0], have[1], size, crc)
                    continue
                entry = self._index.get(bid)
                if entry is not None and entry[0] != suspect.get(bid):
                    if (entry[1], entry[2]) == (size, crc):
                        ticket = later(ticket, record_end(entry))
                    else:
                        results[i] = different_content(bid, entry[1], entry[2], size, crc)
                    continue
                recs.append((header(KIND_PUT, bid, size, crc, 0), views,
                             HEADER_SIZE + size))
                who.append(i)
                batch[bid] = (size, crc, i)
            placed, err = self._append_locked(recs)
            for i, (pack, off) in zip(who, placed):
                bid, _, size, crc = items[i]
                self._apply(pack, off, KIND_PUT, bid, size, crc, 0)
                ticket = later(ticket, (pack.seq, off + HEADER_SIZE + size))
        if err is not None:
            for i in who[len(placed):]:
                results[i] = cannot_store(items[i][0], err)
        for i, first in repeats:
            results[i] = results[first]
        return results, ticket

    def put_many(self, items: Sequence[tuple[bytes, Sequence[memoryview], int, int]]
                 ) -> list[OSError | None]:
        """append_puts + wait: per-item None (stored, durable) or OSError."""
        try:
            results, ticket = self.append_puts(items)
        except OSError as exc:
            return [cannot_store(bid, exc) for bid, *_ in items]
        try:
            self.wait(ticket)
        except OSError as exc:
            results = [r if r is not None else cannot_store(items[i][0], exc)
                       for i, r in enumerate(results)]
        return results

    def delete_many(self, ids: Sequence[bytes], expect: Sequence[int | None] | None = None
                    ) -> list[bool]:
        """Tombstone each id that is here (and, if expect[i] is given, still at that loc);
        durable on return, one sync for all. Raises OSError if the log cannot write."""
        out = [False] * len(ids)
        recs: list[tuple[bytes, Sequence[memoryview], int]] = []
        who: list[tuple[int, bytes, Entry]] = []
        ticket: Ticket = None
        with self._lock:
            for i, bid in enumerate(ids):
                entry = self._index.get(bid)
                if entry is None or (expect is not None and expect[i] is not None
                                     and entry[0] != expect[i]):
                    continue
                recs.append((header(KIND_TOMB, bid, 0, 0, entry[0]), (),
                             HEADER_SIZE))
                who.append((i, bid, entry))
                # a second occurrence of the id in ids finds no entry: one tombstone
                del self._index[bid]
                self._unlive(entry)
            placed, err = self._append_locked(recs)
            for (i, bid, entry), (pack, off) in zip(who, placed):
                self._apply(pack, off, KIND_TOMB, bid, 0, 0, entry[0])
                ticket = later(ticket, (pack.seq, off + HEADER_SIZE))
                out[i] = True
            for i, bid, entry in who[len(placed):]:  # not written: the block stays
                self._index[bid] = entry
                pack = self._packs[entry[0] >> 32]
                pack.live += HEADER_SIZE + entry[1]
                pack.live_records += 1
                self._live_bytes += entry[1]
        try:
            self.wait(ticket)
        finally:
            if err is not None:
                raise err
        return out
