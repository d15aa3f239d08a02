"""mds/grants.py: what the MDS mints (bound write, unbound read, copy pairs), rotation with
an overlap covering every lifetime, per-node receipt keys, the saved ring."""
from __future__ import annotations

import os

import pytest

from broker.capability import CapabilityError, KeyRing, sign_receipt, verify
from mds.grants import Grants, load_ring, load_secret, save_ring

SECRET = b"k" * 32
BID, OTHER = b"\x01" * 16, b"\x02" * 16
T0 = 1_700_000_000.0


def test_write_caps_are_bound_to_each_target_and_expire():
    g = Grants(SECRET, write_ttl=120, read_ttl=300)
    w1, w2 = g.mint_write(BID, ["dn1", "dn2"], T0)
    verify(g.ring, w1, BID, "write", T0 + 119, node="dn1")
    for token, node, now, reason in [(w1, "dn2", T0, "wrong node"),
                                     (w1, "dn1", T0 + 120, "expired")]:
        with pytest.raises(CapabilityError) as info:
            verify(g.ring, token, BID, "write", now, node=node)
        assert info.value.reason == reason
    verify(g.ring, w2, BID, "write", T0, node="dn2")


def test_read_caps_work_on_any_replica_and_copy_caps_come_in_pairs():
    g = Grants(SECRET)
    r = g.mint_read(BID, T0)
    for node in ("dn1", "dn7"):
        verify(g.ring, r, BID, "read", T0 + 299, node=node)
    with pytest.raises(CapabilityError):
        verify(g.ring, r, OTHER, "read", T0, node="dn1")
    copy, write = g.mint_copy(BID, "dn1", "dn3", T0)
    verify(g.ring, copy, BID, "copy", T0, node="dn1")
    verify(g.ring, write, BID, "write", T0, node="dn3")
    with pytest.raises(CapabilityError):
        verify(g.ring, copy, BID, "read", T0, node="dn1")


def test_rotation_keeps_every_minted_capability_valid_to_its_expiry():
    saved = []
    g = Grants(SECRET, read_ttl=300, write_ttl=120, rotate_every=600, on_rotate=saved.append)
    assert g.overlap >= 300
    assert not g.tick(T0)                        # the first tick starts the period
    r = g.mint_read(BID, T0 + 599)               # the last moment of the old key
    assert g.tick(T0 + 600) and len(saved) == 1
    ring = KeyRing.load(g.for_node("dn1")["ring"])   # what a DataNode holds
    verify(ring, r, BID, "read", T0 + 599 + 299, node="dn1")   # to its last second
    assert g.tick(T0 + 1200)                     # the old key is gone once none can be valid
    assert len(g.ring.key_ids()) == 2


def test_receipt_keys_are_per_node():
    g = Grants(SECRET)
    k1, k2 = g.for_node("dn1")["receipt_key"], g.for_node("dn2")["receipt_key"]
    assert k1 != k2
    receipt = sign_receipt(k1, "dn1", BID, 10, 7)
    assert g.receipt_ok("dn1", receipt, BID, 10, 7)
    assert not g.receipt_ok("dn2", receipt, BID, 10, 7)          # another node's claim
    assert not g.receipt_ok("dn1", receipt, OTHER, 10, 7)        # another block
    assert not g.receipt_ok("dn1", receipt, BID, 11, 7)          # another size
    assert not g.receipt_ok("dn1", sign_receipt(k2, "dn1", BID, 10, 7), BID, 10, 7)
    assert not g.receipt_ok("dn1", None, BID, 10, 7)


def test_secret_and_ring_survive_a_restart(tmp_path):
    secret = load_secret(None, tmp_path)
    assert load_secret(None, tmp_path) == secret and len(secret) == 32
    assert (tmp_path / "cluster.secret").stat().st_mode & 0o777 == 0o600
    path = tmp_path / "capability.ring"
    assert load_ring(path) is None
    g = Grants(secret)
    save_ring(path)(g.ring.export())
    r = g.mint_read(BID, T0)
    again = Grants(secret, ring=load_ring(path))
    verify(again.ring, r, BID, "read", T0, node="dn1")
    os.chmod(path, 0o644)                        # readable by others: not trusted
    assert load_ring(path) is None
    path.write_bytes(b"\xc1junk")
    os.chmod(path, 0o600)
    assert load_ring(path) is None
