"""The gateway's access keys: <keys-dir>/s3-credentials.json (mode 0600, in the 0700 keys
directory), {"version": 1, "keys": {access_key_id: {"secret": ..., "user": ...,
"created": epoch s}}}. Written atomically; the server re-reads it when it changes.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import string
import threading
import time
from pathlib import Path

from broker.keys import write_file_atomic

FILENAME = "s3-credentials.json"
_ALNUM = string.ascii_uppercase + string.digits


def default_keys_dir() -> Path:
    """$AEGISFS_KEYS_DIR, else ./data/keys (run_cluster.py's default data directory)."""
    return Path(os.environ.get("AEGISFS_KEYS_DIR") or "data/keys")


class Credentials:
    """Access key -> (secret, user), reloaded when the file's mtime changes."""

    def __init__(self, keys_dir: Path | str) -> None:
        self.path = Path(keys_dir) / FILENAME
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._keys: dict[str, dict] = {}

    def _load(self) -> dict[str, dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._keys = None, {}
            return self._keys
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            # secrets readable by others are as good as published: refuse to use them
            raise PermissionError(f"{self.path} is readable by group/others; chmod 600 it")
        mark = (st.st_mtime_ns, st.st_size)
        if mark != self._seen:
            data = json.loads(self.path.read_text())
            self._keys = dict(data.get("keys", {}))
            self._seen = mark
        return self._keys

    def lookup(self, access_key: str) -> tuple[str, str] | None:
        with self._lock:
            entry = self._load().get(access_key)
        return (entry["secret"], entry["user"]) if entry else None

    def for_user(self, user: str) -> tuple[str, str] | None:
        with self._lock:
            for key, entry in self._load().items():
                if entry["user"] == user:
                    return key, entry["secret"]
        return None

    def create(self, user: str) -> tuple[str, str]:
        """A new access key for `user`: (access_key_id, secret)."""
        with self._lock:
            keys = dict(self._load())
            access = "AK" + "".join(secrets.choice(_ALNUM) for _ in range(18))
            secret = secrets.token_urlsafe(30)
            keys[access] = {"secret": secret, "user": user, "created": int(time.time())}
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_file_atomic(self.path, json.dumps({"version": 1, "keys": keys},
                                                    indent=1).encode(), 0o600)
            self._seen = None
        return access, secret

    def get_or_create(self, user: str) -> tuple[str, str]:
        return self.for_user(user) or self.create(user)
