"""Namespace records that make entries and files under construction: mkdir, create
(a draft), block pools, and the prepare side of the draft records mds/drafts.py checks
and applies (allocate, adopt, add_target, renew, abort). A part of
``mds.namespace.Namespace`` (a mixin: its methods run on the Namespace and use its tree,
drafts, quotas, clock and randomness); the record formats and the two-phase
prepare/apply contract are in that module's docstring.
"""
from __future__ import annotations

import errno
from typing import Mapping, Sequence

from mds import paths, perms
from mds.drafts import POOL_PATH
from mds.fields import check, error, is_time, nodes_arg
from mds.inode import BLOCK_ID_LEN, LEGACY_DIR_MODE, LEGACY_FILE_MODE, Dir, Draft, Inode
from mds.ns_state import NamespaceState
from mds.perms import Cred
from mds.tree import WX, checked

MAX_BLOCK_SIZE = 1 << 31
MAX_HANDLE_LEN = 128


class CreateRecords(NamespaceState):
    """mkdir, create, block pools and the draft records' prepare side, mixed into
    Namespace."""

    # ------------------------------------------------------------------ mkdir

    @staticmethod
    def _owner_fields(cred: Cred | None, mode: int | None, is_dir: bool,
                      kind: str | None = None, umask: int | None = None) -> dict:
        """A new entry belongs to its creator (the superuser when no cred is given) and
        its primary group; mode = requested (default 0o777 / 0o666) & ~umask, with the
        kind's S_IFMT bits for a file that is not regular (perms.FILE_KINDS)."""
        user = perms.SUPERUSER if cred is None else cred.user
        group = perms.SUPERUSER if cred is None else cred.group
        if mode is not None and not (type(mode) is int and 0 <= mode <= perms.MODE_BITS):
            raise error(errno.EINVAL, None, f"mode must be 0..0o{perms.MODE_BITS:o}")
        if kind is not None and kind not in perms.FILE_KINDS:
            raise error(errno.EINVAL, None, f"kind must be one of {sorted(perms.FILE_KINDS)}")
        bits = perms.FILE_KINDS[kind] if kind else 0
        mask = perms.DEFAULT_UMASK if umask is None else umask & 0o777
        return {"owner": user, "group": group,
                "mode": bits | perms.new_mode(mode, is_dir=is_dir, umask=mask)}

    def prepare_mkdir(self, path: str, *, parents: bool = False, cred: Cred | None = None,
                      mode: int | None = None, umask: int | None = None) -> dict:
        rec = {"op": "mkdir", "path": paths.normalize(path), "parents": bool(parents),
               "mtime": self._clock(), **self._owner_fields(cred, mode, True, umask=umask)}
        self._check_mkdir(rec, cred)
        return rec

    def _check_mkdir(self, rec: Mapping, cred: Cred | None = None) -> None:
        self.tree.check_mkdir(rec, cred)
        if self.quotas:
            names = paths.components(rec["path"])
            quotas, existing = self.quotas.over(self.tree.root, names)
            self.quotas.need(quotas, 0, len(names) - existing, rec["path"])

    def _apply_mkdir(self, rec: Mapping) -> dict:
        owner = rec.get("owner", perms.SUPERUSER)
        _, created = self.tree.mkdirs(paths.components(rec["path"]), rec["mtime"], owner,
                                      rec.get("group", owner),
                                      rec.get("mode", LEGACY_DIR_MODE))
        self.dirs += created
        if created and self.quotas:
            tq = self.quotas
            tq.charge(tq.over(self.tree.root, paths.components(rec["path"]))[0], 0, created)
        return {"path": rec["path"], "created": created}

    # ------------------------------------------------------------------ drafts

    def prepare_create(self, path: str, *, handle: str | None = None,
                       replication: int | None = None, block_size: int | None = None,
                       parents: bool = False, lease: float | None = None,
                       cred: Cred | None = None, mode: int | None = None,
                       kind: str | None = None, umask: int | None = None) -> dict:
        now = self._clock()
        rec = {"op": "create", "path": paths.normalize(path),
               "handle": handle if handle is not None else self._random(12).hex(),
               "replication": self.config.replication if replication is None else replication,
               "block_size": self.config.block_size if block_size is None else block_size,
               "parents": bool(parents),
               "lease": now + (self.config.lease if lease is None else lease), "mtime": now,
               **self._owner_fields(cred, mode, False, kind, umask)}
        self._check_create(rec, cred)
        return rec

    def _check_create(self, rec: Mapping, cred: Cred | None = None) -> None:
        path, handle = rec["path"], rec["handle"]
        names = self.tree.canonical(path)
        if not names:
            raise error(errno.EISDIR, path)
        repl, bsize = rec["replication"], rec["block_size"]
        check(type(repl) is int and 1 <= repl <= 255, path, "replication must be 1..255")
        check(type(bsize) is int and 1 <= bsize <= MAX_BLOCK_SIZE, path,
              f"block size must be 1..{MAX_BLOCK_SIZE}")
        check(isinstance(handle, str) and 0 < len(handle) <= MAX_HANDLE_LEN, handle,
              "bad draft handle")
        check(is_time(rec["lease"]) and is_time(rec["mtime"]), path, "bad lease or mtime")
        self.tree.check_owner_fields(rec, path)
        if handle in self.drafts.by_handle:
            raise error(errno.EEXIST, handle, "draft handle already in use")
        parent = self.tree.reach_parent(path, names, cred, rec["parents"])
        existing = None
        if parent is not None:
            existing = parent.children.get(names[-1])
            if type(existing) is Dir:
                raise error(errno.EISDIR, path)
            self._need_replace(cred, parent, existing, path, names)
        if self.quotas:     # refused early, as open(O_CREAT) is; commit checks again
            quotas, have = self.quotas.over(self.tree.root, names)
            made = len(names) - 1 - min(have, len(names) - 1)
            self.quotas.need(quotas, 0, made + (existing is None), path)

    def _need_replace(self, cred: Cred | None, parent: Dir, existing: Dir | Inode | None,
                      path: str, names: list[str]) -> None:
        """Putting a file at ``path``: write and search on the parent; replacing one
        also needs write on it (the O_TRUNC rule; commit re-checks both)."""
        if checked(cred):
            self.tree.need(cred, parent, WX, path, "/" + "/".join(names[:-1]))
            if existing is not None:
                self.tree.need(cred, existing, perms.W, path)

    def _apply_create(self, rec: Mapping) -> dict:
        names = paths.components(rec["path"])
        owner = rec.get("owner", perms.SUPERUSER)
        group = rec.get("group", owner)
        if rec["parents"]:
            made = self.tree.mkdirs(names[:-1], rec["mtime"], owner, group)[1]
            self.dirs += made
            if made and self.quotas:
                self.quotas.charge(self._quotas_over(names), 0, made)
        d = Draft(rec["handle"], rec["path"], self.next_inode, rec["replication"],
                  rec["block_size"], rec["lease"], rec["mtime"], owner, group,
                  rec.get("mode", LEGACY_FILE_MODE))
        self.next_inode += 1
        self.drafts.by_handle[d.handle] = d
        return {"handle": d.handle, "path": d.path, "inode": d.inode, "lease": d.lease}

    def _new_block_id(self, taken: set[bytes]) -> bytes:
        while True:
            bid = self._random(BLOCK_ID_LEN)
            if bid not in self.blockmap and bid not in taken:
                taken.add(bid)
                return bid

    def prepare_allocate(self, handle: str, targets: Sequence[Sequence[str]], *,
                         lease: float | None = None) -> dict:
        """One new block per entry of ``targets`` (the nodes chosen by placement)."""
        self.drafts.get(handle)
        taken: set[bytes] = set()
        try:
            blocks = [[self._new_block_id(taken), nodes_arg(t, handle, "targets")]
                      for t in targets]
        except TypeError:
            raise error(errno.EINVAL, handle, "targets must be lists of node ids") from None
        rec = {"op": "allocate", "handle": handle, "blocks": blocks,
               "lease": self._clock() + (self.config.lease if lease is None else lease)}
        self.drafts.check_allocate(rec)
        return rec

    def prepare_pool(self, *, replication: int | None = None, block_size: int | None = None,
                     cred: Cred | None = None, lease: float | None = None) -> dict:
        """A block pool: a draft with no path (it can never be committed), holding blocks
        a client allocated ahead of the files it will write (`adopt` moves them to a
        file's draft). Lease, renew, abort, expiry and allocation limits are a draft's."""
        now = self._clock()
        rec = {"op": "pool", "handle": self._random(12).hex(),
               "replication": self.config.replication if replication is None else replication,
               "block_size": self.config.block_size if block_size is None else block_size,
               "lease": now + (self.config.lease if lease is None else lease), "mtime": now,
               "owner": perms.SUPERUSER if cred is None else cred.user,
               "group": perms.SUPERUSER if cred is None else cred.group}
        self._check_pool(rec)
        return rec

    def _check_pool(self, rec: Mapping) -> None:
        handle = rec["handle"]
        check(isinstance(handle, str) and 0 < len(handle) <= MAX_HANDLE_LEN, handle,
              "bad pool handle")
        repl, bsize = rec["replication"], rec["block_size"]
        check(type(repl) is int and 1 <= repl <= 255, handle, "replication must be 1..255")
        check(type(bsize) is int and 1 <= bsize <= MAX_BLOCK_SIZE, handle,
              f"block size must be 1..{MAX_BLOCK_SIZE}")
        check(is_time(rec["lease"]) and is_time(rec["mtime"]), handle, "bad lease or mtime")
        check(isinstance(rec["owner"], str) and rec["owner"] != ""
              and isinstance(rec["group"], str) and rec["group"] != "", handle,
              "bad owner or group")
        if handle in self.drafts.by_handle:
            raise error(errno.EEXIST, handle, "draft handle already in use")

    def _apply_pool(self, rec: Mapping) -> dict:
        # inode 0: a pool never becomes a file, so it takes no inode number
        d = Draft(rec["handle"], POOL_PATH, 0, rec["replication"],
                  rec["block_size"], rec["lease"], rec["mtime"], rec["owner"], rec["group"],
                  LEGACY_FILE_MODE)
        self.drafts.by_handle[d.handle] = d
        return {"handle": d.handle, "lease": d.lease}

    def prepare_adopt(self, pool: str, handle: str, block_ids: Sequence[bytes]) -> dict:
        """Move blocks of block pool `pool` (with their targets) to draft `handle`."""
        rec = {"op": "adopt", "pool": pool, "handle": handle, "blocks": list(block_ids)}
        self.drafts.check_adopt(rec)
        return rec

    def prepare_add_target(self, handle: str, block_id: bytes, node: str) -> dict:
        """Record a replacement target of a draft's block, so that an abort, an expiry or
        a commit without it queues its copy there for deletion (no orphan left behind)."""
        rec = {"op": "add_target", "handle": handle, "block": block_id, "node": node}
        self.drafts.check_add_target(rec)
        return rec

    def prepare_renew(self, handle: str, *, lease: float | None = None) -> dict:
        rec = {"op": "renew", "handle": handle,
               "lease": self._clock() + (self.config.lease if lease is None else lease)}
        self.drafts.check_renew(rec)
        return rec

    def prepare_abort(self, handle: str, *, reason: str = "abort") -> dict:
        rec = {"op": "abort", "handle": handle, "reason": reason}
        self.drafts.check_abort(rec)
        return rec
