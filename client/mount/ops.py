"""The FUSE operations of `aegisfs mount` over AegisClient (mfusepy's fusepy-style API).

The MDS is the authority for names and attributes; the kernel checks permissions from
the attributes reported here (`default_permissions`), the MDS checks them again for the
mount's own key. Attributes listed by readdir are kept for attr_timeout seconds, so an
`ls -l` costs one paged listing, not a stat per entry; every change made through this
mount drops what it touched. Files: see handles.py.
"""
from __future__ import annotations

import errno
import logging
import os
import stat as S
import threading
import time
from typing import Any, Iterator, Sequence

import mfusepy

from broker.crc import crc32c
from broker.limits import MAX_FILE_BLOCKS

from ..retry import retryable
from ..streams import BlockWriter
from .background import MountBatch
from .cache import AttrCache, KnownDirs, OwnChanges, parent_of
from .conn import MountClient
from .handles import SMALL, FileHandle
from .ids import IdMap
from .pending import QUEUED, PendingFile, PendingQueue

log = logging.getLogger(__name__)

PAGE = 1000                   # entries per MDS ls request: memory bounded, no ceiling
BLKSIZE = 128 * 1024          # st_blksize: what tools should write at a time
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
NEW_FILE_MODE = 0o644         # what the MDS gives a create without a mode (0o666 & ~022)
KINDS = {"symlink": S.S_IFLNK, "fifo": S.S_IFIFO, "socket": S.S_IFSOCK,
         "chardev": S.S_IFCHR, "blockdev": S.S_IFBLK}
KIND_OF = {v: k for k, v in KINDS.items()}
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
RETRY_FOR = 120.0             # seconds a background commit rides through an outage


def _ns(t: Any) -> int:
    return int(float(t or 0) * 1e9)


class AegisOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, fs: MountClient, ids: IdMap, *, attr_timeout: float = 1.0,
                 spool_dir: str | None = None, background: bool = True,
                 pending_files: int = 4096, pending_bytes: int = 64 << 20) -> None:
        self.fs = fs
        self.ids = ids
        self.cache = AttrCache(attr_timeout)
        self.spool_dir = spool_dir
        self._handles: dict[int, FileHandle] = {}
        self._by_path: dict[str, set[int]] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._statfs: tuple[float, dict] | None = None
        self._max_file_size: int | None = None
        self.invalidator: Any = None       # events.Invalidator, started by init()
        # small new files closed without fsync: committed in batches (pending.py)
        self.background = background
        self.pending = PendingQueue(self._commit_batch, max_files=pending_files,
                                    max_bytes=pending_bytes)
        self._committer_started = False
        self._block_size: int | None = None
        self.own = OwnChanges()             # our commits: their events keep the parent
        self.known = KnownDirs(attr_timeout)  # negative lookups answered here

    # Extended attributes are not supported. Not registering the xattr operations makes
    # libfuse answer ENOSYS, after which the kernel stops asking (and answers EOPNOTSUPP
    # itself): otherwise every write costs a getxattr("security.capability") round trip.
    getxattr = setxattr = listxattr = removexattr = None

    def init(self, path: str) -> None:
        """The mount is live: follow the event feed to drop what changed elsewhere."""
        from .events import Invalidator, events_endpoint
        endpoint = events_endpoint(self.fs.broker)
        if endpoint and self.cache.ttl > 0:
            self.invalidator = Invalidator(endpoint, self.fs._curve, self.cache,
                                           self.own, self.known)
            self.invalidator.start()

    # -- attributes --------------------------------------------------------------------

    def _attrs(self, e: dict) -> dict:
        kind = S.S_IFDIR if e.get("type") == "dir" else KINDS.get(str(e.get("kind")), S.S_IFREG)
        size = int(e.get("size") or 0)
        mtime = _ns(e.get("mtime"))
        return {"st_mode": kind | int(e.get("mode", 0o644)),
                "st_nlink": int(e.get("nlink") or (2 if kind == S.S_IFDIR else 1)),
                "st_uid": self.ids.uid_of(str(e.get("owner", self.ids.user))),
                "st_gid": self.ids.gid_of(str(e.get("group", self.ids.user))),
                "st_size": size, "st_blocks": (size + 511) // 512, "st_blksize": BLKSIZE,
                "st_mtime": mtime, "st_ctime": _ns(e.get("ctime")) or mtime,
                "st_atime": _ns(e.get("atime")) or mtime}

    def _open_on(self, path: str) -> list[FileHandle]:
        with self._lock:
            return [self._handles[i] for i in self._by_path.get(path, ())]

    def _fresh_attrs(self, h: FileHandle) -> dict:
        """A file made here and not committed yet: only this mount knows it."""
        t = int(h.created * 1e9)
        m = t if h.mtime is None else int(h.mtime * 1e9)
        return {"st_mode": S.S_IFREG | int(h.new.get("mode", NEW_FILE_MODE)),
                "st_nlink": 1, "st_uid": h.owner[0], "st_gid": h.owner[1],
                "st_size": h.size, "st_blocks": (h.size + 511) // 512, "st_blksize": BLKSIZE,
                "st_mtime": m, "st_ctime": t, "st_atime": m}

    def _pending_attrs(self, p: PendingFile) -> dict:
        """A closed new file whose commit is still to come: only this mount knows it."""
        t = int(p.created * 1e9)
        m = t if p.mtime is None else int(p.mtime * 1e9)
        return {"st_mode": S.S_IFREG | p.mode, "st_nlink": 1, "st_uid": p.owner[0],
                "st_gid": p.owner[1], "st_size": p.size, "st_blocks": (p.size + 511) // 512,
                "st_blksize": BLKSIZE, "st_mtime": m, "st_ctime": t, "st_atime": m}

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
            cached = self._attrs(info)
            self.cache.put(path, cached)
        if h is not None and h.dirty:        # our own unflushed writes
            cached = {**cached, "st_size": h.size, "st_blocks": (h.size + 511) // 512}
        return cached

    def _relist(self, path: str) -> None:
        """List a known directory again, whole, to trust its name set for another ttl."""
        token = self.known.begin(path)
        base = path.rstrip("/")
        names: set[str] = set()
        try:
            for e in self._list(path):
                self.cache.put(f"{base}/{e['name']}", self._attrs(e))
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

    def readdir(self, path: str, fh: int) -> Iterator[str | tuple[str, dict, int]]:
        yield "."
        yield ".."
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
            attrs = self._attrs(e)
            self.cache.put(f"{base}/{e['name']}", attrs)
            fresh.discard(e["name"])
            listed.add(e["name"])
            yield e["name"]
        self.known.install(path, listed | self._local_names(path), token)
        yield from sorted(fresh)

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

    # -- namespace ---------------------------------------------------------------------

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
        self.cache.drop(path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & RENAME_EXCHANGE:
            raise OSError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
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
        self.cache.drop_tree(new)
        with self._lock:
            prefix = old.rstrip("/") + "/"
            for p in [p for p in self._by_path if p == old or p.startswith(prefix)]:
                moved = self._by_path.pop(p)
                q = new + p[len(old):]
                self._by_path.setdefault(q, set()).update(moved)
                for i in moved:
                    self._handles[i].path = q
        return 0

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
        if flags & RENAME_NOREPLACE:     # and nothing may appear there before the commit
            self.pending.update(new, lambda f: setattr(f, "exclusive", True))
        now = time.time_ns()
        for path in (old, new):
            self.cache.drop_entry(path)
            self.cache.touch(parent_of(path), now)
        self.known.add(new)
        return True

    def _commit_open(self, path: str, below: bool = False) -> None:
        """Commit this mount's writes to `path` (and, `below`, under it) first: what the
        MDS changes next is the file the caller sees."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            handles = [self._handles[i] for p, ids in self._by_path.items()
                       if p == path or (below and p.startswith(prefix)) for i in ids]
        for h in handles:
            if h.dirty:
                self._flush(h)
        self.pending.settle(path, exact=not below, raise_errors=False,
                            timeout=self.fs.timeout)

    def _flush(self, h: FileHandle) -> None:
        with h.lock:
            then = self._settle_ops(h) if h.fresh and not h.unlinked else []
            after = h.flush(then)
        self.cache.drop(h.path)
        for op, got in zip(then, after):
            if isinstance(got, OSError) and not (op["op"] == "chown"
                                                 and got.errno == errno.EPERM):
                raise OSError(got.errno, f"{op['op']}: {got.strerror}", h.path)

    def _settle_ops(self, h: FileHandle) -> list[dict[str, Any]]:
        """What was set on a new file before its first commit (tar: futimens, fchown,
        fchmod before close): the mode goes with the create (unless it changed after a
        big file's first blocks had left), the rest in the commit's batch."""
        ops: list[dict[str, Any]] = []
        mode = h.new.get("mode")
        if h.draft_mode is not None and mode is not None and mode != h.draft_mode:
            ops.append({"op": "chmod", "path": h.path, "mode": mode})
        names = self._chown_names(h.owner)
        if names is not None:             # a plain user's mount: EPERM, kept
            ops.append({"op": "chown", "path": h.path, "owner": names[0], "group": names[1]})
        if h.mtime is not None:
            ops.append({"op": "utimens", "path": h.path, "mtime": h.mtime})
        return ops

    def _chown_names(self, owner: tuple[int, int]) -> tuple[str, str] | None:
        """The owner and group names a new file's commit must set, None: the mount's."""
        if owner == (self.ids.uid, self.ids.gid):
            return None
        return self.ids.user_name(owner[0]), self.ids.group_name(owner[1])

    def _fresh_on(self, path: str) -> FileHandle | None:
        return next((h for h in self._open_on(path) if h.fresh and not h.unlinked), None)

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
        h = self._fresh_on(path)
        if h is not None:
            if "mtime" in fields:
                h.mtime = float(fields["mtime"])
            return 0
        if "mtime" in fields and self.pending.update(
                path, lambda p: setattr(p, "mtime", float(fields["mtime"]))):
            return 0
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
        raise PermissionError(errno.EPERM, "hard links are not supported", target)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        """Regular files, FIFOs, sockets and device nodes (the device number is not
        kept: st_rdev is 0; the mount is nodev anyway)."""
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
        self._special(path, kind, mode, b"")
        return 0

    # -- files -------------------------------------------------------------------------

    def _register(self, h: FileHandle) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = h
            self._by_path.setdefault(h.path, set()).add(fh)
        return fh

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """A new file exists in this mount at once and in the namespace from its first
        flush (close or fsync), whole (close-to-open); O_EXCL is checked again there."""
        flags = int(getattr(fi, "flags", fi or 0)) or os.O_WRONLY
        new = {"mode": mode & 0o7777, "umask": 0, "exclusive": bool(flags & os.O_EXCL)}
        h = FileHandle(self.fs, path, flags, 0, self.spool_dir, fresh=True, new=new)
        uid, gid, _ = mfusepy.fuse_get_context()
        h.owner = (uid, gid)
        # the parent's cached attributes stay (a new mtime): no MDS stat of the directory
        # at the next create's permission check
        self.cache.drop_entry(path)
        self.cache.touch(parent_of(path), int(h.created * 1e9))
        self.known.add(path)
        return self._register(h)

    def open(self, path: str, flags: int) -> int:
        self._commit_open(path)          # another handle's new file or unflushed writes
        self.pending.raise_error(path, exact=True)     # its background commit failed
        with self.fs.using():
            info = self.fs._mds(path, "stat", path=path, blocks=False)
        if info["type"] == "dir":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        h = FileHandle(self.fs, path, flags, int(info.get("size") or 0), self.spool_dir)
        if flags & os.O_TRUNC and h.base_size:
            h.replace_all()
        return self._register(h)

    def _handle(self, fh: int) -> FileHandle:
        h = self._handles.get(fh)
        if h is None:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return h

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        h = self._handle(fh)
        self._unqueue(h)
        with h.lock:
            return h.read(size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        h = self._handle(fh)
        self._check_size(offset + len(data), path)
        self._unqueue(h)
        with h.lock:
            return h.write(data, offset)

    def _check_size(self, end: int, path: str) -> None:
        """EFBIG past the largest file the cluster holds (MAX_FILE_BLOCKS of its block
        size), before a byte is written: a truncate to a petabyte fails at once."""
        if self._max_file_size is None:
            with self.fs.using():
                block = int(self.fs.status().get("block_size") or 4 << 20)
            self._max_file_size = MAX_FILE_BLOCKS * block
            self._block_size = block
        if end > self._max_file_size:
            raise OSError(errno.EFBIG, f"File too large (the largest is "
                          f"{self._max_file_size} bytes)", path)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._check_size(length, path)
        h = self._handles.get(fh) if fh else None
        if h is not None:
            self._unqueue(h)
            with h.lock:
                h.truncate(length)
        else:
            self._commit_open(path)
            tmp = FileHandle(self.fs, path, os.O_RDWR, self._size(path), self.spool_dir)
            try:
                tmp.truncate(length)
                tmp.flush()
            finally:
                tmp.release()
        self.cache.drop(path)
        return 0

    def _size(self, path: str) -> int:
        with self.fs.using():
            info = self.fs._mds(path, "stat", path=path, blocks=False)
        if info["type"] == "dir":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        return int(info.get("size") or 0)

    def flush(self, path: str, fh: int) -> int:
        """close(): a small new file is queued for a background commit (pending.py), any
        other change is committed before close returns."""
        h = self._handle(fh)
        if not self._defer(h):
            self._flush(h)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        """Returns when the file is durable: committed, on R DataNodes and in the MDS's
        log (a queued one: once its batch is)."""
        h = self._handle(fh)
        self._unqueue(h, raise_errors=True)
        self._flush(h)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        """fsync of a directory (`sync DIR`): every file closed below it is committed
        when this returns; a failed background commit there is reported (EIO)."""
        self.pending.settle(path)
        return 0

    def _unqueue(self, h: FileHandle, raise_errors: bool = False) -> None:
        """A handle whose content was queued at its close and is used again (fsync, a
        read or write after close through a dup): wait for that commit first."""
        if h.queued:
            self.pending.settle(h.path, exact=True, raise_errors=raise_errors)
            h.queued = False

    def _defer(self, h: FileHandle) -> bool:
        """Queue a new file closed with all of its (small) content in memory."""
        if not self.background:
            return False
        with h.lock:
            if not (h.fresh and h.dirty and not h.unlinked and not h.broken) \
                    or h.draft_mode is not None or h.cow is not None:
                return False
            if h.stream is not None:
                if h.stream.w is not None:
                    return False
                data = bytes(h.stream.head)
            elif h.spool is not None:
                if h.size > SMALL:
                    return False
                data = os.pread(h.spool.fileno(), h.size, 0)
            else:
                data = b""
            if len(data) > min(SMALL, self._block_size or SMALL):
                return False
            p = PendingFile(h.path, data, int(h.new.get("mode", NEW_FILE_MODE)), h.owner,
                            h.created, mtime=h.mtime, exclusive=bool(h.new.get("exclusive")),
                            chown=self._chown_names(h.owner))
            if not self._committer_started:
                self._committer_started = True
                self.pending.start()
            self.pending.add(p)
            h.queued = True
            h.forget_new(len(data))
        return True

    def _commit_batch(self, batch: Sequence[PendingFile]) -> list[OSError | None]:
        """Commit a batch; files that failed for a reason a restart explains (the MDS or
        broker away: refused, reset, timed out, EAGAIN) stay queued and are tried again
        with backoff for up to RETRY_FOR seconds, so an outage delays them instead of
        losing them. A retried O_EXCL create answered EEXIST is checked against what
        is there: our own earlier attempt, committed but unanswered, is a success."""
        for p in batch:         # before the commit: its event may come before the reply
            self.own.add(p.path)
        out: list[OSError | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        tried: set[int] = set()
        deadline = time.monotonic() + RETRY_FOR
        delay = 0.2
        while True:
            files = [batch[i] for i in todo]
            try:
                with self.fs.using() as mux:
                    errors = MountBatch(mux, files, timeout=self.fs.timeout,
                                        suspects=self.fs.suspects,
                                        window=self.fs.window).run()
            except OSError as exc:
                errors = [exc] * len(files)
            again = []
            for i, err in zip(todo, errors):
                if err is not None and retryable(err) and time.monotonic() < deadline:
                    again.append(i)
                elif err is not None and err.errno == errno.EEXIST and i in tried \
                        and self._already_there(batch[i]):
                    out[i] = None
                else:
                    out[i] = err
            if not again:
                break
            log.warning("background commit of %d files: %s; trying again", len(again),
                        errors[todo.index(again[0])])
            tried.update(again)
            todo = again
            time.sleep(delay)
            delay = min(2 * delay, 2.0)
        for p in batch:
            self.cache.drop_entry(p.path)
        return out

    def _already_there(self, p: PendingFile) -> bool:
        """The file at p.path is p's content (an earlier attempt of ours committed it)."""
        try:
            with self.fs.using():
                info = self.fs._mds(p.path, "stat", path=p.path)
        except OSError:
            return False
        blocks = info.get("blocks") or []
        if int(info.get("size") or 0) != p.size or len(blocks) != (1 if p.size else 0):
            return False
        return not blocks or int(blocks[0].get("checksum", -1)) == crc32c(p.data)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is not None:
                ids = self._by_path.get(h.path)
                if ids is not None:
                    ids.discard(fh)
                    if not ids:
                        del self._by_path[h.path]
        if h is not None:
            with h.lock:
                try:
                    if h.dirty and not h.unlinked:   # flush failed (reported then)
                        log.warning("%s: closed with uncommitted writes; dropped", h.path)
                finally:
                    h.release()
            self.cache.drop_entry(h.path)
        return 0

    def destroy(self, path: str) -> None:
        """Unmount: open drafts are aborted (a file not closed is not committed)."""
        if self.invalidator is not None:
            self.invalidator.stop()
        for fh in list(self._handles):
            try:
                self.release("", fh)
            except OSError as exc:
                log.warning("unmount: %s", exc)
        if self._committer_started:
            self.pending.stop(drain=True)      # closed files are committed before we go
        self.fs.close()
