"""The MDS data directory's own files, beside the WAL segments and snapshots: ``FORMAT``
(the data format version: `read_format`, `write_format`) and ``LOCK`` (one MDS process a
directory). Used by mds.metastore.MetaStore when it opens a directory; `RecoveryError` is
what it raises for a directory it cannot recover without losing acknowledged records.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import BinaryIO

from mds.snapshot import list_snapshots
from mds.wal import fsync_dir, list_segments

DATA_FORMAT = "aegisfs-mds"
# 1: the first layout (no FORMAT file); 2: owners, groups and modes in records and
# snapshots (version 1 records and snapshots still read, see mds/inode.py)
DATA_VERSION = 2
FORMAT_FILE = "FORMAT"


def _lock_directory(directory: Path) -> BinaryIO:
    """Hold an exclusive flock on ``LOCK``: a second MDS on the same directory would
    take the live writer's half-written record for a torn tail and cut it off. The lock
    goes with the process (and a checkpoint child still writing)."""
    f = open(directory / "LOCK", "ab")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OSError(errno.EBUSY, "data directory is in use by another MDS process",
                      str(directory)) from None
    return f


def read_format(directory: Path) -> int:
    """The data format version of a directory: its FORMAT file, else 1 when it holds a
    log or a snapshot (made before FORMAT existed), else the current one (a new store).
    A version newer than this code is an error before anything else is read."""
    path = directory / FORMAT_FILE
    try:
        raw = path.read_text()
    except FileNotFoundError:
        old = list_segments(directory) or list_snapshots(directory)
        return 1 if old else DATA_VERSION
    try:
        info = json.loads(raw)
        version = info["version"]
        if info.get("format") != DATA_FORMAT or type(version) is not int or version < 1:
            raise ValueError(info)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RecoveryError(path, f"{path} is not an AegisFS MDS format file: "
                                  f"{raw[:200]!r}") from None
    if version > DATA_VERSION:
        raise OSError(errno.EPROTONOSUPPORT, (
            f"data directory {directory} has format version {version}; this MDS reads "
            f"versions 1..{DATA_VERSION}: run the AegisFS that wrote it, or a newer one"),
            str(path))
    return version


def write_format(directory: Path) -> None:
    """FORMAT = the current version, durably (tmp, fsync, rename, fsync directory)."""
    tmp = directory / f"{FORMAT_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": DATA_FORMAT, "version": DATA_VERSION}, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, directory / FORMAT_FILE)
    fsync_dir(directory)


class RecoveryError(OSError):
    """The data directory cannot be recovered without losing acknowledged records."""

    def __init__(self, path: os.PathLike | str, message: str) -> None:
        super().__init__(errno.EIO, message, str(path))

