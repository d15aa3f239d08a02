"""What the mount reports of its entries: getattr, readdir, statfs. A part of
``client.mount.ops.AegisOperations`` (a mixin: its methods use the mount's caches, open
handles and pending queue). Attributes listed by readdir are kept for attr_timeout
seconds, so an `ls -l` costs one paged listing, not a stat per entry; every change made
through this mount drops what it touched. New files not committed yet (open, or closed and
queued) are answered by this mount alone.
"""
from __future__ import annotations

import errno
import stat as S
import time
from typing import TYPE_CHECKING, Any, Iterator

from .cache import parent_of
from .ops_state import MountState

if TYPE_CHECKING:
    from .handles import FileHandle
    from .pending import PendingFile

PAGE = 1000                   # entries per MDS ls request: memory bounded, no ceiling
BLKSIZE = 128 * 1024          # st_blksize: what tools should write at a time
NEW_FILE_MODE = 0o644         # what the MDS gives a create without a mode (0o666 & ~022)
KINDS = {"symlink": S.S_IFLNK, "fifo": S.S_IFIFO, "socket": S.S_IFSOCK,
         "chardev": S.S_IFCHR, "blockdev": S.S_IFBLK}


def _ns(t: Any) -> int:
    return int(float(t or 0) * 1e9)


_DOT = {"st_mode": S.S_IFDIR, "st_ino": 1}
DEVICES = (S.S_IFCHR, S.S_IFBLK)
RDEV_BYTES = 8


class AttrOps(MountState):
    """getattr, readdir and statfs, mixed into AegisOperations."""

    if TYPE_CHECKING:    # what this part calls in the others
        def _open_on(self, path: str) -> list[FileHandle]: ...

    def _attrs(self, e: dict, path: str) -> dict:
        """st_* of an MDS entry at `path`. st_ino: the MDS's inode numbers (use_ino): one
        per file, whatever its names (hard links) and versions, one per directory; a
        file made here keeps the number it had before its commit (links.InodeNumbers)."""
        kind = S.S_IFDIR if e.get("type") == "dir" else KINDS.get(str(e.get("kind")), S.S_IFREG)
        # a device node's content is its number (st_rdev, read by getattr): size 0
        size = 0 if kind in DEVICES else int(e.get("size") or 0)
        mtime = _ns(e.get("mtime"))
        ino = self.inos.of(path, int(e.get("inode") or 0))
        return {"st_mode": kind | int(e.get("mode", 0o644)), "st_ino": ino,
                "st_nlink": int(e.get("nlink") or (2 if kind == S.S_IFDIR else 1)),
                "st_uid": self.ids.uid_of(str(e.get("owner", self.ids.user))),
                "st_gid": self.ids.gid_of(str(e.get("group", self.ids.user))),
                "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": BLKSIZE,
                "st_mtime": mtime, "st_ctime": _ns(e.get("ctime")) or mtime,
                "st_atime": _ns(e.get("atime")) or mtime}

    def _fresh_attrs(self, h: FileHandle) -> dict:
        """A file made here and not committed yet: only this mount knows it."""
        t = int(h.created * 1e9)
        m = t if h.mtime is None else int(h.mtime * 1e9)
        return {"st_mode": S.S_IFREG | int(h.new.get("mode", NEW_FILE_MODE)),
                "st_ino": self.inos.temp(h.path), "st_nlink": 1, "st_uid": h.owner[0],
                "st_gid": h.owner[1],
                "st_size": h.size, "st_blocks": (h.size + 511) // 512, "st_blksize": BLKSIZE,
                "st_mtime": m, "st_ctime": t,
                "st_atime": m if h.atime is None else int(h.atime * 1e9)}

    def _pending_attrs(self, p: PendingFile) -> dict:
        """A closed new file whose commit is still to come: only this mount knows it."""
        t = int(p.created * 1e9)
        m = t if p.mtime is None else int(p.mtime * 1e9)
        return {"st_mode": S.S_IFREG | p.mode, "st_ino": self.inos.temp(p.path),
                "st_nlink": 1, "st_uid": p.owner[0],
                "st_gid": p.owner[1], "st_size": p.size, "st_blocks": (p.size + 511) // 512,
                "st_blksize": BLKSIZE, "st_mtime": m, "st_ctime": t,
                "st_atime": m if p.atime is None else int(p.atime * 1e9)}

    def getattr(self, path: str, fh: int | None = None) -> dict:
        h = self._handles.get(fh) if fh else None
        if h is None:
            h = next((o for o in self._open_on(path) if o.dirty and not o.unlinked), None)
        if h is not None and h.fresh:
            return self._fresh_attrs(h)
        p = self.pending.get(path)
        if p is not None:
            return self._pending_attrs(p)
        cached = self.cache.get(path)
        if cached is None and h is None:
            absent = self.known.absent(path)
            if absent is None:                 # known directory, set too old: list it
                self._relist(parent_of(path))
                absent = self.known.absent(path)
            if absent:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if cached is None:
            with self.fs.using():
                info = self.fs._mds(path, "stat", path=path, blocks=False)
            info.pop("blocks", None)
            self.links.note(path, info)
            cached = self._attrs(info, path)
            self.cache.put(path, cached)
        if "st_rdev" not in cached and S.S_IFMT(cached["st_mode"]) in DEVICES:
            cached = {**cached, "st_rdev": self._rdev(path)}
            self.cache.put(path, cached)
        if h is not None and h.dirty:        # our own unflushed writes
            cached = {**cached, "st_size": h.size, "st_blocks": (h.size + 511) // 512}
        return cached

    def _rdev(self, path: str) -> int:
        """A device node's number: its content (mknod), 8 bytes; 0 when absent."""
        with self.fs.using():
            data = self.fs.read_bytes(path)
        return int.from_bytes(data, "little") if len(data) == RDEV_BYTES else 0

    def _relist(self, path: str) -> None:
        """List a known directory again, whole, to trust its name set for another ttl."""
        token = self.known.begin(path)
        base = path.rstrip("/")
        names: set[str] = set()
        try:
            for e in self._list(path):
                child = f"{base}/{e['name']}"
                self.cache.put(child, self._attrs(e, child))
                if "nlink" in e:
                    self.links.note(f"{base}/{e['name']}", e)
                names.add(e["name"])
        except OSError:
            self.known.drop_below(path)
            return
        self.known.install(path, names | self._local_names(path), token)

    def _local_names(self, path: str) -> set[str]:
        """Names in `path` that only this mount knows yet: new files not committed."""
        with self._lock:
            fresh = {p.rsplit("/", 1)[1] for p in self._by_path if parent_of(p) == path}
        return fresh | {name for name, _ in self.pending.names_in(path)}

    def readdir(self, path: str, fh: int) -> Iterator[tuple[str, dict, int]]:
        # every entry with its inode number: under use_ino, an entry without one (0) is
        # one readdir(3) skips (a deleted slot); "." and ".." are the kernel's own
        yield ".", _DOT, 0
        yield "..", _DOT, 0
        token = self.known.begin(path)
        listed: set[str] = set()
        base = path.rstrip("/")
        with self._lock:
            fresh = {p.rsplit("/", 1)[1] for p, ids in self._by_path.items()
                     if parent_of(p) == path and any(self._handles[i].fresh
                                                   and not self._handles[i].unlinked
                                                   for i in ids)}
        fresh.update(name for name, _ in self.pending.names_in(path))
        for e in self._list(path):
            child = f"{base}/{e['name']}"
            attrs = self._attrs(e, child)
            self.cache.put(child, attrs)
            if "nlink" in e:                # a hard-linked file (client/mount/links.py)
                self.links.note(f"{base}/{e['name']}", e)
            fresh.discard(e["name"])
            listed.add(e["name"])
            yield e["name"], attrs, 0
        self.known.install(path, listed | self._local_names(path), token)
        for name in sorted(fresh):           # not committed yet: their own numbers
            try:
                yield name, self.getattr(f"{base}/{name}"), 0
            except FileNotFoundError:        # gone (unlinked) since
                continue

    def _list(self, path: str) -> Iterator[dict]:
        after: str | None = None
        while True:
            fields: dict[str, Any] = {"path": path, "limit": PAGE}
            if after is not None:
                fields["start_after"] = after
            with self.fs.using():
                entries = self.fs._mds(path, "ls", **fields)["entries"]
            yield from entries
            if len(entries) < PAGE:
                return
            after = entries[-1]["name"]

    def statfs(self, path: str) -> dict:
        now = time.monotonic()
        if self._statfs is None or self._statfs[0] < now:
            with self.fs.using():
                nodes = self.fs.status().get("nodes") or []
            live = [n for n in nodes if n.get("state") in ("up", "live", "alive")] or nodes
            cap = sum(int(n.get("capacity") or 0) for n in live)
            used = sum(int(n.get("used") or 0) for n in live)
            bs = 4096
            free = max(0, cap - used) // bs
            self._statfs = (now + 5.0, {
                "f_bsize": bs, "f_frsize": bs, "f_blocks": cap // bs, "f_bfree": free,
                "f_bavail": free, "f_files": 1 << 32, "f_ffree": 1 << 31,
                "f_favail": 1 << 31, "f_namemax": 255})
        return self._statfs[1]
