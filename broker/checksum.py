"""CRC32C algebra and verified range reads: no byte of a block is used before its chunk CRC
is checked and the chunk table itself is tied to the whole-block CRC the MDS holds.

Public API:
    crc32c_combine(crc_a, crc_b, len_b) -> int          CRC32C(A || B)
    shift_for(n) -> Shift      cached table form of the same operator, 4 lookups per call:
                               shift_for(n)(crc) == crc32c_combine(crc, 0, n)
    table_crc(chunk_crcs, chunk_size, block_size) -> int the block CRC the table implies
    aligned_range(offset, length, chunk_size, block_size) -> (start, end)
    verify_range(chunk_crcs, chunk_size, block_size, block_crc, offset, data) -> None,
        or OSError(EIO) saying what failed

CRCs are linear, not cryptographic: this catches corruption and inconsistent tables, not a
DataNode that forges data on purpose (docs/security-primitives.md, "Limits").
"""
from __future__ import annotations

import errno
import functools
from typing import Sequence

from .crc import crc32c as _crc32c

POLY = 0x82F63B78  # Castagnoli, bit-reflected
_X0 = 1 << 31      # the polynomial 1 (x**0) in reflected order


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) mod P(x), both reflected (zlib's multmodp)."""
    if a == 0:
        return 0
    m, p = _X0, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x**1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()  # x**(2**k) mod P; the powers repeat with period < 2**32


@functools.lru_cache(maxsize=256)
def _x8nmodp(n: int) -> int:
    """x**(8n) mod P: appending n zero bytes multiplies the CRC register by this."""
    p, k = _X0, 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32c_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC32C(A || B) from CRC32C(A), CRC32C(B) and len(B): O(log len_b), no data.

    The pre- and post-inversion of CRC32C cancel out between the two halves, as for zlib's
    crc32_combine, so only crc_a needs shifting past B's length. The operator for a length
    is cached; a caller combining many CRCs of one length should use shift_for(n) instead.
    """
    if len_b < 0:
        raise ValueError(f"negative length {len_b}")
    return _multmodp(_x8nmodp(len_b), crc_a) ^ crc_b


class Shift:
    """Multiply a CRC register by x**(8n) mod P with four byte tables (4 lookups per call).

    Built from 32 polynomial products, about 0.2 ms; shift_for caches one per length, since
    chunk sizes repeat.
    """

    __slots__ = ("n", "t0", "t1", "t2", "t3")

    def __init__(self, n: int) -> None:
        self.n = n
        op = _x8nmodp(n)
        basis = [_multmodp(op, 1 << i) for i in range(32)]  # image of each register bit
        tables = []
        for k in range(4):
            table = [0] * 256
            for byte in range(1, 256):
                low = byte & -byte
                table[byte] = table[byte ^ low] ^ basis[8 * k + low.bit_length() - 1]
            tables.append(table)
        self.t0, self.t1, self.t2, self.t3 = tables

    def __call__(self, crc: int) -> int:
        return (self.t0[crc & 255] ^ self.t1[(crc >> 8) & 255] ^ self.t2[(crc >> 16) & 255]
                ^ self.t3[crc >> 24])


@functools.lru_cache(maxsize=64)
def shift_for(n: int) -> Shift:
    return Shift(n)


def _eio(message: str) -> OSError:
    return OSError(errno.EIO, message)


def _count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def table_crc(chunk_crcs: Sequence[int], chunk_size: int, block_size: int) -> int:
    """The whole-block CRC32C implied by a chunk table (the table must have the right length
    and hold u32 values; verify_range checks both before calling this)."""
    full, tail = divmod(block_size, chunk_size)
    s = shift_for(chunk_size)
    t0, t1, t2, t3 = s.t0, s.t1, s.t2, s.t3
    whole = 0
    for c in chunk_crcs[:full]:  # hand-inlined Shift.__call__: this loop is the hot path
        whole = t0[whole & 255] ^ t1[(whole >> 8) & 255] ^ t2[(whole >> 16) & 255] \
            ^ t3[whole >> 24] ^ c
    if tail:
        whole = shift_for(tail)(whole) ^ chunk_crcs[full]
    return whole


def aligned_range(offset: int, length: int, chunk_size: int, block_size: int) -> tuple[int, int]:
    """The chunk-aligned byte range [start, end) to fetch so that [offset, offset + length)
    can be verified; the caller slices data[offset - start:][:length] afterwards. The range
    is clipped to the block, so end is a chunk boundary or block_size."""
    if chunk_size <= 0 or block_size < 0 or offset < 0 or length < 0:
        raise ValueError("offset, length and block size must be >= 0, chunk size > 0")
    if offset > block_size:
        raise ValueError(f"offset {offset} is past the end of a {block_size}-byte block")
    stop = min(offset + length, block_size)
    start = offset - offset % chunk_size
    if stop == offset:  # nothing asked for: fetch nothing
        return start, start
    end = min(-(-stop // chunk_size) * chunk_size, block_size)
    return start, max(start, end)


def verify_range(chunk_crcs: object, chunk_size: int, block_size: int, block_crc: int,
                 offset: int, data: bytes | bytearray | memoryview) -> None:
    """Check data = the block's bytes from offset, against a table a DataNode sent.

    chunk_size, block_size, block_crc and offset are the caller's (block_size and block_crc
    from the MDS, which is authoritative); chunk_crcs and data come from the DataNode and
    are not trusted. offset must be chunk-aligned and data must end on a chunk boundary or
    at the end of the block (use aligned_range). Raises OSError(EIO) on any mismatch.
    """
    if chunk_size <= 0 or not 0 <= offset <= block_size or offset % chunk_size:
        raise ValueError(f"offset {offset} is not a chunk boundary of a {block_size}-byte "
                         f"block with {chunk_size}-byte chunks")
    count = _count(block_size, chunk_size)
    if not isinstance(chunk_crcs, (list, tuple)) or len(chunk_crcs) != count:
        got = len(chunk_crcs) if isinstance(chunk_crcs, (list, tuple)) else type(chunk_crcs).__name__
        raise _eio(f"chunk CRC table has {got} entries, a {block_size}-byte block with "
                   f"{chunk_size}-byte chunks has {count}")
    for c in chunk_crcs:
        if type(c) is not int or not 0 <= c <= 0xFFFFFFFF:
            raise _eio("chunk CRC table holds a value that is not a 32-bit CRC")
    if table_crc(chunk_crcs, chunk_size, block_size) != block_crc:
        raise _eio(f"chunk CRC table does not match the block checksum {block_crc:08x}")
    view = memoryview(data).cast("B")
    end = offset + view.nbytes
    if end > block_size or (end % chunk_size and end != block_size):
        raise _eio(f"range read returned {view.nbytes} bytes from offset {offset}: not whole "
                   f"chunks of a {block_size}-byte block")
    crc = _crc32c
    first = offset // chunk_size
    for lo in range(0, view.nbytes, chunk_size):
        i = first + lo // chunk_size
        if crc(view[lo:lo + chunk_size]) != chunk_crcs[i]:
            start = offset + lo
            raise _eio(f"chunk {i} (bytes {start}..{min(start + chunk_size, block_size)}) "
                       f"fails its CRC32C")
