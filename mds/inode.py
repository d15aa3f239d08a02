"""The packed in-memory representation of namespace nodes: directories, committed files
(``Inode``: struct-packed metadata plus a tuple of block ids), drafts (files under
construction) and the interned tables (replica sets, owner/group names) they point into.

Memory: a committed file is an ``Inode`` with two slots, a packed ``meta`` bytes (header
+ 16 bytes per block) and a tuple of block ids shared with the block index; replica
lists are interned in ``ReplicaSets`` and owner/group names in ``Names``, both referenced
by index. The header carries mode, owner, group and ctime (18 bytes). Measured with
bench/mds_memory.py: 1M one-block files hold ~393 MiB RSS loaded from a snapshot (377
MiB before owners and modes: +16 bytes a file); ~680 MiB with three blocks (measured
before owners; the 16-byte id objects and their index entries dominate: ~145 bytes a
block). Do not add per-inode objects.
"""
from __future__ import annotations

import struct
from typing import Iterator, Sequence, final

# inode id, size, mtime, replication, block size
BASE = struct.Struct("<QQdBI")
# mode (12 bits), owner and group (indexes into Names), ctime; right after BASE
ATTR = struct.Struct("<HIId")
ATTR_OFFSET = BASE.size
HDR = struct.Struct("<QQdBIHIId")    # BASE + ATTR: block entries follow it
# block size, CRC32C, index into the replica-set table
BLK = struct.Struct("<QII")
SIZE = struct.Struct("<Q")       # the size field of HDR alone, at offset 8
BLOCK_ID_LEN = 16
# files with more blocks than this keep an id -> position map, so block lookups stay
# O(1) for huge files while small files pay no memory for it (a C scan of <= 32 ids)
BIG_FILE_BLOCKS = 32


# What records and snapshots written before owners existed mean (format version 1):
# everything belongs to the superuser, directories 0o755, files 0o644.
LEGACY_DIR_MODE = 0o755
LEGACY_FILE_MODE = 0o644
SUPERUSER_ID = 0          # Names index 0 is always the superuser (mds/perms.SUPERUSER)
# directories' inode numbers: DIR_IDS + n (the root's n is 0), far above any file's
DIR_IDS = 1 << 62


# final (Dir, Inode, Draft): the namespace tells them apart by ``type(x) is Dir`` (faster
# than isinstance on the lookup path), which the checker narrows in both branches only
# for final classes.
@final
class Dir:
    # subdirs: how many children are directories (nlink = 2 + subdirs), derived: kept
    # by the tree's attach/detach/mkdirs and recounted on restore, never logged
    # ino: the directory's inode number (DIR_IDS + a sequence number, mds/tree.py), kept
    # in snapshots; files' numbers come from the namespace's next_inode, so never equal
    __slots__ = ("children", "mtime", "ctime", "mode", "uid", "gid", "subdirs", "ino")

    def __init__(self, mtime: float, mode: int = LEGACY_DIR_MODE, uid: int = SUPERUSER_ID,
                 gid: int = SUPERUSER_ID, ctime: float | None = None, ino: int = 0) -> None:
        self.ino = ino
        self.children: dict[str, Dir | Inode] = {}
        self.mtime = mtime
        self.ctime = mtime if ctime is None else ctime
        self.mode = mode
        self.uid = uid          # index into Names
        self.gid = gid
        self.subdirs = 0


@final
class Inode:
    """A committed file: immutable except for replica sets (``set_replicas``)."""
    __slots__ = ("meta", "bids")

    def __init__(self, meta: bytes, bids: tuple[bytes, ...]) -> None:
        self.meta = meta
        self.bids = bids

    @property
    def id(self) -> int:
        return HDR.unpack_from(self.meta)[0]

    @property
    def size(self) -> int:
        return SIZE.unpack_from(self.meta, 8)[0]

    def header(self) -> tuple[int, int, float, int, int]:
        """(inode id, size, mtime, replication, block size)"""
        return BASE.unpack_from(self.meta)

    def attrs(self) -> tuple[int, int, int, float]:
        """(mode, owner index, group index, ctime)"""
        return ATTR.unpack_from(self.meta, ATTR_OFFSET)

    def with_attrs(self, mode: int, uid: int, gid: int, ctime: float) -> bytes:
        """``meta`` with the attribute part of the header replaced."""
        end = ATTR_OFFSET + ATTR.size
        return self.meta[:ATTR_OFFSET] + ATTR.pack(mode, uid, gid, ctime) + self.meta[end:]

    def block(self, i: int) -> tuple[int, int, int]:
        """(size, checksum, replica-set index) of block ``i``"""
        return BLK.unpack_from(self.meta, HDR.size + i * BLK.size)

    def iter_block_meta(self) -> Iterator[tuple[int, int, int]]:
        return BLK.iter_unpack(memoryview(self.meta)[HDR.size:])

    def with_block(self, i: int, size: int, crc: int, rset: int) -> bytes:
        """``meta`` with block ``i``'s entry replaced."""
        off = HDR.size + i * BLK.size
        return self.meta[:off] + BLK.pack(size, crc, rset) + self.meta[off + BLK.size:]


@final
class Draft:
    """A file under construction: invisible to readers until commit. It remembers who
    created it and the mode asked for, which the committed file gets (unless it replaces
    a file, whose owner, group and mode it keeps)."""
    __slots__ = ("handle", "path", "inode", "replication", "block_size", "lease", "mtime",
                 "bids", "targets", "owner", "group", "mode")

    def __init__(self, handle: str, path: str, inode: int, replication: int,
                 block_size: int, lease: float, mtime: float, owner: str = "admin",
                 group: str = "admin", mode: int = LEGACY_FILE_MODE) -> None:
        self.handle = handle
        self.path = path
        self.inode = inode
        self.replication = replication
        self.block_size = block_size
        self.lease = lease
        self.mtime = mtime
        self.bids: list[bytes] = []
        self.targets: list[tuple[str, ...]] = []
        self.owner = owner
        self.group = group
        self.mode = mode

    def to_list(self) -> list:
        return [self.handle, self.path, self.inode, self.replication, self.block_size,
                self.lease, self.mtime, list(self.bids), [list(t) for t in self.targets],
                self.owner, self.group, self.mode]


class ReplicaSets(list):
    """The interned replica sets: a list of node tuples (index it like one) that only
    grows, so the index stored in block metadata stays valid."""
    __slots__ = ("_ids",)

    def __init__(self) -> None:
        super().__init__()
        self._ids: dict[tuple[str, ...], int] = {}

    def intern(self, nodes: Sequence[str]) -> int:
        key = tuple(nodes)
        idx = self._ids.get(key)
        if idx is None:
            idx = self._ids[key] = len(self)
            self.append(key)
        return idx


class Names(list):
    """The interned owner and group names: a list of str that only grows (index 0 is the
    superuser), so the indexes stored in headers and directories stay valid."""
    __slots__ = ("_ids",)

    def __init__(self, superuser: str = "admin") -> None:
        super().__init__()
        self._ids: dict[str, int] = {}
        self.intern(superuser)

    def intern(self, name: str) -> int:
        idx = self._ids.get(name)
        if idx is None:
            idx = self._ids[name] = len(self)
            self.append(name)
        return idx
