"""The directory tree of the namespace: path lookups, the checks of the mkdir, rm and
rename records, the permission checks of a caller (``cred``, mds/perms.py) on the way,
the reads that need only the tree (stat, ls, du, iter_files, resolve_move); the walk a
snapshot writes and reads back is mds/tree_snapshot.py.

The tree holds ``Dir`` and ``Inode`` nodes and never touches blocks: the Namespace
releases what ``detach`` and ``attach`` take out of it. A ``cred`` of None means no
permission checks: record validation and replay (records were authorised when prepared)
and the MDS's own reads (repair, fsck).
"""
from __future__ import annotations

import bisect
import errno
from typing import Iterator, Literal, Mapping, TypeGuard, cast, overload

from mds import paths, perms
from mds.fields import check, error, is_time
from mds.inode import ATTR, ATTR_OFFSET, BASE, DIR_IDS, Dir, Inode, Names
from mds.perms import SEARCH, W, Cred
from mds.tree_snapshot import TreeSnapshot

WX = W | SEARCH
MAX_NAME = 128            # an owner or group name: a caller id is at most 128 characters


def _prefix(names: list[str], i: int) -> str:
    return "/" + "/".join(names[:i])


def checked(cred: Cred | None) -> TypeGuard[Cred]:
    """Whether lookups for ``cred`` check permissions at all: the superuser searches
    every directory and reads and writes everything, so its path is the plain one.
    (A TypeGuard: where it holds, the checker knows ``cred`` is not None.)"""
    return cred is not None and not cred.superuser


# Directories made on the way by ``parents`` (mkdir -p, create with parents): the
# default directory mode under the default umask, as mkdir -p makes them.
PARENT_MODE = perms.new_mode(None, is_dir=True)


class Tree(TreeSnapshot):
    def __init__(self) -> None:
        self.root = Dir(0.0, ino=DIR_IDS)
        self.dir_seq = 0                   # the last directory number given (new_dir_id)
        self.names = Names(perms.SUPERUSER)   # owner/group names, interned
        self.numbered: list[Dir] = []      # directories by number, while restoring
        # a file's access time where utimensat set one (by inode id; sparse: reads are
        # not recorded, and a file without an entry reports its mtime): an entry costs
        # ~100 bytes, only files given an atime of their own (cp -p, touch -a) pay it
        self.atimes: dict[int, float] = {}
        self.dir_atimes: dict[Dir, float] = {}     # likewise, of directories
        # hard links (mds/ns_link.py): the link count of a file that more than one entry
        # holds (the entries hold one Inode object); sparse, like atimes
        self.links: dict[Inode, int] = {}

    # ------------------------------------------------------------------ attributes

    def attrs(self, node: Dir | Inode) -> tuple[int, str, str, float]:
        """(mode, owner, group, ctime) of a node."""
        if type(node) is Dir:
            return node.mode, self.names[node.uid], self.names[node.gid], node.ctime
        mode, uid, gid, ctime = node.attrs()
        return mode, self.names[uid], self.names[gid], ctime

    def may(self, cred: Cred | None, node: Dir | Inode, want: int) -> bool:
        if cred is None:
            return True
        mode, owner, group, _ = self.attrs(node)
        return perms.allows(cred, owner, group, mode, want, is_dir=type(node) is Dir)

    def need(self, cred: Cred | None, node: Dir | Inode, want: int, path: str,
             on: str | None = None) -> None:
        """EACCES naming ``path`` unless ``cred`` holds ``want`` on ``node`` (at ``on``)."""
        if cred is None:
            return
        mode, owner, group, _ = self.attrs(node)
        perms.check(cred, owner, group, mode, want, path, is_dir=type(node) is Dir, on=on)

    def need_removable(self, cred: Cred | None, parent: Dir, child: Dir | Inode, path: str,
                       on: str) -> None:
        """Removing or renaming ``child`` out of ``parent``: write and search on the
        parent, and the sticky-bit rule."""
        if not checked(cred):
            return
        self.need(cred, parent, WX, path, on)
        perms.check_sticky(cred, self.names[parent.uid], parent.mode,
                           self.attrs(child)[1], path)

    # ------------------------------------------------------------------ lookups

    @overload
    def walk_parent(self, path: str, names: list[str], missing_ok: Literal[False] = False,
                    cred: Cred | None = None) -> Dir: ...
    @overload
    def walk_parent(self, path: str, names: list[str], missing_ok: bool,
                    cred: Cred | None = None) -> Dir | None: ...

    def walk_parent(self, path: str, names: list[str], missing_ok: bool = False,
                    cred: Cred | None = None) -> Dir | None:
        """The directory holding the last component; None if absent and missing_ok.
        With ``cred``, search permission on every directory walked (EACCES)."""
        node = self.root
        check_x = checked(cred)
        for i, name in enumerate(names[:-1]):
            if check_x:
                self.need(cred, node, SEARCH, path, _prefix(names, i))
            child = node.children.get(name)
            if child is None:
                if missing_ok:
                    return None
                raise error(errno.ENOENT, path)
            if type(child) is not Dir:
                raise error(errno.ENOTDIR, path)
            node = child
        if check_x and names:
            self.need(cred, node, SEARCH, path, _prefix(names, len(names) - 1))
        return node

    def node(self, path: str, cred: Cred | None = None) -> tuple[list[str], Dir | Inode]:
        names = paths.components(path)
        if not names:
            return names, self.root
        node = self.walk_parent(path, names, cred=cred).children.get(names[-1])
        if node is None:
            raise error(errno.ENOENT, path)
        return names, node

    def reach_parent(self, path: str, names: list[str], cred: Cred | None,
                     parents: bool) -> Dir | None:
        """Where a new last component of ``path`` goes, checking that ``cred`` may put
        it there (search on the ancestors, write and search on the directory that gets
        a new entry). None when ``parents`` and an ancestor is missing: then the deepest
        existing one is the directory that must allow the change."""
        node = self.root
        check_x = checked(cred)
        for i, name in enumerate(names[:-1]):
            if check_x:
                self.need(cred, node, SEARCH, path, _prefix(names, i))
            child = node.children.get(name)
            if child is None:
                if not parents:
                    raise error(errno.ENOENT, path)
                if check_x:
                    self.need(cred, node, WX, path, _prefix(names, i))
                return None
            if type(child) is not Dir:
                raise error(errno.ENOTDIR, path)
            node = child
        return node

    @staticmethod
    def canonical(path: object) -> list[str]:
        names = paths.components(path)
        check(path == "/" + "/".join(names), path, "path is not normalised")
        return names

    # ------------------------------------------------------------------ changes

    def new_dir_id(self) -> int:
        """The inode number of a directory being made (or restored without one)."""
        self.dir_seq += 1
        return DIR_IDS + self.dir_seq

    def mkdirs(self, names: list[str], mtime: float, owner: str = perms.SUPERUSER,
               group: str = perms.SUPERUSER, mode: int = PARENT_MODE,
               parent_mode: int = PARENT_MODE) -> tuple[Dir, int]:
        """Create the missing directories of ``names`` owned by ``owner``:``group``, the
        last with ``mode``, the ones above it with ``parent_mode``; (the last one, how
        many made). A directory that gains an entry gets mtime = ctime = ``mtime``."""
        node, created = self.root, 0
        uid, gid = self.names.intern(owner), self.names.intern(group)
        last = len(names) - 1
        for i, name in enumerate(names):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Dir(mtime, mode if i == last else parent_mode,
                                                  uid, gid, ino=self.new_dir_id())
                node.subdirs += 1
                node.mtime = node.ctime = mtime
                created += 1
            # a file on the way is refused by check_mkdir / check_create, which every
            # record passes before it is applied
            node = cast(Dir, child)
        return node, created

    def detach(self, path: str, mtime: float) -> Dir | Inode:
        names = paths.components(path)
        parent = self.walk_parent(path, names)
        node = parent.children.pop(names[-1])
        if type(node) is Dir:
            parent.subdirs -= 1
        parent.mtime = parent.ctime = mtime
        return node

    def attach(self, path: str, node: Dir | Inode, mtime: float) -> Dir | Inode | None:
        """Put ``node`` at ``path``; returns the node it replaced, if any."""
        names = paths.components(path)
        parent = self.walk_parent(path, names)
        old = parent.children.get(names[-1])
        parent.children[names[-1]] = node
        parent.subdirs += (type(node) is Dir) - (type(old) is Dir)
        parent.mtime = parent.ctime = mtime
        return old

    def set_attrs(self, node: Dir | Inode, mode: int, owner: str, group: str,
                  ctime: float) -> None:
        uid, gid = self.names.intern(owner), self.names.intern(group)
        if type(node) is Dir:
            node.mode, node.uid, node.gid, node.ctime = mode, uid, gid, ctime
        else:
            node.meta = node.with_attrs(mode, uid, gid, ctime)

    def set_atime(self, node: Dir | Inode, atime: float) -> None:
        """A node's own access time (from then on apart from its mtime)."""
        if type(node) is Dir:
            self.dir_atimes[node] = atime
        else:
            self.atimes[node.id] = atime

    def dir_atime_paths(self) -> list[tuple[str, float]]:
        """(path, atime) of every directory with an atime of its own (snapshots)."""
        if not self.dir_atimes:
            return []
        out, stack = [], [("/", self.root)]
        while stack:
            path, d = stack.pop()
            if d in self.dir_atimes:
                out.append((path, self.dir_atimes[d]))
            stack.extend((paths.join(path, name), child)
                         for name, child in d.children.items() if type(child) is Dir)
        return out

    def set_times(self, node: Dir | Inode, mtime: float, ctime: float) -> None:
        if type(node) is Dir:
            node.mtime, node.ctime = mtime, ctime
        else:
            ino, size, _, repl, bsize = node.header()
            mode, uid, gid, _ = node.attrs()
            node.meta = (BASE.pack(ino, size, mtime, repl, bsize)
                         + ATTR.pack(mode, uid, gid, ctime)
                         + node.meta[ATTR_OFFSET + ATTR.size:])

    def touch(self, node: Dir | Inode, ctime: float) -> None:
        """The ctime of a node whose metadata changed (a rename)."""
        if type(node) is Dir:
            node.ctime = ctime
        else:
            mode, uid, gid, _ = node.attrs()
            node.meta = node.with_attrs(mode, uid, gid, ctime)

    # ------------------------------------------------------------------ record checks

    @staticmethod
    def check_owner_fields(rec: Mapping, name: object) -> None:
        """owner, group and mode of a record that makes an entry (absent in records
        written before owners existed: read as the superuser's, see mds/inode.py)."""
        for key in ("owner", "group"):
            value = rec.get(key, perms.SUPERUSER)
            check(isinstance(value, str) and 0 < len(value) <= MAX_NAME, name,
                  f"bad {key} name")
        mode = rec.get("mode", 0)
        check(perms.valid_mode(mode, rec.get("op") == "mkdir"), name, "bad mode")

    def check_mkdir(self, rec: Mapping, cred: Cred | None = None) -> None:
        path = rec["path"]
        names = self.canonical(path)
        check(is_time(rec["mtime"]), path, "bad mtime")
        self.check_owner_fields(rec, path)
        node = self.root
        check_x = checked(cred)
        for i, name in enumerate(names):
            if check_x:
                self.need(cred, node, SEARCH, path, _prefix(names, i))
            child = node.children.get(name)
            last = i == len(names) - 1
            if child is None:
                if not last and not rec["parents"]:
                    raise error(errno.ENOENT, path)
                if check_x:   # the first directory made goes into this one
                    self.need(cred, node, WX, path, _prefix(names, i))
                return
            if type(child) is not Dir:
                raise error(errno.EEXIST if last else errno.ENOTDIR, path)
            node = child
        if not rec["parents"]:
            raise error(errno.EEXIST, path)

    def check_rm(self, rec: Mapping, cred: Cred | None = None) -> None:
        path = rec["path"]
        names = self.canonical(path)
        if not names:
            raise error(errno.EINVAL, path, "cannot remove the root directory")
        check(is_time(rec["mtime"]), path, "bad mtime")
        parent = self.walk_parent(path, names, cred=cred)
        node = parent.children.get(names[-1])
        if node is None:
            raise error(errno.ENOENT, path)
        self.need_removable(cred, parent, node, path, _prefix(names, len(names) - 1))
        if type(node) is Dir and node.children:
            if not rec["recursive"]:
                raise error(errno.ENOTEMPTY, path)
            if checked(cred):
                self._check_subtree_removable(cred, path, node)

    def _check_subtree_removable(self, cred: Cred, path: str, top: Dir) -> None:
        """rm -r empties every directory below: each must let the caller list (read),
        search and write it, and the sticky rule holds for each entry removed."""
        stack = [(path, top)]
        while stack:
            p, d = stack.pop()
            if not d.children:
                continue
            self.need(cred, d, perms.R | WX, path, p)
            for name, child in d.children.items():
                cp = paths.join(p, name)
                perms.check_sticky(cred, self.names[d.uid], d.mode, self.attrs(child)[1], cp)
                if type(child) is Dir:
                    stack.append((cp, child))

    def check_rename(self, rec: Mapping, cred: Cred | None = None) -> None:
        src, dst = rec["src"], rec["dst"]
        snames, dnames = self.canonical(src), self.canonical(dst)
        if not snames:
            raise error(errno.EINVAL, src, "cannot rename the root directory")
        if not dnames:
            raise error(errno.EINVAL, dst, "cannot replace the root directory")
        check(is_time(rec["mtime"]), src, "bad mtime")
        sparent = self.walk_parent(src, snames, cred=cred)
        node = sparent.children.get(snames[-1])
        if node is None:
            raise error(errno.ENOENT, src)
        if src == dst:
            return
        if type(node) is Dir and paths.is_within(dst, src):
            raise error(errno.EINVAL, dst, "cannot move a directory into its own subtree")
        dparent = self.walk_parent(dst, dnames, cred=cred)
        target = dparent.children.get(dnames[-1])
        if target is node:              # two names of one hard-linked file: nothing to do
            return
        if checked(cred):
            self.need_removable(cred, sparent, node, src, _prefix(snames, len(snames) - 1))
            if target is None:
                self.need(cred, dparent, WX, dst, _prefix(dnames, len(dnames) - 1))
            else:
                self.need_removable(cred, dparent, target, dst,
                                    _prefix(dnames, len(dnames) - 1))
            if type(node) is Dir and dparent is not sparent:
                # its ".." changes: Linux asks for write on the directory moved
                self.need(cred, node, W, src)
        if target is None:
            return
        if type(node) is not Dir and type(target) is Dir:
            raise error(errno.EISDIR, dst)
        if type(node) is Dir and type(target) is not Dir:
            raise error(errno.ENOTDIR, dst)
        if type(target) is Dir and target.children:
            raise error(errno.ENOTEMPTY, dst)

    def check_exchange(self, rec: Mapping, cred: Cred | None = None) -> None:
        """exchange {a, b, mtime}: both exist (ENOENT), neither is the root or holds the
        other (EINVAL); with ``cred``, both may be removed from their directories and
        put in the other's, and a directory that changes parent must be writable (its
        "..", as rename)."""
        a, b = rec["a"], rec["b"]
        anames, bnames = self.canonical(a), self.canonical(b)
        check(is_time(rec["mtime"]), a, "bad mtime")
        if not anames or not bnames:
            raise error(errno.EINVAL, a if not anames else b, "cannot exchange the root")
        pa = self.walk_parent(a, anames, cred=cred)
        pb = self.walk_parent(b, bnames, cred=cred)
        na, nb = pa.children.get(anames[-1]), pb.children.get(bnames[-1])
        if na is None or nb is None:
            raise error(errno.ENOENT, a if na is None else b)
        if a == b:
            return
        if paths.is_within(a, b) or paths.is_within(b, a):
            raise error(errno.EINVAL, b, "cannot exchange a directory with an entry below it")
        if checked(cred):
            self.need_removable(cred, pa, na, a, _prefix(anames, len(anames) - 1))
            self.need_removable(cred, pb, nb, b, _prefix(bnames, len(bnames) - 1))
            if pa is not pb:
                for node, path in ((na, a), (nb, b)):
                    if type(node) is Dir:
                        self.need(cred, node, W, path)

    def exchange(self, a: str, b: str, mtime: float) -> tuple[Dir | Inode, Dir | Inode]:
        """Swap the entries at ``a`` and ``b`` (checked: both exist, neither holds the
        other); both directories' times and both nodes' ctimes change."""
        anames, bnames = paths.components(a), paths.components(b)
        pa, pb = self.walk_parent(a, anames), self.walk_parent(b, bnames)
        na, nb = pa.children[anames[-1]], pb.children[bnames[-1]]
        pa.children[anames[-1]], pb.children[bnames[-1]] = nb, na
        da, db = int(type(na) is Dir), int(type(nb) is Dir)
        pa.subdirs += db - da
        pb.subdirs += da - db
        for parent in (pa, pb):
            parent.mtime = parent.ctime = mtime
        self.touch(na, mtime)
        self.touch(nb, mtime)
        return na, nb

    def check_utimes(self, rec: Mapping) -> None:
        """utimes {path, mtime, ctime, atime?} records."""
        path = rec["path"]
        self.canonical(path)
        check(is_time(rec["ctime"]), path, "bad ctime")
        check(is_time(rec["mtime"]), path, "bad mtime")
        check("atime" not in rec or is_time(rec["atime"]), path, "bad atime")
        self.node(path)

    def check_attr(self, rec: Mapping) -> None:
        """chmod {path, mode, ctime} and chown {path, owner, group, ctime} records."""
        path = rec["path"]
        self.canonical(path)
        check(is_time(rec["ctime"]), path, "bad ctime")
        if rec["op"] == "chmod":
            check(type(rec["mode"]) is int and 0 <= rec["mode"] <= perms.MODE_BITS, path,
                  "bad mode")
        else:
            self.check_owner_fields({"owner": rec["owner"], "group": rec["group"]}, path)
        self.node(path)

    # ------------------------------------------------------------------ reads

    def describe(self, node: Dir | Inode) -> dict:
        """The POSIX attributes of a node, as stat and ls give them (atime: what
        utimensat set, else the mtime; reads are not recorded)."""
        mode, owner, group, ctime = self.attrs(node)
        if type(node) is Dir:
            atime = self.dir_atimes.get(node, node.mtime) if self.dir_atimes else node.mtime
        else:
            ino, _, mtime, _, _ = node.header()
            atime = self.atimes.get(ino, mtime) if self.atimes else mtime
        out = {"mode": mode & perms.MODE_BITS, "owner": owner, "group": group,
               "ctime": ctime, "atime": atime}
        if mode & perms.KIND_BITS:
            out["kind"] = perms.KIND_NAMES[mode & perms.KIND_BITS]
        return out

    def stat(self, path: str, cred: Cred | None = None) -> dict:
        """Needs search permission on the ancestors only (as POSIX stat)."""
        path = paths.normalize(path)
        _, node = self.node(path, cred)
        if type(node) is Dir:
            return {"path": path, "type": "dir", "inode": node.ino, "size": 0,
                    "mtime": node.mtime, "entries": len(node.children),
                    "nlink": 2 + node.subdirs, **self.describe(node)}
        ino, size, mtime, repl, bsize = node.header()
        out = {"path": path, "type": "file", "inode": ino, "size": size, "mtime": mtime,
               "replication": repl, "block_size": bsize, "blocks": len(node.bids),
               **self.describe(node)}
        if self.links and node in self.links:
            out["nlink"] = self.links[node]
        return out

    def _entry(self, name: str, node: Dir | Inode) -> dict:
        if type(node) is Dir:
            return {"name": name, "type": "dir", "inode": node.ino, "size": 0,
                    "mtime": node.mtime, "nlink": 2 + node.subdirs, **self.describe(node)}
        ino, size, mtime, _, _ = node.header()
        out = {"name": name, "type": "file", "inode": ino, "size": size, "mtime": mtime,
               **self.describe(node)}
        if self.links and node in self.links:
            out["nlink"] = self.links[node]
        return out

    def ls(self, path: str, *, start_after: str | None = None,
           limit: int | None = None, cred: Cred | None = None) -> list[dict]:
        """Entries of a directory sorted by name (or the file itself); pageable. Listing
        a directory needs read permission on it."""
        path = paths.normalize(path)
        names, node = self.node(path, cred)
        if type(node) is not Dir:
            return [self._entry(names[-1], node)]
        if checked(cred):
            self.need(cred, node, perms.R, path)
        keys = sorted(node.children)
        if start_after is not None:
            keys = keys[bisect.bisect_right(keys, start_after):]
        if limit is not None:
            keys = keys[:limit]
        return [self._entry(k, node.children[k]) for k in keys]

    def du(self, path: str, cred: Cred | None = None) -> dict:
        """Total committed bytes, files and directories under a path (inclusive); each
        directory below must let the caller read and search it."""
        path = paths.normalize(path)
        _, node = self.node(path, cred)
        check_rx = checked(cred)
        total = files = dirs = 0
        stack: list[tuple[str, Dir | Inode]] = [(path, node)]
        while stack:
            p, node = stack.pop()
            if type(node) is Dir:
                dirs += 1
                if check_rx and node.children:
                    self.need(cred, node, perms.R | SEARCH, path, p)
                stack.extend((paths.join(p, k) if check_rx else p, c)
                             for k, c in node.children.items())
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
