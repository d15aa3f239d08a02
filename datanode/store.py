"""Block store of a DataNode: the facade that puts each block in a pack or a file of its own
and answers for both; big blocks live in datanode/blockfiles.py, small ones in datanode/packs.py.

Owns the choice of location, the rules that span both (same id in both places, repair of a
corrupt copy by a put), the root lock and the usage the heartbeat reports. Pure file I/O:
no sockets. Blocks of at most small_max bytes go to the pack log (append-only pack files,
group commit, ~40x more durable small writes per second than a file each); bigger ones get
a file of their own. Callers see one store: every call below works the same wherever a
block lives. Block ids are 16 bytes (datanode/blockid.py); every public call refuses
anything else with EINVAL before a path is formed.

API (stable; datanode/server.py builds on it)
----------------------------------------------
BlockStore(root, *, chunk_size=65536, fsync=True, drop_cache=True, small_max=131072,
           pack_size=64 MiB)     also a context manager; small_max=0: no new pack blocks
  put(block_id, buffers, expected_crc=None) -> BlockInfo   durable once it returns
  put_many(items) -> list[BlockInfo | OSError]  items: (block_id, buffers, expected_crc or
                                         None); per-item results; the small ones share one
                                         append and one sync, big ones take the file path
  get(block_id, offset=0, length=None) -> memoryview       read-only, verified
  get_chunks(block_id, offset=0, length=None) -> (start, data, chunk_size, table)
                                         the chunk-aligned cover of a range, verified,
                                         with the chunk CRC table (a pack block: 1 chunk)
  stat(block_id) -> BlockInfo            footer / pack index only (cheap)
  check(block_id) -> BlockInfo           full re-verification; raises BlockCorrupt
  verify(block_id) -> bool               check() as a bool, for the scrubber
  delete(block_id) -> bool               False if it was not there
  delete_many(block_ids) -> list[bool]   durable on return; one sync for the pack blocks
  quarantine(block_id) -> bool           set a bad block aside in root/corrupt/
  compact(min_garbage=0.5) -> CompactStats   rewrite pack files that are mostly dead
  ids() -> Iterator[bytes]               no block is read: the fast block report
  infos(on_corrupt=None) -> Iterator[BlockInfo]   footers / index; corrupt ones skipped
  usage() -> Usage(blocks, bytes_used)   blocks in files and packs; bytes of block files
                                         plus pack files on disk, kept incrementally
  pack_stats() -> PackStats              live, on-disk and garbage bytes of the pack log
  capacity() -> Capacity(total, free)    from statvfs (free = available to this user)
  close()
Errors are OSError: invalid id / offset -> EINVAL; missing -> FileNotFoundError (ENOENT);
expected_crc differs -> OSError(EBADMSG); same id, other content -> FileExistsError;
damaged or unreadable block -> BlockCorrupt (EIO, .block_id); write failures (ENOSPC,
EIO, ...) keep their errno. Data is never returned unverified.

On-disk format: big blocks are files root/blocks/<hex[:2]>/<hex>.blk in the self-checking
format of datanode/fileformat.py (data | chunk CRC table | footer).
Small blocks: records in root/packs/pack-<seq>.pack, format in datanode/packformat.py (44-byte
header with its own CRC32C and the data CRC32C, then the data). Every read of a pack block
reads the whole record and checks its CRC; stat() uses the index built at open.

Behaviour worth knowing:
- put: CRCs are computed (one pass) before anything touches the disk, so a mismatch with
  expected_crc costs no I/O. Same id + same size and CRC -> no-op; a stored copy that
  fails verification is replaced; same id + other content -> FileExistsError. This holds
  across locations (a small put finds a big file of the same id and vice versa; one that
  replaces a corrupt copy elsewhere removes that copy once the new one is durable). Puts
  of one id are serialised by a striped lock held around the existence check and the write
  (not around the pack sync).
- Big put: tmp/<hex>.<pid>.<n>.tmp is written with writev straight from the caller's
  buffers, fsynced, its pages dropped (drop_cache), renamed into place, and the fan-out dir
  fsynced. If only the final directory fsync fails, the block may stay visible but put
  still raises.
- Small put: one record appended to the active pack and made durable by a group-commit
  fdatasync shared with concurrent writers. A failed pack sync makes this and every later
  pack write fail (reopen the store to recover); the file path is unaffected.
- get of a whole big block also drops its pages (drop_cache): blocks are read once and
  sent on.
- quarantine: a block file is moved to root/corrupt/; a pack block's record (header and
  data as stored) is written to root/corrupt/<hex>.<ns>.rec and then tombstoned.
- Opening removes crash residue from tmp/, replays the pack log (a torn tail from a crash
  is cut off, damage is stepped over and logged) and takes an exclusive flock on root/LOCK
  (OSError EBUSY if another process has the store open). An id found both as a file and in
  a pack (a crash while one copy replaced the other) keeps one good copy.
- Thread-safe: put/get/delete/compact may run concurrently; same-id puts are serialised by
  a striped lock, counters by their own locks.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from broker.crc import crc32c
from datanode.blockfiles import BlockFiles
from datanode.blockid import parse_block_id
from datanode.blocks import (BlockCorrupt, BlockInfo, Capacity, CompactStats, PackStats, Usage,
                             cannot_store, checksum_mismatch, different_content)
from datanode.fileformat import FOOTER_SIZE, MAX_CHUNK, checksums
from datanode.packs import DEFAULT_PACK_SIZE, PackLog
from datanode.store_read import StoreReads

__all__ = ["FOOTER_SIZE", "BlockCorrupt", "BlockInfo", "BlockStore", "Capacity", "CompactStats",
           "PackStats", "Usage"]

if TYPE_CHECKING:   # collections.abc.Buffer is 3.12+; the stub is enough for annotations
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

_LOCK_STRIPES = 64


class BlockStore(StoreReads):
    """Blocks in files and packs under root; see the module docstring for the API and format."""

    files_class: type[BlockFiles] = BlockFiles  # tests substitute one that injects faults

    def __init__(self, root: str | os.PathLike[str], *, chunk_size: int = 64 * 1024,
                 fsync: bool = True, drop_cache: bool = True, small_max: int = 128 * 1024,
                 pack_size: int = DEFAULT_PACK_SIZE) -> None:
        if not 0 < chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK}, got {chunk_size}")
        if not 0 <= small_max <= MAX_CHUNK:
            raise ValueError(f"small_max must be in 0..{MAX_CHUNK}, got {small_max}")
        self.small_max = small_max  # blocks up to this size go to the pack log
        self.root = Path(root)
        self.chunk_size = chunk_size
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._id_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._files: BlockFiles | None = None
        self._packs: PackLog | None = None
        try:
            # Files first: tmp/ is cleaned before anything else happens under this root.
            self._files = self.files_class(self.root, chunk_size=chunk_size, fsync=fsync,
                                           drop_cache=drop_cache)
            # Always opened: packs written with another small_max must stay readable.
            self._packs = PackLog(self.root / "packs", pack_size=pack_size, fsync=fsync,
                                  drop_cache=drop_cache)
            self._resolve_duplicates(self._files.scan(self._packs.__contains__))
            # New top-level dirs and fan-outs from any earlier crash become durable here.
            self._files.fsync_dir(self.root)
            self._files.fsync_dir(self._files.blocks_dir)
        except BaseException:
            self.close()
            raise
        log.info("block store %s open: %d blocks in files, %d bytes", self.root,
                 *self._files.usage())

    # ---- lifecycle -------------------------------------------------------------------

    def _take_lock(self) -> int:
        # Two processes on one root would delete each other's in-flight tmp files at open.
        fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, f"block store {self.root} is in use by another process")
        return fd

    def _resolve_duplicates(self, dups: list[bytes]) -> None:
        """Ids stored both as a file and in a pack: a crash came between writing the new
        copy and removing the old. Keep one that verifies, the pack copy if both do."""
        packs, files = self._parts()
        for bid in dups:
            try:
                packs.check(bid)
            except BlockCorrupt:
                if files.is_sound(bid):
                    log.warning("block %s in a pack and as a file: dropping the bad pack copy",
                                bid.hex())
                    packs.delete_many([bid])
                continue
            log.warning("block %s in a pack and as a file: removing the file copy", bid.hex())
            files.remove(bid, self._id_lock(bid))

    def close(self) -> None:
        """Release the root lock and every fd; the store is unusable after."""
        if self._packs is not None:
            self._packs.close()
        if self._files is not None:
            self._files.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- small helpers ------------------------------------------------------------------

    def _parts(self) -> tuple[PackLog, BlockFiles]:
        packs, files = self._packs, self._files
        assert packs is not None and files is not None
        return packs, files

    def _is_small(self, size: int) -> bool:
        return 0 < self.small_max and size <= self.small_max  # small_max=0: no new pack blocks

    @staticmethod
    def _stripe(bid: bytes) -> int:
        return bid[-1] % _LOCK_STRIPES

    def _id_lock(self, bid: bytes) -> threading.Lock:
        return self._id_locks[self._stripe(bid)]

    # ---- write path -------------------------------------------------------------------

    @staticmethod
    def _same(bid: bytes, have: BlockInfo, info: BlockInfo) -> None:
        if (have.size, have.crc) != (info.size, info.crc):
            raise different_content(bid, have.size, have.crc, info.size, info.crc)

    def _existing_file(self, bid: bytes, info: BlockInfo) -> bool | None:
        """Block file: None absent, False corrupt (to be replaced), True same block."""
        try:
            have = self._parts()[1].check(bid)
        except FileNotFoundError:
            return None
        except BlockCorrupt as exc:
            log.warning("replacing corrupt copy on put: %s", exc)
            return False
        self._same(bid, have, info)
        return True

    def _existing(self, bid: bytes, info: BlockInfo, stale: list[int]) -> bool | None:
        """Falsy: absent or corrupt (to be replaced). True: same block, already stored.

        Looks in the pack log, then for a file. The location of a corrupt pack copy is
        appended to stale: the caller tombstones it once the replacement is durable.
        """
        packs = self._parts()[0]
        entry = packs.locate(bid)
        if entry is not None:
            try:
                have = packs.check(bid)
            except BlockCorrupt as exc:
                log.warning("replacing corrupt copy on put: %s", exc)
                stale.append(entry[0])
                have = None
            if have is not None:
                self._same(bid, BlockInfo(bid, *have), info)
                return True
        return self._existing_file(bid, info)

    def _small_info(self, bid: bytes, views: Sequence[memoryview], size: int,
                    expected_crc: int | None) -> BlockInfo:
        crc = 0
        for view in views:
            crc = crc32c(view, value=crc)
        if expected_crc is not None and crc != expected_crc:
            raise checksum_mismatch(bid, expected_crc, crc)
        return BlockInfo(bid, size, crc)

    def put(self, block_id: bytes, buffers: Sequence[Buffer],
            expected_crc: int | None = None) -> BlockInfo:
        """Store a block from buffers (any buffer-protocol objects, not copied); durable on return.

        Re-putting identical content is a no-op returning the same BlockInfo (client retries);
        a stored copy that fails verification is replaced (repair by re-replication).
        """
        bid = parse_block_id(block_id)
        views = [memoryview(b).cast("B") for b in buffers]
        size = sum(v.nbytes for v in views)
        if not self._is_small(size):
            return self._put_file(bid, views, expected_crc)
        out = self._put_small([(bid, views, self._small_info(bid, views, size, expected_crc))])
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def put_many(self, items: Sequence[tuple[bytes, Sequence[Buffer], int | None]]
                 ) -> list[BlockInfo | OSError]:
        """put() for many blocks; one result per item, a bad item fails alone.

        The small blocks share one append and one sync (durable when this returns); big ones
        take the file path one by one.
        """
        results: list[BlockInfo | OSError | None] = [None] * len(items)
        small: list[tuple[int, tuple[bytes, list[memoryview], BlockInfo]]] = []
        big: list[tuple[int, bytes, list[memoryview], int | None]] = []
        for i, (block_id, buffers, expected_crc) in enumerate(items):
            try:
                bid = parse_block_id(block_id)
                try:
                    views = [memoryview(b).cast("B") for b in buffers]
                except (TypeError, ValueError) as exc:
                    raise OSError(errno.EINVAL, f"block {bid.hex()}: unusable buffer: {exc}") from exc
                size = sum(v.nbytes for v in views)
                if not self._is_small(size):
                    big.append((i, bid, views, expected_crc))
                else:
                    small.append((i, (bid, views,
                                      self._small_info(bid, views, size, expected_crc))))
            except OSError as exc:
                results[i] = exc
        if small:
            for (i, _), out in zip(small, self._put_small([e for _, e in small])):
                results[i] = out
        for i, bid, views, expected_crc in big:
            try:
                results[i] = self._put_file(bid, views, expected_crc)
            except OSError as exc:
                results[i] = exc
        return results  # type: ignore[return-value]

    def _put_small(self, entries: Sequence[tuple[bytes, Sequence[memoryview], BlockInfo]]
                   ) -> list[BlockInfo | OSError]:
        """Pack path: existence checks and the append under the ids' striped locks, then
        one shared sync outside them."""
        packs, files = self._parts()
        out: list[BlockInfo | OSError | None] = [None] * len(entries)
        todo: list[int] = []
        bad_files: list[int] = []  # corrupt block files this put replaces
        res: list[OSError | None] = []
        ticket = None
        locks = [self._id_locks[i] for i in sorted({self._stripe(e[0]) for e in entries})]
        for lock in locks:
            lock.acquire()
        try:
            for k, (bid, _, info) in enumerate(entries):
                try:
                    found = self._existing_file(bid, info) if files.exists(bid) else None
                except OSError as exc:
                    out[k] = exc
                    continue
                if found:
                    out[k] = info
                    continue
                if found is False:
                    bad_files.append(k)
                todo.append(k)
            if todo:
                try:
                    res, ticket = packs.append_puts(
                        [(entries[k][0], entries[k][1], entries[k][2].size, entries[k][2].crc)
                         for k in todo])
                except OSError as exc:
                    res = [exc] * len(todo)
        finally:
            for lock in locks:
                lock.release()
        try:
            packs.wait(ticket)
            failed = None
        except OSError as exc:
            failed = exc
        for k, r in zip(todo, res):
            bid, _, info = entries[k]
            err = r if r is not None else failed
            if err is None:
                out[k] = info
            elif isinstance(err, FileExistsError) or bid.hex() in str(err):
                out[k] = err
            else:
                out[k] = cannot_store(bid, err)
        for k in bad_files:
            if isinstance(out[k], BlockInfo):
                try:
                    files.remove(entries[k][0], self._id_lock(entries[k][0]))
                except OSError as exc:  # the good pack copy is what reads find first
                    log.warning("could not remove the corrupt file of block %s: %s",
                                entries[k][0].hex(), exc)
        return out  # type: ignore[return-value]

    def _put_file(self, bid: bytes, views: list[memoryview],
                  expected_crc: int | None) -> BlockInfo:
        crc, table = checksums(views, self.chunk_size)
        info = BlockInfo(bid, sum(v.nbytes for v in views), crc)
        if expected_crc is not None and crc != expected_crc:
            raise checksum_mismatch(bid, expected_crc, crc)
        stale: list[int] = []
        if self._existing(bid, info, stale):
            return info
        packs, files = self._parts()
        # Re-checked under the lock: another thread may have stored this id meanwhile.
        if not files.write(info, views, table, self._id_lock(bid),
                           lambda: self._existing(bid, info, stale)):
            return info
        if stale:  # a corrupt pack copy this block file replaces
            try:
                packs.delete_many([bid], expect=[stale[-1]])
            except OSError as exc:
                log.warning("could not drop the corrupt pack copy of block %s: %s",
                            bid.hex(), exc)
        return info

    # ---- removal ------------------------------------------------------------------------

    def delete(self, block_id: bytes) -> bool:
        """Remove a block durably; False if it did not exist."""
        return self.delete_many([block_id])[0]

    def delete_many(self, block_ids: Sequence[bytes]) -> list[bool]:
        """Remove blocks durably (one sync for all the pack blocks); False: was not there."""
        bids = [parse_block_id(b) for b in block_ids]  # all valid, or nothing is done
        packs, files = self._parts()
        in_pack = packs.delete_many(bids)
        # A file is looked for even when the pack had the id: never leave a second copy.
        as_file = files.remove_many(bids, self._id_lock)
        return [a or b for a, b in zip(as_file, in_pack)]

    def quarantine(self, block_id: bytes) -> bool:
        """Set a block aside in root/corrupt/ (kept for inspection, no longer served or listed).

        A block file is moved there; a pack block's record is copied there as
        <hex>.<ns>.rec (header and data as stored), then tombstoned.
        """
        bid = parse_block_id(block_id)
        packs, files = self._parts()
        in_pack = False
        record: tuple[int, bytes | None] | None
        entry = packs.locate(bid)
        if entry is not None:
            try:
                record = packs.read_record(bid)
            except OSError as exc:  # unreadable: nothing to keep, still stop serving it
                log.warning("quarantine of block %s: cannot read its record: %s", bid.hex(), exc)
                record = (entry[0], None)
            if record is not None:
                loc, raw = record
                name = f"{bid.hex()}.{time.time_ns()}.rec"
                if raw is not None:
                    files.write_aside(name, raw)
                in_pack = packs.delete_many([bid], expect=[loc])[0]
                if in_pack:
                    log.warning("quarantined pack block %s to %s", bid.hex(),
                                files.corrupt_dir / name)
        moved = files.quarantine(bid, self._id_lock(bid), time.time_ns())
        return moved or in_pack

    def compact(self, min_garbage: float = 0.5) -> CompactStats:
        """Rewrite pack files whose dead bytes are >= min_garbage of their size (see
        compaction.py). Cheap when there is nothing to do; meant for a background thread."""
        return self._parts()[0].compact(min_garbage)

    # ---- listing and accounting -------------------------------------------------------

    def ids(self) -> Iterator[bytes]:
        """Ids of stored blocks: the pack index, then directory names (no file is opened)."""
        packs, files = self._parts()
        yield from packs.ids()
        yield from files.ids(skip=packs.__contains__)

    def infos(self, on_corrupt: Callable[[bytes, BlockCorrupt], None] | None = None
              ) -> Iterator[BlockInfo]:
        """BlockInfo of each block from its footer; blocks with a bad footer are skipped."""
        for bid in self.ids():
            try:
                yield self.stat(bid)
            except FileNotFoundError:
                continue  # deleted while we listed
            except BlockCorrupt as exc:
                log.warning("%s", exc)
                if on_corrupt is not None:
                    on_corrupt(bid, exc)

    def usage(self) -> Usage:
        packs, files = self._parts()
        blocks, nbytes = files.usage()
        return Usage(blocks + len(packs), nbytes + packs.disk_bytes())

    def pack_stats(self) -> PackStats:
        return self._parts()[0].stats()

    def capacity(self) -> Capacity:
        st = os.statvfs(self.root)
        return Capacity(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
