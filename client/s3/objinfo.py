"""What the gateway tells of an object besides its bytes: `ObjectInfo`, its ETag (the MD5
of what was written, or one derived from size and mtime) and the cache of recent sidecars.

Sidecar (/.s3meta/<bucket>/<key>): JSON {etag, size, mtime, content_type, meta}, written
after the object's commit with the committed mtime; a sidecar whose size/mtime do not
match the object (a crash between the two writes, a native `aegisfs put`) is ignored and
the object gets a derived ETag and binary/octet-stream (`object_info`).
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

DEFAULT_TYPE = "binary/octet-stream"


@dataclass
class ObjectInfo:
    key: str
    size: int
    mtime: float
    etag: str                       # without quotes
    content_type: str = DEFAULT_TYPE
    meta: dict[str, str] = field(default_factory=dict)
    # head()'s read_info of the file (block list and read capabilities): what read()
    # streams from, so that a GET costs one stat; None for listings and folder markers
    source: dict | None = field(default=None, repr=False, compare=False)


def _derived_etag(size: int, mtime: float) -> str:
    return hashlib.md5(f"{size}:{mtime!r}".encode()).hexdigest()


def object_info(key: str, entry: dict, side: dict | None) -> ObjectInfo:
    size, mtime = int(entry.get("size") or 0), float(entry.get("mtime") or 0)
    if side and side.get("size") == size and side.get("mtime") == mtime:
        return ObjectInfo(key, size, mtime, side["etag"],
                          side.get("content_type") or DEFAULT_TYPE, side.get("meta") or {})
    return ObjectInfo(key, size, mtime, _derived_etag(size, mtime))


class Sidecars:
    """Sidecars read recently, shared by the requests of one gateway: aws-cli fetches a
    big object as many ranged GETs, and each would read the same sidecar again (an MDS
    stat and a DataNode read). An entry is used only for the object version it
    describes (its size and mtime match the stat that the user's own request just made,
    as `object_info` checks any sidecar), so it is never staler than the file itself; entries
    live `ttl` seconds, at most `limit` of them."""

    def __init__(self, ttl: float = 10.0, limit: int = 4096,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.limit, self.now = ttl, limit, now
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[dict, float]] = {}

    def get(self, path: str, size: int, mtime: float) -> dict | None:
        with self._lock:
            hit = self._entries.get(path)
        if hit is None or hit[1] < self.now():
            return None
        side = hit[0]
        return side if side.get("size") == size and side.get("mtime") == mtime else None

    def put(self, path: str, side: dict) -> None:
        with self._lock:
            if len(self._entries) >= self.limit:
                self._entries.clear()
            self._entries[path] = (side, self.now() + self.ttl)

    def drop(self, path: str) -> None:
        with self._lock:
            self._entries.pop(path, None)


def write_hashed(f: Any, chunks: Iterable[bytes | memoryview], md5: Any) -> None:
    """Stream `chunks` into the open file `f`, feeding each to `md5` on the way."""
    for c in chunks:
        md5.update(c)
        f.write(c)
