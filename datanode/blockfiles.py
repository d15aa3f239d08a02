"""The big-block backend: one self-checking file per block under root/blocks/<2 hex>/,
written tmp -> fsync -> DONTNEED -> rename -> fsync dir; verified reads; quarantine of files.

The file format is datanode/fileformat.py. Same-id serialisation is the caller's (BlockStore
passes its striped lock in); usage counters of the files are kept here. No sockets.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import struct
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from broker.crc import crc32c
from datanode.blocks import BlockCorrupt, BlockInfo, cannot_store
from datanode.fileformat import FOOTER_SIZE, Meta, decode_footer, encode_tail, shift_for
from datanode.fileio import open_dir, pread_into, write_all

log = logging.getLogger(__name__)

_VERIFY_BUF = 1 << 20  # check() streams through a buffer this size instead of the whole block
_BLOCK_NAME = re.compile(r"([0-9a-f]{32})\.blk")
_FANOUT_NAME = re.compile(r"[0-9a-f]{2}")


class BlockFiles:
    """Block files under root/blocks/, their tmp/ and corrupt/ dirs; see the module docstring.

    Opening removes crash residue from tmp/ and counts the files (scan()). Not a lock
    holder: callers serialise puts and removals of one id with the lock they pass in.
    """

    def __init__(self, root: Path, *, chunk_size: int, fsync: bool, drop_cache: bool) -> None:
        self.chunk_size = chunk_size
        self._fsync_enabled = fsync  # False only for tests/benchmarks: nothing is durable
        self._drop_cache = drop_cache and hasattr(os, "posix_fadvise")
        self.blocks_dir = root / "blocks"
        self._tmp_dir = root / "tmp"
        self.corrupt_dir = root / "corrupt"
        for d in (self.blocks_dir, self._tmp_dir, self.corrupt_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._tmp_seq = itertools.count()
        self._stats_lock = threading.Lock()
        self._blocks = self._bytes = 0
        self._dir_fds: dict[str, int] = {}  # fan-out dirs known to exist durably
        self._dir_lock = threading.Lock()
        self._clean_tmp()

    # ---- open, close ------------------------------------------------------------------

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

    def scan(self, also_elsewhere: Callable[[bytes], bool]) -> list[bytes]:
        """Count the block files (usage()); return the ids also_elsewhere() says are stored
        elsewhere too (a crash between writing one copy and removing the other)."""
        blocks = size = 0
        dups: list[bytes] = []
        for fan in os.scandir(self.blocks_dir):
            if not (fan.is_dir(follow_symlinks=False) and _FANOUT_NAME.fullmatch(fan.name)):
                log.warning("ignoring unexpected entry %s", fan.path)
                continue
            self._dir_fds[fan.name] = open_dir(fan.path)
            with os.scandir(fan.path) as entries:
                for entry in entries:
                    if self._is_block_entry(fan.name, entry):
                        blocks += 1
                        size += entry.stat(follow_symlinks=False).st_size
                        bid = bytes.fromhex(entry.name[:-4])
                        if also_elsewhere(bid):
                            dups.append(bid)
        self._blocks, self._bytes = blocks, size
        return dups

    @staticmethod
    def _is_block_entry(fan: str, entry: os.DirEntry[str]) -> bool:
        m = _BLOCK_NAME.fullmatch(entry.name)
        return bool(m and m[1].startswith(fan) and entry.is_file(follow_symlinks=False))

    def close(self) -> None:
        with self._dir_lock:
            for fd in self._dir_fds.values():
                os.close(fd)
            self._dir_fds.clear()

    # ---- paths, counters, durability hooks -----------------------------------------------

    def path(self, bid: bytes) -> str:
        # bid is a validated 16-byte id, so its hex is never a path fragment.
        name = bid.hex()
        return os.path.join(self.blocks_dir, name[:2], name + ".blk")

    def exists(self, bid: bytes) -> bool:
        try:
            os.stat(self.path(bid))
        except FileNotFoundError:
            return False
        return True

    def usage(self) -> tuple[int, int]:
        """(block files, their bytes), kept incrementally."""
        with self._stats_lock:
            return self._blocks, self._bytes

    def _add_usage(self, blocks: int, nbytes: int) -> None:
        with self._stats_lock:
            self._blocks += blocks
            self._bytes += nbytes

    def _write(self, fd: int, iov: list[memoryview]) -> None:
        """Write every byte of iov; a hook tests override to inject ENOSPC/EIO."""
        write_all(fd, iov)

    def _fsync(self, fd: int) -> None:
        if self._fsync_enabled:
            os.fsync(fd)

    def fsync_dir(self, path: str | os.PathLike[str]) -> None:
        fd = open_dir(path)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _fanout_fd(self, bid: bytes) -> int:
        """fd of the block's fan-out dir, creating it (durably) the first time."""
        fan = bid[:1].hex()
        fd = self._dir_fds.get(fan)
        if fd is not None:
            return fd
        with self._dir_lock:
            if fan not in self._dir_fds:
                path = os.path.join(self.blocks_dir, fan)
                os.makedirs(path, exist_ok=True)
                self.fsync_dir(self.blocks_dir)
                self._dir_fds[fan] = open_dir(path)
            return self._dir_fds[fan]

    # ---- write path -------------------------------------------------------------------

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

    def write(self, info: BlockInfo, views: list[memoryview], table: list[int],
              lock: threading.Lock, stored: Callable[[], bool | None]) -> bool:
        """Store a block file durably from views (its CRC and chunk table already computed).

        Under `lock`, stored() is asked again just before the rename: if another thread
        stored the id meanwhile, nothing is installed and the result is False. If only the
        final directory fsync fails, the block may stay visible but this still raises.
        """
        bid = info.id
        tail = encode_tail(info.size, info.crc, self.chunk_size, table)
        file_size = info.size + len(tail)
        tmp = os.path.join(self._tmp_dir, f"{bid.hex()}.{os.getpid()}.{next(self._tmp_seq)}.tmp")
        try:
            self._write_tmp(tmp, views + [memoryview(tail)])
            dir_fd = self._fanout_fd(bid)
            final = self.path(bid)
            with lock:
                if stored():
                    os.unlink(tmp)
                    return False
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
            raise cannot_store(bid, exc) from exc
        except BaseException:
            self._discard(tmp)
            raise
        return True

    @staticmethod
    def _discard(tmp: str) -> None:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:  # the next open cleans tmp/ anyway
            log.warning("could not remove %s: %s", tmp, exc)

    def write_aside(self, name: str, data: bytes) -> str:
        """Keep bytes for inspection as corrupt/<name>, durably; returns the path."""
        path = os.path.join(self.corrupt_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            self._write(fd, [memoryview(data)])
            self._fsync(fd)
        finally:
            os.close(fd)
        self.fsync_dir(self.corrupt_dir)
        return path

    # ---- read path --------------------------------------------------------------------

    def _open_block(self, bid: bytes) -> tuple[int, Meta]:
        try:
            fd = os.open(self.path(bid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"block {bid.hex()} not found") from None
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

    def _read_table(self, bid: bytes, fd: int, meta: Meta) -> tuple[int, ...]:
        raw = bytearray(4 * meta.count)
        pread_into(bid, fd, memoryview(raw), meta.size)
        if crc32c(raw) != meta.table_crc:
            raise BlockCorrupt(bid, "chunk table checksum mismatch")
        return struct.unpack(f"<{meta.count}I", raw)

    def get(self, bid: bytes, offset: int = 0, length: int | None = None) -> memoryview:
        """Bytes [offset, offset+length) of a block file (clipped at its end), verified."""
        fd, meta = self._open_block(bid)
        try:
            if offset < 0 or offset > meta.size or (length is not None and length < 0):
                raise OSError(errno.EINVAL, f"block {bid.hex()}: range offset={offset} "
                              f"length={length} outside a block of {meta.size} bytes")
            end = meta.size if length is None else min(meta.size, offset + length)
            if offset == 0 and end == meta.size:
                # Data and chunk table in one read: a damaged table is a damaged replica
                # even when the data is intact, and it is cheaper to learn it now.
                view = memoryview(bytearray(meta.size + 4 * meta.count))
                pread_into(bid, fd, view, 0)
                if crc32c(view[meta.size:]) != meta.table_crc:
                    raise BlockCorrupt(bid, "chunk table checksum mismatch")
                if crc32c(view[:meta.size]) != meta.crc:
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
            start, view, _, _ = self._chunks(bid, fd, meta, offset, end)
            return view[offset - start:end - start]
        finally:
            os.close(fd)

    def get_chunks(self, bid: bytes, offset: int = 0,
                   length: int | None = None) -> tuple[int, memoryview, int, tuple[int, ...]]:
        """The whole chunks covering [offset, offset+length), verified here, with what a
        reader needs to verify them itself: (start, data, chunk size, chunk CRC table)."""
        fd, meta = self._open_block(bid)
        try:
            if offset < 0 or offset > meta.size or (length is not None and length < 0):
                raise OSError(errno.EINVAL, f"block {bid.hex()}: range offset={offset} "
                              f"length={length} outside a block of {meta.size} bytes")
            end = meta.size if length is None else min(meta.size, offset + length)
            return self._chunks(bid, fd, meta, offset, end)
        finally:
            os.close(fd)

    def _chunks(self, bid: bytes, fd: int, meta: Meta, offset: int,
                end: int) -> tuple[int, memoryview, int, tuple[int, ...]]:
        table = self._read_table(bid, fd, meta)
        cs = meta.chunk_size
        if end <= offset:
            return offset - offset % cs, memoryview(b""), cs, table
        first, last = offset // cs, (end - 1) // cs
        start, stop = first * cs, min((last + 1) * cs, meta.size)
        view = memoryview(bytearray(stop - start))
        pread_into(bid, fd, view, start)
        for i in range(first, last + 1):
            lo = (i - first) * cs
            if crc32c(view[lo:lo + cs]) != table[i]:
                raise BlockCorrupt(bid, f"checksum mismatch in chunk {i}")
        return start, view.toreadonly(), cs, table

    def stat(self, bid: bytes) -> BlockInfo:
        """Size and CRC from the footer (footer CRC and file length checked, data not read)."""
        fd, meta = self._open_block(bid)
        os.close(fd)
        return BlockInfo(bid, meta.size, meta.crc)

    def check(self, bid: bytes) -> BlockInfo:
        """Re-verify footer, chunk table, every chunk and the whole-block CRC."""
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
                    crc = crc32c(chunk)
                    if crc != table[index]:
                        raise BlockCorrupt(bid, f"checksum mismatch in chunk {index}")
                    if chunk.nbytes == cs:
                        whole = shift(whole) ^ crc
                    else:  # only the last chunk can be short
                        whole = crc32c(chunk, value=whole)
            if whole != meta.crc:
                raise BlockCorrupt(bid, "data checksum mismatch")
            if self._drop_cache:  # a scrub pass would otherwise fill the page cache; see get()
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return BlockInfo(bid, meta.size, meta.crc)
        finally:
            os.close(fd)

    def is_sound(self, bid: bytes) -> bool:
        """True if the block file exists and passes check()."""
        try:
            self.check(bid)
        except (FileNotFoundError, BlockCorrupt):
            return False
        return True

    # ---- removal and listing --------------------------------------------------------------

    def remove(self, bid: bytes, lock: threading.Lock, dest: str | None = None) -> bool:
        """Unlink the block file (or move it to dest) durably; False if there was none."""
        if not self._unlink(bid, lock, dest):
            return False
        self._fsync(self._fanout_fd(bid))
        return True

    def remove_many(self, bids: Sequence[bytes],
                    lock_of: Callable[[bytes], threading.Lock]) -> list[bool]:
        """Unlink these block files, durable on return with one sync per fan-out
        directory touched (not one per block); False where there was none."""
        done = [self._unlink(bid, lock_of(bid), None) for bid in bids]
        for fan in sorted({bid[:1] for bid, gone in zip(bids, done) if gone}):
            self._fsync(self._fanout_fd(fan))
        return done

    def _unlink(self, bid: bytes, lock: threading.Lock, dest: str | None) -> bool:
        path = self.path(bid)
        with lock:
            try:
                size = os.stat(path).st_size
                if dest is None:
                    os.unlink(path)
                else:
                    os.rename(path, dest)
            except FileNotFoundError:
                return False
            self._add_usage(-1, -size)
        return True

    def quarantine(self, bid: bytes, lock: threading.Lock, stamp: int) -> bool:
        """Move the block file to corrupt/<id>.<stamp>.blk; False if there was none."""
        dest = os.path.join(self.corrupt_dir, f"{bid.hex()}.{stamp}.blk")
        moved = self.remove(bid, lock, dest)
        if moved:
            self.fsync_dir(self.corrupt_dir)
            log.warning("quarantined block %s to %s", bid.hex(), dest)
        return moved

    def ids(self, skip: Callable[[bytes], bool]) -> Iterator[bytes]:
        """Ids of the block files from directory names (no file is opened), but not those
        skip() says are listed already."""
        for fan in sorted(os.scandir(self.blocks_dir), key=lambda e: e.name):
            if fan.is_dir(follow_symlinks=False) and _FANOUT_NAME.fullmatch(fan.name):
                with os.scandir(fan.path) as entries:
                    for entry in entries:
                        if self._is_block_entry(fan.name, entry):
                            bid = bytes.fromhex(entry.name[:-4])
                            if not skip(bid):
                                yield bid
