"""The directory tree of the namespace: path lookups, the checks of the mkdir, rm and
rename records, the reads that need only the tree (stat, ls, du, iter_files,
resolve_move), and the walk a snapshot writes and reads back.

The tree holds ``Dir`` and ``Inode`` nodes and never touches blocks: the Namespace
releases what ``detach`` and ``attach`` take out of it.
"""
from __future__ import annotations

import bisect
import errno
from typing import Iterator, Mapping, Sequence

from mds import paths
from mds.fields import check, error, is_time
from mds.inode import Dir, Inode


class Tree:
    def __init__(self) -> None:
        self.root = Dir(0.0)
        self.numbered: list[Dir] = []      # directories by number, while restoring

    # ------------------------------------------------------------------ lookups

    def walk_parent(self, path: str, names: list[str], missing_ok: bool = False) -> Dir | None:
        """The directory holding the last component; None if absent and missing_ok."""
        node = self.root
        for name in names[:-1]:
            child = node.children.get(name)
            if child is None:
                if missing_ok:
                    return None
                raise error(errno.ENOENT, path)
            if type(child) is not Dir:
                raise error(errno.ENOTDIR, path)
            node = child
        return node

    def node(self, path: str) -> tuple[list[str], Dir | Inode]:
        names = paths.components(path)
        if not names:
            return names, self.root
        node = self.walk_parent(path, names).children.get(names[-1])
        if node is None:
            raise error(errno.ENOENT, path)
        return names, node

    @staticmethod
    def canonical(path: object) -> list[str]:
        names = paths.components(path)
        check(path == "/" + "/".join(names), path, "path is not normalised")
        return names

    # ------------------------------------------------------------------ changes

    def mkdirs(self, names: list[str], mtime: float) -> tuple[Dir, int]:
        """Create the missing directories of ``names``; (the last one, how many made)."""
        node, created = self.root, 0
        for name in names:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Dir(mtime)
                node.mtime = mtime
                created += 1
            node = child
        return node, created

    def detach(self, path: str, mtime: float) -> Dir | Inode:
        names = paths.components(path)
        parent = self.walk_parent(path, names)
        node = parent.children.pop(names[-1])
        parent.mtime = mtime
        return node

    def attach(self, path: str, node: Dir | Inode, mtime: float) -> Dir | Inode | None:
        """Put ``node`` at ``path``; returns the node it replaced, if any."""
        names = paths.components(path)
        parent = self.walk_parent(path, names)
        old = parent.children.get(names[-1])
        parent.children[names[-1]] = node
        parent.mtime = mtime
        return old

    # ------------------------------------------------------------------ record checks

    def check_mkdir(self, rec: Mapping) -> None:
        path = rec["path"]
        names = self.canonical(path)
        check(is_time(rec["mtime"]), path, "bad mtime")
        node = self.root
        for i, name in enumerate(names):
            child = node.children.get(name)
            last = i == len(names) - 1
            if child is None:
                if not last and not rec["parents"]:
                    raise error(errno.ENOENT, path)
                return
            if type(child) is not Dir:
                raise error(errno.EEXIST if last else errno.ENOTDIR, path)
            node = child
        if not rec["parents"]:
            raise error(errno.EEXIST, path)

    def check_rm(self, rec: Mapping) -> None:
        path = rec["path"]
        names = self.canonical(path)
        if not names:
            raise error(errno.EINVAL, path, "cannot remove the root directory")
        check(is_time(rec["mtime"]), path, "bad mtime")
        _, node = self.node(path)
        if type(node) is Dir and node.children and not rec["recursive"]:
            raise error(errno.ENOTEMPTY, path)

    def check_rename(self, rec: Mapping) -> None:
        src, dst = rec["src"], rec["dst"]
        snames, dnames = self.canonical(src), self.canonical(dst)
        if not snames:
            raise error(errno.EINVAL, src, "cannot rename the root directory")
        if not dnames:
            raise error(errno.EINVAL, dst, "cannot replace the root directory")
        check(is_time(rec["mtime"]), src, "bad mtime")
        _, node = self.node(src)
        if src == dst:
            return
        if type(node) is Dir and paths.is_within(dst, src):
            raise error(errno.EINVAL, dst, "cannot move a directory into its own subtree")
        target = self.walk_parent(dst, dnames).children.get(dnames[-1])
        if target is None:
            return
        if type(node) is not Dir and type(target) is Dir:
            raise error(errno.EISDIR, dst)
        if type(node) is Dir and type(target) is not Dir:
            raise error(errno.ENOTDIR, dst)
        if type(target) is Dir and target.children:
            raise error(errno.ENOTEMPTY, dst)

    # ------------------------------------------------------------------ reads

    def stat(self, path: str) -> dict:
        path = paths.normalize(path)
        _, node = self.node(path)
        if type(node) is Dir:
            return {"path": path, "type": "dir", "size": 0, "mtime": node.mtime,
                    "entries": len(node.children)}
        ino, size, mtime, repl, bsize = node.header()
        return {"path": path, "type": "file", "inode": ino, "size": size, "mtime": mtime,
                "replication": repl, "block_size": bsize, "blocks": len(node.bids)}

    @staticmethod
    def _entry(name: str, node: Dir | Inode) -> dict:
        if type(node) is Dir:
            return {"name": name, "type": "dir", "size": 0, "mtime": node.mtime}
        _, size, mtime, _, _ = node.header()
        return {"name": name, "type": "file", "size": size, "mtime": mtime}

    def ls(self, path: str, *, start_after: str | None = None,
           limit: int | None = None) -> list[dict]:
        """Entries of a directory sorted by name (or the file itself); pageable."""
        path = paths.normalize(path)
        names, node = self.node(path)
        if type(node) is not Dir:
            return [self._entry(names[-1], node)]
        keys = sorted(node.children)
        if start_after is not None:
            keys = keys[bisect.bisect_right(keys, start_after):]
        if limit is not None:
            keys = keys[:limit]
        return [self._entry(k, node.children[k]) for k in keys]

    def du(self, path: str) -> dict:
        """Total committed bytes, files and directories under a path (inclusive)."""
        _, node = self.node(paths.normalize(path))
        total = files = dirs = 0
        stack = [node]
        while stack:
            node = stack.pop()
            if type(node) is Dir:
                dirs += 1
                stack.extend(node.children.values())
            else:
                files += 1
                total += node.size
        return {"bytes": total, "files": files, "dirs": dirs}

    def iter_files(self, path: str = "/") -> Iterator[tuple[str, dict]]:
        """(path, stat) of every committed file under ``path``, depth first."""
        path = paths.normalize(path)
        names, node = self.node(path)
        stack: list[tuple[str, Dir | Inode]] = [(path, node)]
        while stack:
            p, node = stack.pop()
            if type(node) is Dir:
                stack.extend((paths.join(p, k), c) for k, c in node.children.items())
            else:
                ino, size, mtime, repl, bsize = node.header()
                yield p, {"type": "file", "inode": ino, "size": size, "mtime": mtime,
                          "replication": repl, "block_size": bsize, "blocks": len(node.bids)}

    def resolve_move(self, src: str, dst: str) -> str:
        """``mv src dst`` semantics: into ``dst`` when it is an existing directory."""
        src, dst = paths.normalize(src), paths.normalize(dst)
        try:
            _, node = self.node(dst)
        except (FileNotFoundError, NotADirectoryError):
            return dst
        if type(node) is Dir and src != "/":
            return paths.join(dst, paths.basename(src))
        return dst

    # ------------------------------------------------------------------ snapshot walk

    def export(self) -> Iterator[tuple]:
        """Pre-order entries: (0, parent dir no., name, mtime) for a directory, numbered
        in order of appearance from 1 (the root is 0), and (1, dir no., name, meta, bids)."""
        stack: list[tuple[int, Dir]] = [(0, self.root)]
        count = 0
        while stack:
            idx, d = stack.pop()
            for name, child in d.children.items():
                if type(child) is Dir:
                    count += 1
                    yield (0, idx, name, child.mtime)
                    stack.append((count, child))
                else:
                    yield (1, idx, name, child.meta, child.bids)

    def start_restore(self, root_mtime: float) -> list[Dir]:
        """Begin filling an empty tree; returns the directories by number (root is 0)."""
        self.root.mtime = root_mtime
        self.numbered = [self.root]
        return self.numbered

    def restore_dirs(self, flat: Sequence) -> None:
        """Directories as a flat list: parent no., name, mtime, parent no., ..."""
        dirs = self.numbered
        it = iter(flat)
        for parent, name, mtime in zip(it, it, it):
            d = dirs[parent].children[name] = Dir(mtime)
            dirs.append(d)

    def finish_restore(self) -> int:
        """Forget the numbering; returns how many directories were restored."""
        count = len(self.numbered) - 1
        self.numbered = []
        return count
