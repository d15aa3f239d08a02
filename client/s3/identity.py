"""Who the gateway is towards the cluster for each S3 user: one AegisClient per user,
connected with that user's own CURVE key (<keys-dir>/users/<name>.key_secret), so the MDS
checks that user's POSIX permissions as for any client. Pooled; closed when idle.

Public: `UserClients(keys_dir, make, idle=, now=)`, `.lease(user)` (a context manager
giving the user's client), `.close()`.
"""
from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..api import AegisClient
from .errors import S3Error

log = logging.getLogger(__name__)

IDLE = 120.0        # seconds a user's connection stays open with no request
# the user name comes from the credentials file; it becomes a path here, so it must be
# exactly a user name of broker/keys.py (no "/", no "..")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass
class _Entry:
    client: AegisClient
    leases: int = 0
    used: float = 0.0


class UserClients:
    """`make(key_file)` opens a client for one user's key file (a seam for tests)."""

    def __init__(self, keys_dir: Path | str, make: Callable[[Path], AegisClient], *,
                 idle: float = IDLE, now: Callable[[], float] = time.monotonic) -> None:
        self.keys_dir = Path(keys_dir)
        self.make = make
        self.idle = idle
        self.now = now
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def key_file(self, user: str) -> Path:
        if not _USER.fullmatch(user):
            raise S3Error("AccessDenied", f"{user!r} is not an AegisFS user name")
        path = self.keys_dir / "users" / f"{user}.key_secret"
        if not path.is_file():
            raise S3Error("AccessDenied", f"the access key maps to user {user!r}, who has no "
                          f"AegisFS key ({path}): create it with `aegisfs user add {user}`")
        return path

    @contextlib.contextmanager
    def lease(self, user: str) -> Iterator[AegisClient]:
        """The user's client for the length of one request (never closed meanwhile)."""
        idle = self._sweep()
        for c in idle:
            c.close()
        with self._lock:
            entry = self._entries.get(user)
        if entry is None:
            made = self.make(self.key_file(user))
            with self._lock:
                entry = self._entries.setdefault(user, _Entry(made))
            if entry.client is not made:   # another request made one first: keep that one
                made.close()
        with self._lock:
            entry.leases += 1
        try:
            yield entry.client
        finally:
            with self._lock:
                entry.leases -= 1
                entry.used = self.now()

    def _sweep(self) -> list[AegisClient]:
        """Drop the connections idle for longer than `idle`; returns them to close
        (outside the lock: closing sockets may take a moment)."""
        now = self.now()
        with self._lock:
            idle = [u for u, e in self._entries.items()
                    if e.leases == 0 and e.used and now - e.used > self.idle]
            gone = [self._entries.pop(u).client for u in idle]
        if gone:
            log.debug("closing %d idle user connection(s)", len(gone))
        return gone

    def open_users(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for e in entries:
            e.client.close()
