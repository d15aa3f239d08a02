"""Tests for datanode/blockid.py: only 32-hex / 16-byte ids get through, in canonical form."""
from __future__ import annotations

import errno
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datanode.blockid import block_id_bytes, new_block_id, parse_block_id

CANON = re.compile(r"[0-9a-f]{32}")
GOOD = "0123456789abcdef0123456789abcdef"

BAD_IDS = [
    "", "..", ".", "../x", "/abs", "a/b", "\x00", "\x00" * 32, GOOD[:31] + "\x00",
    "../" + "a" * 29, "aa/" + "a" * 29, "/" + "a" * 31, "a" * 30 + "/.", "a" * 31 + "\\",
    GOOD[:31], GOOD + "0", "a" * 10_000, GOOD[:31] + "\n", " " + GOOD[:31], GOOD[:31] + " ",
    "g" * 32, "0x" + GOOD[:30], "+" + GOOD[:31], "-" + GOOD[:31], "_".join(["a"] * 16) + "a",
    "é" * 32, "０" * 32, "٠" * 32, "ａ" * 32,  # unicode letters and digits int() would accept
    b"", b"\x00" * 15, b"\x00" * 17, GOOD.encode(), bytearray(31),
    None, 123, 1.5, ["a"], object(),
]


@pytest.mark.parametrize("value", BAD_IDS, ids=lambda v: repr(v)[:24])
def test_rejects_everything_but_an_id(value: object) -> None:
    with pytest.raises(OSError) as info:
        parse_block_id(value)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    assert "invalid block id" in str(info.value)


def test_error_message_is_bounded_for_huge_input() -> None:
    with pytest.raises(OSError) as info:
        parse_block_id("x" * 1_000_000)
    assert len(str(info.value)) < 200


def test_canonical_forms() -> None:
    assert parse_block_id(GOOD) == GOOD
    assert parse_block_id(GOOD.upper()) == GOOD  # normalised, not a second spelling on disk
    raw = bytes(range(16))
    assert parse_block_id(raw) == raw.hex()
    assert parse_block_id(bytearray(raw)) == raw.hex()
    assert parse_block_id(memoryview(raw)) == raw.hex()
    assert block_id_bytes(GOOD) == bytes.fromhex(GOOD)
    assert block_id_bytes(raw) == raw


def test_new_ids_are_canonical_and_distinct() -> None:
    ids = {new_block_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(parse_block_id(i) == i for i in ids)


@given(st.binary(min_size=16, max_size=16))
def test_any_16_bytes_round_trip(raw: bytes) -> None:
    bid = parse_block_id(raw)
    assert CANON.fullmatch(bid)
    assert block_id_bytes(bid) == raw


@given(st.text(max_size=40))
def test_random_text_is_canonical_or_rejected(text: str) -> None:
    try:
        bid = parse_block_id(text)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
    else:
        assert CANON.fullmatch(bid) and bid == text.lower()


@given(st.binary(max_size=40).filter(lambda b: len(b) != 16))
def test_wrong_length_bytes_rejected(raw: bytes) -> None:
    with pytest.raises(OSError):
        parse_block_id(raw)
