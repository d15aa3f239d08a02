"""Block identifiers: 16 random bytes on the wire, 32 lowercase hex characters everywhere else.

`parse_block_id` is the only door from untrusted input to a block id; the block store
builds paths from its canonical output and from nothing else.
"""
from __future__ import annotations

import errno
import os
import re

ID_BYTES = 16
ID_HEX_LEN = 2 * ID_BYTES

# fullmatch with an explicit ASCII class: int(x, 16) and str.isalnum() would let through
# "_", whitespace, signs and non-ASCII digits, and "$" in re.match tolerates a trailing "\n".
_HEX_ID = re.compile(r"[0-9a-fA-F]{32}")


def _invalid(value: object, why: str) -> OSError:
    shown = repr(value)
    if len(shown) > 80:  # keep hostile input from flooding logs and error replies
        shown = shown[:77] + "..."
    return OSError(errno.EINVAL, f"invalid block id {shown}: {why}")


def parse_block_id(value: bytes | bytearray | memoryview | str) -> str:
    """Return the canonical 32-lowercase-hex form of a block id, or raise OSError(EINVAL).

    Accepted: exactly 16 raw bytes (the wire form), or a 32-character hex string. Upper-case
    hex is normalised to lower case: the output, not the input, is what names a file.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if len(raw) != ID_BYTES:
            raise _invalid(value, f"expected {ID_BYTES} bytes, got {len(raw)}")
        return raw.hex()
    if isinstance(value, str):
        if len(value) != ID_HEX_LEN:
            raise _invalid(value, f"expected {ID_HEX_LEN} hex characters, got {len(value)}")
        if not _HEX_ID.fullmatch(value):
            raise _invalid(value, "not hexadecimal")
        return value.lower()
    raise _invalid(value, f"expected bytes or str, got {type(value).__name__}")


def block_id_bytes(block_id: str | bytes) -> bytes:
    """The 16-byte wire form of a (validated) block id."""
    return bytes.fromhex(parse_block_id(block_id))


def new_block_id() -> str:
    """A fresh random block id in canonical form (128 bits: collisions are not a concern)."""
    return os.urandom(ID_BYTES).hex()
