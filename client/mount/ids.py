"""Owner and group names (the MDS's) <-> numeric uid/gid (the kernel's).

The mount's own AegisFS user is the daemon's uid and gid; other names map through the
local passwd/group databases, decimal names are taken as numbers, the rest is nobody.
"""
from __future__ import annotations

import grp
import os
import pwd
from typing import Any, Callable

NOBODY = 65534


class IdMap:
    """Both directions of the mapping, with a small memo (the databases are files)."""

    def __init__(self, user: str, uid: int | None = None, gid: int | None = None) -> None:
        self.user = user
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self._memo: dict[tuple[str, object], object] = {}

    def uid_of(self, name: str) -> int:
        return self._lookup("u", name, self.uid, pwd.getpwnam, lambda e: e.pw_uid)

    def gid_of(self, name: str) -> int:
        return self._lookup("g", name, self.gid, grp.getgrnam, lambda e: e.gr_gid)

    def user_name(self, uid: int) -> str:
        return self._name("un", uid, self.uid, pwd.getpwuid, lambda e: e.pw_name)

    def group_name(self, gid: int) -> str:
        return self._name("gn", gid, self.gid, grp.getgrgid, lambda e: e.gr_name)

    def _lookup(self, kind: str, name: str, own: int, db: Callable[[str], Any],
                field: Callable[[Any], int]) -> int:
        if name == self.user:
            return own
        key = (kind, name)
        if key not in self._memo:
            try:
                self._memo[key] = field(db(name))
            except KeyError:
                self._memo[key] = int(name) if name.isdigit() else NOBODY
        return self._memo[key]  # type: ignore[return-value]

    def _name(self, kind: str, num: int, own: int, db: Callable[[int], Any],
              field: Callable[[Any], str]) -> str:
        if num == own:
            return self.user
        key = (kind, num)
        if key not in self._memo:
            try:
                name = field(db(num))
            except KeyError:
                name = str(num)
            # a local name that is the mount's own AegisFS user would map back to `own`
            self._memo[key] = str(num) if name == self.user else name
        return self._memo[key]  # type: ignore[return-value]
