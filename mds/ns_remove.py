"""Namespace records that take entries away: rm, and rename (which releases the entry it
replaces and moves the tree quotas' usage between the trees it leaves and enters); and
the release of files and trees, whose blocks go to the deletion queue once their last
reference goes (mds/blockmap.py; commit releases the file it replaces the same way). A
part of ``mds.namespace.Namespace`` (a mixin: its methods run on the Namespace); the
record formats are in that module's docstring.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Mapping

from mds import paths
from mds.inode import Dir, Inode
from mds.ns_state import NamespaceState
from mds.perms import Cred
from mds.treequota import usage_of


class RemoveRecords(NamespaceState):
    """rm, rename and the release of files and trees, mixed into Namespace."""

    if TYPE_CHECKING:    # what this part uses of the Namespace
        def _release_name(self, node: Inode, mtime: float) -> bool: ...

    # ------------------------------------------------------------------ release

    def _release_file(self, node: Inode) -> None:
        """Forget a committed file; its blocks go to the deletion queue."""
        if self.tree.atimes:
            self.tree.atimes.pop(node.id, None)
        self.blockmap.release_file(node)
        self.files -= 1
        self.blocks -= len(node.bids)
        self.bytes -= node.size

    def _release_tree(self, node: Dir | Inode, mtime: float) -> tuple[int, int, int]:
        """Forget a removed entry and all below it: (files, dirs, bytes) as the tree
        quotas count them (every name of a hard-linked file at its size; only its last
        name takes the file and its blocks away, mds/ns_link.py)."""
        files = dirs = nbytes = 0
        stack = [node]
        while stack:
            node = stack.pop()
            if type(node) is Dir:
                dirs += 1
                stack.extend(node.children.values())
                if self.tree.dir_atimes:
                    self.tree.dir_atimes.pop(node, None)
                if self.quotas:
                    self.quotas.drop(node)
            else:
                files += 1
                nbytes += node.size
                self._release_name(node, mtime)
        self.dirs -= dirs
        return files, dirs, nbytes

    # ------------------------------------------------------------------ rm / rename

    def prepare_rm(self, path: str, *, recursive: bool = False,
                   cred: Cred | None = None) -> dict:
        rec = {"op": "rm", "path": paths.normalize(path), "recursive": bool(recursive),
               "mtime": self._clock()}
        self.tree.check_rm(rec, cred)
        return rec

    def _apply_rm(self, rec: Mapping) -> dict:
        quotas = (self._quotas_over(paths.components(rec["path"]))
                  if self.quotas else [])
        node = self.tree.detach(rec["path"], rec["mtime"])
        files, dirs, nbytes = self._release_tree(node, rec["mtime"])
        self.quotas.charge(quotas, -nbytes, -files - dirs)
        return {"path": rec["path"], "files": files, "dirs": dirs, "bytes": nbytes}

    def prepare_rename(self, src: str, dst: str, *, cred: Cred | None = None) -> dict:
        """Exact rename (``dst`` is the new path); use resolve_move() for ``mv`` into dirs."""
        rec = {"op": "rename", "src": paths.normalize(src), "dst": paths.normalize(dst),
               "mtime": self._clock()}
        self._check_rename(rec, cred)
        return rec

    def _check_rename(self, rec: Mapping, cred: Cred | None = None) -> None:
        self.tree.check_rename(rec, cred)
        if self.quotas and rec["src"] != rec["dst"] and not self._same_file(rec):
            leaving, entering, _, moved, target = self._rename_quotas(rec["src"], rec["dst"])
            if (leaving or entering) and self._splits_links(self.tree.node(rec["src"])[1]):
                raise OSError(errno.EXDEV, "a hard-linked file cannot move across a tree "
                              "quota's boundary", rec["dst"])
            self.quotas.need(entering, moved[0] - target[0], moved[1] - target[1],
                             rec["dst"])

    def _rename_quotas(self, src: str, dst: str) -> tuple[list, list, list, tuple[int, int],
                                                          tuple[int, int]]:
        """A rename's effect on quotas: those it leaves and enters (the moved tree's usage
        goes from the one to the other: a walk, only when there are such), every quota
        over ``dst`` (the entry replaced there, if any, leaves them), and the usages of
        the moved tree and of the replaced entry."""
        at_src = self._quotas_over(paths.components(src))
        at_dst = self._quotas_over(paths.components(dst))
        leaving = [q for q in at_src if not any(q is d for d in at_dst)]
        entering = [q for q in at_dst if not any(q is s for s in at_src)]
        moved = (usage_of(self.tree.node(src)[1]) if leaving or entering else (0, 0))
        try:
            target = usage_of(self.tree.node(dst)[1])   # a file or an empty directory
        except (FileNotFoundError, NotADirectoryError):
            target = (0, 0)
        return leaving, entering, at_dst, moved, target

    def _splits_links(self, node: Dir | Inode) -> bool:
        """Whether moving ``node`` across a tree quota's boundary would leave a name of a
        hard-linked file behind it (quotas count every name, and every name of a file is
        under the same quotas: mds/ns_link.py). A directory that holds all the names of
        its linked files may move; a walk, only when there are links."""
        links = self.tree.links
        if not links:
            return False
        if type(node) is not Dir:
            return node in links
        inside: dict[Inode, int] = {}
        stack: list[Dir | Inode] = [node]
        while stack:
            n = stack.pop()
            if type(n) is Dir:
                stack.extend(n.children.values())
            elif n in links:
                inside[n] = inside.get(n, 0) + 1
        return any(count < links[n] for n, count in inside.items())

    def _same_file(self, rec: Mapping) -> bool:
        """Whether a rename's src and dst are names of one hard-linked file: then it
        does nothing (POSIX)."""
        if not self.tree.links:
            return False
        try:
            return self.tree.node(rec["src"])[1] is self.tree.node(rec["dst"])[1]
        except OSError:
            return False

    def _apply_rename(self, rec: Mapping) -> dict:
        src, dst = rec["src"], rec["dst"]
        if src == dst or self._same_file(rec):
            return {"src": src, "dst": dst, "replaced": False}
        moves = self._rename_quotas(src, dst) if self.quotas else None
        node = self.tree.detach(src, rec["mtime"])
        self.tree.touch(node, rec["mtime"])
        old = self.tree.attach(dst, node, rec["mtime"])
        if old is not None:
            self._release_tree(old, rec["mtime"])
        if moves is not None:
            leaving, entering, at_dst, moved, target = moves
            charge = self.quotas.charge
            charge(leaving, -moved[0], -moved[1])
            charge(entering, moved[0], moved[1])
            charge(at_dst, -target[0], -target[1])
            if type(node) is Dir:
                self.quotas.repath(src, dst)
        return {"src": src, "dst": dst, "replaced": old is not None}

    # ------------------------------------------------------------------ exchange

    def prepare_exchange(self, a: str, b: str, *, cred: Cred | None = None) -> dict:
        """renameat2(RENAME_EXCHANGE): the entries at ``a`` and ``b`` trade places, both
        existing, of any kinds, atomically."""
        rec = {"op": "exchange", "a": paths.normalize(a), "b": paths.normalize(b),
               "mtime": self._clock()}
        self._check_exchange(rec, cred)
        return rec

    def _check_exchange(self, rec: Mapping, cred: Cred | None = None) -> None:
        a, b = rec["a"], rec["b"]
        self.tree.check_exchange(rec, cred)
        if self.quotas and a != b:
            moves = self._exchange_quotas(a, b)
            for quotas, usage, path in moves:
                self.quotas.need(quotas, usage[0], usage[1], path)

    def _exchange_quotas(self, a: str, b: str) -> list[tuple[list, tuple[int, int], str]]:
        """(quotas, usage change, path) of an exchange: the trees over one entry and not
        the other get the other's usage instead of its own."""
        at_a = self._quotas_over(paths.components(a))
        at_b = self._quotas_over(paths.components(b))
        only_a = [q for q in at_a if not any(q is x for x in at_b)]
        only_b = [q for q in at_b if not any(q is x for x in at_a)]
        if not only_a and not only_b:
            return []
        na, nb = self.tree.node(a)[1], self.tree.node(b)[1]
        if self._splits_links(na) or self._splits_links(nb):
            raise OSError(errno.EXDEV, "a hard-linked file cannot move across a tree "
                          "quota's boundary", b)
        ua, ub = usage_of(na), usage_of(nb)
        return [(only_a, (ub[0] - ua[0], ub[1] - ua[1]), a),
                (only_b, (ua[0] - ub[0], ua[1] - ub[1]), b)]

    def _apply_exchange(self, rec: Mapping) -> dict:
        a, b, mtime = rec["a"], rec["b"], rec["mtime"]
        if a != b:
            moves = self._exchange_quotas(a, b) if self.quotas else []
            self.tree.exchange(a, b, mtime)
            for quotas, usage, _ in moves:
                self.quotas.charge(quotas, usage[0], usage[1])
            if self.quotas:
                self.quotas.swap_paths(a, b)
        return {"a": a, "b": b}
