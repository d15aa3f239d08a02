"""Capabilities for tests that speak to DataNodes directly: the key ring the MDS of a test
cluster saved in its data directory (<data_dir>/mds/capability.ring), and minting with it,
so a test can make valid, expired or misdirected capabilities on purpose."""
from __future__ import annotations

import time
from pathlib import Path

import msgpack

from broker.capability import KeyRing, mint


def cluster_ring(data_dir: Path) -> KeyRing:
    """The MDS's current ring (it rotates every [mds] key_rotation seconds, 10 min)."""
    raw = (Path(data_dir) / "mds" / "capability.ring").read_bytes()
    return KeyRing.load(msgpack.unpackb(raw, raw=False))


def cap_for(data_dir: Path, block: bytes, access: str = "read", *, node: str | None = None,
            ttl: float = 60.0) -> bytes:
    """A capability for `block` minted as the MDS would (expired when ttl <= 0)."""
    return mint(cluster_ring(data_dir), block, access, max(0.0, time.time() + ttl), node=node)
