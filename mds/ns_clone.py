"""Namespace records that share committed blocks: a server-side copy (``clone``), and the
checks a commit that reuses blocks of existing files must pass (mds/blockmap.py counts the
references). A part of ``mds.namespace.Namespace`` (a mixin: its methods run on the
Namespace); the record formats are in that module's docstring.
"""
from __future__ import annotations

import errno
import zlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

from mds import paths, perms
from mds.fields import check, error, is_time
from mds.inode import BIG_FILE_BLOCKS, HDR, Dir, Inode
from mds.ns_state import NamespaceState
from mds.perms import Cred


def version_of(node: Inode) -> int:
    """Which version of a file this is: its inode number stays through new versions,
    its block ids (random, never reused) do not; the size tells empty files apart."""
    return zlib.crc32(b"".join(node.bids), node.size & 0xFFFFFFFF)


class SharedBlockRecords(NamespaceState):
    """clone, and the shared-block checks of commit, mixed into Namespace."""

    if TYPE_CHECKING:    # what this part uses of the Namespace
        def _check_new_file(self, path: str, names: list[str], size: int,
                            exclusive: Any) -> None: ...
        @staticmethod
        def _owner_fields(cred: Cred | None, mode: int | None, is_dir: bool,
                          kind: str | None = None, umask: int | None = None) -> dict: ...
        def _need_replace(self, cred: Cred | None, parent: Dir, existing: Dir | Inode | None,
                          path: str, names: list[str]) -> None: ...
        def _put_file(self, path: str, inode: Inode, mtime: float,
                      kind: int | None = None) -> Inode | None: ...

    # ------------------------------------------------------------------ shared blocks

    def _check_shared_block(self, path: str, i: int, bid: Any, size: Any, crc: Any) -> None:
        """Entry ``i`` of a commit names committed block ``bid``: it must exist, as a
        committed block, with exactly this size and checksum."""
        found = self.blockmap.locate(bid) if type(bid) is bytes else None
        if found is None or type(found[0]) is not Inode:
            raise error(errno.ENOENT, path, f"block {i}: no committed block "
                        f"{bid.hex() if type(bid) is bytes else bid!r} to share "
                        "(the file it came from was replaced or removed)")
        bsize, bcrc, _ = found[0].block(found[1])
        check(type(size) is int and size == bsize and type(crc) is int and crc == bcrc, path,
              f"block {i}: size or checksum differ from block {bid.hex()}'s")

    def _check_sources(self, handle: str, blocks: Sequence[Mapping[str, Any]],
                       cred: Cred | None) -> None:
        """A commit that shares blocks names, per block, the file it takes it from
        (``from``): that file must hold the block now, and ``cred`` must be allowed to
        read it. A block id alone is no proof of access (ids travel in events)."""
        by_path: dict[str, set[bytes]] = {}
        for i, b in enumerate(blocks):
            src = b.get("from")
            if src is None:
                continue
            if not isinstance(src, str):
                raise error(errno.EINVAL, handle, f"block {i}: from must be a path")
            held = by_path.get(src)
            if held is None:
                _, node = self.tree.node(paths.normalize(src), cred)
                if isinstance(node, Dir):
                    raise error(errno.EISDIR, src)
                self.tree.need(cred, node, perms.R, src)
                held = by_path[src] = set(node.bids)
            if b["id"] not in held:
                raise error(errno.ENOENT, src, f"block {i} ({bytes(b['id']).hex()}) is not "
                            "part of this file (replaced since it was read?)")

    def prepare_clone(self, src: str, dst: str, *, exclusive: bool = False,
                      cred: Cred | None = None) -> dict:
        """A server-side copy of file ``src`` to the exact path ``dst``: the new file
        shares every block of ``src`` (no byte moves). Like ``cp``: the copy is the
        caller's, with src's permission bits less the umask, and a new mtime; replacing a
        file keeps that file's owner, group and mode. Needs read on ``src``, write and
        search on dst's parent, write on a file it replaces; ``exclusive`` refuses an
        existing ``dst`` (EEXIST)."""
        src, dst = paths.normalize(src), paths.normalize(dst)
        _, node = self.tree.node(src, cred)
        if isinstance(node, Dir):
            raise error(errno.EISDIR, src, "copy of a directory (copy its files)")
        self.tree.need(cred, node, perms.R, src)
        mode = node.attrs()[0] & 0o777
        rec = {"op": "clone", "src": src, "dst": dst, "inode": node.id,
               "version": version_of(node), "mtime": self._clock(),
               **self._owner_fields(cred, mode, False)}
        if exclusive:
            rec["exclusive"] = True
        self._check_clone(rec)
        names = paths.components(dst)
        parent = self.tree.walk_parent(dst, names, cred=cred)
        existing = parent.children.get(names[-1])
        self._need_replace(cred, parent, None if isinstance(existing, Dir) else existing,
                           dst, names)
        return rec

    def _check_clone(self, rec: Mapping) -> None:
        src, dst = rec["src"], rec["dst"]
        check(is_time(rec["mtime"]), dst, "bad mtime")
        self.tree.check_owner_fields(rec, dst)
        _, node = self.tree.node(src)
        if isinstance(node, Dir):
            raise error(errno.EISDIR, src)
        check(node.id == rec["inode"] and rec.get("version", version_of(node))
              == version_of(node), src, "the source changed since the copy was made")
        names = self.tree.canonical(dst)
        if not names:
            raise error(errno.EISDIR, dst)
        check(dst != src, dst, "source and destination are the same file")
        self._check_new_file(dst, names, node.size, rec.get("exclusive"))

    def _apply_clone(self, rec: Mapping) -> dict:
        src = cast(Inode, self.tree.node(rec["src"])[1])     # checked: a file
        _, size, _, repl, bsize = src.header()
        names, mtime = self.tree.names, rec["mtime"]
        owner = rec.get("owner", perms.SUPERUSER)
        hdr = HDR.pack(self.next_inode, size, mtime, repl, bsize, rec["mode"],
                       names.intern(owner), names.intern(rec.get("group", owner)), mtime)
        # the block entries (size, checksum, replica set) and the id tuple are src's own
        inode = Inode(hdr + src.meta[HDR.size:], src.bids)
        self.next_inode += 1
        bm = self.blockmap
        for bid in inode.bids:
            bm.add_ref(bid, inode)
        if len(inode.bids) > BIG_FILE_BLOCKS:
            bm.positions[inode] = bm.positions[src]
        old = self._put_file(rec["dst"], inode, mtime)
        self.files += 1
        self.blocks += len(inode.bids)
        self.bytes += size
        return {"path": rec["dst"], "inode": inode.id, "size": size,
                "blocks": len(inode.bids), "replaced": old is not None}
