"""Block store of a DataNode: big blocks one self-checking file each, small ones in pack files.

Owns the on-disk layout and format, the durable write paths, checksum verification on
every read, and the usage counters the heartbeat reports. Pure file I/O: no sockets.
Blocks of at most small_max bytes go to the pack log (datanode/packs.py: append-only pack
files, group commit, ~40x more durable small writes per second than a file each); bigger
ones get a file of their own. Callers see one store: every call below works the same
wherever a block lives.

API (stable; datanode/server.py builds on it)
----------------------------------------------
BlockStore(root, *, chunk_size=65536, fsync=True, drop_cache=True, small_max=131072,
           pack_size=64 MiB)     also a context manager; small_max=0: no new pack blocks
  put(block_id, buffers, expected_crc=None) -> BlockInfo   durable once it returns
  put_many(items) -> list[BlockInfo | OSError]  items: (block_id, buffers, expected_crc or
                                         None); per-item results; the small ones share one
                                         append and one sync, big ones take the file path
  get(block_id, offset=0, length=None) -> memoryview       read-only, verified
  stat(block_id) -> BlockInfo            footer / pack index only (cheap)
  check(block_id) -> BlockInfo           full re-verification; raises BlockCorrupt
  verify(block_id) -> bool               check() as a bool, for the scrubber
  delete(block_id) -> bool               False if it was not there
  delete_many(block_ids) -> list[bool]   durable on return; one sync for the pack blocks
  quarantine(block_id) -> bool           set a bad block aside in root/corrupt/
  compact(min_garbage=0.5) -> CompactStats   rewrite pack files that are mostly dead
  ids() -> Iterator[str]                 no block is read: the fast block report
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

On-disk format: big blocks are files root/blocks/<id[:2]>/<id>.blk in the self-checking
format of datanode/blockfile.py (data | chunk CRC table | footer).
Small blocks: records in root/packs/pack-<seq>.pack, format in datanode/packs.py (44-byte
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
- Big put: tmp/<id>.<pid>.<n>.tmp is written with writev straight from the caller's
  buffers, fsynced, its pages dropped (drop_cache), renamed into place, and the fan-out dir
  fsynced. If only the final directory fsync fails, the block may stay visible but put
  still raises.
- Small put: one record appended to the active pack and made durable by a group-commit
  fdatasync shared with concurrent writers. A failed pack sync makes this and every later
  pack write fail (reopen the store to recover); the file path is unaffected.
- get of a whole big block also drops its pages (drop_cache): blocks are read once and
  sent on.
- quarantine: a block file is moved to root/corrupt/; a pack block's record (header and
  data as stored) is written to root/corrupt/<id>.<ns>.rec and then tombstoned.
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
import itertools
import logging
import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import crc32c

from datanode.blockfile import (FOOTER_SIZE, MAX_CHUNK, Meta, checksums, decode_footer,
                                encode_tail, pread_into, shift_for)
from datanode.blockid import parse_block_id
from datanode.fileio import write_all
from datanode.blocks import BlockCorrupt, BlockInfo, Capacity, CompactStats, PackStats, Usage
from datanode.packs import DEFAULT_PACK_SIZE, PackLog

__all__ = ["FOOTER_SIZE", "BlockCorrupt", "BlockInfo", "BlockStore", "Capacity", "CompactStats",
           "PackStats", "Usage"]

log = logging.getLogger(__name__)

_VERIFY_BUF = 1 << 20  # check() streams through a buffer this size instead of the whole block
_BLOCK_NAME = re.compile(r"([0-9a-f]{32})\.blk")
_FANOUT_NAME = re.compile(r"[0-9a-f]{2}")
_LOCK_STRIPES = 64


class BlockStore:
    """Blocks under root/blocks/; see the module docstring for the API and format."""

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
        self._fsync_enabled = fsync  # False only for tests/benchmarks: nothing is durable
        self._drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        self._blocks_dir = self.root / "blocks"
        self._tmp_dir = self.root / "tmp"
        self._corrupt_dir = self.root / "corrupt"
        for d in (self.root, self._blocks_dir, self._tmp_dir, self._corrupt_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_lock()
        self._tmp_seq = itertools.count()
        self._id_locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._stats_lock = threading.Lock()
        self._dir_fds: dict[str, int] = {}  # fan-out dirs known to exist durably
        self._dir_lock = threading.Lock()
        self._packs: PackLog | None = None
        try:
            self._clean_tmp()
            # Always opened: packs written with another small_max must stay readable.
            self._packs = PackLog(self.root / "packs", pack_size=pack_size, fsync=fsync,
                                  drop_cache=drop_cache)
            dups: list[str] = []
            self._blocks, self._bytes = self._scan(dups)
            self._resolve_duplicates(dups)
            # New top-level dirs and fan-outs from any earlier crash become durable here.
            self._fsync_dir(str(self.root))
            self._fsync_dir(str(self._blocks_dir))
        except BaseException:
            self.close()
            raise
        log.info("block store %s open: %d blocks, %d bytes", self.root, self._blocks, self._bytes)

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

    def _clean_tmp(self) -> None:
        removed = 0
        with os.scandir(self._tmp_dir) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    os.unlink(entry.path)
                    removed += 1
                else:
                    log.warning("leaving unexpected entry %s in the tmp dir", entry.path)
        if removed:
            log.warning("removed %d leftover tmp file(s) from %s (crash residue)",
                        removed, self._tmp_dir)

    def _scan(self, dups: list[str]) -> tuple[int, int]:
        blocks = size = 0
        packs = self._packs
        for fan in os.scandir(self._blocks_dir):
            if not (fan.is_dir(follow_symlinks=False) and _FANOUT_NAME.fullmatch(fan.name)):
                log.warning("ignoring unexpected entry %s", fan.path)
                continue
            self._dir_fds[fan.name] = os.open(fan.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            with os.scandir(fan.path) as entries:
                for entry in entries:
                    if self._is_block_entry(fan.name, entry):
                        blocks += 1
                        size += entry.stat(follow_symlinks=False).st_size
                        if packs is not None and entry.name[:-4] in packs:
                            dups.append(entry.name[:-4])
        return blocks, size

    def _resolve_duplicates(self, dups: list[str]) -> None:
        """Ids stored both as a file and in a pack: a crash came between writing the new
        copy and removing the old. Keep one that verifies, the pack copy if both do."""
        packs = self._packs
        assert packs is not None
        for bid in dups:
            try:
                packs.check(bid)
            except BlockCorrupt:
                if self._verify_file(bid):
                    log.warning("block %s in a pack and as a file: dropping the bad pack copy",
                                bid)
                    packs.delete_many([bid])
                continue
            log.warning("block %s in a pack and as a file: removing the file copy", bid)
            self._remove(bid, None)

    def _verify_file(self, bid: str) -> bool:
        try:
            self._check_file(bid)
        except (FileNotFoundError, BlockCorrupt):
            return False
        return True

    @staticmethod
    def _is_block_entry(fan: str, entry: os.DirEntry[str]) -> bool:
        m = _BLOCK_NAME.fullmatch(entry.name)
        return bool(m and m[1].startswith(fan) and entry.is_file(follow_symlinks=False))

    def close(self) -> None:
        """Release the root lock and cached directory handles; the store is unusable after."""
        if self._packs is not None:
            self._packs.close()
        with self._dir_lock:
            for fd in self._dir_fds.values():
                os.close(fd)
            self._dir_fds.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- paths and small helpers --------------------------------------------------------

    def _path(self, bid: str) -> str:
        # bid is always parse_block_id output: 32 lowercase hex, never a path fragment.
        return os.path.join(self._blocks_dir, bid[:2], bid + ".blk")

    def _is_small(self, size: int) -> bool:
        return 0 < self.small_max and size <= self.small_max  # small_max=0: no new pack blocks

    @staticmethod
    def _stripe(bid: str) -> int:
        return int(bid[-2:], 16) % _LOCK_STRIPES

    def _id_lock(self, bid: str) -> threading.Lock:
        return self._id_locks[self._stripe(bid)]

    def _add_usage(self, blocks: int, nbytes: int) -> None:
        with self._stats_lock:
            self._blocks += blocks
            self._bytes += nbytes

    def _fsync(self, fd: int) -> None:
        if self._fsync_enabled:
            os.fsync(fd)

    def _fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fanout_fd(self, bid: str) -> int:
        """fd of the block's fan-out dir, creating it (durably) the first time."""
        fan = bid[:2]
        fd = self._dir_fds.get(fan)
        if fd is not None:
            return fd
        with self._dir_lock:
            if fan not in self._dir_fds:
                path = os.path.join(self._blocks_dir, fan)
                os.makedirs(path, exist_ok=True)
                self._fsync_dir(str(self._blocks_dir))
                self._dir_fds[fan] = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return self._dir_fds[fan]

    def _open_block(self, bid: str) -> tuple[int, Meta]:
        try:
            fd = os.open(self._path(bid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"block {bid} not found") from None
        try:
            file_size = os.fstat(fd).st_size
            if file_size < FOOTER_SIZE:
                raise BlockCorrupt(bid, f"file is {file_size} bytes, shorter than a footer")
            raw = bytearray(FOOTER_SIZE)
            pread_into(bid, fd, memoryview(raw), file_size - FOOTER_SIZE)
            return fd, decode_footer(bid, bytes(raw), file_size)
        except BaseException:
            os.close(fd)
            raise

    def _read_table(self, bid: str, fd: int, meta: Meta) -> tuple[int, ...]:
        raw = bytearray(4 * meta.count)
        pread_into(bid, fd, memoryview(raw), meta.size)
        if crc32c.crc32c(raw) != meta.table_crc:
            raise BlockCorrupt(bid, "chunk table checksum mismatch")
        return struct.unpack(f"<{meta.count}I", raw)

    # ---- write path -------------------------------------------------------------------

    def _write(self, fd: int, iov: list[memoryview]) -> None:
        """Write every byte of iov; a hook tests override to inject ENOSPC/EIO."""
        write_all(fd, iov)

    def _write_tmp(self, tmp: str, iov: list[memoryview]) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            self._write(fd, iov)
            self._fsync(fd)
            if self._drop_cache:
                # Clean pages of a written block are dead weight; handing them back at once
                # lets the kernel recycle them for the next block (PERFORMANCE.md: ~5x less
                # write() time per GiB on this kind of VM).
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    @staticmethod
    def _same(bid: str, have: BlockInfo, info: BlockInfo) -> None:
        if (have.size, have.crc) != (info.size, info.crc):
            raise FileExistsError(errno.EEXIST, (
                f"block {bid} already exists with different content (stored: size "
                f"{have.size} crc {have.crc:#010x}; new: size {info.size} crc {info.crc:#010x})"))

    def _file_exists(self, bid: str) -> bool:
        try:
            os.stat(self._path(bid))
        except FileNotFoundError:
            return False
        return True

    def _existing_file(self, bid: str, info: BlockInfo) -> bool | None:
        """Block file: None absent, False corrupt (to be replaced), True same block."""
        try:
            have = self._check_file(bid)
        except FileNotFoundError:
            return None
        except BlockCorrupt as exc:
            log.warning("replacing corrupt copy on put: %s", exc)
            return False
        self._same(bid, have, info)
        return True

    def _existing(self, bid: str, info: BlockInfo, stale: list[int]) -> bool | None:
        """Falsy: absent or corrupt (to be replaced). True: same block, already stored.

        Looks in the pack log, then for a file. The location of a corrupt pack copy is
        appended to stale: the caller tombstones it once the replacement is durable.
        """
        packs = self._packs
        assert packs is not None
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

    def _small_info(self, bid: str, views: Sequence[memoryview], size: int,
                    expected_crc: int | None) -> BlockInfo:
        crc = 0
        for view in views:
            crc = crc32c.crc32c(view, value=crc)
        if expected_crc is not None and crc != expected_crc:
            raise OSError(errno.EBADMSG, f"checksum mismatch for block {bid}: "
                          f"expected {expected_crc:#010x}, received data has {crc:#010x}")
        return BlockInfo(bid, size, crc)

    def put(self, block_id: str | bytes, buffers: Sequence[object],
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

    def put_many(self, items: Sequence[tuple[str | bytes, Sequence[object], int | None]]
                 ) -> list[BlockInfo | OSError]:
        """put() for many blocks; one result per item, a bad item fails alone.

        The small blocks share one append and one sync (durable when this returns); big ones
        take the file path one by one.
        """
        results: list[BlockInfo | OSError | None] = [None] * len(items)
        small: list[tuple[int, tuple[str, list[memoryview], BlockInfo]]] = []
        big: list[tuple[int, str, list[memoryview], int | None]] = []
        for i, (block_id, buffers, expected_crc) in enumerate(items):
            try:
                bid = parse_block_id(block_id)
                try:
                    views = [memoryview(b).cast("B") for b in buffers]
                except (TypeError, ValueError) as exc:
                    raise OSError(errno.EINVAL, f"block {bid}: unusable buffer: {exc}") from exc
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

    def _put_small(self, entries: Sequence[tuple[str, Sequence[memoryview], BlockInfo]]
                   ) -> list[BlockInfo | OSError]:
        """Pack path: existence checks and the append under the ids' striped locks, then
        one shared sync outside them."""
        packs = self._packs
        assert packs is not None
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
                    found = self._existing_file(bid, info) if self._file_exists(bid) else None
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
            elif isinstance(err, FileExistsError) or bid in str(err):
                out[k] = err
            else:
                out[k] = OSError(err.errno, f"cannot store block {bid}: {err.strerror or err}")
        for k in bad_files:
            if isinstance(out[k], BlockInfo):
                try:
                    self._remove(entries[k][0], None)
                except OSError as exc:  # the good pack copy is what reads find first
                    log.warning("could not remove the corrupt file of block %s: %s",
                                entries[k][0], exc)
        return out  # type: ignore[return-value]

    def _put_file(self, bid: str, views: list[memoryview],
                  expected_crc: int | None) -> BlockInfo:
        crc, table = checksums(views, self.chunk_size)
        info = BlockInfo(bid, sum(v.nbytes for v in views), crc)
        if expected_crc is not None and crc != expected_crc:
            raise OSError(errno.EBADMSG, f"checksum mismatch for block {bid}: "
                          f"expected {expected_crc:#010x}, received data has {crc:#010x}")
        stale: list[int] = []
        if self._existing(bid, info, stale):
            return info
        tail = encode_tail(info.size, crc, self.chunk_size, table)
        file_size = info.size + len(tail)
        tmp = os.path.join(self._tmp_dir, f"{bid}.{os.getpid()}.{next(self._tmp_seq)}.tmp")
        try:
            self._write_tmp(tmp, views + [memoryview(tail)])
            dir_fd = self._fanout_fd(bid)
            final = self._path(bid)
            with self._id_lock(bid):
                # Re-check under the lock: another thread may have stored this id meanwhile.
                if self._existing(bid, info, stale):
                    os.unlink(tmp)
                    return info
                try:
                    replaced = os.stat(final).st_size
                except FileNotFoundError:
                    replaced = None
                os.rename(tmp, final)
                if replaced is None:
                    self._add_usage(1, file_size)
                else:
                    self._add_usage(0, file_size - replaced)
            self._fsync(dir_fd)
        except OSError as exc:
            self._discard(tmp)
            if isinstance(exc, FileExistsError):
                raise
            raise OSError(exc.errno, f"cannot store block {bid}: {exc.strerror or exc}") from exc
        except BaseException:
            self._discard(tmp)
            raise
        if stale:  # a corrupt pack copy this block file replaces
            try:
                self._packs.delete_many([bid], expect=[stale[-1]])  # type: ignore[union-attr]
            except OSError as exc:
                log.warning("could not drop the corrupt pack copy of block %s: %s", bid, exc)
        return info

    @staticmethod
    def _discard(tmp: str) -> None:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:  # the next open cleans tmp/ anyway
            log.warning("could not remove %s: %s", tmp, exc)

    # ---- read path --------------------------------------------------------------------

    def get(self, block_id: str | bytes, offset: int = 0, length: int | None = None) -> memoryview:
        """Bytes [offset, offset+length) of a block (clipped at its end), verified.

        A whole-block read checks the block CRC; a range read reads and checks just the
        chunks it touches. offset must be within 0..size.
        """
        bid = parse_block_id(block_id)
        data = self._packs.get(bid, offset, length)  # type: ignore[union-attr]
        if data is not None:
            return data
        fd, meta = self._open_block(bid)
        try:
            if offset < 0 or offset > meta.size or (length is not None and length < 0):
                raise OSError(errno.EINVAL, f"block {bid}: range offset={offset} "
                              f"length={length} outside a block of {meta.size} bytes")
            end = meta.size if length is None else min(meta.size, offset + length)
            if offset == 0 and end == meta.size:
                # Data and chunk table in one read: a damaged table is a damaged replica
                # even when the data is intact, and it is cheaper to learn it now.
                view = memoryview(bytearray(meta.size + 4 * meta.count))
                pread_into(bid, fd, view, 0)
                if crc32c.crc32c(view[meta.size:]) != meta.table_crc:
                    raise BlockCorrupt(bid, "chunk table checksum mismatch")
                if crc32c.crc32c(view[:meta.size]) != meta.crc:
                    raise BlockCorrupt(bid, "data checksum mismatch")
                if self._drop_cache:
                    # Whole blocks are read once and sent away. Cached copies only grow the
                    # page cache, and new page-cache pages cost as much as on the write path
                    # (measured with bench/raw_disk.py: the reader that finds the cache
                    # full pays about twice the CPU per GiB). Range reads keep their pages
                    # for readahead and re-reads.
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                return view[:meta.size].toreadonly()
            if end == offset:
                return memoryview(b"")
            table = self._read_table(bid, fd, meta)
            cs = meta.chunk_size
            first, last = offset // cs, (end - 1) // cs
            start, stop = first * cs, min((last + 1) * cs, meta.size)
            buf = bytearray(stop - start)
            view = memoryview(buf)
            pread_into(bid, fd, view, start)
            for i in range(first, last + 1):
                lo = (i - first) * cs
                if crc32c.crc32c(view[lo:lo + cs]) != table[i]:
                    raise BlockCorrupt(bid, f"checksum mismatch in chunk {i}")
            return view[offset - start:end - start].toreadonly()
        finally:
            os.close(fd)

    def stat(self, block_id: str | bytes) -> BlockInfo:
        """Size and CRC from the footer (footer CRC and file length checked, data not read)
        or, for a pack block, from the index."""
        bid = parse_block_id(block_id)
        have = self._packs.stat(bid)  # type: ignore[union-attr]
        if have is not None:
            return BlockInfo(bid, *have)
        fd, meta = self._open_block(bid)
        os.close(fd)
        return BlockInfo(bid, meta.size, meta.crc)

    def check(self, block_id: str | bytes) -> BlockInfo:
        """Re-verify everything: footer, chunk table, every chunk and the whole-block CRC
        (a pack block: its record's data CRC)."""
        bid = parse_block_id(block_id)
        have = self._packs.check(bid)  # type: ignore[union-attr]
        if have is not None:
            return BlockInfo(bid, *have)
        return self._check_file(bid)

    def _check_file(self, bid: str) -> BlockInfo:
        fd, meta = self._open_block(bid)
        try:
            table = self._read_table(bid, fd, meta)
            cs = meta.chunk_size
            step = max(cs, _VERIFY_BUF // cs * cs)  # whole chunks per read
            buf = memoryview(bytearray(min(step, meta.size)))
            shift = shift_for(cs)
            whole = 0
            for pos in range(0, meta.size, step):
                view = buf[:min(step, meta.size - pos)]
                pread_into(bid, fd, view, pos)
                for lo in range(0, view.nbytes, cs):
                    chunk, index = view[lo:lo + cs], (pos + lo) // cs
                    crc = crc32c.crc32c(chunk)
                    if crc != table[index]:
                        raise BlockCorrupt(bid, f"checksum mismatch in chunk {index}")
                    if chunk.nbytes == cs:
                        whole = shift(whole) ^ crc
                    else:  # only the last chunk can be short
                        whole = crc32c.crc32c(chunk, value=whole)
            if whole != meta.crc:
                raise BlockCorrupt(bid, "data checksum mismatch")
            if self._drop_cache:  # a scrub pass would otherwise fill the page cache; see get()
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return BlockInfo(bid, meta.size, meta.crc)
        finally:
            os.close(fd)

    def verify(self, block_id: str | bytes) -> bool:
        """True if the block passes check(); a missing block raises FileNotFoundError."""
        try:
            self.check(block_id)
        except BlockCorrupt:
            return False
        return True

    # ---- removal ------------------------------------------------------------------------

    def _remove(self, bid: str, dest: str | None) -> bool:
        path = self._path(bid)
        with self._id_lock(bid):
            try:
                size = os.stat(path).st_size
                if dest is None:
                    os.unlink(path)
                else:
                    os.rename(path, dest)
            except FileNotFoundError:
                return False
            self._add_usage(-1, -size)
        self._fsync(self._fanout_fd(bid))
        return True

    def delete(self, block_id: str | bytes) -> bool:
        """Remove a block durably; False if it did not exist."""
        return self.delete_many([block_id])[0]

    def delete_many(self, block_ids: Sequence[str | bytes]) -> list[bool]:
        """Remove blocks durably (one sync for all the pack blocks); False: was not there."""
        bids = [parse_block_id(b) for b in block_ids]  # all valid, or nothing is done
        in_pack = self._packs.delete_many(bids)  # type: ignore[union-attr]
        # A file is looked for even when the pack had the id: never leave a second copy.
        return [self._remove(bid, None) or found for bid, found in zip(bids, in_pack)]

    def quarantine(self, block_id: str | bytes) -> bool:
        """Set a block aside in root/corrupt/ (kept for inspection, no longer served or listed).

        A block file is moved there; a pack block's record is copied there as
        <id>.<ns>.rec (header and data as stored), then tombstoned.
        """
        bid = parse_block_id(block_id)
        packs = self._packs
        assert packs is not None
        in_pack = False
        entry = packs.locate(bid)
        if entry is not None:
            dest = os.path.join(self._corrupt_dir, f"{bid}.{time.time_ns()}.rec")
            try:
                record = packs.read_record(bid)
            except OSError as exc:  # unreadable: nothing to keep, still stop serving it
                log.warning("quarantine of block %s: cannot read its record: %s", bid, exc)
                record = (entry[0], None)
            if record is not None:
                loc, raw = record
                if raw is not None:
                    self._write_aside(dest, raw)
                in_pack = packs.delete_many([bid], expect=[loc])[0]
                if in_pack:
                    log.warning("quarantined pack block %s to %s", bid, dest)
        dest = os.path.join(self._corrupt_dir, f"{bid}.{time.time_ns()}.blk")
        moved = self._remove(bid, dest)
        if moved:
            self._fsync_dir(str(self._corrupt_dir))
            log.warning("quarantined block %s to %s", bid, dest)
        return moved or in_pack

    def _write_aside(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            self._write(fd, [memoryview(data)])
            self._fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir(str(self._corrupt_dir))

    def compact(self, min_garbage: float = 0.5) -> CompactStats:
        """Rewrite pack files whose dead bytes are >= min_garbage of their size (see packs.py).
        Cheap when there is nothing to do; meant for a background thread."""
        return self._packs.compact(min_garbage)  # type: ignore[union-attr]

    # ---- listing and accounting -------------------------------------------------------

    def ids(self) -> Iterator[str]:
        """Ids of stored blocks: the pack index, then directory names (no file is opened)."""
        packs = self._packs
        assert packs is not None
        yield from packs.ids()
        for fan in sorted(os.scandir(self._blocks_dir), key=lambda e: e.name):
            if fan.is_dir(follow_symlinks=False) and _FANOUT_NAME.fullmatch(fan.name):
                with os.scandir(fan.path) as entries:
                    for entry in entries:
                        if self._is_block_entry(fan.name, entry) and entry.name[:-4] not in packs:
                            yield entry.name[:-4]

    def infos(self, on_corrupt: Callable[[str, BlockCorrupt], None] | None = None
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
        packs = self._packs
        assert packs is not None
        with self._stats_lock:
            return Usage(self._blocks + len(packs), self._bytes + packs.disk_bytes())

    def pack_stats(self) -> PackStats:
        return self._packs.stats()  # type: ignore[union-attr]

    def capacity(self) -> Capacity:
        st = os.statvfs(self.root)
        return Capacity(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
