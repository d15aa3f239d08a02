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
    clone        {src, dst, inode, version?, mtime, owner, group, mode, exclusive?}
                                               a server-side copy: dst gets src's block
                                               list (inode, version: src's, checked;
                                               mds/ns_clone.version_of), no bytes move
    abort        {handle, reason}              reason: "abort" | "expired"
    renew        {handle, lease}
    rm           {path, recursive, mtime}
    rename       {src, dst, mtime}             exact target; see resolve_move()
    link         {src, dst, mtime}             a hard link: dst is another name of file
                                               src (mds/ns_link.py)
    exchange     {a, b, mtime}                 RENAME_EXCHANGE: a and b trade places
    chmod        {path, mode, ctime}
    chown        {path, owner, group, ctime}   both final (unchanged ones repeated)
    utimes       {path, mtime, ctime, atime?}  utimensat (atime: Tree.atimes, dir_atimes)
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
rename {src, dst, replaced}; link {src, dst, nlink, inode}; exchange {a, b}; clone {path,
inode, size, blocks, replaced}; chmod/chown {path, type, mode, owner, group}; set_replicas {block,
replicas}; queue_delete {node, queued};
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
the record field checks (mds/fields.py). This class joins them: the dispatch table, the
reads, the counters; it is the only public door. Its records live in modules of their
own, mixed in: mkdir, create, block pools and the draft records' prepare side
(mds/ns_create.py), commit (mds/ns_commit.py), rm, rename and the release of files
(mds/ns_remove.py), hard links (mds/ns_link.py), chmod/chown/utimes and tree quotas
(mds/ns_attrs.py), clone and the
shared-block checks of commit (mds/ns_clone.py), and the plain-data export and restore
for checkpoints (mds/ns_restore.py).
"""
from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from mds import paths, perms
from mds.blockmap import BlockMap
from mds.drafts import POOL_PATH, Drafts
from mds.fields import error, nodes_arg
from mds.opids import OpResults, apply_once, check_once
from mds.inode import BIG_FILE_BLOCKS, Dir, Inode
from mds.ns_attrs import AttrRecords
from mds.ns_clone import SharedBlockRecords
from mds.ns_commit import CommitRecords
from mds.ns_create import MAX_BLOCK_SIZE, MAX_HANDLE_LEN, CreateRecords
from mds.ns_link import LinkRecords
from mds.ns_remove import RemoveRecords
from mds.ns_restore import SnapshotState
from mds.perms import Cred
from mds.tree import Tree
from mds.treequota import TreeQuota, TreeQuotas

__all__ = ["BIG_FILE_BLOCKS", "Inode", "MAX_BLOCK_SIZE", "MAX_HANDLE_LEN", "Namespace",
           "NamespaceConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NamespaceConfig:
    """Defaults applied by ``prepare_create``/``allocate``; not part of the state."""
    replication: int = 2
    block_size: int = 4 * 1024 * 1024
    lease: float = 60.0


class Namespace(CreateRecords, CommitRecords, RemoveRecords, LinkRecords, AttrRecords,
                SharedBlockRecords, SnapshotState):
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
            "link": (self._check_link, self._apply_link),
            "exchange": (self._check_exchange, self._apply_exchange),
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

    def need_read(self, path: str, cred: Cred | None) -> None:
        """EACCES naming ``path`` unless ``cred`` may read the entry (which it can reach)."""
        norm = paths.normalize(path)
        self.tree.need(cred, self.tree.node(norm)[1], perms.R, norm)

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
        dir_ids = {"/": root.ino}
        stack: list[tuple[str, Dir]] = [("/", root)]
        while stack:
            p, d = stack.pop()
            for name, child in d.children.items():
                cp = paths.join(p, name)
                if type(child) is Dir:
                    dirs[cp] = (child.mtime, *attrs(child))
                    dir_ids[cp] = child.ino
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
                    if child in self.tree.links:    # only then: older dumps stay equal
                        files[cp]["nlink"] = self.tree.links[child]
        drafts = {h: d.to_list() for h, d in self.drafts.by_handle.items()}
        shared = {bid: len(held) for bid, held in self.blockmap.owners.items()
                  if type(held) is tuple}
        out = {"dirs": dirs, "files": files, "drafts": drafts, "next_inode": self.next_inode,
               "shared": shared,
               "pending_deletes": {n: sorted(s) for n, s in self.pending_deletes.items() if s},
               "counts": self.counts()}
        if self.quotas:     # only then: dumps of states from before quotas stay equal
            out["quotas"] = self.quotas.rows()
        out["dir_ids"] = dir_ids
        if self.tree.atimes:     # likewise
            out["atimes"] = dict(sorted(self.tree.atimes.items()))
        if self.tree.dir_atimes:
            out["dir_atimes"] = dict(sorted(self.tree.dir_atime_paths()))
        return out

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
