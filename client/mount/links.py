"""Hard links through the mount: the names this mount has seen of files with several,
and the kernel's attribute cache of those names.

libfuse's path API gives every name its own kernel inode, so the kernel caches a
linked file's attributes once per name: after a chmod, an unlink or a write through one
name, the others would show the old mode, link count or size until attr_timeout. The
MDS reports a linked file's link count and inode id with its attributes (stat and ls);
`LinkNames` keeps, per inode id, the names this mount was told about, and every change
this mount makes or hears of (AttrCache's drops, from its own calls and the event
feed) tells the kernel to forget the attributes of the other names (`KernelCache`,
libfuse's fuse_invalidate_path). The mount's own cache does not keep linked files'
attributes at all (AttrCache.put), so its answers for them are always the MDS's.
A name this mount never saw needs nothing: the kernel has nothing cached for it.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Iterable

log = logging.getLogger(__name__)


def renamed(paths: Iterable[str], old: str, new: str) -> list[tuple[str, str]]:
    """(path, its name after `old` became `new`) of the paths at or under `old`."""
    prefix = old.rstrip("/") + "/"
    return [(p, new + p[len(old):]) for p in paths if p == old or p.startswith(prefix)]


class LinkNames:
    """inode id -> the names of a linked file this mount has seen (bounded)."""

    MAX = 100_000

    def __init__(self) -> None:
        self._names: dict[int, set[str]] = {}
        self._ino: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, path: str, entry: dict) -> None:
        """What the MDS said of `path` (a stat or an ls entry): a file with several
        names is remembered; one with a single name now, forgotten."""
        count = entry.get("nlink")
        if count is None or entry.get("type") == "dir":
            if self._ino and path in self._ino:
                self.forget(path)
            return
        ino = entry.get("inode")
        if type(ino) is not int:
            return
        with self._lock:
            old = self._ino.get(path)
            if old == ino:
                return
            if old is not None:
                self._drop(path, old)
            if count <= 1:
                return
            if len(self._ino) >= self.MAX:
                self._names.clear()
                self._ino.clear()
            self._names.setdefault(ino, set()).add(path)
            self._ino[path] = ino

    def __bool__(self) -> bool:
        return bool(self._ino)

    def under(self, path: str) -> list[str]:
        """The names known at or below `path`."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            return [p for p in self._ino if p == path or p.startswith(prefix)]

    def others(self, path: str) -> list[str]:
        """The other names of the file `path` names, as far as this mount knows."""
        if not self._ino:
            return []
        with self._lock:
            ino = self._ino.get(path)
            return [] if ino is None else [p for p in self._names[ino] if p != path]

    def add(self, path: str, other: str) -> None:
        """`other` became a name of the file `path` names (a link made here)."""
        with self._lock:
            ino = self._ino.get(path)
            if ino is not None:
                self._names[ino].add(other)
                self._ino[other] = ino

    def forget(self, path: str) -> None:
        with self._lock:
            ino = self._ino.get(path)
            if ino is not None:
                self._drop(path, ino)

    def move(self, old: str, new: str) -> None:
        """A rename: names at or under `old` are now under `new`."""
        if not self._ino:
            return
        with self._lock:
            for p, q in renamed(self._ino, old, new):
                ino = self._ino[p]
                self._drop(p, ino)
                self._names.setdefault(ino, set()).add(q)
                self._ino[q] = ino

    def _drop(self, path: str, ino: int) -> None:
        del self._ino[path]
        names = self._names[ino]
        names.discard(path)
        if not names:
            del self._names[ino]


class KernelCache:
    """Tells the kernel to forget what it cached of paths (fuse_invalidate_path). Bound
    to the FUSE session from a thread of it (init); before that, or without libfuse
    (unit tests), it does nothing."""

    def __init__(self) -> None:
        self._fuse: int | None = None
        self._call: Any = None

    def bind(self) -> None:
        """From a FUSE thread: remember the session (fuse_get_context's ``fuse``)."""
        try:
            import mfusepy
            lib = mfusepy._libfuse
            self._fuse = lib.fuse_get_context().contents.fuse
            call = lib.fuse_invalidate_path
            call.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            call.restype = ctypes.c_int
            self._call = call
        except (ImportError, AttributeError, OSError) as exc:
            log.warning("the kernel's cache of hard-linked names cannot be invalidated: "
                        "their attributes may be stale for attr_timeout (%s)", exc)
            self._call = None

    def invalidate(self, paths: Iterable[str]) -> None:
        if self._call is None or not self._fuse:
            return
        for p in paths:
            # -ENOENT: the kernel holds nothing of that name; nothing to do
            self._call(self._fuse, p.encode("utf-8", "surrogateescape"))


class InodeNumbers:
    """st_ino of files made here. A new file has no MDS number until its commit (a
    fresh or queued file), so it gets one of its own from TEMP_INO up, which it keeps
    in this mount after the commit: a program that compares the number it saw at
    create with the one it sees later (sqlite's "database moved" check) finds the
    same. Numbers the MDS gave are reported as they are. Bounded: past MAX files made
    here, the oldest show their MDS numbers from then on."""

    MAX = 1_000_000
    TEMP_INO = 1 << 61

    def __init__(self) -> None:
        self._by_path: dict[str, int] = {}     # made here, not seen in the MDS yet
        self._by_id: dict[int, int] = {}       # MDS number -> ours
        self._next = self.TEMP_INO
        self._lock = threading.Lock()

    def temp(self, path: str) -> int:
        """The number of a new file at `path` not committed yet."""
        got = self._by_path.get(path)
        if got is not None:
            return got
        with self._lock:
            self._next += 1
            if len(self._by_path) >= self.MAX:
                self._by_path.clear()
            got = self._by_path[path] = self._next
            return got

    def of(self, path: str, mds_ino: int) -> int:
        """st_ino of `path`, which the MDS numbers `mds_ino`."""
        got = self._by_id.get(mds_ino)
        if got is not None or not self._by_path:
            return mds_ino if got is None else got
        with self._lock:
            got = self._by_path.pop(path, None)
            if got is None:
                return mds_ino
            if len(self._by_id) >= self.MAX:
                self._by_id.pop(next(iter(self._by_id)))
            self._by_id[mds_ino] = got
            return got

    def move(self, old: str, new: str) -> None:
        """A rename: a file not seen in the MDS yet keeps its number under `new`."""
        if not self._by_path:
            return
        with self._lock:
            for p, q in renamed(self._by_path, old, new):
                self._by_path[q] = self._by_path.pop(p)
