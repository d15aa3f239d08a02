"""Pack log of a DataNode: small blocks appended to shared pack files, made durable by group commit.

One file per block costs a file fsync, a rename and a directory fsync per block (~1,000
durable blocks/s on our disks). Here small blocks are appended as records to one *active*
pack file and many writers share each fdatasync (leader/follower group commit), like the
volumes of Haystack or SeaweedFS. Pure file I/O, no sockets; thread-safe. BlockStore
(datanode/store.py) routes small blocks here and keeps big ones in their own files.

API (BlockStore is the only intended caller; ids are canonical 32-hex strings)
-------------------------------------------------------------------------------
PackLog(directory, *, pack_size=64 MiB, fsync=True, drop_cache=True)
  put_many(items) -> list[OSError | None]     items: (id, buffers, size, crc); durable on return
  append_puts(items) -> (results, ticket)      the append half of put_many; wait(ticket) is the
  wait(ticket)                                 sync half (so a caller can hold locks around only
                                               the append)
  get(id, offset=0, length=None) -> memoryview | None   verified; None if not here
  stat(id) -> (size, crc) | None               from the in-memory index
  check(id) -> (size, crc) | None              reads and verifies the data
  read_record(id) -> (loc, bytes) | None       raw header + data, unverified (quarantine)
  locate(id) -> (loc, size, crc) | None;  id in log;  ids() -> list[str] (snapshot)
  delete_many(ids, expect=None) -> list[bool]  tombstones, one sync; expect[i] = loc that must
                                               still be current (None: any)
  compact(min_garbage=0.5) -> CompactStats     rewrite sealed packs that are mostly dead
  stats() -> PackStats;  close()
A put of an id already here with the same size and CRC is a no-op (a stored copy that fails
verification is replaced); with other content the item fails with FileExistsError.

On-disk format, version 1 (little-endian): files directory/pack-<seq, 8 digits>.pack, each a
sequence of records. Record = header (44 bytes) | data (size bytes; none for tombstones):
  magic "AGPK" | u8 kind (1 put, 2 tombstone) | u8 version (1) | u16 reserved (0) |
  16-byte block id | u32 size | u32 CRC32C(data) | u64 ref | u32 CRC32C(the 40 bytes before)
A location ("loc") is seq << 32 | offset of a record's header in its pack. Puts have ref 0,
tombstones have size 0, CRC 0 and ref = loc of the put they kill. Replay in (seq, offset)
order: a put sets id -> its loc (the last put wins); a tombstone removes the id only if the
id's current loc is exactly its ref, so put X, delete X, put X again replays right even after
compaction has moved records around.

Behaviour worth knowing:
- Group commit: a writer appends its records under the append lock (one pwritev for a batch),
  then waits until the synced position passes its last record; if no sync is running it
  becomes the leader, fdatasyncs the active pack up to everything appended so far and wakes
  the others. put_many of N blocks = one write + one sync. Nothing is returned before it is
  durable, and get() of a record not yet synced waits for (or leads) the sync.
- A failed fdatasync (or write EIO) fails every waiter it covered and marks the log broken:
  every later write raises OSError with the same errno (fsyncgate: the kernel may have
  dropped the dirty pages, so retrying would report success for lost data). Reopen (restart
  the DataNode) to recover from what is on disk.
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
  a mismatch or an EIO raises BlockCorrupt. Data is never returned unverified.
- Compaction rewrites each sealed pack whose dead bytes >= min_garbage of its size: live
  records are copied to the active pack (the index is re-checked under the lock, so a racing
  delete is never undone), tombstones whose target pack still exists are carried forward, the
  copies are synced, then the old pack is unlinked and the directory fsynced. Reads pin the
  pack they read (refcount), so a pack's fd is closed only when unused. Cheap when there is
  nothing to do (one pass over per-pack counters). At most 64 idle sealed packs keep an fd.
- Memory: the index is a dict id -> (loc, size, crc) tuple, about 280 bytes per block
  (~280 MB for a million blocks). Open time is a sequential read of the packs.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import crc32c

from datanode.fileio import write_all

log = logging.getLogger(__name__)

MAGIC = b"AGPK"
VERSION = 1
KIND_PUT = 1
KIND_TOMB = 2
_HEAD = struct.Struct("<4sBBH16sIIQ")  # the header without its own CRC
HEADER_SIZE = _HEAD.size + 4
_U32 = struct.Struct("<I")
MAX_RECORD = 1 << 30       # plausibility bound on a record's size
MAX_PACK_SIZE = 1 << 31    # offsets (< pack_size + one record) must fit in 32 bits
DEFAULT_PACK_SIZE = 64 * 1024 * 1024
_PACK_NAME = re.compile(r"pack-(\d{8,10})\.pack")
_SCAN_BUF = 1 << 20
_FD_CACHE = 64
_COPY_BATCH = 4 << 20

Entry = tuple[int, int, int]        # (loc, size, crc)
Ticket = tuple[int, int] | None     # (seq, end offset) that must be synced


class BlockCorrupt(OSError):
    """A stored block failed verification or could not be read back (errno EIO)."""

    def __init__(self, block_id: str, reason: str) -> None:
        super().__init__(errno.EIO, f"block {block_id} is corrupt: {reason}")
        self.block_id = block_id
        self.reason = reason


class PackStats(NamedTuple):
    packs: int
    blocks: int          # live blocks
    data_bytes: int      # their data bytes
    disk_bytes: int      # bytes of all pack files
    garbage_bytes: int   # bytes compaction could reclaim


class CompactStats(NamedTuple):
    packs_removed: int = 0
    bytes_freed: int = 0     # size of the removed packs
    bytes_copied: int = 0    # live records rewritten into the active pack
    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_freed - self.bytes_copied


def _header(kind: int, raw_id: bytes, size: int, crc: int, ref: int) -> bytes:
    head = _HEAD.pack(MAGIC, kind, VERSION, 0, raw_id, size, crc, ref)
    return head + _U32.pack(crc32c.crc32c(head))


def _max(a: Ticket, b: Ticket) -> Ticket:
    if a is None:
        return b
    return a if b is None or a >= b else b


def _parse(raw: memoryview | bytes, off: int, seq: int, file_size: int
           ) -> tuple[int, bytes, int, int, int] | None:
    """(kind, raw id, size, crc, ref) if raw holds a valid, plausible header at off."""
    if len(raw) < HEADER_SIZE:
        return None
    magic, kind, version, reserved, rid, size, crc, ref = _HEAD.unpack_from(raw)
    if magic != MAGIC or crc32c.crc32c(raw[:_HEAD.size]) != _U32.unpack_from(raw, _HEAD.size)[0]:
        return None
    if version != VERSION or reserved != 0:
        return None
    if kind == KIND_PUT:
        if ref != 0 or size > MAX_RECORD or off + HEADER_SIZE + size > file_size:
            return None
    elif kind == KIND_TOMB:
        # the killed put comes earlier in the log
        if size != 0 or crc != 0 or ref == 0 or ref >= (seq << 32 | off):
            return None
    else:
        return None
    return kind, rid, size, crc, ref


class _Rec(NamedTuple):
    off: int
    kind: int
    rid: bytes
    size: int
    crc: int
    ref: int
    data: memoryview | None


def _pread(fd: int, n: int, off: int) -> bytes:
    """Up to n bytes at off (fewer only at the end of the file)."""
    parts, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, off + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Scanner:
    """Iterates the valid records of one pack file, stepping over damage.

    with_data: also read each put's data (rec.data); verify: check data CRCs too, treating
    a mismatch as damage. After iteration, tail_garbage is the offset from which nothing
    valid follows (None if the file ends on a record boundary).
    """

    def __init__(self, fd: int, name: str, seq: int, file_size: int, *,
                 with_data: bool, verify: bool) -> None:
        self.fd, self.name, self.seq, self.file_size = fd, name, seq, file_size
        self.with_data, self.verify = with_data, verify
        self.tail_garbage: int | None = None
        self.damaged = 0  # damaged spans followed by valid records
        self._buf = b""
        self._buf_off = 0
        self._sparse = False  # last record was big: read just the next header, not 1 MiB

    def _read(self, off: int, n: int) -> memoryview:
        lo = off - self._buf_off
        if 0 <= lo and lo + n <= len(self._buf):
            return memoryview(self._buf)[lo:lo + n]
        if n >= _SCAN_BUF or (self._sparse and n == HEADER_SIZE):
            return memoryview(_pread(self.fd, n, off))
        self._buf = _pread(self.fd, _SCAN_BUF, off)  # a new object: handed-out views stay valid
        self._buf_off = off
        return memoryview(self._buf)[:n]

    def _header_at(self, off: int) -> tuple[int, bytes, int, int, int] | None:
        return _parse(self._read(off, HEADER_SIZE), off, self.seq, self.file_size)

    def _resync(self, start: int) -> int | None:
        pos = start
        while pos + HEADER_SIZE <= self.file_size:
            chunk = _pread(self.fd, min(_SCAN_BUF, self.file_size - pos), pos)
            i = chunk.find(MAGIC)
            while i >= 0:
                if self._header_at(pos + i) is not None:
                    return pos + i
                i = chunk.find(MAGIC, i + 1)
            if len(chunk) < _SCAN_BUF:
                break
            pos += len(chunk) - (len(MAGIC) - 1)  # a magic across the chunk edge is found next
        return None

    def __iter__(self) -> Iterator[_Rec]:
        pos, bad = 0, None
        while pos < self.file_size:
            head = self._header_at(pos)
            if head is None:
                if bad is None:
                    bad = pos
                nxt = self._resync(pos + 1)
                if nxt is None:
                    break
                pos = nxt
                continue
            kind, rid, size, crc, ref = head
            data = None
            if kind == KIND_PUT and (self.with_data or self.verify):
                data = self._read(pos + HEADER_SIZE, size)
                if self.verify and (len(data) != size or crc32c.crc32c(data) != crc):
                    if bad is None:
                        bad = pos
                    pos += HEADER_SIZE + size  # the header is sound: trust its size
                    continue
            if bad is not None:
                log.error("pack %s: damaged bytes %d..%d skipped (blocks stored there are "
                          "lost here)", self.name, bad, pos)
                self.damaged += 1
                bad = None
            self._sparse = size >= 64 * 1024
            yield _Rec(pos, kind, rid, size, crc, ref, data if self.with_data else None)
            pos += HEADER_SIZE + size
        if bad is not None:
            self.tail_garbage = bad


class _Pack:
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
        self._cond = threading.Condition(threading.Lock())  # synced, syncing, broken
        self._compact_lock = threading.Lock()
        self._index: dict[str, Entry] = {}
        self._packs: dict[int, _Pack] = {}
        self._idle: OrderedDict[int, _Pack] = OrderedDict()  # sealed, unused, fd open
        self._active: _Pack | None = None
        self._next_seq = 1
        self._synced: tuple[int, int] = (0, 0)
        self._syncing = False
        self._broken: OSError | None = None
        self._live_bytes = 0
        self._disk_bytes = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # ---- open, close ------------------------------------------------------------------

    def _load(self) -> None:
        found: list[tuple[int, str]] = []
        with os.scandir(self.dir) as entries:
            for entry in entries:
                m = _PACK_NAME.fullmatch(entry.name)
                if m and entry.is_file(follow_symlinks=False):
                    found.append((int(m[1]), entry.path))
                else:
                    log.warning("ignoring unexpected entry %s", entry.path)
        found.sort()
        for i, (seq, path) in enumerate(found):
            last = i == len(found) - 1
            fd = os.open(path, (os.O_RDWR if last else os.O_RDONLY) | os.O_CLOEXEC)
            pack = _Pack(seq, path, fd, os.fstat(fd).st_size)
            self._packs[seq] = pack
            self._disk_bytes += pack.size
            scan = _Scanner(fd, path, seq, pack.size, with_data=False, verify=last)
            try:
                for rec in scan:
                    self._apply(pack, rec.off, rec.kind, rec.rid.hex(), rec.size, rec.crc,
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
            self._synced = (tail.seq, tail.size)
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

    def _apply(self, pack: _Pack, off: int, kind: int, bid: str, size: int, crc: int,
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

    def _pin_locked(self, pack: _Pack) -> None:
        if pack.fd < 0:
            pack.fd = os.open(pack.path, os.O_RDONLY | os.O_CLOEXEC)
        self._idle.pop(pack.seq, None)
        pack.refs += 1

    def _unpin(self, pack: _Pack) -> None:
        with self._lock:
            pack.refs -= 1
            self._park_locked(pack)

    def _park_locked(self, pack: _Pack) -> None:
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

    def _broken_error(self) -> OSError:
        b = self._broken
        assert b is not None
        return OSError(b.errno, b.strerror)

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise self._broken_error()

    def _set_broken_locked(self, exc: OSError, what: str) -> None:
        """Caller holds self._cond."""
        if self._broken is None:
            err = exc.errno or errno.EIO
            msg = (f"pack log {self.dir} is broken: {what} failed ({os.strerror(err)}); "
                   f"writes since the last good sync may be lost, so none are accepted "
                   f"until the store is reopened")
            log.error("%s", msg)
            self._broken = OSError(err, msg)
        self._cond.notify_all()

    def _set_broken(self, exc: OSError, what: str) -> None:
        with self._cond:
            self._set_broken_locked(exc, what)

    def wait(self, ticket: Ticket) -> None:
        """Return once everything up to ticket is durable (group commit); OSError if not."""
        if ticket is None or not self._fsync:
            return
        while True:
            with self._cond:
                while True:
                    if self._synced >= ticket:
                        return
                    if self._broken is not None:
                        raise self._broken_error()
                    if not self._syncing:
                        self._syncing = True
                        break
                    self._cond.wait()
            self._lead_sync()

    def _lead_sync(self) -> None:
        """One fdatasync of the active pack on behalf of every writer waiting for it."""
        err: OSError | None = None
        target = None
        pack = None
        try:
            with self._lock:
                pack = self._active
                if pack is not None:
                    target = (pack.seq, pack.size)
                    self._pin_locked(pack)
            if pack is not None:
                try:
                    os.fdatasync(pack.fd)
                except OSError as exc:
                    err = exc
                else:
                    if self._drop_cache and target[1] > pack.dropped:
                        # Clean pages of acknowledged records are dead weight (see store.py).
                        try:
                            os.posix_fadvise(pack.fd, pack.dropped, target[1] - pack.dropped,
                                             os.POSIX_FADV_DONTNEED)
                        except OSError:
                            pass
                        pack.dropped = target[1]
        finally:
            if pack is not None:
                self._unpin(pack)
            with self._cond:
                self._syncing = False
                if err is not None:
                    self._set_broken_locked(err, f"fdatasync of {pack.path if pack else '?'}")
                elif target is not None and target > self._synced:
                    self._synced = target
                self._cond.notify_all()

    # ---- appending (caller holds self._lock) ------------------------------------------------

    def _create_pack_locked(self) -> _Pack:
        seq = self._next_seq
        self._next_seq += 1
        path = os.path.join(self.dir, f"pack-{seq:08d}.pack")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        if self._fsync:
            try:
                os.fsync(self._dir_fd)  # the new name is durable before any record in it
            except OSError as exc:
                os.close(fd)
                self._set_broken(exc, f"fsync of {self.dir} after creating {path}")
                raise self._broken_error() from exc
        pack = _Pack(seq, path, fd, 0)
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
                self._set_broken(exc, f"fdatasync of {pack.path} while sealing it")
                raise self._broken_error() from exc
            with self._cond:
                self._synced = max(self._synced, (pack.seq, pack.size))
                self._cond.notify_all()
        self._active = None
        self._park_locked(pack)

    def _append_locked(self, recs: Sequence[tuple[bytes, Sequence[memoryview], int]]
                       ) -> tuple[list[tuple[_Pack, int]], OSError | None]:
        """Write records (header, data views, total bytes) at the end of the log.

        Returns where each record of the written prefix went, and the error that stopped
        the rest (None if all were written). A failed write is cut off again (ftruncate).
        """
        placed: list[tuple[_Pack, int]] = []
        if not recs:  # nothing to write: a broken log does not matter
            return placed, None
        i = 0
        try:
            self._check_broken()
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
                        self._set_broken(texc, f"ftruncate of {pack.path} after a failed write")
                    if exc.errno == errno.EIO:
                        self._set_broken(exc, f"write to {pack.path}")
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

    def append_puts(self, items: Sequence[tuple[str, Sequence[memoryview], int, int]]
                    ) -> tuple[list[OSError | None], Ticket]:
        """Append put records for (id, data views, size, crc) items; not yet durable.

        Per item: None (appended, or the same block was already here) or an OSError. Pass
        the ticket to wait() before acknowledging anything.
        """
        # A stored copy with the same size and CRC is verified (outside the lock); one that
        # fails is replaced by the new record rather than kept as "already there".
        suspect: dict[str, int] = {}
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
        batch: dict[str, tuple[int, int, int]] = {}  # id -> (size, crc, item) put by this call
        later: list[tuple[int, int]] = []  # (item, earlier item of the same id in this call)
        ticket: Ticket = None
        with self._lock:
            for i, (bid, views, size, crc) in enumerate(items):
                if bid in batch:
                    have = batch[bid]
                    if have[:2] == (size, crc):
                        later.append((i, have[2]))
                    else:
                        results[i] = _exists(bid, have[0], have[1], size, crc)
                    continue
                entry = self._index.get(bid)
                if entry is not None and entry[0] != suspect.get(bid):
                    if (entry[1], entry[2]) == (size, crc):
                        ticket = _max(ticket, _end(entry))
                    else:
                        results[i] = _exists(bid, entry[1], entry[2], size, crc)
                    continue
                recs.append((_header(KIND_PUT, bytes.fromhex(bid), size, crc, 0), views,
                             HEADER_SIZE + size))
                who.append(i)
                batch[bid] = (size, crc, i)
            placed, err = self._append_locked(recs)
            for i, (pack, off) in zip(who, placed):
                bid, _, size, crc = items[i]
                self._apply(pack, off, KIND_PUT, bid, size, crc, 0)
                ticket = _max(ticket, (pack.seq, off + HEADER_SIZE + size))
        if err is not None:
            for i in who[len(placed):]:
                results[i] = OSError(err.errno, f"cannot store block {items[i][0]}: "
                                     f"{err.strerror or err}")
        for i, first in later:
            results[i] = results[first]
        return results, ticket

    def put_many(self, items: Sequence[tuple[str, Sequence[memoryview], int, int]]
                 ) -> list[OSError | None]:
        """append_puts + wait: per-item None (stored, durable) or OSError."""
        try:
            results, ticket = self.append_puts(items)
        except OSError as exc:
            return [OSError(exc.errno, f"cannot store block {bid}: {exc.strerror or exc}")
                    for bid, *_ in items]
        try:
            self.wait(ticket)
        except OSError as exc:
            results = [r if r is not None else
                       OSError(exc.errno, f"cannot store block {items[i][0]}: {exc.strerror}")
                       for i, r in enumerate(results)]
        return results

    def delete_many(self, ids: Sequence[str], expect: Sequence[int | None] | None = None
                    ) -> list[bool]:
        """Tombstone each id that is here (and, if expect[i] is given, still at that loc);
        durable on return, one sync for all. Raises OSError if the log cannot write."""
        out = [False] * len(ids)
        recs: list[tuple[bytes, Sequence[memoryview], int]] = []
        who: list[tuple[int, str, Entry]] = []
        ticket: Ticket = None
        with self._lock:
            for i, bid in enumerate(ids):
                entry = self._index.get(bid)
                if entry is None or (expect is not None and expect[i] is not None
                                     and entry[0] != expect[i]):
                    continue
                recs.append((_header(KIND_TOMB, bytes.fromhex(bid), 0, 0, entry[0]), (),
                             HEADER_SIZE))
                who.append((i, bid, entry))
                # a second occurrence of the id in ids finds no entry: one tombstone
                del self._index[bid]
                self._unlive(entry)
            placed, err = self._append_locked(recs)
            for (i, bid, entry), (pack, off) in zip(who, placed):
                self._apply(pack, off, KIND_TOMB, bid, 0, 0, entry[0])
                ticket = _max(ticket, (pack.seq, off + HEADER_SIZE))
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

    def locate(self, bid: str) -> Entry | None:
        return self._index.get(bid)

    def __contains__(self, bid: object) -> bool:
        return bid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._index)

    def _pin_entry(self, bid: str) -> tuple[Entry, _Pack] | None:
        with self._lock:
            entry = self._index.get(bid)
            if entry is None:
                return None
            pack = self._packs[entry[0] >> 32]
            self._pin_locked(pack)
            return entry, pack

    def _durable(self, entry: Entry) -> None:
        """Readers see only durable records: wait for (or lead) the sync of a fresh one."""
        if self._fsync and _end(entry) > self._synced:
            self.wait(_end(entry))

    def _read_verified(self, bid: str, entry: Entry, pack: _Pack) -> memoryview:
        loc, size, crc = entry
        self._durable(entry)
        start = (loc & 0xFFFFFFFF) + HEADER_SIZE
        buf = memoryview(bytearray(size))
        pos = 0
        try:
            while pos < size:
                n = os.preadv(pack.fd, [buf[pos:]], start + pos)
                if n == 0:
                    raise BlockCorrupt(bid, f"{pack.path} ends inside the record at offset "
                                       f"{start - HEADER_SIZE}")
                pos += n
        except BlockCorrupt:
            raise
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            raise BlockCorrupt(bid, f"read error in {pack.path} at offset {start + pos}: "
                               f"{exc.strerror}") from exc
        if crc32c.crc32c(buf) != crc:
            raise BlockCorrupt(bid, f"data checksum mismatch ({pack.path} offset "
                               f"{start - HEADER_SIZE})")
        return buf

    def get(self, bid: str, offset: int = 0, length: int | None = None) -> memoryview | None:
        """Bytes [offset, offset+length) of a block, verified; None if it is not here."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            size = entry[1]
            if offset < 0 or offset > size or (length is not None and length < 0):
                raise OSError(errno.EINVAL, f"block {bid}: range offset={offset} "
                              f"length={length} outside a block of {size} bytes")
            end = size if length is None else min(size, offset + length)
            if end == offset and not (offset == 0 and end == size):
                return memoryview(b"")
            data = self._read_verified(bid, entry, pack)
        finally:
            self._unpin(pack)
        return data[offset:end].toreadonly()

    def stat(self, bid: str) -> tuple[int, int] | None:
        entry = self._index.get(bid)
        return None if entry is None else (entry[1], entry[2])

    def check(self, bid: str) -> tuple[int, int] | None:
        """Read and verify the whole block: (size, crc), None if not here, or BlockCorrupt."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            self._read_verified(bid, entry, pack)
        finally:
            self._unpin(pack)
        return entry[1], entry[2]

    def read_record(self, bid: str) -> tuple[int, bytes] | None:
        """(loc, header + data as stored), unverified: for quarantine. None if not here."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            return entry[0], _pread(pack.fd, HEADER_SIZE + entry[1], entry[0] & 0xFFFFFFFF)
        finally:
            self._unpin(pack)

    # ---- compaction ---------------------------------------------------------------------

    def compact(self, min_garbage: float = 0.5) -> CompactStats:
        """Rewrite sealed packs whose dead bytes are >= min_garbage of their size."""
        if not 0 <= min_garbage <= 1:
            raise ValueError(f"min_garbage must be in 0..1, got {min_garbage}")
        with self._compact_lock:
            with self._lock:
                self._check_broken()
                victims = [p for p in self._packs.values() if p is not self._active
                           and p.size - p.live > 0 and p.size - p.live >= min_garbage * p.size]
            stats = CompactStats()
            for pack in sorted(victims, key=lambda p: p.seq):
                try:
                    copied = self._compact_pack(pack)
                except OSError as exc:
                    if self._broken is not None:
                        raise
                    # e.g. EIO reading it: the others are still worth doing
                    log.error("compaction of %s failed, kept: %s", pack.path, exc)
                    continue
                if copied is not None:
                    stats = CompactStats(stats.packs_removed + 1, stats.bytes_freed + pack.size,
                                         stats.bytes_copied + copied)
            if stats.packs_removed:
                log.info("compaction: %d packs removed, %d bytes freed, %d bytes copied",
                         *stats)
            return stats

    def _compact_pack(self, pack: _Pack) -> int | None:
        """Move what is live out of pack, then remove it; bytes copied, None if kept."""
        with self._lock:
            self._pin_locked(pack)
        try:
            ticket: Ticket = None
            copied = 0
            batch: list[_Rec] = []
            nbytes = 0
            scan = _Scanner(pack.fd, pack.path, pack.seq, pack.size, with_data=True,
                            verify=False)
            for rec in scan:
                if rec.kind == KIND_PUT:
                    entry = self._index.get(rec.rid.hex())  # pre-filter; re-checked locked
                    if entry is None or entry[0] != (pack.seq << 32 | rec.off):
                        continue
                    if crc32c.crc32c(rec.data) != rec.crc:
                        log.warning("compaction: block %s in %s fails its checksum; moved as "
                                    "is (reads and the scrubber report it)", rec.rid.hex(),
                                    pack.path)
                elif (rec.ref >> 32) == pack.seq or (rec.ref >> 32) not in self._packs:
                    continue
                batch.append(rec)
                nbytes += HEADER_SIZE + rec.size
                if nbytes >= _COPY_BATCH:
                    t, n = self._copy(pack, batch)
                    ticket, copied = _max(ticket, t), copied + n
                    batch, nbytes = [], 0
            if batch:
                t, n = self._copy(pack, batch)
                ticket, copied = _max(ticket, t), copied + n
            self.wait(ticket)  # the copies are durable before the original goes
            with self._lock:
                if pack.live_records:
                    log.error("compaction: %s still holds %d live blocks (unreadable "
                              "records?); kept", pack.path, pack.live_records)
                    return None
                del self._packs[pack.seq]
                pack.removed = True
                self._idle.pop(pack.seq, None)
                self._disk_bytes -= pack.size
                for other in self._packs.values():  # tombstones into it are dead now
                    other.live -= other.tombs.pop(pack.seq, 0)
        finally:
            self._unpin(pack)  # closes the fd once the last reader is done
        try:
            os.unlink(pack.path)
            if self._fsync:
                os.fsync(self._dir_fd)
        except OSError as exc:  # harmless: a resurrected pack replays as all garbage
            log.warning("compaction: could not remove %s durably: %s", pack.path, exc)
        return copied

    def _copy(self, pack: _Pack, batch: list[_Rec]) -> tuple[Ticket, int]:
        recs: list[tuple[bytes, Sequence[memoryview], int]] = []
        who: list[tuple[_Rec, str]] = []
        ticket: Ticket = None
        with self._lock:
            for rec in batch:
                bid = rec.rid.hex()
                if rec.kind == KIND_PUT:
                    entry = self._index.get(bid)
                    if entry is None or entry[0] != (pack.seq << 32 | rec.off):
                        continue  # deleted or replaced meanwhile: do not bring it back
                    recs.append((_header(KIND_PUT, rec.rid, rec.size, rec.crc, 0),
                                 (rec.data,), HEADER_SIZE + rec.size))
                elif (rec.ref >> 32) in self._packs:
                    recs.append((_header(KIND_TOMB, rec.rid, 0, 0, rec.ref), (), HEADER_SIZE))
                else:
                    continue
                who.append((rec, bid))
            placed, err = self._append_locked(recs)
            copied = 0
            for (rec, bid), (dest, off) in zip(who, placed):
                self._apply(dest, off, rec.kind, bid, rec.size, rec.crc, rec.ref)
                ticket = _max(ticket, (dest.seq, off + HEADER_SIZE + rec.size))
                copied += HEADER_SIZE + rec.size
        if err is not None:
            self.wait(ticket)
            raise err
        return ticket, copied

    # ---- accounting ---------------------------------------------------------------------

    def stats(self) -> PackStats:
        with self._lock:
            garbage = sum(p.size - p.live for p in self._packs.values())
            return PackStats(len(self._packs), len(self._index), self._live_bytes,
                             self._disk_bytes, garbage)

    def disk_bytes(self) -> int:
        return self._disk_bytes


def inspect(directory: str | os.PathLike[str]) -> dict[str, tuple[str, int, int, int]]:
    """Read-only replay of a pack directory, for tools and fault tests (never while they
    could race a running DataNode's writes in a way that matters): the live blocks as
    id -> (pack path, offset of the data, size, crc). Nothing is truncated or synced."""
    found = sorted((int(m[1]), os.path.join(directory, name))
                   for name in os.listdir(directory)
                   if (m := _PACK_NAME.fullmatch(name)))
    live: dict[str, tuple[int, str, int, int, int]] = {}   # id -> (loc, path, off, size, crc)
    for seq, path in found:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for rec in _Scanner(fd, path, seq, os.fstat(fd).st_size, with_data=False,
                                verify=False):
                bid, loc = rec.rid.hex(), seq << 32 | rec.off
                if rec.kind == KIND_PUT:
                    live[bid] = (loc, path, rec.off + HEADER_SIZE, rec.size, rec.crc)
                elif bid in live and live[bid][0] == rec.ref:
                    del live[bid]
        finally:
            os.close(fd)
    return {bid: v[1:] for bid, v in live.items()}


def _end(entry: Entry) -> tuple[int, int]:
    loc, size, _ = entry
    return loc >> 32, (loc & 0xFFFFFFFF) + HEADER_SIZE + size


def _exists(bid: str, have_size: int, have_crc: int, size: int, crc: int) -> FileExistsError:
    return FileExistsError(errno.EEXIST, (
        f"block {bid} already exists with different content (stored: size {have_size} "
        f"crc {have_crc:#010x}; new: size {size} crc {crc:#010x})"))
