"""CPU cost of the security primitives: capabilities, receipts, CRC32C combine, range checks.

Prints one line per figure, the best of several repeats (the machine is shared, so the
minimum is the figure least disturbed by other work). Run: python bench/secprim.py
"""
from __future__ import annotations

import os
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crc32c  # noqa: E402

from broker.capability import (KeyRing, check_receipt, mint, node_receipt_key,  # noqa: E402
                               sign_receipt, verify)
from broker.checksum import crc32c_combine, shift_for, table_crc, verify_range  # noqa: E402

MiB = 1 << 20
CHUNK = 64 * 1024
SIZE = 4 * MiB


def best(fn, number: int, repeat: int = 7) -> float:
    """Seconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main() -> None:
    ring = KeyRing.generate(0.0)
    block = os.urandom(16)
    token = mint(ring, block, "read", 1e9, node="dn1")
    t_mint = best(lambda: mint(ring, block, "read", 1e9, node="dn1"), 20_000)
    t_verify = best(lambda: verify(ring, token, block, "read", 1.0, "dn1"), 20_000)
    print(f"mint {t_mint * 1e6:.2f} us, verify {t_verify * 1e6:.2f} us, "
          f"mint+verify {1 / (t_mint + t_verify):,.0f}/s")
    key = node_receipt_key(os.urandom(32), "dn1")
    receipt = sign_receipt(key, "dn1", block, SIZE, 123)
    t_sign = best(lambda: sign_receipt(key, "dn1", block, SIZE, 123), 20_000)
    t_check = best(lambda: check_receipt(key, receipt, "dn1", block, SIZE, 123), 20_000)
    print(f"sign_receipt {t_sign * 1e6:.2f} us, check_receipt {t_check * 1e6:.2f} us")

    t_comb = best(lambda: crc32c_combine(0x1234, 0x5678, SIZE), 20_000)
    print(f"crc32c_combine (4 MiB length, operator cached) {t_comb * 1e6:.2f} us")
    lengths = iter(range(10**9, 2 * 10**9))
    t_cold = best(lambda: crc32c_combine(0x1234, 0x5678, next(lengths)), 2_000)
    print(f"crc32c_combine (new length each call, ~2**30) {t_cold * 1e6:.2f} us")
    t_shift = best(lambda: shift_for.__wrapped__(CHUNK), 50)
    print(f"build a Shift table (done once per chunk size) {t_shift * 1e3:.2f} ms")

    data = os.urandom(SIZE)
    view = memoryview(data)
    table = [crc32c.crc32c(view[i:i + CHUNK]) for i in range(0, SIZE, CHUNK)]
    whole = crc32c.crc32c(data)
    t_table = best(lambda: table_crc(table, CHUNK, SIZE), 2_000)
    print(f"table_crc of 64 chunk CRCs {t_table * 1e6:.1f} us")
    piece = view[10 * CHUNK:11 * CHUNK]
    t_range = best(lambda: verify_range(table, CHUNK, SIZE, whole, 10 * CHUNK, piece), 2_000)
    print(f"verify_range 64 KiB of a 4 MiB block {t_range * 1e6:.1f} us")
    t_block = best(lambda: verify_range(table, CHUNK, SIZE, whole, 0, view), 100)
    t_crc = best(lambda: crc32c.crc32c(view), 100)
    print(f"verify_range whole 4 MiB block {t_block * 1e6:.0f} us "
          f"({SIZE / t_block / 1e9:.1f} GB/s; plain crc32c of 4 MiB {t_crc * 1e6:.0f} us)")


if __name__ == "__main__":
    main()
