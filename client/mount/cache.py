"""The mount's attribute cache: path -> attributes for a short time (attr_timeout), so an
`ls -l` after a readdir costs no stat per entry; every change through the mount drops
the paths it touched (and their parent)."""
from __future__ import annotations

import threading
import time


class AttrCache:
    """path -> (deadline, attrs); short-lived, dropped on every change through us."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._d: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> dict | None:
        hit = self._d.get(path)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, path: str, attrs: dict) -> None:
        if self.ttl > 0:
            with self._lock:
                if len(self._d) > 200_000:
                    self._d.clear()
                self._d[path] = (time.monotonic() + self.ttl, attrs)

    def drop(self, *paths: str) -> None:
        with self._lock:
            for p in paths:
                self._d.pop(p, None)
                self._d.pop(parent_of(p), None)

    def drop_entry(self, path: str) -> None:
        """Drop one path, not its parent (a change that leaves the directory as it is)."""
        with self._lock:
            self._d.pop(path, None)

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
