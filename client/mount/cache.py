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

    def drop_tree(self, path: str) -> None:
        with self._lock:
            prefix = path.rstrip("/") + "/"
            for p in [p for p in self._d if p == path or p.startswith(prefix)]:
                del self._d[p]
            self._d.pop(parent_of(path), None)


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"
