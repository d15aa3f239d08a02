"""The mount's attribute cache: path -> attributes for a short time (attr_timeout), so an
`ls -l` after a readdir costs no stat per entry; every change through the mount drops
the paths it touched (and their parent)."""
from __future__ import annotations

import threading
import time
from stat import S_ISDIR
from typing import Callable


class AttrCache:
    """path -> (deadline, attrs); short-lived, dropped on every change through us. A
    hard-linked file's attributes are not kept (another name's change would not drop
    them); `on_change` hears of every path dropped, with whether its subtree went too
    (client/mount/links.py tells the kernel about the file's other names)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._d: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()
        self.on_change: Callable[[str, bool], None] | None = None

    def get(self, path: str) -> dict | None:
        hit = self._d.get(path)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, path: str, attrs: dict) -> None:
        if self.ttl > 0 and (attrs.get("st_nlink", 1) == 1
                            or S_ISDIR(attrs.get("st_mode", 0))):
            with self._lock:
                if len(self._d) > 200_000:
                    self._d.clear()
                self._d[path] = (time.monotonic() + self.ttl, attrs)

    def drop(self, *paths: str) -> None:
        with self._lock:
            for p in paths:
                self._d.pop(p, None)
                self._d.pop(parent_of(p), None)
        if self.on_change is not None:
            for p in paths:
                self.on_change(p, False)

    def drop_entry(self, path: str) -> None:
        """Drop one path, not its parent (a change that leaves the directory as it is)."""
        with self._lock:
            self._d.pop(path, None)
        if self.on_change is not None:
            self.on_change(path, False)

    def touch(self, path: str, ns: int) -> None:
        """A directory changed by this mount (a new entry): its cached mtime and ctime
        move to `ns`, the rest stays, so the next permission check needs no stat."""
        with self._lock:
            hit = self._d.get(path)
            if hit is not None:
                self._d[path] = (hit[0], {**hit[1], "st_mtime": ns, "st_ctime": ns})

    def drop_tree(self, path: str) -> None:
        with self._lock:
            prefix = path.rstrip("/") + "/"
            for p in [p for p in self._d if p == path or p.startswith(prefix)]:
                del self._d[p]
            self._d.pop(parent_of(path), None)
        if self.on_change is not None:
            self.on_change(path, True)


class OwnChanges:
    """Paths this mount committed lately (bounded): the event of such a commit drops the
    file's cached attributes but not its parent's, which the mount updated itself
    (AttrCache.touch at the create), so a tar -x does not stat its directory after
    every batch."""

    def __init__(self, keep: int = 100_000, ttl: float = 30.0) -> None:
        self.keep, self.ttl = keep, ttl
        self._d: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, path: str) -> None:
        with self._lock:
            if len(self._d) >= self.keep:
                self._d.clear()
            self._d[path] = time.monotonic() + self.ttl

    def __contains__(self, path: object) -> bool:
        """`path` was committed by this mount lately (its commit and attr events)."""
        deadline = self._d.get(path) if isinstance(path, str) else None
        return deadline is not None and deadline >= time.monotonic()


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class KnownDirs:
    """Directories whose every name this mount knows, so a lookup of a name that is not
    there is answered ENOENT without asking the MDS (the kernel's lookup before each
    create: a stat round trip per file of a tar -x).

    A directory becomes known when this mount made it (mkdir: empty) or listed it whole
    (readdir); its name set is then kept a superset of the MDS's names: this mount adds
    the names it creates (create, mkdir, symlink, mknod, rename), and the event feed
    adds every name the MDS announces (commit, create, rename), from any client. Extra
    names are harmless (a name in the set is looked up at the MDS as before); only the
    absence of a name is answered from here. Staleness is bounded: a set is trusted for
    `ttl` seconds (the mount's attr timeout), then listed again (one `ls` page per 1,000
    names) at the next miss, so a name made elsewhere whose event was lost is seen
    within ttl, as a name removed elsewhere stays visible through the kernel's own
    cache for its entry timeout. A listing is installed only if nothing dropped the
    directory while it was being read (the `begin` token)."""

    MAX_NAMES = 1_000_000       # all sets together; over it, everything is forgotten

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._d: dict[str, tuple[float, set[str]]] = {}
        self._drops: dict[str, int] = {}
        self._seq = 0
        self._cleared = 0
        self._names = 0
        self._lock = threading.Lock()

    def begin(self, directory: str) -> int:
        """A token to pass to install() for a listing read from now on."""
        with self._lock:
            self._seq += 1
            return self._seq

    def install(self, directory: str, names: set[str], token: int) -> bool:
        if self.ttl <= 0:
            return False
        with self._lock:
            d = directory
            while True:                  # dropped (it or above) while it was read
                if self._drops.get(d, self._cleared) >= token:
                    return False
                if d == "/":
                    break
                d = parent_of(d)
            if self._names + len(names) > self.MAX_NAMES:
                self._clear()
            old = self._d.get(directory)
            self._names += len(names) - (len(old[1]) if old else 0)
            self._d[directory] = (time.monotonic() + self.ttl, set(names))
            return True

    def absent(self, path: str) -> bool | None:
        """True: `path` is surely not there; False: it may be (ask the MDS); None: its
        directory was known but the set is too old (list it again, then ask again)."""
        if path == "/" or len(path) > 4096:
            return False
        parent, name = parent_of(path), path.rsplit("/", 1)[1]
        if len(name.encode("utf-8", "surrogateescape")) > 255:
            return False                 # the MDS answers ENAMETOOLONG, not ENOENT
        hit = self._d.get(parent)
        if hit is None:
            return False
        if hit[0] < time.monotonic():
            return None
        return name not in hit[1]

    def add(self, path: str) -> None:
        """`path` exists now (made here, or announced by the MDS)."""
        parent, name = parent_of(path), path.rsplit("/", 1)[1]
        with self._lock:
            hit = self._d.get(parent)
            if hit is not None and name not in hit[1]:
                hit[1].add(name)
                self._names += 1

    def drop_below(self, path: str) -> None:
        """Forget `path` and every directory under it (removed or renamed)."""
        prefix = path.rstrip("/") + "/"
        with self._lock:
            self._seq += 1
            for d in [d for d in self._d if d == path or d.startswith(prefix)]:
                self._names -= len(self._d.pop(d)[1])
            self._drops[path] = self._seq
            if len(self._drops) > 100_000:
                self._drops.clear()
                self._cleared = self._seq

    def _clear(self) -> None:
        self._d.clear()
        self._names = 0
