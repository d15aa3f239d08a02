"""Tests for datanode/blockid.py: only ids of exactly 16 bytes get through, as bytes; no text."""
from __future__ import annotations

import errno

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datanode.blockid import ID_BYTES, new_block_id, parse_block_id

GOOD = "0123456789abcdef0123456789abcdef"

BAD_IDS = [
    "", "..", ".", "../x", "/abs", "a/b", "\x00", "\x00" * 32, GOOD[:31] + "\x00",
    "../" + "a" * 29, "aa/" + "a" * 29, "/" + "a" * 31, "a" * 30 + "/.", "a" * 31 + "\\",
    GOOD[:31], GOOD + "0", "a" * 10_000, GOOD[:31] + "\n", " " + GOOD[:31], GOOD[:31] + " ",
    "g" * 32, "0x" + GOOD[:30], "+" + GOOD[:31], "-" + GOOD[:31], "_".join(["a"] * 16) + "a",
    "é" * 32, "０" * 32, "٠" * 32, "ａ" * 32,  # unicode letters and digits int() would accept
    b"", b"\x00" * 15, b"\x00" * 17, GOOD.encode(), bytearray(31),
    None, 123, 1.5, ["a"], object(),
    GOOD, GOOD.upper(),  # hex text is for names and logs, never an id to look up
]


@pytest.mark.parametrize("value", BAD_IDS,
                         ids=lambda v: type(v).__name__ if type(v) is object else repr(v)[:24])
def test_rejects_everything_but_an_id(value: object) -> None:
    with pytest.raises(OSError) as info:
        parse_block_id(value)
    assert info.value.errno == errno.EINVAL
    assert "invalid block id" in str(info.value)


def test_error_message_is_bounded_for_huge_input() -> None:
    for huge in ("x" * 1_000_000, b"x" * 1_000_000):
        with pytest.raises(OSError) as info:
            parse_block_id(huge)
        assert len(str(info.value)) < 200


def test_sixteen_bytes_in_any_buffer_come_out_as_bytes() -> None:
    raw = bytes(range(16))
    assert parse_block_id(raw) is raw  # nothing to convert: a second check costs nothing
    for buf in (bytearray(raw), memoryview(raw)):
        got = parse_block_id(buf)
        assert type(got) is bytes and got == raw


def test_new_ids_are_16_bytes_and_distinct() -> None:
    ids = {new_block_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(type(i) is bytes and len(i) == ID_BYTES and parse_block_id(i) == i for i in ids)


@given(st.binary(min_size=16, max_size=16))
def test_any_16_bytes_are_an_id(raw: bytes) -> None:
    assert parse_block_id(raw) == raw


@given(st.text(max_size=40))
def test_text_is_always_rejected(text: str) -> None:
    with pytest.raises(OSError) as info:
        parse_block_id(text)
    assert info.value.errno == errno.EINVAL


@given(st.binary(max_size=40).filter(lambda b: len(b) != 16))
def test_wrong_length_bytes_rejected(raw: bytes) -> None:
    with pytest.raises(OSError) as info:
        parse_block_id(raw)
    assert info.value.errno == errno.EINVAL
