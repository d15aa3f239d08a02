"""datanode/guard.py: EAGAIN until keys arrive, EACCES (counted) for every bad capability,
EAGAIN for an unknown key only while the keys are stale, bad key maps ignored."""
from __future__ import annotations

import errno

import pytest

from broker.capability import CapabilityError, KeyRing, check_receipt, mint, node_receipt_key
from datanode.guard import Guard

BID = b"\x05" * 16
KEY = node_receipt_key(b"s" * 32, "dn1")
WALL = 1_700_000_000.0


def keys(ring: KeyRing) -> dict:
    return {"ring": ring.export(), "receipt_key": KEY}


def test_no_keys_is_eagain_not_eacces():
    g = Guard("dn1")
    with pytest.raises(BlockingIOError) as info:
        g.check(b"x" * 48, BID, "read", WALL, 0.0)
    assert info.value.errno == errno.EAGAIN
    assert g.receipt(BID, 1, 2) is None
    assert g.counters()["cap_refused"] == 0 and g.counters()["cap_unready"] == 1


def test_every_bad_capability_is_eacces_and_counted():
    ring = KeyRing.generate(0.0)
    g = Guard("dn1", stale_after=5.0)
    g.install(keys(ring), now=100.0)
    good = mint(ring, BID, "write", WALL + 60, node="dn1")
    g.check(good, BID, "write", WALL, 101.0)
    flipped = bytearray(good)
    flipped[20] ^= 1
    bad = [None, b"", b"\x00" * 64, bytes(flipped),
           mint(ring, BID, "write", WALL - 1, node="dn1"),          # expired
           mint(ring, b"\x06" * 16, "write", WALL + 60, node="dn1"),  # other block
           mint(ring, BID, "read", WALL + 60),                        # wrong access
           mint(ring, BID, "write", WALL + 60, node="dn2"),           # other node
           mint(KeyRing.generate(0.0), BID, "write", WALL + 60)]      # forged: other key
    for token in bad:
        with pytest.raises(CapabilityError) as info:
            g.check(token, BID, "write", WALL, 101.0)
        assert info.value.errno == errno.EACCES
    assert g.counters()["cap_refused"] == len(bad)


def test_an_unknown_key_while_keys_are_stale_is_eagain():
    ring = KeyRing.generate(0.0)
    g = Guard("dn1", stale_after=5.0)
    g.install(keys(ring), now=100.0)
    newer = KeyRing.generate(0.0)            # an MDS that restarted with a new ring
    token = mint(newer, BID, "read", WALL + 60)
    with pytest.raises(BlockingIOError):
        g.check(token, BID, "read", WALL, 106.0)
    g.install(keys(newer), now=106.5)
    g.check(token, BID, "read", WALL, 106.6)


def test_bad_key_maps_keep_the_old_keys_and_receipts_verify():
    ring = KeyRing.generate(0.0)
    g = Guard("dn1")
    g.install(keys(ring), now=0.0)
    for junk in [None, "x", {"ring": {"v": 2}}, {"ring": {"v": 1, "keys": [[1, b"s", None]] * 99}}]:
        g.install(junk, now=1.0)
    g.check(mint(ring, BID, "read", WALL + 60), BID, "read", WALL, 1.0)
    assert check_receipt(KEY, g.receipt(BID, 10, 7), "dn1", BID, 10, 7)


def test_not_enforced_checks_nothing():
    Guard("dn1", enforce=False).check(None, BID, "write", WALL, 0.0)
