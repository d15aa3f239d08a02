"""Hard links: the link record, and what every other record does to a file more than one
entry holds. A part of ``mds.namespace.Namespace`` (a mixin: its methods run on the
Namespace); the record formats are in that module's docstring.

A hard link is a second entry holding the same ``Inode`` object, so chmod, chown, utimes
and repairs (which change the object) are seen through every name at once. The link
count of such a file is in ``Tree.links`` (sparse: a file with one name has no entry,
and pays nothing). What follows from it:

* removing one of several names (rm, or a rename over it) takes only the entry: the
  count drops, the file's ctime changes, its blocks stay;
* a commit or a clone whose target is a linked file changes the file in place, as a
  write through one name of a POSIX file changes it for all: the object every entry
  holds gets the new version's header and block list (mds/blockmap.py's references move
  to it), and keeps its owner, group and mode as any replace does;
* a rename between two names of one file does nothing (POSIX);
* ``files`` counts names and ``bytes`` counts a file once; the tree quotas count every
  name at its full size (as their recount at a restore does), so a link across trees
  with different quotas is refused (EXDEV, as XFS does across project quotas), and a
  file written through one name charges its growth once per name.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Mapping, Sequence, cast

from mds import paths
from mds.fields import check, error, is_time
from mds.inode import Dir, Inode
from mds.ns_state import NamespaceState
from mds.perms import Cred
from mds.tree import WX, checked

if TYPE_CHECKING:
    from mds.tree import Tree
    from mds.treequota import TreeQuota

# the most names one file may have (EMLINK), as ext4's
MAX_LINKS = 65000


class LinkRecords(NamespaceState):
    """link, and hard-linked files in the other records, mixed into Namespace."""

    if TYPE_CHECKING:    # what this part uses of the Namespace
        def _release_file(self, node: Inode) -> None: ...

    def prepare_link(self, src: str, dst: str, *, cred: Cred | None = None) -> dict:
        """link(2): ``dst`` becomes another name of file ``src``. Needs search on both
        paths' directories and write on the one that gets the entry (EACCES)."""
        rec = {"op": "link", "src": paths.normalize(src), "dst": paths.normalize(dst),
               "mtime": self._clock()}
        self._check_link(rec, cred)
        return rec

    def _check_link(self, rec: Mapping, cred: Cred | None = None) -> None:
        src, dst = rec["src"], rec["dst"]
        snames, dnames = self.tree.canonical(src), self.tree.canonical(dst)
        check(is_time(rec["mtime"]), dst, "bad mtime")
        _, node = self.tree.node(src, cred)
        if type(node) is Dir:
            raise error(errno.EPERM, src, "a directory cannot have a hard link")
        if not dnames:
            raise error(errno.EEXIST, dst)
        parent = self.tree.reach_parent(dst, dnames, cred, parents=False)
        assert parent is not None          # parents=False: a missing parent raised ENOENT
        if checked(cred):
            self.tree.need(cred, parent, WX, dst, "/" + "/".join(dnames[:-1]))
        if dnames[-1] in parent.children:
            raise error(errno.EEXIST, dst)
        if self.tree.links.get(node, 1) >= MAX_LINKS:
            raise error(errno.EMLINK, src, f"the file has {MAX_LINKS} names already")
        if self.quotas:
            at_dst = self._quotas_over(dnames)
            if not _same(self._quotas_over(snames), at_dst):
                raise error(errno.EXDEV, dst, "a hard link cannot cross a tree quota's "
                            "boundary")
            self.quotas.need(at_dst, node.size, 1, dst)

    def _apply_link(self, rec: Mapping) -> dict:
        node = cast(Inode, self.tree.node(rec["src"])[1])     # checked: a file
        dst, mtime = rec["dst"], rec["mtime"]
        self.tree.attach(dst, node, mtime)
        links = self.tree.links
        links[node] = count = links.get(node, 1) + 1
        self.tree.touch(node, mtime)
        self.files += 1
        if self.quotas:
            self.quotas.charge(self._quotas_over(paths.components(dst)), node.size, 1)
        return {"src": rec["src"], "dst": dst, "nlink": count, "inode": node.id}

    # ------------------------------------------------------------------ the others' part

    def _release_name(self, node: Inode, mtime: float) -> bool:
        """An entry of ``node`` goes: the file with it when it was the last name (True),
        else only the name (the file's ctime changes)."""
        links = self.tree.links
        count = links.get(node) if links else None
        if count is None:
            self._release_file(node)
            return True
        if count > 2:
            links[node] = count - 1
        else:
            del links[node]
        self.tree.touch(node, mtime)
        self.files -= 1
        return False

    def _replace_linked(self, old: Inode, new: Inode) -> None:
        """A commit or clone over linked file ``old``: ``new`` (indexed already, with
        ``old``'s owner, group and mode) becomes ``old``'s content, so every name sees
        it; the blocks only ``old`` held are released."""
        bm = self.blockmap
        if self.tree.atimes:
            self.tree.atimes.pop(old.id, None)
        bm.release_file(old)
        self.blocks -= len(old.bids)
        self.bytes -= old.size
        owners = bm.owners
        for bid in new.bids:
            held = owners[bid]
            if held is new:
                owners[bid] = old
            elif type(held) is tuple:
                owners[bid] = tuple(old if h is new else h for h in held)
        pos = bm.positions.pop(new, None)
        if pos is not None:
            bm.positions[old] = pos
        old.meta, old.bids = new.meta, new.bids

    def _names_of(self, node: Dir | Inode | None) -> int:
        """How many entries hold ``node`` (what a size change is charged per tree)."""
        return self.tree.links.get(node, 1) if type(node) is Inode and self.tree.links \
            else 1

    def restore_links(self, flat: Sequence) -> None:
        """Later names of hard-linked files (a snapshot's link frames): dir no., name,
        first entry's dir no., first entry's name, ... while the numbering lasts."""
        dirs, links = self.tree.numbered, self.tree.links
        it = iter(flat)
        for di, name, fdi, fname in zip(it, it, it, it):
            node = dirs[fdi].children[fname]
            if type(node) is not Inode or name in dirs[di].children:
                raise ValueError(f"bad link entry {name!r} -> {fname!r}")
            dirs[di].children[name] = node
            links[node] = links.get(node, 1) + 1
            self.files += 1


def _same(a: Sequence[TreeQuota], b: Sequence[TreeQuota]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))

