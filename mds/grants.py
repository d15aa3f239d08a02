"""What the MDS hands out for block access and what it accepts as proof of storage: the
capability key ring (rotated on a period), the capabilities it mints, the keys it gives
each DataNode, and the check of the receipts DataNodes sign.

Sans-IO: `now` is wall-clock seconds passed in (capabilities expire across machines), the
random source is injected; the ring is saved through an injected callback. Public API:
`Grants` (mint_write, mint_read, mint_copy, for_node, receipt_ok, tick, overlap),
`load_secret(keys_dir, data_dir)`, `load_ring(path)`, `save_ring(path)`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import msgpack

from broker.capability import KeyRing, check_receipt, mint, node_receipt_key
from broker.keys import CLUSTER_SECRET_BYTES, KeyStore, write_file_atomic

log = logging.getLogger(__name__)

SKEW_MARGIN = 60.0   # seconds a retired key verifies beyond the longest lifetime


class Grants:
    """Capabilities for blocks and receipt keys for DataNodes.

    Write capabilities are bound to one target node: a client can store a block only where
    placement (or replace_target) sent it, so the only receipts that can exist for a draft
    block are from its targets. Read capabilities are valid on any replica, so one stat
    serves every failover. Keys rotate every `rotate_every` seconds; a retired key keeps
    verifying for `overlap` = the longest lifetime + SKEW_MARGIN, so no capability dies
    early because of a rotation.
    """

    def __init__(self, cluster_secret: bytes, *, read_ttl: float = 300.0,
                 write_ttl: float = 120.0, rotate_every: float = 600.0,
                 randbytes: Callable[[int], bytes] = os.urandom, ring: KeyRing | None = None,
                 on_rotate: Callable[[dict], None] | None = None) -> None:
        if min(read_ttl, write_ttl, rotate_every) <= 0:
            raise ValueError("capability lifetimes and the rotation period must be > 0")
        self.read_ttl, self.write_ttl = float(read_ttl), float(write_ttl)
        self.rotate_every = float(rotate_every)
        self.overlap = max(self.read_ttl, self.write_ttl) + SKEW_MARGIN
        # A ring saved by the previous run keeps capabilities valid across an MDS restart
        # (DataNodes keep verifying with it; clients need not re-stat).
        if ring is not None:
            ring.overlap = self.overlap
        self.ring = ring or KeyRing.generate(0.0, overlap=self.overlap, randbytes=randbytes)
        self._on_rotate = on_rotate
        self._secret = cluster_secret
        self._node_keys: dict[str, bytes] = {}
        self._next_rotation: float | None = None   # set by the first tick
        self._export = self.ring.export()

    def tick(self, now: float) -> bool:
        """Rotate the key when the period is over; True if it did."""
        if self._next_rotation is None:
            self._next_rotation = now + self.rotate_every
        if not now >= self._next_rotation:
            return False
        self.ring.rotate(now)
        self._export = self.ring.export()
        if self._on_rotate is not None:
            self._on_rotate(self._export)
        self._next_rotation = now + self.rotate_every
        log.info("capability key rotated (key id %d)", self.ring.current_id)
        return True

    def mint_write(self, block: bytes, nodes: Sequence[str], now: float) -> list[bytes]:
        """One write capability per target node, in the order of `nodes`."""
        expires = now + self.write_ttl
        return [mint(self.ring, block, "write", expires, node=n) for n in nodes]

    def mint_read(self, block: bytes, now: float) -> bytes:
        return mint(self.ring, block, "read", now + self.read_ttl)

    def mint_copy(self, block: bytes, source: str, target: str,
                  now: float) -> tuple[bytes, bytes]:
        """(copy capability for the source, write capability for the target)."""
        expires = now + self.write_ttl
        return (mint(self.ring, block, "copy", expires, node=source),
                mint(self.ring, block, "write", expires, node=target))

    def node_key(self, node: str) -> bytes:
        key = self._node_keys.get(node)
        if key is None:
            key = self._node_keys[node] = node_receipt_key(self._secret, node)
        return key

    def ring_export(self) -> dict:
        """The ring as a plain map (KeyRing.export): what the standby keeps a copy of; a new
        object after each rotation."""
        return self._export

    def for_node(self, node: str) -> dict:
        """What a heartbeat reply carries: the ring (to verify capabilities) and the node's
        own receipt key (never another node's, so it cannot sign for one)."""
        return {"ring": self._export, "receipt_key": self.node_key(node)}

    def receipt_ok(self, node: str, receipt: object, block: bytes, size: int,
                   checksum: int) -> bool:
        return check_receipt(self.node_key(node), receipt, node, block, size, checksum)


def load_secret(keys_dir: Path | None, data_dir: Path) -> bytes:
    """The cluster secret receipt keys derive from: the key store's (keys_dir) when the
    cluster has one, else one kept in the MDS's own directory (created on first start,
    0600), so receipts stay valid across an MDS restart."""
    if keys_dir is not None:
        return KeyStore(keys_dir).cluster_secret()
    path = Path(data_dir) / "cluster.secret"
    if not path.exists():
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, os.urandom(CLUSTER_SECRET_BYTES), 0o600)
    # read through the key store's check: refused when group or others may read it
    return KeyStore(data_dir).cluster_secret()


def load_ring(path: Path) -> KeyRing | None:
    """The ring a previous run saved, or None (none yet, or unreadable: logged)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_mode & 0o077:
                raise PermissionError(f"{path} is readable by others; fix with chmod 600")
            return KeyRing.load(msgpack.unpackb(f.read(1 << 16), raw=False))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
        log.error("capability key ring %s not used, starting a new one: %s", path, exc)
        return None


def save_ring(path: Path) -> Callable[[dict], None]:
    """A callback writing a ring export to `path` (0600, atomically)."""
    def save(export: dict) -> None:
        try:
            write_file_atomic(path, msgpack.packb(export, use_bin_type=True), 0o600)
        except OSError as exc:   # the ring in memory still works; a restart starts anew
            log.error("could not save the capability key ring to %s: %s", path, exc)
    return save
