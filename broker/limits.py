"""Protocol constants every role shares: service names and the wire limits of requests.

The one place these numbers live; a server enforces them and a client sizes its requests
by them. No imports from mds/, datanode/ or client/ (they all import this).
"""
from __future__ import annotations

from .protocol import DEFAULT_MAX_HEADER

__all__ = ["MDS_SERVICE", "DATANODE_PREFIX", "datanode_service", "MAX_BATCH", "MAX_PUT_MANY",
           "FIRST_ALLOCATION", "MAX_ALLOCATE", "MAX_DELETES", "MAX_HEADER", "LEASE_UNIT",
           "MAX_FILE_BLOCKS"]

MDS_SERVICE = "mds"
DATANODE_PREFIX = "dn."


def datanode_service(node_id: str) -> str:
    """The broker service name of the DataNode `node_id` ("dn1" -> "dn.dn1")."""
    return f"{DATANODE_PREFIX}{node_id}"


MAX_BATCH = 256            # operations in one MDS `batch` request
MAX_PUT_MANY = 256         # blocks in one DataNode `put_blocks` request
FIRST_ALLOCATION = 16      # blocks the MDS allocates with a `create` that gives the size
MAX_ALLOCATE = 1024        # blocks one `allocate` request may ask for
MAX_DELETES = 1000         # block deletions one heartbeat reply carries (and a node does)
MAX_HEADER = DEFAULT_MAX_HEADER   # bytes of msgpack header a peer accepts by default
# Blocks in one file: its commit's block list must fit one header (the default 8 MiB
# holds ~120k entries), so a file holds at most this many blocks of its block size
# (400 GiB at the default 4 MiB); a mount refuses to grow a file past that (EFBIG).
MAX_FILE_BLOCKS = 100_000

# `lease` in the MDS's create, allocate and renew replies: the seconds the draft has left
# (a duration, not a deadline, so client and MDS clocks need not agree).
LEASE_UNIT = "seconds remaining"
