"""Gathered writes that finish: the one write loop of the block store and the pack log."""
from __future__ import annotations

import errno
import os
from typing import Sequence

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
