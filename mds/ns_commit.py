"""The commit record: a draft becomes the file at its path, with the blocks (and the
replicas) the client proves, or blocks it shares with committed files (checked in
mds/ns_clone.py); the file it replaces is released. Also the checks and the quota charge
of a new file that commit and clone share. A part of ``mds.namespace.Namespace`` (a
mixin: its methods run on the Namespace); the record formats are in that module's
docstring.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

from mds import paths, perms
from mds.drafts import POOL_PATH
from mds.fields import check, error, is_node_list, is_time, nodes_arg
from mds.inode import BLK, HDR, Dir, Inode
from mds.ns_state import NamespaceState
from mds.perms import Cred
from mds.tree import checked

NO_SHARED: frozenset[int] = frozenset()
ID_LEN = 8                   # the inode number at the start of a file's header (HDR)


class CommitRecords(NamespaceState):
    """commit, and the new-file checks commit and clone share, mixed into Namespace."""

    if TYPE_CHECKING:    # what this part uses of the Namespace
        def _check_shared_block(self, path: str, i: int, bid: Any, size: Any,
                                crc: Any) -> None: ...
        def _check_sources(self, handle: str, blocks: Sequence[Mapping[str, Any]],
                           cred: Cred | None) -> None: ...
        def _need_replace(self, cred: Cred | None, parent: Dir, existing: Dir | Inode | None,
                          path: str, names: list[str]) -> None: ...
        def _release_file(self, node: Inode) -> None: ...
        def _replace_linked(self, old: Inode, new: Inode) -> None: ...
        def _names_of(self, node: Dir | Inode | None) -> int: ...

    def prepare_commit(self, handle: str, blocks: Sequence[Mapping[str, Any]], *,
                       exclusive: bool = False, cred: Cred | None = None) -> dict:
        """``blocks``: [{"id", "size", "checksum", "replicas"}] in file order. With
        ``exclusive`` the commit fails EEXIST if anything exists at the path by then
        (O_EXCL, fsspec's "xb", S3's If-None-Match: *). ``cred`` must be the draft's
        creator and may still put a file at its path: the parent may have changed since
        create."""
        sources = False
        try:
            entries = []
            for b in blocks:
                if b.get("from") is None:
                    entries.append([b["id"], b["size"], b["checksum"],
                                    nodes_arg(b["replicas"], handle, "replicas")])
                else:
                    entries.append([b["id"], b["size"], b["checksum"]])
                    sources = True
        except (KeyError, TypeError, AttributeError):
            raise error(errno.EINVAL, handle, "blocks must be mappings with id, size, "
                        "checksum and replicas (or from)") from None
        rec = {"op": "commit", "handle": handle, "blocks": entries, "mtime": self._clock()}
        if exclusive:
            rec["exclusive"] = True
        self._check_commit(rec)
        if sources:
            self._check_sources(handle, blocks, cred)
        if checked(cred):
            d = self.drafts.get(handle)
            if cred.user != d.owner:
                raise error(errno.EACCES, d.path, f"the draft belongs to {d.owner}, "
                                                  f"not {cred.user}")
            names = paths.components(d.path)
            parent = self.tree.walk_parent(d.path, names, cred=cred)
            self._need_replace(cred, parent, parent.children.get(names[-1]), d.path, names)
        return rec

    def _check_commit(self, rec: Mapping) -> None:
        d = self.drafts.get(rec["handle"])
        path, blocks = d.path, rec["blocks"]
        check(path != POOL_PATH, d.handle, "a block pool is not a file: it cannot be committed")
        check(isinstance(blocks, list), path, "blocks must be a list")
        check(is_time(rec["mtime"]), path, "bad mtime")
        mine, seen = set(d.bids), set()
        mixed = None      # whether the file shares blocks: looked up only when it matters
        for i, entry in enumerate(blocks):
            check(isinstance(entry, (list, tuple)) and len(entry) in (3, 4), path,
                  "bad block entry")
            if len(entry) == 3:
                self._check_shared_block(path, i, *entry)
                continue
            bid, size, crc, nodes = entry
            check(bid in mine, path, f"block {i} was not allocated to this draft")
            check(bid not in seen, path, f"block {i} listed twice")
            seen.add(bid)
            last = i == len(blocks) - 1
            # full blocks except the last keep offset -> block a division for readers;
            # a file that shares blocks mixes sizes anyway and readers use the sizes
            if not (type(size) is int and (0 < size <= d.block_size if last
                                           else size == d.block_size)):
                if mixed is None:
                    mixed = any(isinstance(e, (list, tuple)) and len(e) == 3 for e in blocks)
                check(mixed and type(size) is int and 0 < size <= d.block_size, path,
                      f"block {i}: size must be the block size except for the last block")
            check(type(crc) is int and 0 <= crc < 1 << 32, path, f"block {i}: bad checksum")
            check(is_node_list(nodes), path, f"block {i}: replicas must be distinct node ids")
        names = paths.components(path)
        self._check_new_file(path, names, sum(e[1] for e in blocks), rec.get("exclusive"))

    def _apply_commit(self, rec: Mapping) -> dict:
        d = self.drafts.by_handle.pop(rec["handle"])
        bm = self.blockmap
        # reuse the id objects already keyed in the index: one bytes object per block
        where = {bid: i for i, bid in enumerate(d.bids)}
        size, bids, parts = 0, cast("list[bytes]", []), [b""]
        shared = []
        for entry in rec["blocks"]:
            if len(entry) == 3:   # a committed block this file shares: its replica set
                holder, j = cast("tuple[Inode, int]", bm.locate(entry[0]))
                bsize, crc, rs = holder.block(j)
                shared.append(len(bids))
                bids.append(holder.bids[j])
                parts.append(BLK.pack(bsize, crc, rs))
                size += bsize
                continue
            bid, bsize, crc, nodes = entry
            i = where.pop(bid)
            bid = d.bids[i]
            bids.append(bid)
            for node in d.targets[i]:
                if node not in nodes:
                    bm.queue(node, bid)
            parts.append(BLK.pack(bsize, crc, bm.rsets.intern(nodes)))
            size += bsize
        for bid, i in where.items():  # allocated but not committed: garbage
            bm.release_block(bid, d.targets[i])
        names = self.tree.names
        parts[0] = HDR.pack(d.inode, size, rec["mtime"], d.replication, d.block_size,
                            d.mode, names.intern(d.owner), names.intern(d.group),
                            rec["mtime"])
        inode = Inode(b"".join(parts), tuple(bids))
        # referenced before the file it replaces is released: a new version that shares
        # blocks with the old one (copy-on-write) keeps them
        bm.add_file(inode, frozenset(shared) if shared else NO_SHARED)
        old = self._put_file(d.path, inode, rec["mtime"], d.mode & perms.KIND_BITS)
        self.files += 1
        self.blocks += len(bids)
        self.bytes += size
        return {"path": d.path, "inode": inode.id, "size": size, "blocks": len(bids),
                "replaced": old is not None}

    def _put_file(self, path: str, inode: Inode, mtime: float,
                  kind: int | None = None) -> Inode | None:
        """Put new file ``inode`` (indexed already) at ``path`` and charge the tree
        quotas; returns the file it replaces, whose owner, group and mode it keeps (and
        its kind, unless ``kind``), and which is released: a file _check_new_file let
        through (never a directory). A hard-linked file is changed in place instead,
        for all its names (mds/ns_link.py)."""
        names = paths.components(path)
        old = cast("Inode | None", self.tree.walk_parent(path, names).children.get(names[-1]))
        grow, count = inode.size, 1
        if old is not None:
            grow -= old.size
            mode, uid, gid, _ = old.attrs()
            if kind is not None:
                mode = mode & perms.MODE_BITS | kind
            # and its inode number: a file keeps its number through every new version
            # (st_ino, as a write in place keeps it), like its owner and mode
            inode.meta = old.meta[:ID_LEN] + inode.with_attrs(mode, uid, gid, mtime)[ID_LEN:]
            count = self._names_of(old)
        if self.quotas:
            self.quotas.charge(self._quotas_over(names), grow * count, old is None)
        if count > 1:
            self._replace_linked(cast(Inode, old), inode)
            self.files -= 1           # the caller counts a new file; it is not one
            self.tree.attach(path, cast(Inode, old), mtime)
            return old
        self.tree.attach(path, inode, mtime)
        if old is not None:
            self._release_file(old)
        return old

    def _check_new_file(self, path: str, names: list[str], size: int,
                        exclusive: Any) -> None:
        """A file of `size` bytes may appear at `path` (a commit's or a clone's target):
        not over a directory (EISDIR), not over anything when `exclusive` (EEXIST), within
        the tree quotas above it counting the file it replaces (EDQUOT)."""
        existing = self.tree.walk_parent(path, names).children.get(names[-1])
        if type(existing) is Dir:
            raise error(errno.EISDIR, path)
        if existing is not None and exclusive:
            raise error(errno.EEXIST, path)
        if self.quotas:
            old = existing.size if existing is not None else 0
            self.quotas.need(self._quotas_over(names), (size - old) * self._names_of(existing),
                             existing is None, path)
