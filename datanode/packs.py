"""Pack log of a DataNode: small blocks appended to shared pack files, made durable by group commit.

One file per block costs a file fsync, a rename and a directory fsync per block (~1,000
durable blocks/s on our disks). Here small blocks are appended as records to one *active*
pack file and many writers share each fdatasync (datanode/groupcommit.py), like the
volumes of Haystack or SeaweedFS. Owns the pack files (open, replay, create, seal, pins,
fds) and the in-memory index; PackLog's append and tombstone path is datanode/packappend.py,
its read path datanode/packread.py, its side of compaction datanode/compaction.py (mixins);
the record format is datanode/packformat.py. Pure file I/O, no sockets; thread-safe.

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

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from datanode import compaction
from datanode.blocks import CompactStats, PackStats
from datanode.compaction import PackCompaction
from datanode.fileio import open_dir
from datanode.groupcommit import GroupCommit, Ticket
from datanode.packappend import PackAppends
from datanode.packformat import HEADER_SIZE, KIND_PUT, Scanner, list_packs, pack_name
from datanode.packread import PackReads

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


class PackLog(PackAppends, PackReads, PackCompaction):
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

    # ---- pack files: create, seal (caller holds self._lock) ---------------------------------

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

    # ---- compaction (datanode/compaction.py decides and drives) -----------------------

    def compact(self, min_garbage: float = 0.5) -> CompactStats:
        """Rewrite sealed packs whose dead bytes are >= min_garbage of their size."""
        return compaction.compact(self, min_garbage)

    # ---- accounting ---------------------------------------------------------------------

    def stats(self) -> PackStats:
        with self._lock:
            garbage = sum(p.size - p.live for p in self._packs.values())
            return PackStats(len(self._packs), len(self._index), self._live_bytes,
                             self._disk_bytes, garbage)

    def disk_bytes(self) -> int:
        return self._disk_bytes

