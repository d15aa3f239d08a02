"""Tests for broker/capability.py: tokens verify only for their block, access, node and time;
every other input is refused with CapabilityError; receipts bind node, block, size and CRC."""
from __future__ import annotations

import errno
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.capability import (MAX_KEYS, MAX_TOKEN, CapabilityError, KeyRing, check_receipt,
                               mint, node_receipt_key, sign_receipt, verify)

T0 = 1_700_000_000.0
BLOCK = bytes(range(16))
OTHER = bytes(range(1, 17))


def seeded(seed: int = 1):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate(T0, overlap=60.0, randbytes=seeded())


def refused(reason: str, ring: KeyRing, token: object, block=BLOCK, access="read",
            now=T0, node=None) -> None:
    with pytest.raises(CapabilityError) as info:
        verify(ring, token, block, access, now, node)
    assert info.value.reason == reason
    assert info.value.errno == errno.EACCES
    assert isinstance(info.value, PermissionError)
    assert reason in str(info.value)


# --- the good path -----------------------------------------------------------------------

@pytest.mark.parametrize("access", ["read", "write", "copy"])
def test_a_token_verifies_for_its_block_and_access(ring: KeyRing, access: str) -> None:
    token = mint(ring, BLOCK, access, T0 + 30)
    verify(ring, token, BLOCK, access, T0)
    verify(ring, bytearray(token), BLOCK, access, T0 + 29.99)
    verify(ring, memoryview(token), bytearray(BLOCK), access, T0)


def test_layout_is_fixed_and_compact(ring: KeyRing) -> None:
    assert len(mint(ring, BLOCK, "read", T0 + 1)) == 48
    assert len(mint(ring, BLOCK, "read", T0 + 1, node="dn1")) == 51
    assert len(mint(ring, BLOCK, "read", T0 + 1, node="n" * 64)) == MAX_TOKEN


# --- claims -------------------------------------------------------------------------------

def test_expired(ring: KeyRing) -> None:
    token = mint(ring, BLOCK, "read", T0 + 30)
    refused("expired", ring, token, now=T0 + 30)
    refused("expired", ring, token, now=T0 + 3600)


def test_a_nan_clock_fails_closed(ring: KeyRing) -> None:
    nan = float("nan")
    refused("expired", ring, mint(ring, BLOCK, "read", T0 + 30), now=nan)
    old = mint(ring, BLOCK, "read", T0 + 30)
    ring.rotate(T0)
    refused("unknown key", ring, old, now=nan)


def test_wrong_block(ring: KeyRing) -> None:
    token = mint(ring, BLOCK, "read", T0 + 30)
    for block in (OTHER, BLOCK[:15], b"", BLOCK.hex(), None, 7):
        refused("wrong block", ring, token, block=block)


@pytest.mark.parametrize("minted,asked", [("read", "write"), ("write", "read"),
                                          ("read", "copy"), ("copy", "read"), ("read", "READ"),
                                          ("write", "")])
def test_wrong_access(ring: KeyRing, minted: str, asked: str) -> None:
    refused("wrong access", ring, mint(ring, BLOCK, minted, T0 + 30), access=asked)


def test_node_binding(ring: KeyRing) -> None:
    bound = mint(ring, BLOCK, "write", T0 + 30, node="dn1")
    verify(ring, bound, BLOCK, "write", T0, node="dn1")
    refused("wrong node", ring, bound, access="write", node="dn2")
    refused("wrong node", ring, bound, access="write", node="dn11")
    refused("wrong node", ring, bound, access="write", node=None)  # the verifier must say who
    unbound = mint(ring, BLOCK, "write", T0 + 30)
    verify(ring, unbound, BLOCK, "write", T0, node="dn2")


def test_mint_refuses_bad_arguments(ring: KeyRing) -> None:
    for block in (BLOCK[:15], BLOCK.hex(), bytearray(BLOCK)):
        with pytest.raises(ValueError):
            mint(ring, block, "read", T0)  # type: ignore[arg-type]
    for access in ("admin", "", "Read"):
        with pytest.raises(ValueError):
            mint(ring, BLOCK, access, T0)
    for expires in (float("nan"), float("inf"), -1.0, 1e300):
        with pytest.raises(ValueError):
            mint(ring, BLOCK, "read", expires)
    for node in ("", "n" * 65, "dn\n1", "dñ1"):
        with pytest.raises(ValueError):
            mint(ring, BLOCK, "read", T0, node=node)


# --- keys and rotation -------------------------------------------------------------------

def test_rotation_keeps_old_keys_for_the_overlap(ring: KeyRing) -> None:
    old = mint(ring, BLOCK, "read", T0 + 100)
    first = ring.current_id
    ring.rotate(T0 + 10)
    assert ring.current_id == (first + 1) & 0xFFFFFFFF
    new = mint(ring, BLOCK, "read", T0 + 100)
    assert new[4:8] != old[4:8]
    verify(ring, old, BLOCK, "read", T0 + 69.9)   # retired at +10, overlap 60
    verify(ring, new, BLOCK, "read", T0 + 69.9)
    refused("unknown key", ring, old, now=T0 + 70)
    ring.rotate(T0 + 80)                          # drops the first key altogether
    assert first not in ring.key_ids()
    refused("unknown key", ring, old, now=T0 + 20)


def test_ring_stays_bounded_under_fast_rotation(ring: KeyRing) -> None:
    for i in range(100):
        ring.rotate(T0 + i * 0.001)
    assert len(ring.key_ids()) == MAX_KEYS
    assert ring.current_id in ring.key_ids()


def test_a_token_from_another_ring_is_unknown_or_bad() -> None:
    a = KeyRing.generate(T0, randbytes=seeded(1))
    b = KeyRing.generate(T0, randbytes=seeded(2))
    refused("unknown key", b, mint(a, BLOCK, "read", T0 + 5))
    # same key id, different secret (e.g. an MDS restarted with the same random start)
    same_id = KeyRing({a.current_id: (b"\x01" * 32, None)}, a.current_id, 60.0)
    refused("bad signature", same_id, mint(a, BLOCK, "read", T0 + 5))


def test_export_load_round_trips_through_msgpack(ring: KeyRing) -> None:
    token = mint(ring, BLOCK, "copy", T0 + 100)
    ring.rotate(T0 + 1)
    wire = msgpack.packb(ring.export(), use_bin_type=True)
    copy = KeyRing.load(msgpack.unpackb(wire, raw=False))
    assert copy.key_ids() == ring.key_ids() and copy.current_id == ring.current_id
    verify(copy, token, BLOCK, "copy", T0 + 2)
    verify(copy, mint(ring, BLOCK, "read", T0 + 9), BLOCK, "read", T0 + 2)
    refused("unknown key", copy, token, access="copy", now=T0 + 61)


def _good_export() -> dict:
    return KeyRing.generate(T0, randbytes=seeded()).export()


BAD_RINGS = [
    None, [], "ring", {}, {"v": 2}, {**_good_export(), "current": -1},
    {**_good_export(), "current": 2**32}, {**_good_export(), "current": True},
    {**_good_export(), "overlap": float("nan")}, {**_good_export(), "overlap": -1},
    {**_good_export(), "keys": []}, {**_good_export(), "keys": "x"},
    {**_good_export(), "keys": [[i, b"k" * 32, 1.0] for i in range(MAX_KEYS + 1)]},
    {**_good_export(), "keys": [[1, b"short", None]]},
    {**_good_export(), "keys": [[1, "k" * 32, None]]},
    {**_good_export(), "keys": [[1, b"k" * 32]]},
    {**_good_export(), "keys": [[1, b"k" * 32, "yesterday"]]},
    {"v": 1, "current": 1, "overlap": 1, "keys": [[1, b"k" * 32, None], [1, b"j" * 32, None]]},
    {"v": 1, "current": 2, "overlap": 1, "keys": [[1, b"k" * 32, None]]},   # current missing
    {"v": 1, "current": 1, "overlap": 1, "keys": [[1, b"k" * 32, 5.0]]},    # current retired
]


@pytest.mark.parametrize("data", BAD_RINGS, ids=range(len(BAD_RINGS)))
def test_load_refuses_malformed_rings(data: object) -> None:
    with pytest.raises(ValueError):
        KeyRing.load(data)


def test_load_refuses_a_huge_ring_without_looking_at_every_entry() -> None:
    data = {**_good_export(), "keys": [[i, b"k" * 32, 1.0] for i in range(100_000)]}
    with pytest.raises(ValueError, match="100000 keys"):
        KeyRing.load(data)


# --- hostile tokens: only CapabilityError, whatever comes in -----------------------------

def test_every_single_bit_flip_is_refused(ring: KeyRing) -> None:
    token = mint(ring, BLOCK, "write", T0 + 30, node="dn1")
    for bit in range(len(token) * 8):
        flipped = bytearray(token)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CapabilityError) as info:
            verify(ring, bytes(flipped), BLOCK, "write", T0, node="dn1")
        assert info.value.reason in ("malformed", "unknown key", "bad signature")


def test_every_truncation_and_extension_is_malformed(ring: KeyRing) -> None:
    token = mint(ring, BLOCK, "read", T0 + 30, node="dn1")
    for n in range(len(token)):
        refused("malformed", ring, token[:n], node="dn1")
    refused("malformed", ring, token + b"\x00", node="dn1")
    refused("malformed", ring, token * 1000, node="dn1")
    refused("malformed", ring, bytes(10**7), node="dn1")


@pytest.mark.parametrize("token", [None, "x" * 48, 48, 1.5, ["a"], object()],
                         ids=lambda v: type(v).__name__)
def test_non_bytes_tokens_are_malformed(ring: KeyRing, token: object) -> None:
    refused("malformed", ring, token)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=MAX_TOKEN + 16), st.binary(min_size=16, max_size=16),
       st.sampled_from(["read", "write", "copy", "other"]), st.none() | st.text(max_size=8),
       st.floats(allow_nan=True, allow_infinity=True))
def test_random_bytes_never_raise_anything_else(token: bytes, block: bytes, access: str,
                                                node: str | None, now: float) -> None:
    ring = KeyRing.generate(T0, randbytes=seeded())
    with pytest.raises(CapabilityError):
        verify(ring, token, block, access, now, node)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_edits_of_a_valid_token_never_verify(data: st.DataObject) -> None:
    ring = KeyRing.generate(T0, randbytes=seeded())
    token = bytearray(mint(ring, BLOCK, "read", T0 + 30, node="dn7"))
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(token) - 1), st.integers(1, 255)),
                               min_size=1, max_size=6))
    for pos, xor in edits:
        token[pos] ^= xor
    if bytes(token) == mint(ring, BLOCK, "read", T0 + 30, node="dn7"):
        return  # the edits cancelled out
    with pytest.raises(CapabilityError):
        verify(ring, bytes(token), BLOCK, "read", T0, node="dn7")


# --- receipts -----------------------------------------------------------------------------

SECRET = b"s" * 32


def test_a_receipt_checks_only_for_its_own_claims() -> None:
    key = node_receipt_key(SECRET, "dn1")
    receipt = sign_receipt(key, "dn1", BLOCK, 4096, 0xDEADBEEF)
    assert len(receipt) == 17
    assert check_receipt(key, receipt, "dn1", BLOCK, 4096, 0xDEADBEEF)
    assert check_receipt(key, memoryview(receipt), "dn1", BLOCK, 4096, 0xDEADBEEF)
    assert not check_receipt(key, receipt, "dn1", OTHER, 4096, 0xDEADBEEF)   # replayed
    assert not check_receipt(key, receipt, "dn1", BLOCK, 4095, 0xDEADBEEF)   # other size
    assert not check_receipt(key, receipt, "dn1", BLOCK, 4096, 0xDEADBEEE)   # other CRC
    assert not check_receipt(key, receipt, "dn2", BLOCK, 4096, 0xDEADBEEF)   # other name


def test_another_nodes_receipt_is_refused() -> None:
    k1, k2 = node_receipt_key(SECRET, "dn1"), node_receipt_key(SECRET, "dn2")
    assert k1 != k2 and k1 != node_receipt_key(b"t" * 32, "dn1")
    by_dn2 = sign_receipt(k2, "dn2", BLOCK, 10, 1)
    assert not check_receipt(k1, by_dn2, "dn1", BLOCK, 10, 1)
    # dn2 signs with its own key but claims to be dn1: the MDS checks with dn1's key
    assert not check_receipt(k1, sign_receipt(k2, "dn1", BLOCK, 10, 1), "dn1", BLOCK, 10, 1)


def test_forged_and_tampered_receipts_are_refused() -> None:
    key = node_receipt_key(SECRET, "dn1")
    receipt = sign_receipt(key, "dn1", BLOCK, 10, 1)
    for bit in range(len(receipt) * 8):
        flipped = bytearray(receipt)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not check_receipt(key, bytes(flipped), "dn1", BLOCK, 10, 1)
    for forged in (b"", b"\x01" + bytes(16), receipt[:-1], receipt + b"\x00", None, "r" * 17,
                   bytes(17)):
        assert not check_receipt(key, forged, "dn1", BLOCK, 10, 1)


def test_check_receipt_never_raises_on_odd_claims() -> None:
    key = node_receipt_key(SECRET, "dn1")
    receipt = sign_receipt(key, "dn1", BLOCK, 10, 1)
    for claims in [("dn1", BLOCK[:3], 10, 1), ("dn1", BLOCK, -1, 1), ("dn1", BLOCK, 10, 2**32),
                   (None, BLOCK, 10, 1), ("d" * 300, BLOCK, 10, 1), ("dn1", None, 10, 1),
                   ("dn1", BLOCK, "10", 1)]:
        assert not check_receipt(key, receipt, *claims)


def test_name_length_prefix_prevents_splicing() -> None:
    # ("dn", block starting with "1") must not collide with ("dn1", ...)
    key = b"k" * 32
    r = sign_receipt(key, "dn1", BLOCK, 10, 1)
    assert not check_receipt(key, r, "dn", b"1" + BLOCK[:15], 10, 1)
