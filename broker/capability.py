"""Block capabilities the MDS mints and DataNodes verify, and the receipts DataNodes sign.

Pure functions over bytes: no sockets, no clock (``now`` is an argument), randomness injected.
The model is HDFS's block access token: an HMAC over (block, access, expiry, key id) with a
rotating key the MDS shares with DataNodes over their authenticated channel.

Public API:
    KeyRing.generate(now, *, overlap=DEFAULT_OVERLAP, randbytes=os.urandom) -> KeyRing
    .rotate(now) -> key id     a new current key; older keys verify for ``overlap`` s more
    .export() -> dict          msgpack-able; KeyRing.load(data) -> KeyRing (ValueError if bad)
    .current_id, .key_ids()
    mint(ring, block_id, access, expires, *, node=None) -> bytes
    verify(ring, token, block_id, access, now, node=None) -> None  or CapabilityError
    node_receipt_key(cluster_secret, node) -> bytes
    sign_receipt(node_key, node, block_id, size, checksum) -> bytes
    check_receipt(node_key, receipt, node, block_id, size, checksum) -> bool

Token layout, version 1 (little-endian, 48 bytes + the node name):
    u8 version | u8 access (1 read, 2 write, 3 copy) | u8 node length (0: any node) |
    u8 zero | u32 key id | u64 expiry (ms since the epoch) | 16 bytes block id |
    node name (ASCII) | 16 bytes tag = HMAC-SHA256(key, "AEGIS-CAP" + everything before)[:16]
"""
from __future__ import annotations

import errno
import hmac
import math
import os
import struct
from typing import Callable, TypeGuard

VERSION = 1
SECRET_BYTES = 32
TAG_BYTES = 16      # 128-bit tag: see docs/security-primitives.md for why truncation is safe
BLOCK_ID_BYTES = 16
MAX_NODE_BYTES = 64
MAX_KEYS = 16       # what load() accepts: a hostile or broken peer cannot grow a ring
DEFAULT_OVERLAP = 600.0
ACCESS = {"read": 1, "write": 2, "copy": 3}

_HEAD = struct.Struct("<BBBBIQ16s")
MAX_TOKEN = _HEAD.size + MAX_NODE_BYTES + TAG_BYTES
_CAP_LABEL = b"AEGIS-CAP"
_RECEIPT_LABEL = b"AEGIS-RCPT"
_RECEIPT_BODY = struct.Struct("<B16sQI")  # version, block id, size, checksum
RECEIPT_BYTES = 1 + TAG_BYTES


class CapabilityError(PermissionError):
    """A capability was refused; ``reason`` is one short fixed string, safe to log and send."""

    REASONS = ("malformed", "unknown key", "bad signature", "expired", "wrong block",
               "wrong access", "wrong node")

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EACCES, f"block capability refused: {reason}")
        self.reason = reason


class KeyRing:
    """The capability keys: one current key for minting, recent ones still verifying.

    A key retired at time t verifies tokens until t + overlap, so overlap must be at least
    the longest capability lifetime the MDS mints. Key ids count up from a random start
    (mod 2**32), so a token from before an MDS restart reads "unknown key", not a confusing
    "bad signature".
    """

    def __init__(self, keys: dict[int, tuple[bytes, float | None]], current: int,
                 overlap: float, randbytes: Callable[[int], bytes] = os.urandom) -> None:
        self._keys = keys        # key id -> (secret, retired at or None)
        self._current = current
        self.overlap = overlap
        self._randbytes = randbytes

    @classmethod
    def generate(cls, now: float, *, overlap: float = DEFAULT_OVERLAP,
                 randbytes: Callable[[int], bytes] = os.urandom) -> KeyRing:
        if not (math.isfinite(overlap) and overlap >= 0):
            raise ValueError(f"overlap must be a non-negative number of seconds, got {overlap!r}")
        first = int.from_bytes(randbytes(4), "little")
        return cls({first: (_new_secret(randbytes), None)}, first, overlap, randbytes)

    @property
    def current_id(self) -> int:
        return self._current

    def key_ids(self) -> list[int]:
        return sorted(self._keys)

    def rotate(self, now: float) -> int:
        """Make a new current key; forget keys retired more than ``overlap`` seconds ago."""
        secret, _ = self._keys[self._current]
        self._keys[self._current] = (secret, now)
        new = (self._current + 1) & 0xFFFFFFFF
        self._keys[new] = (_new_secret(self._randbytes), None)
        self._current = new
        for kid, (_, retired) in list(self._keys.items()):
            if retired is not None and now >= retired + self.overlap:
                del self._keys[kid]
        while len(self._keys) > MAX_KEYS:  # rotating faster than overlap: drop the oldest
            del self._keys[min(self._keys, key=lambda k: self._keys[k][1] or math.inf)]
        return new

    def current(self) -> tuple[int, bytes]:
        return self._current, self._keys[self._current][0]

    def secret_for(self, key_id: int, now: float) -> bytes | None:
        """The key with this id if it may still verify at ``now``, else None."""
        entry = self._keys.get(key_id)
        if entry is None:
            return None
        secret, retired = entry
        if retired is not None and not now < retired + self.overlap:  # NaN: refused
            return None
        return secret

    def export(self) -> dict:
        return {"v": 1, "current": self._current, "overlap": self.overlap,
                "keys": [[kid, secret, retired] for kid, (secret, retired)
                         in sorted(self._keys.items())]}

    @classmethod
    def load(cls, data: object) -> KeyRing:
        """Rebuild a ring from export() output, checking every field (ValueError if bad)."""
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("key ring: not a version 1 key ring map")
        current, overlap, keys = data.get("current"), data.get("overlap"), data.get("keys")
        if not (_is_u32(current) and _is_time(overlap) and isinstance(keys, list)):
            raise ValueError("key ring: bad current, overlap or keys")
        if not 1 <= len(keys) <= MAX_KEYS:
            raise ValueError(f"key ring: {len(keys)} keys, expected 1..{MAX_KEYS}")
        ring: dict[int, tuple[bytes, float | None]] = {}
        for entry in keys:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
                raise ValueError("key ring: a key entry is not [id, secret, retired]")
            kid, secret, retired = entry
            if not (_is_u32(kid) and isinstance(secret, bytes) and len(secret) == SECRET_BYTES
                    and (retired is None or _is_time(retired))):
                raise ValueError("key ring: bad key entry")
            if kid in ring:
                raise ValueError(f"key ring: duplicate key id {kid}")
            ring[kid] = (secret, None if retired is None else float(retired))
        if current not in ring or ring[current][1] is not None:
            raise ValueError("key ring: the current key is missing or retired")
        return cls(ring, current, float(overlap))


def mint(ring: KeyRing, block_id: bytes, access: str, expires: float, *,
         node: str | None = None) -> bytes:
    """A capability for ``access`` to one block until ``expires`` (wall seconds)."""
    if not (isinstance(block_id, bytes) and len(block_id) == BLOCK_ID_BYTES):
        raise ValueError(f"block id must be {BLOCK_ID_BYTES} bytes")
    if access not in ACCESS:
        raise ValueError(f"access must be one of {sorted(ACCESS)}, got {access!r}")
    if not (math.isfinite(expires) and 0 <= expires < 2**63 / 1000):
        raise ValueError(f"bad expiry {expires!r}")
    name = _node_bytes(node)
    if name is None:
        raise ValueError(f"node must be printable ASCII of 1..{MAX_NODE_BYTES} bytes")
    kid, secret = ring.current()
    body = _HEAD.pack(VERSION, ACCESS[access], len(name), 0, kid,
                      int(expires * 1000), block_id) + name  # floor: never later than asked
    return body + _tag(secret, _CAP_LABEL, body)


def verify(ring: KeyRing, token: object, block_id: object, access: str, now: float,
           node: str | None = None) -> None:
    """Accept ``token`` for ``access`` to ``block_id`` on ``node`` at ``now``, or raise.

    Raises only CapabilityError, whatever ``token`` holds. The tag is checked before any
    claim in the token, so a forged token never learns which claim was wrong. An unbound
    token (minted with node=None) is good on every node; a bound one only where the caller
    passes the same node.
    """
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise CapabilityError("malformed")
    size = token.nbytes if isinstance(token, memoryview) else len(token)
    raw = bytes(token) if size <= MAX_TOKEN else b""  # bound before copying or parsing
    if len(raw) < _HEAD.size + TAG_BYTES:
        raise CapabilityError("malformed")
    version, code, node_len, zero, kid, exp_ms, bid = _HEAD.unpack_from(raw)
    if (version != VERSION or zero != 0 or code not in _ACCESS_NAMES
            or len(raw) != _HEAD.size + node_len + TAG_BYTES):
        raise CapabilityError("malformed")
    secret = ring.secret_for(kid, now)
    if secret is None:
        raise CapabilityError("unknown key")
    body = raw[:-TAG_BYTES]
    if not hmac.compare_digest(_tag(secret, _CAP_LABEL, body), raw[-TAG_BYTES:]):
        raise CapabilityError("bad signature")
    if not (isinstance(block_id, (bytes, bytearray, memoryview)) and bid == block_id):
        raise CapabilityError("wrong block")
    if _ACCESS_NAMES[code] != access:
        raise CapabilityError("wrong access")
    if node_len and (not isinstance(node, str) or raw[_HEAD.size:-TAG_BYTES] != _ascii(node)):
        raise CapabilityError("wrong node")
    if not now * 1000 < exp_ms:  # written so that a NaN clock fails closed
        raise CapabilityError("expired")


def node_receipt_key(cluster_secret: bytes, node: str) -> bytes:
    """The per-node receipt key: the MDS derives every node's, a node knows only its own."""
    return hmac.digest(cluster_secret, b"receipt:" + node.encode(), "sha256")


def sign_receipt(node_key: bytes, node: str, block_id: bytes, size: int,
                 checksum: int) -> bytes:
    """A DataNode's proof that it durably stored ``block_id`` with this size and CRC32C."""
    return bytes([VERSION]) + _tag(node_key, _RECEIPT_LABEL,
                                   _receipt_body(node, block_id, size, checksum))


def check_receipt(node_key: bytes, receipt: object, node: str, block_id: bytes, size: int,
                  checksum: int) -> bool:
    """True only for a receipt signed with ``node_key`` over exactly these claims."""
    if not isinstance(receipt, (bytes, bytearray, memoryview)):
        return False
    raw = bytes(receipt)
    if len(raw) != RECEIPT_BYTES or raw[0] != VERSION:
        return False
    try:
        body = _receipt_body(node, block_id, size, checksum)
    except (ValueError, TypeError, AttributeError, struct.error, UnicodeError):
        return False
    return hmac.compare_digest(_tag(node_key, _RECEIPT_LABEL, body), raw[1:])


_ACCESS_NAMES = {code: name for name, code in ACCESS.items()}


def _tag(secret: bytes, label: bytes, body: bytes) -> bytes:
    return hmac.digest(secret, label + body, "sha256")[:TAG_BYTES]


def _receipt_body(node: str, block_id: bytes, size: int, checksum: int) -> bytes:
    name = node.encode()
    if len(name) > 255 or len(block_id) != BLOCK_ID_BYTES:
        raise ValueError("receipt: node name too long or bad block id")
    # The length prefix keeps ("dn1", id...) and ("dn", "1" + id...) distinct.
    return bytes([len(name)]) + name + _RECEIPT_BODY.pack(VERSION, bytes(block_id), size,
                                                          checksum)


def _node_bytes(node: str | None) -> bytes | None:
    if node is None:
        return b""
    name = _ascii(node) if isinstance(node, str) else b""
    return name if 0 < len(name) <= MAX_NODE_BYTES else None


def _ascii(text: str) -> bytes:
    # Printable ASCII only: no two spellings of one node name (Unicode normalisation).
    if text.isascii() and text.isprintable():
        return text.encode("ascii")
    return b""


def _new_secret(randbytes: Callable[[int], bytes]) -> bytes:
    secret = randbytes(SECRET_BYTES)
    if len(secret) != SECRET_BYTES:
        raise ValueError("random source returned the wrong number of bytes")
    return secret


def _is_u32(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= 0xFFFFFFFF


def _is_time(value: object) -> TypeGuard[float]:
    return ((type(value) is int or type(value) is float) and math.isfinite(value)
            and value >= 0)
