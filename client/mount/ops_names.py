"""Namespace changes through the mount: mkdir, rmdir, unlink, rename, chmod, chown,
utimens, symlinks and special files. A part of ``client.mount.ops.AegisOperations`` (a
mixin). A change to a file that only this mount knows yet (open and new, or closed and
queued for its commit) is made there, not in the MDS; any other first commits what this
mount wrote to the path, so the MDS changes the file the caller sees.
"""
from __future__ import annotations

import errno
import logging
import stat as S
import time
from typing import TYPE_CHECKING, Any

import mfusepy

from ..streams import BlockWriter
from .cache import parent_of
from .links import renamed
from .ops_attrs import DEVICES, KINDS, RDEV_BYTES
from .ops_state import MountState
from .pending import QUEUED, PendingFile

if TYPE_CHECKING:
    from .handles import FileHandle

log = logging.getLogger(__name__)

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
KIND_OF = {v: k for k, v in KINDS.items()}
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


class NameOps(MountState):
    """The namespace-changing FUSE calls, mixed into AegisOperations."""

    if TYPE_CHECKING:    # what this part calls in the others
        def getattr(self, path: str, fh: int | None = None) -> dict: ...
        def create(self, path: str, mode: int, fi: Any = None) -> int: ...
        def flush(self, path: str, fh: int) -> int: ...
        def release(self, path: str, fh: int) -> int: ...
        def _open_on(self, path: str) -> list[FileHandle]: ...
        def _fresh_on(self, path: str) -> FileHandle | None: ...
        def _commit_open(self, path: str, below: bool = False) -> None: ...
        def _chown_names(self, owner: tuple[int, int]) -> tuple[str, str] | None: ...

    def _chown_new(self, path: str, ids: tuple[int, int] | None = None) -> None:
        """The MDS makes the mount's user the owner; the entry belongs to the caller
        (who the kernel says made it), when the mount's user may give it away."""
        uid, gid = ids or mfusepy.fuse_get_context()[:2]
        owner, group = self.ids.user_name(uid), self.ids.group_name(gid)
        if owner != self.ids.user or group != self.ids.user:
            try:
                with self.fs.using():
                    self.fs.chown(path, owner=owner, group=group)
            except PermissionError:          # a mount of a plain user: its files
                log.debug("%s stays the mount user's", path)

    def mkdir(self, path: str, mode: int) -> int:
        # umask 0: the kernel applied the caller's umask to `mode` already
        token = self.known.begin(path)
        with self.fs.using():
            self.fs._mds(path, "mkdir", path=path, mode=mode & 0o7777, umask=0)
        self.known.add(path)
        self.known.install(path, set(), token)     # new: empty, all its names ours
        self.cache.drop(path)
        if self._foreign():
            self._chown_new(path)
        return 0

    def _foreign(self) -> bool:
        uid, gid, _ = mfusepy.fuse_get_context()
        return uid != self.ids.uid or gid != self.ids.gid

    def rmdir(self, path: str) -> int:
        self.pending.settle(path, raise_errors=False)
        with self.fs.using():
            if self.fs._mds(path, "stat", path=path, blocks=False)["type"] != "dir":
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            self.fs._mds(path, "rm", path=path)
        self.cache.drop_tree(path)
        self.known.drop_below(path)
        return 0

    def unlink(self, path: str) -> int:
        fresh = [h for h in self._open_on(path) if h.fresh and not h.unlinked]
        if fresh:                    # never committed: nothing in the MDS to remove
            for h in fresh:
                h.unlinked = True
            self.cache.drop(path)
            return 0
        if self.pending.cancel(path):   # closed, not committed yet: it never will be
            self.cache.drop(path)
            return 0
        self.pending.settle(path, exact=True, raise_errors=False)
        with self.fs.using():
            if self.fs._mds(path, "stat", path=path, blocks=False)["type"] == "dir":
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            self.fs._mds(path, "rm", path=path)
        self.cache.drop(path)             # the other names' link count: on_change
        self.links.forget(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & RENAME_EXCHANGE:
            return self._exchange(old, new)
        if self._rename_pending(old, new, flags):
            return 0
        fields: dict[str, Any] = {"src": old, "dst": new}
        if flags & RENAME_NOREPLACE:
            fields["noreplace"] = True
        # a draft commits to the path it was created for: first what is open below `old`
        self._commit_open(old, below=True)
        self.pending.settle(old, raise_errors=False)
        self.pending.settle(new, raise_errors=False)
        with self.fs.using():
            self.fs._mds(f"{old} -> {new}", "rename", **fields)
        self.known.drop_below(old)
        self.known.drop_below(new)
        self.known.add(new)
        self.cache.drop_tree(old)
        self.cache.drop_tree(new)          # a name replaced there: on_change
        self.links.forget(new)
        self.links.move(old, new)
        self.inos.move(old, new)
        self._move_handles(old, new)
        return 0

    def _exchange(self, a: str, b: str) -> int:
        """RENAME_EXCHANGE: what this mount wrote to either side is committed first, the
        MDS swaps the two entries, and everything this mount keeps by path swaps too."""
        for path in (a, b):
            self._commit_open(path, below=True)    # its queued files too
        with self.fs.using():
            self.fs._mds(f"{a} <-> {b}", "rename", src=a, dst=b, exchange=True)
        swap = f"{a}\0exchange"          # no path has a NUL: a free name for the swap
        for path in (a, b):
            self.known.drop_below(path)
            self.known.add(path)
            self.cache.drop_tree(path)
        for move in (self.links.move, self.inos.move, self._move_handles):
            move(a, swap)
            move(b, a)
            move(swap, b)
        return 0

    def _move_handles(self, old: str, new: str) -> None:
        """Open handles at or under `old` are under `new` now."""
        with self._lock:
            for p, q in renamed(self._by_path, old, new):
                moved = self._by_path.pop(p)
                self._by_path.setdefault(q, set()).update(moved)
                for i in moved:
                    self._handles[i].path = q

    def _rename_pending(self, old: str, new: str, flags: int) -> bool:
        """A file still queued for its commit (rsync's temporary file) is renamed in the
        queue: it will be created at `new`, the MDS never sees the old name. The checks
        rename would make: the target is not a directory (EISDIR), not there with
        RENAME_NOREPLACE (EEXIST), its parent is a directory (ENOENT, ENOTDIR)."""
        p = self.pending.get(old)
        if p is None or p.state != QUEUED or self._open_on(old) or self._open_on(new):
            return False
        try:
            dst: dict | None = self.getattr(new)
        except FileNotFoundError:
            dst = None
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise FileExistsError(errno.EEXIST, "File exists", new)
            if S.S_ISDIR(dst["st_mode"]):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", new)
        if not S.S_ISDIR(self.getattr(parent_of(new))["st_mode"]):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", new)

        def owner_names(f: PendingFile) -> None:
            f.replaces = True
            f.chown = (self.ids.user_name(f.owner[0]), self.ids.group_name(f.owner[1]))
        if dst is not None and not self.pending.update(old, owner_names):
            return False
        if not self.pending.move(old, new):
            return False
        self.inos.move(old, new)
        if flags & RENAME_NOREPLACE:     # and nothing may appear there before the commit
            self.pending.update(new, lambda f: setattr(f, "exclusive", True))
        now = time.time_ns()
        for path in (old, new):
            self.cache.drop_entry(path)
            self.cache.touch(parent_of(path), now)
        self.known.add(new)
        return True

    def chmod(self, path: str, mode: int) -> int:
        h = self._fresh_on(path)
        if h is not None:               # not in the MDS yet: the create will carry it
            h.new["mode"] = mode & 0o7777
            return 0
        if self.pending.update(path, lambda p: setattr(p, "mode", mode & 0o7777)):
            return 0
        self._commit_open(path)
        with self.fs.using():
            self.fs.chmod(path, mode & 0o7777)
        self.cache.drop(path)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        h = self._fresh_on(path)
        if h is not None:
            h.owner = (h.owner[0] if uid < 0 else uid, h.owner[1] if gid < 0 else gid)
            return 0

        def owned(p: PendingFile) -> None:
            p.owner = (p.owner[0] if uid < 0 else uid, p.owner[1] if gid < 0 else gid)
            p.chown = self._chown_names(p.owner)
        if self.pending.update(path, owned):
            return 0
        self._commit_open(path)
        owner = None if uid < 0 else self.ids.user_name(uid)
        group = None if gid < 0 else self.ids.group_name(gid)
        if owner is None and group is None:
            with self.fs.using():      # POSIX: chown(-1, -1) still changes ctime
                info = self.fs._mds(path, "stat", path=path, blocks=False)
            owner = info["owner"]
        with self.fs.using():
            self.fs.chown(path, owner=owner, group=group)
        self.cache.drop(path)
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        fields: dict[str, Any] = {"path": path}
        if times is not None:
            atime, mtime = times
            for key, ts in (("atime", atime), ("mtime", mtime)):
                if ts is None:
                    continue
                if ts.tv_nsec == UTIME_OMIT:
                    continue
                fields[key] = time.time() if ts.tv_nsec == UTIME_NOW \
                    else ts.tv_sec + ts.tv_nsec / 1e9
        if times is not None and "mtime" not in fields and "atime" not in fields:
            return 0                   # both UTIME_OMIT: nothing changes
        def set_times(f: Any) -> None:       # a file not committed yet: at its commit
            if "mtime" in fields:
                f.mtime = float(fields["mtime"])
            if "atime" in fields:
                f.atime = float(fields["atime"])
        h = self._fresh_on(path)
        if h is not None:
            set_times(h)
            return 0
        if len(fields) > 1 and self.pending.update(path, set_times):
            return 0
        if times is not None and "mtime" not in fields:
            fields["keep_mtime"] = True        # UTIME_OMIT: only the atime changes
        self._commit_open(path)
        # a directory's times set after files in it were closed: their commits (each
        # changes the directory's mtime) go first, or they would undo these times
        # (rsync -a and tar -x set a directory's times after writing its files)
        self.pending.settle(path, raise_errors=False)
        with self.fs.using():
            self.fs._mds(path, "utimens", **fields)
        self.cache.drop(path)
        return 0

    def _special(self, path: str, kind: str, mode: int, content: bytes) -> None:
        """A file that is not regular: its kind in the MDS mode, its content (a link's
        target) committed at once, exclusively (EEXIST if the name is taken)."""
        with self.fs.using() as mux:
            created = self.fs._mds(path, "create", path=path, kind=kind, exclusive=True,
                                   mode=mode & 0o7777, size=len(content), umask=0)
            w = BlockWriter(mux, path, created, window=1, size_hint=len(content),
                            suspects=self.fs.suspects, timeout=self.fs.timeout)
            w.exclusive = True
            try:
                if content:
                    buf = w.buffer()
                    buf[:len(content)] = content
                    w.submit(len(content))
                w.commit()
            except BaseException:
                w.abort()
                raise
        self.known.add(path)
        self.cache.drop(path)
        if self._foreign():
            self._chown_new(path)

    def symlink(self, target: str, source: str) -> int:
        data = source.encode("utf-8", "surrogateescape")
        if len(data) >= 4096:
            raise OSError(errno.ENAMETOOLONG, "File name too long", target)
        self._special(target, "symlink", 0o777, data)
        return 0

    def readlink(self, path: str) -> str:
        with self.fs.using():
            data = self.fs.read_bytes(path)
        return data.decode("utf-8", "surrogateescape")

    def link(self, target: str, source: str) -> int:
        """A hard link `target` to file `source`: what this mount wrote to `source` is
        committed first, so the MDS links the file the caller sees. The kernel forgets
        what it cached of the file's other names (their link count changed)."""
        self._commit_open(source)
        # a file queued at `target` is there for the caller: the MDS must see it (EEXIST)
        self.pending.settle(target, exact=True, raise_errors=False)
        with self.fs.using():
            got = self.fs._mds(f"{source} -> {target}", "link", src=source, dst=target)
        self.links.note(source, got)
        self.links.add(source, target)
        self.known.add(target)
        self.cache.drop(target)
        self.cache.drop(source)           # and the other names, through on_change
        self.kernel.invalidate([source])
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        """Regular files, FIFOs, sockets and device nodes (whose number, st_rdev, is
        their content: 8 bytes; the mount is nodev, so they cannot be opened)."""
        if S.S_ISREG(mode):
            fh = self.create(path, mode)
            try:
                self.flush(path, fh)
            finally:
                self.release(path, fh)
            return 0
        kind = KIND_OF.get(S.S_IFMT(mode))
        if kind is None or kind == "symlink":
            raise OSError(errno.EINVAL, "Invalid argument", path)
        rdev = dev.to_bytes(RDEV_BYTES, "little") if S.S_IFMT(mode) in DEVICES else b""
        self._special(path, kind, mode, rdev)
        return 0
