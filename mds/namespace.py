"""The in-memory namespace of the MDS: directories, committed files, drafts, the block
index and the deletion queue. Pure and deterministic: no I/O, no clock or randomness
inside ``apply``, so the write-ahead log can replay records through the same code.

Theory of operation
-------------------
Every mutation is a *record*: a plain dict with an ``op`` key and everything needed to
apply it (timestamps, random block ids, lease deadlines). It goes through two phases:

* ``prepare_<op>(...) -> record`` reads the injected clock/randomness, builds the record
  and validates it against the current state, raising a typed OSError; it never mutates.
  ``validate(record)`` runs the same checks on a record built elsewhere (e.g. a stale one).
* ``apply(record) -> result`` mutates. It must not fail for a record that validated
  against the same state; the WAL replays records through it.

Records (all paths normalised; ids are 16-byte ``bytes``; times are float seconds):
    mkdir        {path, parents, mtime, owner, group, mode}
    create       {path, handle, replication, block_size, parents, lease, mtime, owner,
                  group, mode}
    allocate     {handle, blocks: [[id, [node, ...]], ...], lease}
    add_target   {handle, block, node}         a replacement target (replace_target)
    pool         {handle, replication, block_size, lease, mtime, owner, group}
                                               a block pool: a draft without a path,
                                               never committed (mds/drafts.py)
    adopt        {pool, handle, blocks: [id, ...]}
                                               pool blocks (with their targets) move to
                                               draft `handle`
    commit       {handle, blocks: [[id, size, checksum, [node, ...]] | [id, size,
                  checksum], ...], mtime, exclusive?}
                                               a 3-entry block is an existing committed
                                               block the new file shares (size, checksum
                                               checked against the index)
    clone        {src, dst, inode, mtime, owner, group, mode, exclusive?}
                                               a server-side copy: dst gets src's block
                                               list (inode: src's, checked), no bytes move
    abort        {handle, reason}              reason: "abort" | "expired"
    renew        {handle, lease}
    rm           {path, recursive, mtime}
    rename       {src, dst, mtime}             exact target; see resolve_move()
    chmod        {path, mode, ctime}
    chown        {path, owner, group, ctime}   both final (unchanged ones repeated)
    utimes       {path, mtime, ctime}          utimensat (atime is not kept)
    set_replicas {block, replicas}
    queue_delete {node, blocks}                orphans found by block reports
    ack_delete   {node, blocks}                a DataNode confirmed these deletions
    quota        {path, bytes, files}          limits of a directory tree (None: no limit;
                                               both None: cleared); mds/treequota.py
    once         {id, wall, records, answer}   a client operation's records and answer
                                               (mds/opids.py; ``opids`` keeps the answers)

apply() results: mkdir {path, created}; create {handle, path, inode, lease}; allocate
{handle, lease, blocks: [{id, targets}]}; commit {path, inode, size, blocks, replaced};
abort {handle, path, blocks}; renew {handle, lease}; rm {path, files, dirs, bytes};
rename {src, dst, replaced}; clone {path, inode, size, blocks, replaced}; chmod/chown {path, type, mode, owner, group}; set_replicas {block, replicas}; queue_delete {node, queued};
ack_delete {node, acked}.

Semantics worth knowing: a draft keeps the path it was created with (a rename or rm of
its parent makes its commit fail ENOENT); several drafts may target one path and the
last commit wins; every block of a commit of new blocks only but the last must be
exactly block_size (a commit that shares blocks may mix sizes: readers use each block's
size); blocks whose last reference goes with a replaced/removed file, blocks of
aborted/expired drafts, targets that did not end up as replicas, and replicas dropped
by set_replicas all go to ``pending_deletes``. Shared blocks: mds/blockmap.py.

Owners and permissions (mds/perms.py): mkdir and create records carry the new entry's
owner, group and mode (requested & ~umask); records written before owners existed lack
them and mean the superuser's, 0o755 for directories, 0o644 for files. Permission checks
belong to the caller, so they run in ``prepare_*`` when a ``cred`` is given (EACCES, or
EPERM for chmod/chown, naming the path) and never in ``validate``/``apply``: a record in
the log was authorised when it was made, and replay must not depend on who made it.
Rules: search on every ancestor for any lookup; read on a directory to list it and on a
file for its block list (``file_info``); write and search on the parent to create,
commit, remove or rename (both parents), with the sticky-bit rule; a commit that
replaces a file also needs write on that file (like an O_TRUNC open) and keeps its
owner, group and mode; only the draft's creator may commit it.

Tree quotas (mds/treequota.py): mkdir, create, commit, clone and rename refuse with
EDQUOT in their checks (so in ``validate`` too: a quota is state, not a caller's right)
when an enclosing tree's limit would be passed; the apply of every record that adds or
removes entries or bytes charges the quotas over it; a snapshot keeps the limits and
``finish_restore`` counts each quota's tree once.

Reads (never mutate): stat, ls, du, quota_get, quota_ls, file_info, may_read, block_info, draft_info, draft_handles,
deletes_for, iter_files, iter_blocks, counts, dump (canonical form, for equality tests).
``expire_drafts(now)`` returns abort records for drafts whose lease passed.

Errors are OSError subclasses with errno and the path (or draft handle) as filename:
ENOENT FileNotFoundError, EEXIST FileExistsError, ENOTDIR NotADirectoryError, EISDIR
IsADirectoryError, ENOTEMPTY and EINVAL plain OSError.

Layout: the tree (mds/tree.py: paths -> Dir and Inode nodes, the mkdir/rm/rename
checks), the drafts (mds/drafts.py: allocate/add_target/renew/abort), the block index and
deletion queue (mds/blockmap.py: set_replicas/queue_delete/ack_delete), the packed nodes
(mds/inode.py, which states the memory budget: ~393 MiB RSS for 1M one-block files) and
the record field checks (mds/fields.py). This class joins them: create, commit, rm and
rename, the counters, the dispatch table; it is the only public door. Three parts of it
live in modules of their own, mixed in: chmod/chown/utimes and tree quotas
(mds/ns_attrs.py), clone and the shared-block checks of commit (mds/ns_clone.py), and the
plain-data export and restore for checkpoints (mds/ns_restore.py).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, cast

from mds import paths, perms
from mds.blockmap import BlockMap
from mds.drafts import POOL_PATH, Drafts
from mds.fields import check, error, is_node_list, is_time, nodes_arg
from mds.opids import OpResults, apply_once, check_once
from mds.inode import (BIG_FILE_BLOCKS, BLK, BLOCK_ID_LEN, HDR, LEGACY_DIR_MODE,
                       LEGACY_FILE_MODE, Dir, Draft, Inode)
from mds.ns_attrs import AttrRecords
from mds.ns_clone import SharedBlockRecords
from mds.ns_restore import SnapshotState
from mds.perms import Cred
from mds.tree import WX, Tree, checked
from mds.treequota import TreeQuota, TreeQuotas, usage_of

__all__ = ["BIG_FILE_BLOCKS", "Inode", "MAX_BLOCK_SIZE", "MAX_HANDLE_LEN", "Namespace",
           "NamespaceConfig"]

log = logging.getLogger(__name__)

MAX_BLOCK_SIZE = 1 << 31
NO_SHARED: frozenset[int] = frozenset()
MAX_HANDLE_LEN = 128


@dataclass(frozen=True)
class NamespaceConfig:
    """Defaults applied by ``prepare_create``/``allocate``; not part of the state."""
    replication: int = 2
    block_size: int = 4 * 1024 * 1024
    lease: float = 60.0


class Namespace(AttrRecords, SharedBlockRecords, SnapshotState):
    def __init__(self, config: NamespaceConfig = NamespaceConfig(), *,
                 clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._clock = clock
        self._random = random_bytes
        self.tree = Tree()
        self.blockmap = BlockMap()
        self.drafts = Drafts(self.blockmap)
        self.next_inode = 1
        self.opids = OpResults()   # answers of recent client operations (mds/opids.py)
        self.files = self.dirs = self.blocks = self.bytes = 0
        self.quotas = TreeQuotas()            # per-tree limits (mds/treequota.py)
        self._restored_quotas: Sequence = ()
        t, b, d = self.tree, self.blockmap, self.drafts
        self._ops = {
            "mkdir": (self._check_mkdir, self._apply_mkdir),
            "create": (self._check_create, self._apply_create),
            "pool": (self._check_pool, self._apply_pool),
            "adopt": (d.check_adopt, d.apply_adopt),
            "allocate": (d.check_allocate, d.apply_allocate),
            "add_target": (d.check_add_target, d.apply_add_target),
            "commit": (self._check_commit, self._apply_commit),
            "clone": (self._check_clone, self._apply_clone),
            "abort": (d.check_abort, d.apply_abort),
            "renew": (d.check_renew, d.apply_renew),
            "rm": (t.check_rm, self._apply_rm),
            "rename": (self._check_rename, self._apply_rename),
            "quota": (self._check_quota, self._apply_quota),
            "chmod": (t.check_attr, self._apply_attr),
            "chown": (t.check_attr, self._apply_attr),
            "utimes": (t.check_utimes, self._apply_utimes),
            "set_replicas": (b.check_set_replicas, b.apply_set_replicas),
            "queue_delete": (b.check_queue_delete, b.apply_queue_delete),
            "ack_delete": (b.check_ack_delete, b.apply_ack_delete),
            "once": (check_once, lambda rec: apply_once(self, rec)),
        }

    @property
    def pending_deletes(self) -> dict[str, dict[bytes, int]]:
        """node -> block id -> queue number, oldest first (see mds/blockmap.py)."""
        return self.blockmap.pending_deletes

    @property
    def delete_seq(self) -> int:
        """The number of the last delete queued."""
        return self.blockmap.delete_seq

    # ------------------------------------------------------------------ dispatch

    def validate(self, record: Mapping[str, Any]) -> None:
        """Raise the typed OSError ``apply`` would hit; never mutates."""
        op = record.get("op") if isinstance(record, Mapping) else None
        handlers = self._ops.get(op) if isinstance(op, str) else None
        if handlers is None:
            raise error(errno.EINVAL, None, f"unknown record op {op!r}"
                        if isinstance(record, Mapping) else "record is not a mapping")
        try:
            handlers[0](record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # a hand-built or damaged record: refuse it before apply can trip on it
            raise error(errno.EINVAL, None, f"malformed {record['op']} record: {exc!r}") from None

    def apply(self, record: Mapping[str, Any]) -> dict:
        """Mutate the namespace; must only be given records that validated."""
        return self._ops[record["op"]][1](record)

    # ------------------------------------------------------------------ reads

    def stat(self, path: str, cred: Cred | None = None) -> dict:
        return self.tree.stat(path, cred)

    def ls(self, path: str, *, start_after: str | None = None,
           limit: int | None = None, cred: Cred | None = None) -> list[dict]:
        """Entries of a directory sorted by name (or the file itself); pageable."""
        return self.tree.ls(path, start_after=start_after, limit=limit, cred=cred)

    def du(self, path: str, cred: Cred | None = None) -> dict:
        """Total committed bytes, files and directories under a path (inclusive)."""
        return self.tree.du(path, cred)

    def may_read(self, path: str, cred: Cred | None) -> bool:
        """Whether ``cred`` may read the entry at ``path`` (which it can already reach)."""
        return self.tree.may(cred, self.tree.node(paths.normalize(path))[1], perms.R)

    def iter_files(self, path: str = "/") -> Iterator[tuple[str, dict]]:
        """(path, stat) of every committed file under ``path``, depth first."""
        return self.tree.iter_files(path)

    def resolve_move(self, src: str, dst: str) -> str:
        """``mv src dst`` semantics: into ``dst`` when it is an existing directory."""
        return self.tree.resolve_move(src, dst)

    def file_info(self, path: str, cred: Cred | None = None) -> dict:
        """What a reader needs: stat plus each block's id, size, checksum, replicas.
        The read path: ``cred`` needs read permission on the file."""
        info = self.tree.stat(path, cred)
        _, node = self.tree.node(info["path"])
        if type(node) is Dir:
            raise error(errno.EISDIR, info["path"])
        self.tree.need(cred, node, perms.R, info["path"])
        info["blocks"] = self.blockmap.blocks_of(node)
        return info

    def block_info(self, bid: bytes) -> dict | None:
        """Where a block belongs, or None for an unknown (orphan) id."""
        return self.blockmap.block_info(bid)

    def deletes_for(self, node: str, limit: int | None = None,
                    max_seq: int | None = None) -> list[bytes]:
        """Block ids ``node`` should delete, oldest first: at most ``limit``, and only those
        queued as number ``max_seq`` or earlier. Read-only: removal is an ack_delete record."""
        return self.blockmap.deletes_for(node, limit, max_seq)

    def is_pending_delete(self, node: str, bid: bytes) -> bool:
        return self.blockmap.is_pending_delete(node, bid)

    def _quotas_over(self, names: Sequence[str]) -> list[TreeQuota]:
        """The tree quotas an entry at ``names`` counts against, the root's first."""
        return self.quotas.over(self.tree.root, names)[0]

    def iter_blocks(self) -> Iterator[tuple[bytes, tuple[str, ...], int]]:
        """(block id, replicas, wanted replication) of every committed block."""
        return self.blockmap.iter_blocks()

    def replica_nodes(self) -> set[str]:
        """Every node named in a replica set ever used (cheap: the interned table)."""
        return self.blockmap.replica_nodes()

    def draft_info(self, handle: str) -> dict:
        return self.drafts.info(handle)

    def draft_handles(self) -> list[str]:
        """The files under construction (block pools are not: see pool_handles)."""
        return sorted(h for h, d in self.drafts.by_handle.items() if d.path != POOL_PATH)

    def pool_handles(self) -> list[str]:
        return sorted(h for h, d in self.drafts.by_handle.items() if d.path == POOL_PATH)

    def counts(self) -> dict:
        pools = sum(1 for d in self.drafts.by_handle.values() if d.path == POOL_PATH)
        return {"files": self.files, "dirs": self.dirs, "blocks": self.blocks,
                "bytes": self.bytes, "drafts": len(self.drafts.by_handle) - pools,
                "pending_deletes": self.blockmap.pending_count(),
                **({"pools": pools} if pools else {})}   # dumps without pools stay equal

    def expire_drafts(self, now: float) -> list[dict]:
        """Abort records for drafts whose lease deadline is at or before ``now``."""
        return self.drafts.expired(now)

    def dump(self) -> dict:
        """Canonical plain-data form of the whole state; equal states dump equal."""
        root, attrs = self.tree.root, self.tree.attrs
        dirs, files = {"/": (root.mtime, *attrs(root))}, {}
        stack: list[tuple[str, Dir]] = [("/", root)]
        while stack:
            p, d = stack.pop()
            for name, child in d.children.items():
                cp = paths.join(p, name)
                if type(child) is Dir:
                    dirs[cp] = (child.mtime, *attrs(child))
                    stack.append((cp, child))
                else:
                    ino, size, mtime, repl, bsize = child.header()
                    mode, owner, group, ctime = attrs(child)
                    files[cp] = {"inode": ino, "size": size, "mtime": mtime,
                                 "replication": repl, "block_size": bsize, "mode": mode,
                                 "owner": owner, "group": group, "ctime": ctime,
                                 "blocks": [(b["id"], b["size"], b["checksum"],
                                             tuple(b["replicas"]))
                                            for b in self.blockmap.blocks_of(child)]}
        drafts = {h: d.to_list() for h, d in self.drafts.by_handle.items()}
        shared = {bid: len(held) for bid, held in self.blockmap.owners.items()
                  if type(held) is tuple}
        out = {"dirs": dirs, "files": files, "drafts": drafts, "next_inode": self.next_inode,
               "shared": shared,
               "pending_deletes": {n: sorted(s) for n, s in self.pending_deletes.items() if s},
               "counts": self.counts()}
        if self.quotas:     # only then: dumps of states from before quotas stay equal
            out["quotas"] = self.quotas.rows()
        return out

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

    # ------------------------------------------------------------------ commit

    def prepare_commit(self, handle: str, blocks: Sequence[Mapping[str, Any]], *,
                       exclusive: bool = False, cred: Cred | None = None) -> dict:
        """``blocks``: [{"id", "size", "checksum", "replicas"}] in file order. With
        ``exclusive`` the commit fails EEXIST if anything exists at the path by then
        (O_EXCL, fsspec's "xb", S3's If-None-Match: *). ``cred`` must be the draft's
        creator and may still put a file at its path: the parent may have changed since
        create."""
        sources = False
        try:
            entries = []
            for b in blocks:
                if b.get("from") is None:
                    entries.append([b["id"], b["size"], b["checksum"],
                                    nodes_arg(b["replicas"], handle, "replicas")])
                else:
                    entries.append([b["id"], b["size"], b["checksum"]])
                    sources = True
        except (KeyError, TypeError, AttributeError):
            raise error(errno.EINVAL, handle, "blocks must be mappings with id, size, "
                        "checksum and replicas (or from)") from None
        rec = {"op": "commit", "handle": handle, "blocks": entries, "mtime": self._clock()}
        if exclusive:
            rec["exclusive"] = True
        self._check_commit(rec)
        if sources:
            self._check_sources(handle, blocks, cred)
        if checked(cred):
            d = self.drafts.get(handle)
            if cred.user != d.owner:
                raise error(errno.EACCES, d.path, f"the draft belongs to {d.owner}, "
                                                  f"not {cred.user}")
            names = paths.components(d.path)
            parent = self.tree.walk_parent(d.path, names, cred=cred)
            self._need_replace(cred, parent, parent.children.get(names[-1]), d.path, names)
        return rec

    def _check_commit(self, rec: Mapping) -> None:
        d = self.drafts.get(rec["handle"])
        path, blocks = d.path, rec["blocks"]
        check(path != POOL_PATH, d.handle, "a block pool is not a file: it cannot be committed")
        check(isinstance(blocks, list), path, "blocks must be a list")
        check(is_time(rec["mtime"]), path, "bad mtime")
        mine, seen = set(d.bids), set()
        mixed = None      # whether the file shares blocks: looked up only when it matters
        for i, entry in enumerate(blocks):
            check(isinstance(entry, (list, tuple)) and len(entry) in (3, 4), path,
                  "bad block entry")
            if len(entry) == 3:
                self._check_shared_block(path, i, *entry)
                continue
            bid, size, crc, nodes = entry
            check(bid in mine, path, f"block {i} was not allocated to this draft")
            check(bid not in seen, path, f"block {i} listed twice")
            seen.add(bid)
            last = i == len(blocks) - 1
            # full blocks except the last keep offset -> block a division for readers;
            # a file that shares blocks mixes sizes anyway and readers use the sizes
            if not (type(size) is int and (0 < size <= d.block_size if last
                                           else size == d.block_size)):
                if mixed is None:
                    mixed = any(isinstance(e, (list, tuple)) and len(e) == 3 for e in blocks)
                check(mixed and type(size) is int and 0 < size <= d.block_size, path,
                      f"block {i}: size must be the block size except for the last block")
            check(type(crc) is int and 0 <= crc < 1 << 32, path, f"block {i}: bad checksum")
            check(is_node_list(nodes), path, f"block {i}: replicas must be distinct node ids")
        names = paths.components(path)
        self._check_new_file(path, names, sum(e[1] for e in blocks), rec.get("exclusive"))

    def _apply_commit(self, rec: Mapping) -> dict:
        d = self.drafts.by_handle.pop(rec["handle"])
        bm = self.blockmap
        # reuse the id objects already keyed in the index: one bytes object per block
        where = {bid: i for i, bid in enumerate(d.bids)}
        size, bids, parts = 0, cast("list[bytes]", []), [b""]
        shared = []
        for entry in rec["blocks"]:
            if len(entry) == 3:   # a committed block this file shares: its replica set
                holder, j = cast("tuple[Inode, int]", bm.locate(entry[0]))
                bsize, crc, rs = holder.block(j)
                shared.append(len(bids))
                bids.append(holder.bids[j])
                parts.append(BLK.pack(bsize, crc, rs))
                size += bsize
                continue
            bid, bsize, crc, nodes = entry
            i = where.pop(bid)
            bid = d.bids[i]
            bids.append(bid)
            for node in d.targets[i]:
                if node not in nodes:
                    bm.queue(node, bid)
            parts.append(BLK.pack(bsize, crc, bm.rsets.intern(nodes)))
            size += bsize
        for bid, i in where.items():  # allocated but not committed: garbage
            bm.release_block(bid, d.targets[i])
        names = self.tree.names
        parts[0] = HDR.pack(d.inode, size, rec["mtime"], d.replication, d.block_size,
                            d.mode, names.intern(d.owner), names.intern(d.group),
                            rec["mtime"])
        inode = Inode(b"".join(parts), tuple(bids))
        # referenced before the file it replaces is released: a new version that shares
        # blocks with the old one (copy-on-write) keeps them
        bm.add_file(inode, frozenset(shared) if shared else NO_SHARED)
        old = self.tree.attach(d.path, inode, rec["mtime"])
        if type(old) is Inode:   # replacing a file keeps its owner, group and mode
            mode, uid, gid, _ = old.attrs()
            mode = mode & perms.MODE_BITS | d.mode & perms.KIND_BITS   # the new kind
            inode.meta = inode.with_attrs(mode, uid, gid, rec["mtime"])
        if old is not None:
            # a file: _check_commit refused a directory at the path (EISDIR)
            self._release_file(cast(Inode, old))
        self._charge_file(d.path, size, old)
        self.files += 1
        self.blocks += len(bids)
        self.bytes += size
        return {"path": d.path, "inode": d.inode, "size": size, "blocks": len(bids),
                "replaced": old is not None}

    def _check_new_file(self, path: str, names: list[str], size: int,
                        exclusive: Any) -> None:
        """A file of `size` bytes may appear at `path` (a commit's or a clone's target):
        not over a directory (EISDIR), not over anything when `exclusive` (EEXIST), within
        the tree quotas above it counting the file it replaces (EDQUOT)."""
        existing = self.tree.walk_parent(path, names).children.get(names[-1])
        if type(existing) is Dir:
            raise error(errno.EISDIR, path)
        if existing is not None and exclusive:
            raise error(errno.EEXIST, path)
        if self.quotas:
            old = existing.size if existing is not None else 0
            self.quotas.need(self._quotas_over(names), size - old, existing is None, path)

    def _charge_file(self, path: str, size: int, old: Dir | Inode | None) -> None:
        """A committed or copied file of ``size`` bytes at ``path``, replacing ``old``."""
        if self.quotas:
            quotas = self._quotas_over(paths.components(path))
            self.quotas.charge(quotas, size - (old.size if type(old) is Inode else 0),
                               old is None)

    def _release_file(self, node: Inode) -> None:
        """Forget a committed file; its blocks go to the deletion queue."""
        self.blockmap.release_file(node)
        self.files -= 1
        self.blocks -= len(node.bids)
        self.bytes -= node.size

    def _release_tree(self, node: Dir | Inode) -> tuple[int, int]:
        files = dirs = 0
        stack = [node]
        while stack:
            node = stack.pop()
            if type(node) is Dir:
                dirs += 1
                stack.extend(node.children.values())
                if self.quotas:
                    self.quotas.drop(node)
            else:
                files += 1
                self._release_file(node)
        self.dirs -= dirs
        return files, dirs

    # ------------------------------------------------------------------ rm / rename

    def prepare_rm(self, path: str, *, recursive: bool = False,
                   cred: Cred | None = None) -> dict:
        rec = {"op": "rm", "path": paths.normalize(path), "recursive": bool(recursive),
               "mtime": self._clock()}
        self.tree.check_rm(rec, cred)
        return rec

    def _apply_rm(self, rec: Mapping) -> dict:
        quotas = (self._quotas_over(paths.components(rec["path"]))
                  if self.quotas else [])
        node = self.tree.detach(rec["path"], rec["mtime"])
        nbytes = self.bytes
        files, dirs = self._release_tree(node)
        self.quotas.charge(quotas, self.bytes - nbytes, -files - dirs)
        return {"path": rec["path"], "files": files, "dirs": dirs, "bytes": nbytes - self.bytes}

    def prepare_rename(self, src: str, dst: str, *, cred: Cred | None = None) -> dict:
        """Exact rename (``dst`` is the new path); use resolve_move() for ``mv`` into dirs."""
        rec = {"op": "rename", "src": paths.normalize(src), "dst": paths.normalize(dst),
               "mtime": self._clock()}
        self._check_rename(rec, cred)
        return rec

    def _check_rename(self, rec: Mapping, cred: Cred | None = None) -> None:
        self.tree.check_rename(rec, cred)
        if self.quotas and rec["src"] != rec["dst"]:
            _, entering, _, moved, target = self._rename_quotas(rec["src"], rec["dst"])
            self.quotas.need(entering, moved[0] - target[0], moved[1] - target[1],
                             rec["dst"])

    def _rename_quotas(self, src: str, dst: str) -> tuple[list, list, list, tuple[int, int],
                                                          tuple[int, int]]:
        """A rename's effect on quotas: those it leaves and enters (the moved tree's usage
        goes from the one to the other: a walk, only when there are such), every quota
        over ``dst`` (the entry replaced there, if any, leaves them), and the usages of
        the moved tree and of the replaced entry."""
        at_src = self._quotas_over(paths.components(src))
        at_dst = self._quotas_over(paths.components(dst))
        leaving = [q for q in at_src if not any(q is d for d in at_dst)]
        entering = [q for q in at_dst if not any(q is s for s in at_src)]
        moved = (usage_of(self.tree.node(src)[1]) if leaving or entering else (0, 0))
        try:
            target = usage_of(self.tree.node(dst)[1])   # a file or an empty directory
        except (FileNotFoundError, NotADirectoryError):
            target = (0, 0)
        return leaving, entering, at_dst, moved, target

    def _apply_rename(self, rec: Mapping) -> dict:
        src, dst = rec["src"], rec["dst"]
        if src == dst:
            return {"src": src, "dst": dst, "replaced": False}
        moves = self._rename_quotas(src, dst) if self.quotas else None
        node = self.tree.detach(src, rec["mtime"])
        self.tree.touch(node, rec["mtime"])
        old = self.tree.attach(dst, node, rec["mtime"])
        if old is not None:
            self._release_tree(old)
        if moves is not None:
            leaving, entering, at_dst, moved, target = moves
            charge = self.quotas.charge
            charge(leaving, -moved[0], -moved[1])
            charge(entering, moved[0], moved[1])
            charge(at_dst, -target[0], -target[1])
            if type(node) is Dir:
                self.quotas.repath(src, dst)
        return {"src": src, "dst": dst, "replaced": old is not None}

    # ------------------------------------------------------------------ blocks

    def prepare_set_replicas(self, block_id: bytes, replicas: Sequence[str]) -> dict:
        rec = {"op": "set_replicas", "block": block_id,
               "replicas": nodes_arg(replicas, None, "replicas")}
        self.blockmap.check_set_replicas(rec)
        return rec

    def prepare_queue_delete(self, node: str, block_ids: Sequence[bytes]) -> dict:
        """Queue orphans for deletion; blocks live on ``node`` are left out."""
        live_on = self.blockmap.live_on
        rec = {"op": "queue_delete", "node": node,
               "blocks": [b for b in dict.fromkeys(block_ids) if not live_on(b, node)]}
        self.blockmap.check_queue_delete(rec)
        return rec

    def prepare_ack_delete(self, node: str, block_ids: Sequence[bytes]) -> dict:
        rec = {"op": "ack_delete", "node": node, "blocks": list(block_ids)}
        self.blockmap.check_ack_delete(rec)
        return rec
