"""Namespace records that change attributes, not entries: chmod, chown, utimes, and the
quotas of directory trees (mds/treequota.py). A part of ``mds.namespace.Namespace`` (a
mixin: its methods run on the Namespace and use its tree, quotas and clock); the
record formats and the two-phase prepare/apply contract are in that module's docstring.
"""
from __future__ import annotations

import errno
from stat import S_ISGID
from typing import Mapping, cast

from mds import paths, perms
from mds.fields import check, error
from mds.inode import Dir
from mds.ns_state import NamespaceState
from mds.perms import Cred


class AttrRecords(NamespaceState):
    """chmod / chown / utimes and tree quotas, mixed into Namespace."""

    # ------------------------------------------------------------------ tree quotas

    def prepare_quota(self, path: str, max_bytes: int | None, max_files: int | None, *,
                      cred: Cred | None = None) -> dict:
        """Set (or, with both limits None, clear) the quota of directory ``path``: the
        superuser only (EPERM). A limit below the current usage is taken: the tree then
        only shrinks until it fits."""
        path = paths.normalize(path)
        if cred is not None and not cred.superuser:
            raise PermissionError(errno.EPERM, f"only {perms.SUPERUSER} may set or clear "
                                  "quotas", path)
        rec = {"op": "quota", "path": path, "bytes": max_bytes, "files": max_files}
        self._check_quota(rec)
        return rec

    def _check_quota(self, rec: Mapping) -> None:
        path = rec["path"]
        self.tree.canonical(path)
        for key in ("bytes", "files"):
            v = rec[key]
            check(v is None or (type(v) is int and 0 <= v < 1 << 63), path,
                  f"bad {key} limit {v!r}")
        if type(self.tree.node(path)[1]) is not Dir:
            raise error(errno.ENOTDIR, path, "quotas are set on directories")

    def _apply_quota(self, rec: Mapping) -> dict:
        node = cast(Dir, self.tree.node(rec["path"])[1])
        if rec["bytes"] is None and rec["files"] is None:
            self.quotas.drop(node)
        else:
            self.quotas.set(node, rec["path"], rec["bytes"], rec["files"])
        return {"path": rec["path"], "bytes": rec["bytes"], "files": rec["files"]}

    def quota_get(self, path: str, cred: Cred | None = None) -> list[dict]:
        """Every quota that applies to entries in directory ``path``: the enclosing trees'
        (root first) and its own. Needs read on ``path``."""
        path = paths.normalize(path)
        names, node = self.tree.node(path, cred)
        self.tree.need(cred, node, perms.R, path)
        quotas = self._quotas_over(names)
        own = self.quotas.by_dir.get(node) if type(node) is Dir else None
        return [q.row() for q in quotas + ([own] if own else [])]

    def quota_ls(self, cred: Cred | None = None) -> list[dict]:
        """All quotas on directories ``cred`` may reach and read, by path."""
        out = []
        for row in self.quotas.rows():
            try:
                _, node = self.tree.node(row["path"], cred)
            except OSError:
                continue
            if self.tree.may(cred, node, perms.R):
                out.append(row)
        return out

    # ------------------------------------------------------------------ chmod / chown

    def prepare_chmod(self, path: str, mode: int, *, cred: Cred | None = None) -> dict:
        """Owner or superuser (else EPERM). As Linux does, a caller outside the file's
        group cannot set its setgid bit: the bit is dropped, not refused."""
        path = paths.normalize(path)
        _, node = self.tree.node(path, cred)
        _, owner, group, _ = self.tree.attrs(node)
        who = perms.ROOT_CRED if cred is None else cred
        mode = perms.check_chmod(who, owner, mode, path)
        if not who.superuser and not who.in_group(group):
            mode &= ~S_ISGID
        rec = {"op": "chmod", "path": path, "mode": mode, "ctime": self._clock()}
        self.tree.check_attr(rec)
        return rec

    def prepare_chown(self, path: str, owner: str | None = None, group: str | None = None,
                      *, cred: Cred | None = None) -> dict:
        """Owner: superuser only; group: the owner to one of its groups, or the superuser
        (EPERM otherwise). Unchanged fields may be given or left out."""
        path = paths.normalize(path)
        _, node = self.tree.node(path, cred)
        _, old_owner, old_group, _ = self.tree.attrs(node)
        who = perms.ROOT_CRED if cred is None else cred
        new_owner, new_group = perms.check_chown(who, old_owner, old_group, owner, group, path)
        rec = {"op": "chown", "path": path, "owner": new_owner, "group": new_group,
               "ctime": self._clock()}
        self.tree.check_attr(rec)
        return rec

    def _apply_attr(self, rec: Mapping) -> dict:
        _, node = self.tree.node(rec["path"])
        mode, owner, group, _ = self.tree.attrs(node)
        if rec["op"] == "chmod":
            mode = mode & perms.KIND_BITS | rec["mode"]
        else:
            owner, group = rec["owner"], rec["group"]
        self.tree.set_attrs(node, mode, owner, group, rec["ctime"])
        return {"path": rec["path"], "type": "dir" if type(node) is Dir else "file",
                "mode": mode & perms.MODE_BITS, "owner": owner, "group": group}

    def prepare_utimes(self, path: str, mtime: float | None, *,
                       atime: float | None = None, keep_mtime: bool = False,
                       cred: Cred | None = None) -> dict:
        """utimensat: `mtime` None means now, unless `keep_mtime` (UTIME_OMIT: only the
        atime changes, and the ctime); `atime`: the access time to keep (None: not
        changed). A given time needs the owner or the superuser (EPERM); "now" also
        lets anyone with write permission (EACCES)."""
        path = paths.normalize(path)
        _, node = self.tree.node(path, cred)
        _, owner, _, _ = self.tree.attrs(node)
        now = self._clock()
        who = perms.ROOT_CRED if cred is None else cred
        if not who.superuser and who.user != owner:
            if (mtime is not None and not keep_mtime) or atime is not None:
                raise PermissionError(errno.EPERM, "Operation not permitted", path)
            self.tree.need(cred, node, perms.W, path)
        if keep_mtime:
            mtime = node.mtime if type(node) is Dir else node.header()[2]
        rec = {"op": "utimes", "path": path, "mtime": now if mtime is None else mtime,
               "ctime": now}
        if atime is None and mtime is None and not keep_mtime and (
                node in self.tree.dir_atimes if type(node) is Dir
                else node.id in self.tree.atimes):
            atime = now          # utimensat(NULL): both now, an atime kept apart too
        if atime is not None:
            rec["atime"] = atime
        self.tree.check_utimes(rec)
        return rec

    def _apply_utimes(self, rec: Mapping) -> dict:
        _, node = self.tree.node(rec["path"])
        self.tree.set_times(node, rec["mtime"], rec["ctime"])
        if "atime" in rec:
            self.tree.set_atime(node, rec["atime"])
        return {"path": rec["path"], "mtime": rec["mtime"]}
