"""Tests for broker/checksum.py: crc32c_combine against real concatenations, aligned_range,
and verify_range refusing flipped bytes, forged or wrong-length tables and short data."""
from __future__ import annotations

import errno
import random
import time

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.checksum import (aligned_range, crc32c_combine, shift_for, table_crc,
                             verify_range)
from datanode.fileformat import checksums

C = crc32c.crc32c
MiB = 1 << 20


def block(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def table_for(data: bytes, chunk: int) -> list[int]:
    return [C(data[i:i + chunk]) for i in range(0, len(data), chunk)]


def eio(*args) -> str:
    with pytest.raises(OSError) as info:
        verify_range(*args)
    assert info.value.errno == errno.EIO
    return str(info.value)


# --- crc32c_combine -------------------------------------------------------------------------

@pytest.mark.parametrize("la,lb", [(0, 0), (0, 1), (1, 0), (1, 1), (3, 5), (64, 63),
                                   (4096, 1), (1, 4096), (65536, 65537), (7, 3 * MiB + 17)])
def test_combine_equals_crc_of_concatenation(la: int, lb: int) -> None:
    a, b = block(la, 1), block(lb, 2)
    assert crc32c_combine(C(a), C(b), lb) == C(a + b)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_combine_property(a: bytes, b: bytes) -> None:
    assert crc32c_combine(C(a), C(b), len(b)) == C(a + b)
    assert crc32c_combine(C(a), C(b), len(b)) == C(b, value=C(a))  # the package's continuation


def test_combine_for_multi_mib_lengths_without_the_data() -> None:
    for n in (4 * MiB, 64 * MiB + 3, 2**40 + 1):
        # crc32c of n zero bytes starting from crc a == combine(a, crc(zeros), n); check the
        # operator part alone: combine(a, 0, n) is linear in a
        a, b = 0x12345678, 0x0BADF00D
        assert crc32c_combine(a ^ b, 0, n) == crc32c_combine(a, 0, n) ^ crc32c_combine(b, 0, n)
    zeros = bytes(4 * MiB)
    assert crc32c_combine(C(b"abc"), C(zeros), 4 * MiB) == C(b"abc" + zeros)


def test_combine_is_fast_for_large_lengths() -> None:
    start = time.perf_counter()
    for i in range(200):
        crc32c_combine(i, i, 4 * MiB + i)  # 200 different lengths: nothing cached
    assert time.perf_counter() - start < 2.0  # O(log n): ~10 us each; O(n) would be seconds


def test_shift_table_agrees_with_combine() -> None:
    rng = random.Random(3)
    for n in (0, 1, 5, 65536, 4 * MiB):
        s = shift_for(n)
        assert shift_for(n) is s  # cached
        for _ in range(50):
            crc = rng.getrandbits(32)
            assert s(crc) == crc32c_combine(crc, 0, n)


def test_negative_length_is_refused() -> None:
    with pytest.raises(ValueError):
        crc32c_combine(0, 0, -1)


@pytest.mark.parametrize("size,chunk", [(0, 64), (1, 64), (64, 64), (65, 64), (1000, 7),
                                        (4 * MiB, 64 * 1024), (4 * MiB - 1, 64 * 1024)])
def test_table_crc_is_the_whole_block_crc(size: int, chunk: int) -> None:
    data = block(size)
    assert table_crc(table_for(data, chunk), chunk, size) == C(data)
    whole, table = checksums([memoryview(data)], chunk)  # the DataNode's own computation
    assert table == table_for(data, chunk) and whole == C(data)


# --- aligned_range --------------------------------------------------------------------------

@pytest.mark.parametrize("offset,length,expect", [
    (0, 0, (0, 0)), (0, 1, (0, 10)), (5, 1, (0, 10)), (9, 2, (0, 20)), (10, 10, (10, 20)),
    (10, 11, (10, 30)), (0, 95, (0, 95)), (91, 100, (90, 95)), (95, 5, (90, 90)),
    (94, 1, (90, 95)), (0, 10**9, (0, 95)),
])
def test_aligned_range(offset: int, length: int, expect: tuple[int, int]) -> None:
    assert aligned_range(offset, length, 10, 95) == expect


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(1, 700), st.data())
def test_aligned_range_covers_and_verifies(size: int, chunk: int, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, size))
    length = data.draw(st.integers(0, size - offset + 10))
    start, end = aligned_range(offset, length, chunk, size)
    assert start <= offset and start % chunk == 0
    stop = min(offset + length, size)
    assert (end >= stop or stop == offset) and end <= size
    assert end == size or end % chunk == 0
    content = block(size, 5)
    fetched = content[start:end]
    verify_range(table_for(content, chunk), chunk, size, C(content), start, fetched)
    assert fetched[offset - start:][:length] == content[offset:offset + length]


@pytest.mark.parametrize("args", [(-1, 1, 10, 95), (0, -1, 10, 95), (0, 1, 0, 95),
                                  (96, 1, 10, 95), (0, 1, 10, -1)])
def test_aligned_range_refuses_bad_arguments(args: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        aligned_range(*args)


# --- verify_range ---------------------------------------------------------------------------

CHUNK = 64 * 1024
SIZE = 4 * MiB - 1000  # a short last chunk
DATA = block(SIZE, 9)
TABLE = table_for(DATA, CHUNK)
CRC = C(DATA)


@pytest.mark.parametrize("first,last", [(0, 0), (0, 1), (1, 2), (10, 30), (0, 64), (63, 64),
                                        (62, 64), (63, 63), (5, 64)])
def test_good_ranges_verify(first: int, last: int) -> None:
    start, end = first * CHUNK, min(last * CHUNK, SIZE)
    verify_range(TABLE, CHUNK, SIZE, CRC, start, DATA[start:end])
    verify_range(tuple(TABLE), CHUNK, SIZE, CRC, start, memoryview(DATA)[start:end])
    verify_range(TABLE, CHUNK, SIZE, CRC, start, bytearray(DATA[start:end]))


def test_empty_block() -> None:
    verify_range([], CHUNK, 0, 0, 0, b"")
    assert "does not match" in eio([], CHUNK, 0, 1, 0, b"")


def test_a_flipped_byte_inside_the_range_is_eio() -> None:
    for pos in (CHUNK * 3, CHUNK * 3 + 1, CHUNK * 4 - 1, SIZE - 1):
        first = pos // CHUNK * CHUNK
        end = min(first + 2 * CHUNK, SIZE)
        bad = bytearray(DATA[first:end])
        bad[pos - first] ^= 0x01
        message = eio(TABLE, CHUNK, SIZE, CRC, first, bytes(bad))
        assert f"chunk {pos // CHUNK} " in message and "fails its CRC32C" in message


def test_a_forged_table_matching_altered_data_but_not_the_block_crc_is_eio() -> None:
    bad = bytearray(DATA[:CHUNK])
    bad[100] ^= 0xFF
    forged = [C(bytes(bad))] + TABLE[1:]
    assert "does not match the block checksum" in eio(forged, CHUNK, SIZE, CRC, 0, bytes(bad))


def test_a_table_of_the_wrong_length_is_eio() -> None:
    for table in (TABLE[:-1], TABLE + [0], [], TABLE * 2):
        assert "entries" in eio(table, CHUNK, SIZE, CRC, 0, DATA[:CHUNK])


@pytest.mark.parametrize("table", [None, "x" * 64, {i: 0 for i in range(64)},
                                   [0] * 63 + [-1], [0] * 63 + [2**32], [0] * 63 + [1.0],
                                   [0] * 63 + [True], [0] * 63 + [None]],
                         ids=range(8))
def test_a_table_that_is_not_u32_ints_is_eio(table: object) -> None:
    eio(table, CHUNK, SIZE, CRC, 0, DATA[:CHUNK])


def test_wrong_amount_of_data_is_eio() -> None:
    for start, end in ((0, CHUNK - 1), (0, CHUNK + 1), (CHUNK, SIZE - 1), (SIZE - 10, SIZE)):
        if start % CHUNK:
            continue
        assert "not whole chunks" in eio(TABLE, CHUNK, SIZE, CRC, start, DATA[start:end])
    assert "not whole chunks" in eio(TABLE, CHUNK, SIZE, CRC, 63 * CHUNK, DATA[63 * CHUNK:] + b"x")


def test_a_short_last_chunk_is_checked_with_its_own_length() -> None:
    size = 2 * CHUNK + 1
    data = block(size, 4)
    verify_range(table_for(data, CHUNK), CHUNK, size, C(data), 2 * CHUNK, data[2 * CHUNK:])
    bad = table_for(data, CHUNK)
    bad[2] ^= 1
    eio(bad, CHUNK, size, C(data), 2 * CHUNK, data[2 * CHUNK:])


def test_misaligned_offset_is_a_caller_error() -> None:
    for offset in (1, CHUNK - 1, SIZE + 1, -CHUNK):
        with pytest.raises(ValueError):
            verify_range(TABLE, CHUNK, SIZE, CRC, offset, b"")


def test_limit_a_deliberate_forgery_is_not_caught() -> None:
    """CRC32C is linear: a DataNode that alters chunk 0 and fixes up chunk 1's table entry
    keeps the table consistent with the block CRC, and a read of chunk 0 alone passes. This
    test documents the limit (docs/security-primitives.md): only a cryptographic hash held by
    the MDS would stop it. If verify_range is ever strengthened, turn this test around."""
    bad = bytearray(DATA[:CHUNK])
    bad[0] ^= 0xFF
    c0 = C(bytes(bad))
    # combined = shift(shift(c0') ^ c1') ... must equal the original: pick c1' = c1 ^ shift(c0 ^ c0')
    c1 = TABLE[1] ^ shift_for(CHUNK)(TABLE[0] ^ c0)
    forged = [c0, c1] + TABLE[2:]
    verify_range(forged, CHUNK, SIZE, CRC, 0, bytes(bad))       # passes: the limit
    eio(forged, CHUNK, SIZE, CRC, 0, bytes(bad) + DATA[CHUNK:2 * CHUNK])  # chunk 1 is caught


def test_broker_crc_is_the_packages_function_loaded_without_its_init():
    import subprocess
    import sys
    code = ("import sys\nfrom broker.crc import crc32c\n"
            "print('importlib.metadata' in sys.modules, crc32c(b'123456789'),"
            " crc32c(b'6789', crc32c(b'12345')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    import crc32c as package
    check = str(package.crc32c(b"123456789"))
    assert out == ["False", check, check] and check == str(0xE3069283)   # the CRC-32C check value
