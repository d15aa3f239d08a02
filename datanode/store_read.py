"""The BlockStore's read path: verified whole-block and range reads, stat, check and verify,
each asking the pack log first, then the block files. A mixin of datanode/store.py's
BlockStore (which owns the two parts and their rules of writing and removal).
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from datanode.blockid import parse_block_id
from datanode.blocks import BlockCorrupt, BlockInfo

if TYPE_CHECKING:
    from datanode.blockfiles import BlockFiles
    from datanode.packs import PackLog


class StoreReads:
    """get, get_chunks, stat, check, verify of BlockStore."""

    if TYPE_CHECKING:
        def _parts(self) -> tuple[PackLog, BlockFiles]: ...

    def get(self, block_id: bytes, offset: int = 0, length: int | None = None) -> memoryview:
        """Bytes [offset, offset+length) of a block (clipped at its end), verified.

        A whole-block read checks the block CRC; a range read reads and checks just the
        chunks it touches. offset must be within 0..size.
        """
        bid = parse_block_id(block_id)
        packs, files = self._parts()
        data = packs.get(bid, offset, length)
        return data if data is not None else files.get(bid, offset, length)

    def get_chunks(self, block_id: bytes, offset: int = 0, length: int | None = None
                   ) -> tuple[int, memoryview, int, list[int]]:
        """For a verified range read: (start, data, chunk_size, chunk CRC table), data being
        the whole chunks that cover [offset, offset+length) from `start` (verified here
        too). A pack block is one chunk: start 0, all its bytes, chunk_size = its size (1
        for an empty block), the table [its CRC]."""
        bid = parse_block_id(block_id)
        packs, files = self._parts()
        whole = packs.get_chunks(bid)
        if whole is None:
            start, data, chunk_size, table = files.get_chunks(bid, offset, length)
            return start, data, chunk_size, list(table)
        data, crc = whole
        if offset < 0 or offset > data.nbytes or (length is not None and length < 0):
            raise OSError(errno.EINVAL, f"block {bid.hex()}: range offset={offset} "
                          f"length={length} outside a block of {data.nbytes} bytes")
        return 0, data, max(1, data.nbytes), [crc] if data.nbytes else []

    def stat(self, block_id: bytes) -> BlockInfo:
        """Size and CRC from the footer (footer CRC and file length checked, data not read)
        or, for a pack block, from the index."""
        bid = parse_block_id(block_id)
        packs, files = self._parts()
        have = packs.stat(bid)
        return BlockInfo(bid, *have) if have is not None else files.stat(bid)

    def check(self, block_id: bytes) -> BlockInfo:
        """Re-verify everything: footer, chunk table, every chunk and the whole-block CRC
        (a pack block: its record's data CRC)."""
        bid = parse_block_id(block_id)
        packs, files = self._parts()
        have = packs.check(bid)
        return BlockInfo(bid, *have) if have is not None else files.check(bid)

    def verify(self, block_id: bytes) -> bool:
        """True if the block passes check(); a missing block raises FileNotFoundError."""
        try:
            self.check(block_id)
        except BlockCorrupt:
            return False
        return True
