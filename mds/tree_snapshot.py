"""The walk a snapshot writes of the directory tree (mds/tree.py) and the restore that
reads it back: directories numbered in pre-order, files, and the later names of
hard-linked files. A part of ``mds.tree.Tree`` (a mixin); used through the Namespace's
export_tree / restore_* (mds/ns_restore.py) by mds/snapshot.py only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

from mds.inode import DIR_IDS, Dir, Inode

if TYPE_CHECKING:
    from mds.inode import Names


class TreeSnapshot:
    """export and restore of the tree, mixed into Tree."""

    if TYPE_CHECKING:    # what this part uses of the Tree
        root: Dir
        names: Names
        numbered: list[Dir]
        links: dict[Inode, int]
        dir_seq: int

        def new_dir_id(self) -> int: ...

    def export(self) -> Iterator[tuple]:
        """Pre-order entries: (0, parent dir no., name, mtime, ctime, mode, owner index,
        group index, inode number) for a directory, numbered in order of appearance
        from 1 (the root is 0), and (1, dir no., name, meta, bids) for a file (its
        attributes are in meta); a hard-linked file's later entries are (2, dir no.,
        name, first entry's dir no., first entry's name)."""
        stack: list[tuple[int, Dir]] = [(0, self.root)]
        count = 0
        links = self.links
        first: dict[Inode, tuple[int, str]] = {}
        while stack:
            idx, d = stack.pop()
            for name, child in d.children.items():
                if type(child) is Dir:
                    count += 1
                    yield (0, idx, name, child.mtime, child.ctime, child.mode, child.uid,
                           child.gid, child.ino)
                    stack.append((count, child))
                elif links and child in links:
                    seen = first.get(child)
                    if seen is None:
                        first[child] = (idx, name)
                        yield (1, idx, name, child.meta, child.bids)
                    else:
                        yield (2, idx, name, *seen)
                else:
                    yield (1, idx, name, child.meta, child.bids)

    def export_root(self) -> list:
        r = self.root
        return [r.mtime, r.ctime, r.mode, r.uid, r.gid]

    def start_restore(self, root: Sequence, names: Sequence[str]) -> list[Dir]:
        """Begin filling an empty tree with the root's attributes (or only its mtime, in
        a version 1 snapshot) and the name table; returns the directories by number."""
        for name in names:
            self.names.intern(name)
        if len(root) == 1:
            self.root.mtime = self.root.ctime = root[0]
        else:
            r = self.root
            r.mtime, r.ctime, r.mode, r.uid, r.gid = root
        self.numbered = [self.root]
        return self.numbered

    def restore_dirs(self, flat: Sequence, legacy: bool = False, ids: bool = True) -> None:
        """Directories as a flat list: parent no., name, mtime, ctime, mode, owner index,
        group index, inode number, parent no., ... (without ``ids``, a snapshot from
        before directories had numbers: they get the next ones, in order; ``legacy``,
        version 1: parent no., name, mtime, ...)."""
        dirs = self.numbered
        it = iter(flat)
        if legacy:
            for parent, name, mtime in zip(it, it, it):
                d = dirs[parent].children[name] = Dir(mtime, ino=self.new_dir_id())
                dirs[parent].subdirs += 1
                dirs.append(d)
            return
        if not ids:
            for parent, name, mtime, ctime, mode, uid, gid in zip(it, it, it, it, it, it, it):
                d = dirs[parent].children[name] = Dir(mtime, mode, uid, gid, ctime,
                                                      self.new_dir_id())
                dirs[parent].subdirs += 1
                dirs.append(d)
            return
        for parent, name, mtime, ctime, mode, uid, gid, ino in zip(it, it, it, it, it, it, it,
                                                                   it):
            if type(ino) is not int or not DIR_IDS < ino <= DIR_IDS + self.dir_seq:
                raise ValueError(f"bad directory inode number {ino!r}")
            d = dirs[parent].children[name] = Dir(mtime, mode, uid, gid, ctime, ino)
            dirs[parent].subdirs += 1
            dirs.append(d)

    def finish_restore(self) -> int:
        """Forget the numbering; returns how many directories were restored."""
        count = len(self.numbered) - 1
        self.numbered = []
        return count
