"""The whole namespace as plain data and back, for mds/snapshot.py (checkpoints): the
state frame, the tree in pre-order, and the restore side, whose file loop is kept tight
for millions of entries. A part of ``mds.namespace.Namespace`` (a mixin).
"""
from __future__ import annotations

import builtins   # `bytes` in this class's body is the Namespace counter
import struct
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from mds.fields import is_time
from mds.inode import (ATTR, ATTR_OFFSET, BIG_FILE_BLOCKS, LEGACY_FILE_MODE, SIZE,
                       SUPERUSER_ID, Dir, Draft, Inode)
from mds.ns_state import NamespaceState

if TYPE_CHECKING:
    from mds.tree import Tree

HDR_MTIME = struct.Struct("<d").unpack_from   # the mtime field of a header, at offset 16


class SnapshotState(NamespaceState):
    """export_* and restore_*, mixed into Namespace; used by mds/snapshot.py only."""

    if TYPE_CHECKING:    # what this part uses of the Namespace
        def _check_quota(self, rec: Mapping) -> None: ...
        def _apply_quota(self, rec: Mapping) -> dict: ...

    # ------------------------------------------------------------------ snapshot support
    # Used by mds/snapshot.py only: plain-data export and import of the whole state.

    def export_state(self) -> dict:
        return {"next_inode": self.next_inode, "dir_seq": self.tree.dir_seq,
                "root": self.tree.export_root(),
                "names": list(self.tree.names),
                "rsets": [list(t) for t in self.blockmap.rsets],
                "drafts": [d.to_list() for d in self.drafts.by_handle.values()],
                "counts": {"files": self.files, "dirs": self.dirs, "blocks": self.blocks,
                           "bytes": self.bytes},
                "quotas": self.quotas.export()}

    def export_tree(self) -> Iterator[tuple]:
        """Pre-order entries of directories, files and later names of linked files
        (see Tree.export)."""
        return self.tree.export()

    def restore_state(self, state: Mapping) -> None:
        """The state frame; one of a version 1 snapshot has ``root_mtime`` instead of
        ``root`` and ``names``, and drafts without owner, group and mode."""
        self.next_inode = state["next_inode"]
        self.tree.dir_seq = state.get("dir_seq", 0)     # before directory numbers: 0
        self._restored_quotas = state.get("quotas", ())   # [path, bytes, files] (v3)
        if "root" in state:
            self.tree.start_restore(state["root"], state["names"])
        else:
            self.tree.start_restore([state["root_mtime"]], [])
        for nodes in state["rsets"]:
            self.blockmap.rsets.intern(nodes)
        owners = self.blockmap.owners
        for entry in state["drafts"]:
            handle, path, ino, repl, bsize, lease, mtime, bids, targets = entry[:9]
            d = self.drafts.by_handle[handle] = Draft(handle, path, ino, repl, bsize, lease,
                                                      mtime, *entry[9:12])
            d.bids = list(bids)
            d.targets = [tuple(t) for t in targets]
            for bid in d.bids:
                owners[bid] = d

    def restore_dirs(self, flat: Sequence, legacy: bool = False, ids: bool = True) -> None:
        """Directories as a flat list (see Tree.restore_dirs)."""
        self.tree.restore_dirs(flat, legacy, ids)

    def restore_files(self, flat: Sequence, legacy: bool = False) -> None:
        """Files as a flat list: dir no., name, meta, block ids, dir no., ... With
        ``legacy`` (a version 1 snapshot) meta has no attributes: the superuser's, 0o644
        and ctime = mtime are put in."""
        # one tight loop over millions of entries: no per-file method calls
        dirs, blocks, size_of, positions = (self.tree.numbered, self.blockmap.owners,
                                            SIZE.unpack_from, self.blockmap.positions)
        add_ref = self.blockmap.add_ref
        nfiles, nblocks, nbytes = 0, 0, 0
        it = iter(flat)
        for di, name, meta, bids in zip(it, it, it, it):
            if legacy:
                meta = (meta[:ATTR_OFFSET] + ATTR.pack(LEGACY_FILE_MODE, SUPERUSER_ID,
                                                       SUPERUSER_ID, HDR_MTIME(meta, 16)[0])
                        + meta[ATTR_OFFSET:])
            if type(bids) is not tuple:
                bids = tuple(bids)
            node = dirs[di].children[name] = Inode(meta, bids)
            for bid in bids:
                if bid in blocks:         # shared with a file restored before it
                    add_ref(bid, node)
                else:
                    blocks[bid] = node
            n = len(bids)
            if n > BIG_FILE_BLOCKS:
                positions[node] = {b: i for i, b in enumerate(node.bids)}
            nfiles += 1
            nblocks += n
            nbytes += size_of(meta, 8)[0]
        self.files += nfiles
        self.blocks += nblocks
        self.bytes += nbytes

    def restore_atimes(self, files: Sequence, dirs: Sequence) -> None:
        """Own access times: of files (inode id, atime, inode id, ...) and of
        directories, restored before this frame (path, atime, path, ...)."""
        it = iter(files)
        for ino, atime in zip(it, it):
            if type(ino) is not int or not is_time(atime):
                raise ValueError(f"bad atime entry {ino!r}: {atime!r}")
            self.tree.atimes[ino] = atime
        it = iter(dirs)
        for path, atime in zip(it, it):
            try:
                _, node = self.tree.node(path)
            except OSError as exc:
                raise ValueError(f"directory atime of {path!r}: {exc}") from None
            if type(node) is not Dir or not is_time(atime):
                raise ValueError(f"bad directory atime entry {path!r}: {atime!r}")
            self.tree.dir_atimes[node] = atime

    def restore_deletes(self, node: str, block_ids: Sequence[builtins.bytes]) -> None:
        queue = self.blockmap.queue
        for bid in block_ids:
            queue(node, bid)

    def finish_restore(self) -> None:
        """Forget the numbering; quotas get their usage counted once, here."""
        self.dirs = self.tree.finish_restore()
        for path, max_bytes, max_files in self._restored_quotas:
            rec = {"op": "quota", "path": path, "bytes": max_bytes, "files": max_files}
            self._check_quota(rec)
            self._apply_quota(rec)
        self._restored_quotas = ()
