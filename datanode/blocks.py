"""The DataNode's block vocabulary: what a stored block is, and the errors and counters
every storage module speaks (BlockInfo, BlockCorrupt, Usage, Capacity, PackStats, CompactStats).

Block ids are 16 raw bytes here as everywhere in the DataNode; messages show them in hex.
No I/O. The storage modules import this one; it imports none of them.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class BlockInfo:
    id: bytes
    size: int
    crc: int


class BlockCorrupt(OSError):
    """A stored block failed verification or could not be read back (errno EIO)."""

    def __init__(self, block_id: bytes, reason: str) -> None:
        super().__init__(errno.EIO, f"block {block_id.hex()} is corrupt: {reason}")
        self.block_id = block_id
        self.reason = reason


class Usage(NamedTuple):
    blocks: int
    bytes_used: int


class Capacity(NamedTuple):
    total: int
    free: int


class PackStats(NamedTuple):
    packs: int
    blocks: int          # live blocks
    data_bytes: int      # their data bytes
    disk_bytes: int      # bytes of all pack files
    garbage_bytes: int   # bytes compaction could reclaim


class CompactStats(NamedTuple):
    packs_removed: int = 0
    bytes_freed: int = 0     # size of the removed packs
    bytes_copied: int = 0    # live records rewritten into the active pack

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_freed - self.bytes_copied


def different_content(bid: bytes, have_size: int, have_crc: int, size: int,
                      crc: int) -> FileExistsError:
    """The error of a put whose id is already stored with other content."""
    return FileExistsError(errno.EEXIST, (
        f"block {bid.hex()} already exists with different content (stored: size {have_size} "
        f"crc {have_crc:#010x}; new: size {size} crc {crc:#010x})"))


def checksum_mismatch(bid: bytes, expected: int, got: int) -> OSError:
    """The error of a put whose data does not have the CRC the sender announced."""
    return OSError(errno.EBADMSG, f"checksum mismatch for block {bid.hex()}: "
                   f"expected {expected:#010x}, received data has {got:#010x}")


def cannot_store(bid: bytes, exc: OSError) -> OSError:
    """A write failure of one block, its errno kept and the block named."""
    return OSError(exc.errno, f"cannot store block {bid.hex()}: {exc.strerror or exc}")
