"""Quotas on directory trees: a limit on the bytes and on the entries (files and
directories) below a directory, with the usage kept incrementally by the namespace.

Sans-IO. A quota belongs to its ``Dir`` object, so a rename moves it with the tree; its
``path`` is kept for display and snapshots. Usage counts committed files at their full
size (a file sharing blocks with another counts them again, as du does) and every entry
strictly below the quota's directory; drafts count nothing until they commit. Public API:
`TreeQuota`, `TreeQuotas` (over, need, charge, usage_of, set, drop, repath, rows).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Iterable, Sequence

from mds.inode import Dir, Inode


@dataclass(slots=True)
class TreeQuota:
    path: str
    max_bytes: int | None
    max_files: int | None
    bytes: int = 0
    files: int = 0

    def row(self) -> dict:
        return {"path": self.path, "max_bytes": self.max_bytes, "max_files": self.max_files,
                "bytes": self.bytes, "files": self.files}


def usage_of(node: Dir | Inode, include_self: bool = True) -> tuple[int, int]:
    """(bytes, entries) of a subtree: a walk, so only for a quota set on an existing tree,
    a restore, and a rename that crosses a quota boundary."""
    nbytes = entries = 0
    stack: list[Dir | Inode] = [node]
    while stack:
        n = stack.pop()
        entries += 1
        if type(n) is Dir:
            stack.extend(n.children.values())
        else:
            nbytes += n.size
    return nbytes, entries - (0 if include_self else 1)


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _edquot(q: TreeQuota, what: str, used: int, more: int, limit: int, path: str) -> OSError:
    return OSError(errno.EDQUOT, f"quota of {q.path} exceeded: {what} would be {used + more} "
                   f"(now {used}), the limit is {limit}", path)


class TreeQuotas:
    def __init__(self) -> None:
        self.by_dir: dict[Dir, TreeQuota] = {}

    def __bool__(self) -> bool:
        return bool(self.by_dir)

    def over(self, root: Dir, names: Sequence[str]) -> tuple[list[TreeQuota], int]:
        """The quotas whose tree holds an entry at ``names`` (those of the directories
        above it, the root first), and how many leading components exist as directories
        (an entry made there makes ``len(names) - that`` new entries)."""
        found: list[TreeQuota] = []
        node: Dir = root
        by_dir = self.by_dir
        for i, name in enumerate(names):
            q = by_dir.get(node)
            if q is not None:
                found.append(q)
            child = node.children.get(name)
            if type(child) is not Dir:
                return found, i
            node = child
        return found, len(names)

    @staticmethod
    def need(quotas: Iterable[TreeQuota], nbytes: int, files: int, path: str) -> None:
        """EDQUOT naming the first tree whose limit ``nbytes``/``files`` more would pass;
        a change that does not grow a dimension is always allowed (shrinking an over-quota
        tree must stay possible)."""
        for q in quotas:
            if nbytes > 0 and q.max_bytes is not None and q.bytes + nbytes > q.max_bytes:
                raise _edquot(q, "bytes", q.bytes, nbytes, q.max_bytes, path)
            if files > 0 and q.max_files is not None and q.files + files > q.max_files:
                raise _edquot(q, "entries", q.files, files, q.max_files, path)

    @staticmethod
    def charge(quotas: Iterable[TreeQuota], nbytes: int, files: int) -> None:
        for q in quotas:
            q.bytes += nbytes
            q.files += files

    def set(self, node: Dir, path: str, max_bytes: int | None, max_files: int | None) -> None:
        """New limits for ``node``'s tree; a new quota counts its tree once."""
        q = self.by_dir.get(node)
        if q is None:
            nbytes, files = usage_of(node, include_self=False)
            self.by_dir[node] = TreeQuota(path, max_bytes, max_files, nbytes, files)
        else:
            q.max_bytes, q.max_files = max_bytes, max_files

    def drop(self, node: Dir) -> None:
        self.by_dir.pop(node, None)

    def repath(self, src: str, dst: str) -> None:
        """A directory moved from ``src`` to ``dst``: the quotas in it follow."""
        for q in self.by_dir.values():
            if q.path == src or q.path.startswith(src.rstrip("/") + "/"):
                q.path = dst + q.path[len(src):]

    def swap_paths(self, a: str, b: str) -> None:
        """Entries ``a`` and ``b`` traded places: the quotas in each follow."""
        under = [(q, q.path[len(a):], b) for q in self.by_dir.values() if _within(q.path, a)]
        under += [(q, q.path[len(b):], a) for q in self.by_dir.values() if _within(q.path, b)]
        for q, rest, top in under:
            q.path = top + rest

    def rows(self) -> list[dict]:
        return sorted((q.row() for q in self.by_dir.values()), key=lambda r: r["path"])

    def export(self) -> list[list]:
        return [[r["path"], r["max_bytes"], r["max_files"]] for r in self.rows()]
