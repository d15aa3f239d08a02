"""The pack file format: record headers, the scanner that replays a pack stepping over
damage, and `inspect`, a read-only replay of a pack directory for tools and tests.

No state and no durability (datanode/packs.py owns those); reads only.

On-disk format, version 1 (little-endian): files directory/pack-<seq, 8 digits>.pack, each a
sequence of records. Record = header (44 bytes) | data (size bytes; none for tombstones):
  magic "AGPK" | u8 kind (1 put, 2 tombstone) | u8 version (1) | u16 reserved (0) |
  16-byte block id | u32 size | u32 CRC32C(data) | u64 ref | u32 CRC32C(the 40 bytes before)
A location ("loc") is seq << 32 | offset of a record's header in its pack. Puts have ref 0,
tombstones have size 0, CRC 0 and ref = loc of the put they kill. Replay in (seq, offset)
order: a put sets id -> its loc (the last put wins); a tombstone removes the id only if the
id's current loc is exactly its ref, so put X, delete X, put X again replays right even after
compaction has moved records around.
"""
from __future__ import annotations

import logging
import os
import re
import struct
from typing import Iterator, NamedTuple

from broker.crc import crc32c

log = logging.getLogger(__name__)

MAGIC = b"AGPK"
VERSION = 1
KIND_PUT = 1
KIND_TOMB = 2
_HEAD = struct.Struct("<4sBBH16sIIQ")  # the header without its own CRC
HEADER_SIZE = _HEAD.size + 4
_U32 = struct.Struct("<I")
MAX_RECORD = 1 << 30       # plausibility bound on a record's size
_PACK_NAME = re.compile(r"pack-(\d{8,10})\.pack")
_SCAN_BUF = 1 << 20


def pack_name(seq: int) -> str:
    return f"pack-{seq:08d}.pack"


def list_packs(directory: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(seq, path) of the pack files in directory, in seq order; anything else is logged."""
    found: list[tuple[int, str]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            m = _PACK_NAME.fullmatch(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                found.append((int(m[1]), entry.path))
            else:
                log.warning("ignoring unexpected entry %s", entry.path)
    found.sort()
    return found


def header(kind: int, raw_id: bytes, size: int, crc: int, ref: int) -> bytes:
    head = _HEAD.pack(MAGIC, kind, VERSION, 0, raw_id, size, crc, ref)
    return head + _U32.pack(crc32c(head))


def parse_header(raw: memoryview | bytes, off: int, seq: int, file_size: int
                 ) -> tuple[int, bytes, int, int, int] | None:
    """(kind, raw id, size, crc, ref) if raw holds a valid, plausible header at off."""
    if len(raw) < HEADER_SIZE:
        return None
    magic, kind, version, reserved, rid, size, crc, ref = _HEAD.unpack_from(raw)
    if magic != MAGIC or crc32c(raw[:_HEAD.size]) != _U32.unpack_from(raw, _HEAD.size)[0]:
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


class Record(NamedTuple):
    off: int
    kind: int
    rid: bytes
    size: int
    crc: int
    ref: int
    data: memoryview | None


def pread(fd: int, n: int, off: int) -> bytes:
    """Up to n bytes at off (fewer only at the end of the file)."""
    parts, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, off + got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Scanner:
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
            return memoryview(pread(self.fd, n, off))
        self._buf = pread(self.fd, _SCAN_BUF, off)  # a new object: handed-out views stay valid
        self._buf_off = off
        return memoryview(self._buf)[:n]

    def _header_at(self, off: int) -> tuple[int, bytes, int, int, int] | None:
        return parse_header(self._read(off, HEADER_SIZE), off, self.seq, self.file_size)

    def _resync(self, start: int) -> int | None:
        pos = start
        while pos + HEADER_SIZE <= self.file_size:
            chunk = pread(self.fd, min(_SCAN_BUF, self.file_size - pos), pos)
            i = chunk.find(MAGIC)
            while i >= 0:
                if self._header_at(pos + i) is not None:
                    return pos + i
                i = chunk.find(MAGIC, i + 1)
            if len(chunk) < _SCAN_BUF:
                break
            pos += len(chunk) - (len(MAGIC) - 1)  # a magic across the chunk edge is found next
        return None

    def __iter__(self) -> Iterator[Record]:
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
                if self.verify and (len(data) != size or crc32c(data) != crc):
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
            yield Record(pos, kind, rid, size, crc, ref, data if self.with_data else None)
            pos += HEADER_SIZE + size
        if bad is not None:
            self.tail_garbage = bad


def inspect(directory: str | os.PathLike[str]) -> dict[str, tuple[str, int, int, int]]:
    """Read-only replay of a pack directory, for tools and fault tests (never while they
    could race a running DataNode's writes in a way that matters): the live blocks as
    id -> (pack path, offset of the data, size, crc). Nothing is truncated or synced."""
    live: dict[str, tuple[int, str, int, int, int]] = {}   # id -> (loc, path, off, size, crc)
    for seq, path in list_packs(directory):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for rec in Scanner(fd, path, seq, os.fstat(fd).st_size, with_data=False,
                               verify=False):
                bid, loc = rec.rid.hex(), seq << 32 | rec.off
                if rec.kind == KIND_PUT:
                    live[bid] = (loc, path, rec.off + HEADER_SIZE, rec.size, rec.crc)
                elif bid in live and live[bid][0] == rec.ref:
                    del live[bid]
        finally:
            os.close(fd)
    return {bid: v[1:] for bid, v in live.items()}
