"""Block identifiers: 16 raw bytes, on the wire and everywhere inside the DataNode.

`parse_block_id` is the only door from untrusted input to a block id: call it once, where a
request enters. Hex appears only in file names, logs and events (`bid.hex()`); the block
files are named from a validated id and from nothing else.
"""
from __future__ import annotations

import errno
import os

ID_BYTES = 16


def _invalid(value: object, why: str) -> OSError:
    shown = repr(value)
    if len(shown) > 80:  # keep hostile input from flooding logs and error replies
        shown = shown[:77] + "..."
    return OSError(errno.EINVAL, f"invalid block id {shown}: {why}")


def parse_block_id(value: object) -> bytes:
    """Return the id as exactly 16 bytes, or raise OSError(EINVAL).

    Only a bytes-like value of exactly 16 bytes is an id: a str (hex or not) is refused, so
    no text can reach a path. bytearray and memoryview are copied into bytes (hashable,
    immutable); a bytes id is returned as it is, so a second check costs nothing.
    """
    if type(value) is bytes:
        raw = value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise _invalid(value, f"expected {ID_BYTES} bytes, got {type(value).__name__}")
    if len(raw) != ID_BYTES:
        raise _invalid(value, f"expected {ID_BYTES} bytes, got {len(raw)}")
    return raw


def new_block_id() -> bytes:
    """A fresh random block id (128 bits: collisions are not a concern)."""
    return os.urandom(ID_BYTES)
