"""Pack log of a DataNode: small blocks appended to shared pack files, made durable by group commit.

One file per block costs a file fsync, a rename and a directory fsync per block (~1,000
durable blocks/s on our disks). Here small blocks are appended as records to one *active*
pack file and many writers share each fdatasync (datanode/groupcommit.py), like the
volumes of Haystack or SeaweedFS. Owns the pack files, the in-memory index and the append,
tombstone and read paths; the record format is datanode/packformat.py, compaction
datanode/compaction.py. Pure file I/O, no sockets; thread-safe.

API (BlockStore is the only intended caller; ids are validated 16-byte bytes)
------------------------------------------------------------------------------
PackLog(directory, *, pack_size=64 MiB, fsync=True, drop_cache=True)
  put_many(items) -> list[OSError | None]     items: (id, buffers, size, crc); durable on return
  append_puts(items) -> (results, ticket)      the append half of put_many; wait(ticket) is the
  wait(ticket)                                 sync half (so a caller can hold locks around only
                                               the append)
  get(id, offset=0, length=None) -> memoryview | None   verified; None if not here
  stat(id) -> (size, crc) | None               from the in-memory index
  check(id) -> (size, crc) | None              reads and verifies the data
  read_record(id) -> (loc, bytes) | None       raw header + data, unverified (quarantine)
  locate(id) -> (loc, size, crc) | None;  id in log;  ids() -> list[bytes] (snapshot)
  delete_many(ids, expect=None) -> list[bool]  tombstones, one sync; expect[i] = loc that must
                                               still be current (None: any)
  compact(min_garbage=0.5) -> CompactStats     rewrite sealed packs that are mostly dead
  stats() -> PackStats;  close()
A put of an id already here with the same size and CRC is a no-op (a stored copy that fails
verification is replaced); with other content the item fails with FileExistsError.

Behaviour worth knowing:
- A writer appends its records under the append lock (one pwritev for a batch), then waits
  until the synced position passes its last record; nothing is returned before it is
  durable, and get() of a record not yet synced waits for (or leads) the sync. A failed
  fdatasync (or write EIO) breaks the log until it is reopened (see groupcommit.py).
- The active pack is sealed when the next batch would take it past pack_size: it is
  fdatasynced, the next pack is created and the directory fsynced before anything in it is
  acknowledged.
- Open: packs are scanned in seq order reading headers only; in the LAST pack the data CRCs
  are checked too (only it can hold appended but unsynced records). An invalid header or
  record makes the scan look forward for the next valid header (magic, header CRC, plausible
  size) and go on; the damaged span is logged (its blocks are missing: the cluster
  re-replicates them). If nothing valid follows in the last pack it is a torn tail and the
  file is truncated there. Then the last pack is fdatasynced, so all it holds is durable.
- Reads check the data CRC of the whole record (a range read reads the small record whole);
  a mismatch or an EIO raises BlockCorrupt. Data is never returned unverified. Reads pin the
  pack they read (refcount), so a pack's fd is closed only when unused (compaction may
  remove it meanwhile). At most 64 idle sealed packs keep an fd.
- Memory: the index is a dict id -> (loc, size, crc) tuple, about 280 bytes per block
  (~280 MB for a million blocks). Open time is a sequential read of the packs.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import crc32c

from datanode import compaction
from datanode.blocks import (BlockCorrupt, CompactStats, PackStats, cannot_store,
                             different_content)
from datanode.fileio import open_dir, pread_into, write_all
from datanode.groupcommit import GroupCommit, Ticket, later
from datanode.packformat import (HEADER_SIZE, KIND_PUT, KIND_TOMB, Record, Scanner, header,
                                 list_packs, pack_name, pread)

log = logging.getLogger(__name__)

MAX_PACK_SIZE = 1 << 31    # offsets (< pack_size + one record) must fit in 32 bits
DEFAULT_PACK_SIZE = 64 * 1024 * 1024
_FD_CACHE = 64

Entry = tuple[int, int, int]        # (loc, size, crc)

class Pack:
    """One pack file and its counters (compaction reads these too)."""

    __slots__ = ("seq", "path", "fd", "refs", "size", "live", "live_records", "tombs",
                 "removed", "dropped")

    def __init__(self, seq: int, path: str, fd: int, size: int) -> None:
        self.seq, self.path, self.fd, self.size = seq, path, fd, size
        self.refs = 0              # readers/syncers using fd right now
        self.live = 0              # bytes that must be kept: live puts, needed tombstones
        self.live_records = 0      # live puts (index entries pointing here)
        self.tombs: dict[int, int] = {}  # target pack seq -> bytes of tombstones pointing there
        self.removed = False
        self.dropped = 0           # page cache dropped up to here (drop_cache)


class PackLog:
    """Small blocks in append-only pack files; see the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], *, pack_size: int = DEFAULT_PACK_SIZE,
                 fsync: bool = True, drop_cache: bool = True) -> None:
        if not 0 < pack_size <= MAX_PACK_SIZE:
            raise ValueError(f"pack_size must be in 1..{MAX_PACK_SIZE}, got {pack_size}")
        self.dir = Path(directory)
        self.pack_size = pack_size
        self._fsync = fsync
        self._drop_cache = drop_cache and fsync and hasattr(os, "posix_fadvise")
        self._lock = threading.Lock()            # index, packs, appends
        self.compact_lock = threading.Lock()     # one compaction at a time
        self._commit = GroupCommit(str(self.dir), self._sync_active, enabled=fsync)
        self._index: dict[bytes, Entry] = {}
        self._packs: dict[int, Pack] = {}
        self._idle: OrderedDict[int, Pack] = OrderedDict()  # sealed, unused, fd open
        self._active: Pack | None = None
        self._next_seq = 1
        self._live_bytes = 0
        self._disk_bytes = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dir_fd = open_dir(self.dir)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # ---- open, close ------------------------------------------------------------------

    def _load(self) -> None:
        found = list_packs(self.dir)
        for i, (seq, path) in enumerate(found):
            last = i == len(found) - 1
            fd = os.open(path, (os.O_RDWR if last else os.O_RDONLY) | os.O_CLOEXEC)
            pack = Pack(seq, path, fd, os.fstat(fd).st_size)
            self._packs[seq] = pack
            self._disk_bytes += pack.size
            scan = Scanner(fd, path, seq, pack.size, with_data=False, verify=last)
            try:
                for rec in scan:
                    self._apply(pack, rec.off, rec.kind, rec.rid, rec.size, rec.crc,
                                rec.ref)
            except OSError as exc:  # a failing disk: keep what was read, never truncate
                log.error("pack %s: read error while scanning, the rest of it is skipped: %s",
                          path, exc)
                scan.tail_garbage = None
                last = False  # do not append to it either
            if scan.tail_garbage is not None:
                cut = scan.tail_garbage
                if last:
                    log.warning("pack %s: torn tail (crash during an append): truncating "
                                "%d bytes at offset %d", path, pack.size - cut, cut)
                    os.ftruncate(fd, cut)
                    if self._fsync:
                        os.fsync(fd)
                    self._disk_bytes -= pack.size - cut
                    pack.size = cut
                else:
                    log.error("pack %s: unreadable bytes from offset %d to its end (%d bytes)",
                              path, cut, pack.size - cut)
            if last and pack.size < self.pack_size:
                self._active = pack
            else:
                self._park_locked(pack)
        if found:
            self._next_seq = found[-1][0] + 1
            tail = self._packs[found[-1][0]]
            if self._fsync:
                if tail.fd >= 0:
                    os.fdatasync(tail.fd)  # whatever survived is durable from now on
                os.fsync(self._dir_fd)
            self._commit.advance((tail.seq, tail.size))
        log.info("pack log %s open: %d packs, %d blocks, %d bytes", self.dir, len(self._packs),
                 len(self._index), self._disk_bytes)

    def close(self) -> None:
        """Close every fd; the log is unusable after."""
        with self._lock:
            for pack in self._packs.values():
                if pack.fd >= 0:
                    os.close(pack.fd)
                    pack.fd = -1
            self._idle.clear()
            self._active = None
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1

    # ---- bookkeeping (caller holds self._lock, or is _load) -------------------------------

    def _apply(self, pack: Pack, off: int, kind: int, bid: bytes, size: int, crc: int,
               ref: int) -> None:
        """Apply one record to the index and counters: replay and live appends alike."""
        loc = pack.seq << 32 | off
        prev = self._index.get(bid)
        if kind == KIND_PUT:
            if prev is not None:
                self._unlive(prev)
            self._index[bid] = (loc, size, crc)
            pack.live += HEADER_SIZE + size
            pack.live_records += 1
            self._live_bytes += size
            return
        if prev is not None and prev[0] == ref:
            del self._index[bid]
            self._unlive(prev)
        target = ref >> 32
        if target in self._packs:  # the killed record is still on disk: this must be kept
            pack.live += HEADER_SIZE
            pack.tombs[target] = pack.tombs.get(target, 0) + HEADER_SIZE

    def _unlive(self, entry: Entry) -> None:
        pack = self._packs[entry[0] >> 32]
        pack.live -= HEADER_SIZE + entry[1]
        pack.live_records -= 1
        self._live_bytes -= entry[1]

    def _pin_locked(self, pack: Pack) -> None:
        if pack.fd < 0:
            pack.fd = os.open(pack.path, os.O_RDONLY | os.O_CLOEXEC)
        self._idle.pop(pack.seq, None)
        pack.refs += 1

    def unpin(self, pack: Pack) -> None:
        with self._lock:
            pack.refs -= 1
            self._park_locked(pack)

    def _park_locked(self, pack: Pack) -> None:
        """An unused pack: close its fd if removed, else keep it among the idle ones."""
        if pack.refs or pack is self._active or pack.fd < 0:
            return
        if pack.removed:
            os.close(pack.fd)
            pack.fd = -1
            return
        self._idle[pack.seq] = pack
        self._idle.move_to_end(pack.seq)
        while len(self._idle) > _FD_CACHE:
            _, old = self._idle.popitem(last=False)
            os.close(old.fd)
            old.fd = -1

    # ---- durability ---------------------------------------------------------------------

    def wait(self, ticket: Ticket) -> None:
        """Return once everything up to ticket is durable (group commit); OSError if not."""
        self._commit.wait(ticket)

    def _sync_active(self) -> Ticket:
        """The group commit's sync: one fdatasync of the active pack."""
        with self._lock:
            pack = self._active
            if pack is None:
                return None
            target = (pack.seq, pack.size)
            self._pin_locked(pack)
        try:
            try:
                os.fdatasync(pack.fd)
            except OSError as exc:
                self._commit.fail(exc, f"fdatasync of {pack.path}")
                return None
            if self._drop_cache and target[1] > pack.dropped:
                # Clean pages of acknowledged records are dead weight (see blockfiles.py).
                try:
                    os.posix_fadvise(pack.fd, pack.dropped, target[1] - pack.dropped,
                                     os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                pack.dropped = target[1]
        finally:
            self.unpin(pack)
        return target

    # ---- appending (caller holds self._lock) ------------------------------------------------

    def _create_pack_locked(self) -> Pack:
        seq = self._next_seq
        self._next_seq += 1
        path = os.path.join(self.dir, pack_name(seq))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        if self._fsync:
            try:
                os.fsync(self._dir_fd)  # the new name is durable before any record in it
            except OSError as exc:
                os.close(fd)
                raise self._commit.fail(exc, f"fsync of {self.dir} after creating {path}") \
                    from exc
        pack = Pack(seq, path, fd, 0)
        self._packs[seq] = pack
        self._active = pack
        return pack

    def _seal_locked(self) -> None:
        pack = self._active
        assert pack is not None
        if self._fsync:
            try:
                os.fdatasync(pack.fd)
            except OSError as exc:
                raise self._commit.fail(exc, f"fdatasync of {pack.path} while sealing it") \
                    from exc
            self._commit.advance((pack.seq, pack.size))
        self._active = None
        self._park_locked(pack)

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
                        ticket = later(ticket, _end(entry))
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

    # ---- reads --------------------------------------------------------------------------

    def locate(self, bid: bytes) -> Entry | None:
        return self._index.get(bid)

    def __contains__(self, bid: object) -> bool:
        return bid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def ids(self) -> list[bytes]:
        with self._lock:
            return list(self._index)

    def _pin_entry(self, bid: bytes) -> tuple[Entry, Pack] | None:
        with self._lock:
            entry = self._index.get(bid)
            if entry is None:
                return None
            pack = self._packs[entry[0] >> 32]
            self._pin_locked(pack)
            return entry, pack

    def _durable(self, entry: Entry) -> None:
        """Readers see only durable records: wait for (or lead) the sync of a fresh one."""
        self._commit.wait(_end(entry))

    def _read_verified(self, bid: bytes, entry: Entry, pack: Pack) -> memoryview:
        loc, size, crc = entry
        self._durable(entry)
        start = (loc & 0xFFFFFFFF) + HEADER_SIZE
        buf = memoryview(bytearray(size))
        pread_into(bid, pack.fd, buf, start, f" in {pack.path}")
        if crc32c.crc32c(buf) != crc:
            raise BlockCorrupt(bid, f"data checksum mismatch ({pack.path} offset "
                               f"{start - HEADER_SIZE})")
        return buf

    def get(self, bid: bytes, offset: int = 0, length: int | None = None) -> memoryview | None:
        """Bytes [offset, offset+length) of a block, verified; None if it is not here."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            size = entry[1]
            if offset < 0 or offset > size or (length is not None and length < 0):
                raise OSError(errno.EINVAL, f"block {bid.hex()}: range offset={offset} "
                              f"length={length} outside a block of {size} bytes")
            end = size if length is None else min(size, offset + length)
            if end == offset and not (offset == 0 and end == size):
                return memoryview(b"")
            data = self._read_verified(bid, entry, pack)
        finally:
            self.unpin(pack)
        return data[offset:end].toreadonly()

    def get_chunks(self, bid: bytes) -> tuple[memoryview, int] | None:
        """The whole block, verified, and its CRC: a pack block is one chunk, so a range
        read of it carries all of it (it is small) and a one-entry chunk table."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            data = self._read_verified(bid, entry, pack)
        finally:
            self.unpin(pack)
        return data.toreadonly(), entry[2]

    def stat(self, bid: bytes) -> tuple[int, int] | None:
        entry = self._index.get(bid)
        return None if entry is None else (entry[1], entry[2])

    def check(self, bid: bytes) -> tuple[int, int] | None:
        """Read and verify the whole block: (size, crc), None if not here, or BlockCorrupt."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            self._read_verified(bid, entry, pack)
        finally:
            self.unpin(pack)
        return entry[1], entry[2]

    def read_record(self, bid: bytes) -> tuple[int, bytes] | None:
        """(loc, header + data as stored), unverified: for quarantine. None if not here."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            return entry[0], pread(pack.fd, HEADER_SIZE + entry[1], entry[0] & 0xFFFFFFFF)
        finally:
            self.unpin(pack)

    # ---- compaction's side (datanode/compaction.py decides and drives) -----------------

    def compact(self, min_garbage: float = 0.5) -> CompactStats:
        """Rewrite sealed packs whose dead bytes are >= min_garbage of their size."""
        return compaction.compact(self, min_garbage)

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

    # ---- accounting ---------------------------------------------------------------------

    def stats(self) -> PackStats:
        with self._lock:
            garbage = sum(p.size - p.live for p in self._packs.values())
            return PackStats(len(self._packs), len(self._index), self._live_bytes,
                             self._disk_bytes, garbage)

    def disk_bytes(self) -> int:
        return self._disk_bytes


def _end(entry: Entry) -> tuple[int, int]:
    loc, size, _ = entry
    return loc >> 32, (loc & 0xFFFFFFFF) + HEADER_SIZE + size

