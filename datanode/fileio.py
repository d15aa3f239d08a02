"""The I/O loops of the block files and the pack log: gathered writes that finish, reads that
fill a buffer or say the block is corrupt, directory fds for fsync."""
from __future__ import annotations

import errno
import os
from typing import Sequence

from datanode.blocks import BlockCorrupt

IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def write_all(fd: int, views: Sequence[memoryview], offset: int | None = None) -> None:
    """Write every byte of `views`, in order, with writev (at the file position) or, given
    an offset, pwritev there. Short writes are resumed where they stopped; errors raise."""
    pending = [v for v in views if v.nbytes]
    i = 0
    while i < len(pending):
        batch = pending[i:i + IOV_MAX]
        n = os.writev(fd, batch) if offset is None else os.pwritev(fd, batch, offset)
        if n == 0:
            raise OSError(errno.EIO, "the write wrote nothing")
        if offset is not None:
            offset += n
        while n:  # drop what went out, keep the rest of a partly written view
            head = pending[i]
            if n >= head.nbytes:
                n -= head.nbytes
                i += 1
            else:
                pending[i] = head[n:]
                n = 0


def open_dir(path: str | os.PathLike[str]) -> int:
    """An fd of a directory, for fsyncing the names in it."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def pread_into(block_id: bytes, fd: int, buf: memoryview, offset: int, where: str = "") -> None:
    """Fill buf from offset; a short file is corruption, a failing disk too (BlockCorrupt).
    `where` (e.g. a pack file) goes into the reason."""
    try:
        while buf:
            n = os.preadv(fd, [buf], offset)
            if n == 0:
                raise BlockCorrupt(block_id, f"unexpected end of file{where} at byte {offset}")
            buf, offset = buf[n:], offset + n
    except BlockCorrupt:
        raise
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
        raise BlockCorrupt(block_id, f"read error{where} at byte {offset}: "
                           f"{exc.strerror}") from exc
