"""The read path of the pack log: index lookups and verified reads of small blocks.

A part of ``datanode.packs.PackLog`` (a mixin: its methods run on the log and use its
index, packs, pins and group commit); the API and the read rules (durable records only,
the whole record's CRC checked, the pack pinned while read) are in that module's docstring.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from broker.crc import crc32c
from datanode.blocks import BlockCorrupt
from datanode.fileio import pread_into
from datanode.packformat import HEADER_SIZE, pread

if TYPE_CHECKING:
    import threading

    from datanode.groupcommit import GroupCommit
    from datanode.packs import Entry, Pack


class PackReads:
    """Lookups and verified reads, mixed into PackLog."""

    if TYPE_CHECKING:    # what this part uses of the PackLog
        _lock: threading.Lock
        _commit: GroupCommit
        _index: dict[bytes, Entry]
        _packs: dict[int, Pack]

        def _pin_locked(self, pack: Pack) -> None: ...
        def unpin(self, pack: Pack) -> None: ...

    def locate(self, bid: bytes) -> Entry | None:
        return self._index.get(bid)

    def __contains__(self, bid: object) -> bool:
        return bid in self._index

    def __len__(self) -> int:
        return len(self._index)

    def ids(self) -> list[bytes]:
        with self._lock:
            return list(self._index)

    def _pin_entry(self, bid: bytes) -> tuple[Entry, Pack] | None:
        with self._lock:
            entry = self._index.get(bid)
            if entry is None:
                return None
            pack = self._packs[entry[0] >> 32]
            self._pin_locked(pack)
            return entry, pack

    def _durable(self, entry: Entry) -> None:
        """Readers see only durable records: wait for (or lead) the sync of a fresh one."""
        self._commit.wait(record_end(entry))

    def _read_verified(self, bid: bytes, entry: Entry, pack: Pack) -> memoryview:
        loc, size, crc = entry
        self._durable(entry)
        start = (loc & 0xFFFFFFFF) + HEADER_SIZE
        buf = memoryview(bytearray(size))
        pread_into(bid, pack.fd, buf, start, f" in {pack.path}")
        if crc32c(buf) != crc:
            raise BlockCorrupt(bid, f"data checksum mismatch ({pack.path} offset "
                               f"{start - HEADER_SIZE})")
        return buf

    def get(self, bid: bytes, offset: int = 0, length: int | None = None) -> memoryview | None:
        """Bytes [offset, offset+length) of a block, verified; None if it is not here."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            size = entry[1]
            if offset < 0 or offset > size or (length is not None and length < 0):
                raise OSError(errno.EINVAL, f"block {bid.hex()}: range offset={offset} "
                              f"length={length} outside a block of {size} bytes")
            end = size if length is None else min(size, offset + length)
            if end == offset and not (offset == 0 and end == size):
                return memoryview(b"")
            data = self._read_verified(bid, entry, pack)
        finally:
            self.unpin(pack)
        return data[offset:end].toreadonly()

    def get_chunks(self, bid: bytes) -> tuple[memoryview, int] | None:
        """The whole block, verified, and its CRC: a pack block is one chunk, so a range
        read of it carries all of it (it is small) and a one-entry chunk table."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            data = self._read_verified(bid, entry, pack)
        finally:
            self.unpin(pack)
        return data.toreadonly(), entry[2]

    def stat(self, bid: bytes) -> tuple[int, int] | None:
        entry = self._index.get(bid)
        return None if entry is None else (entry[1], entry[2])

    def check(self, bid: bytes) -> tuple[int, int] | None:
        """Read and verify the whole block: (size, crc), None if not here, or BlockCorrupt."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            self._read_verified(bid, entry, pack)
        finally:
            self.unpin(pack)
        return entry[1], entry[2]

    def read_record(self, bid: bytes) -> tuple[int, bytes] | None:
        """(loc, header + data as stored), unverified: for quarantine. None if not here."""
        pinned = self._pin_entry(bid)
        if pinned is None:
            return None
        entry, pack = pinned
        try:
            return entry[0], pread(pack.fd, HEADER_SIZE + entry[1], entry[0] & 0xFFFFFFFF)
        finally:
            self.unpin(pack)


def record_end(entry: Entry) -> tuple[int, int]:
    """The log position just past an entry's record: durable once the sync is there."""
    loc, size, _ = entry
    return loc >> 32, (loc & 0xFFFFFFFF) + HEADER_SIZE + size

