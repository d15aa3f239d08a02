"""The file format of a big block: data | chunk CRC table | footer, self-checking.

Pure encoding, decoding and checksumming; no paths and no durability (datanode/blockfiles.py
owns those).

Format, version 1 (little-endian):
  data (size bytes) | chunk table: count x u32 CRC32C, one per chunk_size piece | footer
  footer (40 bytes) = magic "AEGISBLK" | u16 version | u16 flags (0) | u32 chunk_size |
                      u64 size | u32 count | u32 CRC32C(data) | u32 CRC32C(table) |
                      u32 CRC32C(the 36 footer bytes before it)
The file size must equal size + 4*count + 40, so truncation is always detected. A whole
read checks footer, table CRC and data CRC; a range read checks footer, table CRC and the
chunks it touches; stat() checks only the footer.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Sequence

from broker.crc import crc32c
from datanode.blocks import BlockCorrupt

MAGIC = b"AEGISBLK"
VERSION = 1
_HEAD = struct.Struct("<8sHHIQIII")  # the footer without its own CRC
FOOTER_SIZE = _HEAD.size + 4
_U32 = struct.Struct("<I")
MAX_CHUNK = 64 * 1024 * 1024  # bounds what a footer may ask check() to allocate


@dataclass(frozen=True, slots=True)
class Meta:
    size: int
    crc: int
    chunk_size: int
    count: int
    table_crc: int

    @property
    def file_size(self) -> int:
        return self.size + 4 * self.count + FOOTER_SIZE


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


class CrcShift:
    """crc32c(A + B) == shift(crc32c(A)) ^ crc32c(B) whenever len(B) == n.

    Lets the whole-block CRC be derived from the chunk CRCs, so data is checksummed in one
    pass instead of two (about 0.06 CPU-s per GiB saved on put and on check).
    """

    def __init__(self, n: int) -> None:
        m = 0xFFFFFFFF
        zeros = bytes(n)
        # Feeding zeros is linear in the CRC register; crc32c() adds pre/post inversion.
        basis = [~crc32c(zeros, value=~(1 << i) & m) & m for i in range(32)]
        self.tables: list[list[int]] = []
        for k in range(4):
            table = [0] * 256
            for byte in range(1, 256):
                low = byte & -byte
                table[byte] = table[byte ^ low] ^ basis[8 * k + low.bit_length() - 1]
            self.tables.append(table)

    def __call__(self, crc: int) -> int:
        t0, t1, t2, t3 = self.tables
        return t0[crc & 255] ^ t1[(crc >> 8) & 255] ^ t2[(crc >> 16) & 255] ^ t3[crc >> 24]


@functools.lru_cache(maxsize=8)
def shift_for(chunk_size: int) -> CrcShift:
    return CrcShift(chunk_size)


def checksums(views: Sequence[memoryview], cs: int) -> tuple[int, list[int]]:
    """CRC32C of the whole payload and of each cs-byte chunk, across buffer boundaries."""
    t0, t1, t2, t3 = shift_for(cs).tables
    crc = crc32c
    whole, cur, table = 0, 0, []
    partial: list[memoryview] = []  # pieces of a chunk that spans buffers
    filled = 0
    for view in views:
        n, pos = view.nbytes, 0
        if filled:  # finish the chunk begun in an earlier buffer
            pos = min(cs - filled, n)
            partial.append(view[:pos])
            cur = crc(partial[-1], value=cur)
            filled += pos
            if filled < cs:
                continue
            whole = t0[whole & 255] ^ t1[(whole >> 8) & 255] ^ t2[(whole >> 16) & 255] \
                ^ t3[whole >> 24] ^ cur
            table.append(cur)
            partial, filled = [], 0
        # The hot loop: whole chunks inside one buffer (hand-inlined shift, ~3x cheaper).
        full_end = pos + (n - pos) // cs * cs
        for lo in range(pos, full_end, cs):
            c = crc(view[lo:lo + cs])
            table.append(c)
            whole = t0[whole & 255] ^ t1[(whole >> 8) & 255] ^ t2[(whole >> 16) & 255] \
                ^ t3[whole >> 24] ^ c
        if full_end < n:
            partial.append(view[full_end:])
            cur = crc(partial[-1])
            filled = n - full_end
    if filled:  # a short last chunk has no shift table: chain the whole CRC through it
        table.append(cur)
        for piece in partial:
            whole = crc(piece, value=whole)
    return whole, table


def encode_tail(size: int, crc: int, chunk_size: int, table: list[int]) -> bytes:
    table_bytes = struct.pack(f"<{len(table)}I", *table)
    head = _HEAD.pack(MAGIC, VERSION, 0, chunk_size, size, len(table), crc,
                      crc32c(table_bytes))
    return table_bytes + head + _U32.pack(crc32c(head))


def decode_footer(block_id: bytes, raw: bytes, file_size: int) -> Meta:
    magic, version, flags, chunk_size, size, count, crc, table_crc = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise BlockCorrupt(block_id, "no footer magic (truncated or not a block file)")
    if crc32c(raw[:_HEAD.size]) != _U32.unpack_from(raw, _HEAD.size)[0]:
        raise BlockCorrupt(block_id, "footer checksum mismatch")
    if version != VERSION or flags != 0:
        raise BlockCorrupt(block_id, f"unsupported format version {version} flags {flags:#x}")
    if not 0 < chunk_size <= MAX_CHUNK or count != chunk_count(size, chunk_size):
        raise BlockCorrupt(block_id, "inconsistent footer")
    meta = Meta(size, crc, chunk_size, count, table_crc)
    if meta.file_size != file_size:
        raise BlockCorrupt(block_id, f"file is {file_size} bytes, footer says {meta.file_size}")
    return meta

