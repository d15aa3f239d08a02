"""The write path of the MDS (service "mds"): create, allocate, replace_target, commit,
abort, renew, block pools (pool, put_small) and the server-side copy. A mixin of
`mds.ops.Handlers`. Block access: allocate/create/replace_target mint write
capabilities (mds/grants.py); commit accepts only replicas with a DataNode's receipt;
outstanding allocations are bounded per draft and per user (mds/quota.py); directory
trees may have quotas (mds/treequota.py).
"""
from __future__ import annotations

import errno
import logging

from broker.limits import FIRST_ALLOCATION, MAX_ALLOCATE, MAX_FILE_BLOCKS
from broker.service import Bool, Context, Int, List, Str, operation

from .drafts import POOL_PATH
from .namespace import MAX_BLOCK_SIZE
from .ops_base import (BLOCK, CLIENT, COMMIT_BLOCK, COUNT, EXCLUDE, HANDLE, MODE, PATH,
                       UMASK, HandlerBase, bad_request, cred_of)
from .perms import Cred

log = logging.getLogger(__name__)


class WriteOps(HandlerBase):
    """The write protocol and block pools, mixed into Handlers."""

    @operation({"path": PATH, "replication?": Int(1, 255),
                "block_size?": Int(1, MAX_BLOCK_SIZE), "parents?": Bool(),
                "size?": COUNT, "exclusive?": Bool(), "mode?": MODE, "kind?": Str(16),
                "umask?": UMASK},
               callers=CLIENT, mutating=True)
    def create(self, h: dict, payload: list, ctx: Context) -> dict:
        """Open a draft of file `path` -> {handle, path, replication, block_size, lease:
        seconds left (float), blocks?}. With the expected `size`, the first <= 16 blocks are
        allocated at once ({id, nodes, caps} each, as allocate). Invisible until commit. With
        `exclusive` it fails EEXIST when something exists at `path` already (the commit
        must then say `exclusive` too: that is the check that cannot race). The file will
        be the caller's with `mode` (default 0o666) & ~`umask` (0o022); needs write and
        search on the parent, and write on a file it would replace (EACCES). `kind` (symlink, fifo,
        socket, chardev, blockdev) makes a file that is not regular: its content is the
        link target, stat and ls name the kind."""
        cred = cred_of(ctx)
        if h.get("exclusive"):
            self._refuse_existing(h["path"], cred)
        result = self.submit(lambda ns: ns.prepare_create(
            h["path"], replication=h.get("replication"), block_size=h.get("block_size"),
            parents=bool(h.get("parents")), cred=cred, mode=h.get("mode"),
            kind=h.get("kind"), umask=h.get("umask")))
        draft = self.ns.draft_info(result["handle"])
        out = {"handle": draft["handle"], "path": draft["path"],
               "replication": draft["replication"], "block_size": draft["block_size"]}
        size = h.get("size")
        if size:   # the expected size: allocate the first blocks in the same batch
            count = min(FIRST_ALLOCATION, -(-size // draft["block_size"]))
            try:
                out["blocks"] = self._allocate(draft, count, [], ctx)
                self._with_endpoints(out, (n for b in out["blocks"] for n in b["nodes"]))
            except OSError:
                pass   # best effort: the client's own allocate reports why
        out["lease"] = self._lease_left(draft["handle"], ctx)
        return out

    @operation({"count": Int(1, FIRST_ALLOCATION), "replication?": Int(1, 255),
                "block_size?": Int(1, MAX_BLOCK_SIZE), "exclude?": EXCLUDE},
               callers=CLIENT, mutating=True)
    def pool(self, h: dict, payload: list, ctx: Context) -> dict:
        """Open a block pool: blocks allocated ahead of the small files the caller will
        write with `put_small`, so that a small file is its block puts then ONE durable
        MDS request -> {handle, replication, block_size, lease: seconds left, blocks:
        [{id, nodes, caps}], endpoints?} (`count` 1..16 blocks, as allocate). A pool is a
        draft without a path: invisible, never committed; `allocate` adds blocks, `renew`
        extends its lease, `abort` ends it, and at expiry its unused blocks are deleted
        (their copies queued for deletion on their targets). Its blocks count toward the
        caller's allocation limits (EDQUOT) until a file adopts them or the pool ends."""
        cred = cred_of(ctx)
        rec = self.ns.prepare_pool(replication=h.get("replication"),
                                   block_size=h.get("block_size"), cred=cred)
        handle, count = rec["handle"], h["count"]
        repl, bsize = rec["replication"], rec["block_size"]
        exclude = [str(n) for n in h.get("exclude") or []]
        # the allocation limits, then placement, before any record: a refusal (EDQUOT,
        # EAGAIN in safe mode, ENOSPC) changes nothing, so a retry under the same opid
        # runs again
        self.allocations.reserve(ctx.caller_id, handle, count, count * bsize)
        try:
            targets = [self._place(repl, ctx, exclude=exclude, min_nodes=1, reserve=bsize)
                       for _ in range(count)]
            self.store.submit(rec)
            self.submit(lambda ns: ns.prepare_allocate(handle, targets))
        except BaseException:
            self.allocations.release(handle)
            raise
        mint, wall = self.grants.mint_write, ctx.wall
        blocks = [{"id": b["id"], "nodes": b["targets"],
                   "caps": mint(b["id"], b["targets"], wall)}
                  for b in self.ns.draft_info(handle)["blocks"]]
        out = {"handle": handle, "replication": repl, "block_size": bsize, "blocks": blocks}
        self._with_endpoints(out, (n for b in blocks for n in b["nodes"]))
        out["lease"] = self._lease_left(handle, ctx)
        return out

    @operation({"path": PATH, "pool": HANDLE, "blocks": List(COMMIT_BLOCK, FIRST_ALLOCATION),
                "parents?": Bool(), "exclusive?": Bool(), "mode?": MODE, "umask?": UMASK},
               callers=CLIENT, mutating=True)
    def put_small(self, h: dict, payload: list, ctx: Context) -> dict:
        """Create and commit file `path` in one request from blocks of the caller's block
        pool `pool` that are already stored -> {path, size, refused?}. `blocks` as in
        commit (every one a block of this pool, new, with its replicas and receipts; none
        for an empty file); the file gets the pool's replication and block size. The same
        rules as create then commit: permissions (EACCES), `parents`, `exclusive`
        (EEXIST), `mode` & ~`umask`, receipts (a block with no replica proven by a valid
        receipt from one of its targets fails the request with EACCES), quotas. It is
        all-or-nothing: the file appears whole or not at all, and on any refusal the
        listed blocks leave the pool (deleted; the caller must not use them again).
        ESTALE when `pool` is not a live pool of the caller (expired, aborted): the
        caller opens a new one. With the other mutations, its records and answer are
        one WAL record, made durable before the reply."""
        cred = cred_of(ctx)
        pool = self.ns.drafts.by_handle.get(h["pool"])
        if pool is None or pool.path != POOL_PATH or pool.owner != cred.user:
            raise OSError(errno.ESTALE, f"no block pool {h['pool']} of {cred.user} "
                          "(expired or aborted)")
        ids = [b["id"] for b in h["blocks"]]
        owners = self.ns.blockmap.owners
        if any(owners.get(bid) is not pool for bid in ids) or len(set(ids)) != len(ids):
            raise bad_request(f"put_small {h['path']}: a block is not (or no longer) in the pool")
        if h.get("exclusive"):
            self._refuse_existing(h["path"], cred)
        replication, block_size = pool.replication, pool.block_size
        created = self.submit(lambda ns: ns.prepare_create(
            h["path"], replication=replication, block_size=block_size,
            parents=bool(h.get("parents")), cred=cred, mode=h.get("mode"),
            umask=h.get("umask")))
        handle = created["handle"]
        try:
            if ids:
                self.submit(lambda ns: ns.prepare_adopt(pool.handle, handle, ids))
                nbytes = len(ids) * block_size
                self.allocations.unreserve(pool.handle, len(ids), nbytes)
            return self.commit({"handle": handle, "blocks": h["blocks"],
                                "exclusive": h.get("exclusive")}, payload, ctx)
        except OSError:
            # nothing partial stays: the new draft (and the blocks it adopted) goes
            self.submit(lambda ns: ns.prepare_abort(handle))
            raise

    def _refuse_existing(self, path: str, cred: Cred) -> None:
        """The early EEXIST of an `exclusive` create: stat as the caller, so EACCES comes
        first (no existence leak); nothing there, or no such directory (the create says
        which), passes. The commit's own exclusive check is the one that cannot race."""
        try:
            self.ns.stat(path, cred=cred)
        except (FileNotFoundError, NotADirectoryError):
            return
        raise OSError(errno.EEXIST, "File exists", path)

    def _lease_left(self, handle: str, ctx: Context) -> float:
        """The one lease unit on the wire: seconds remaining. The namespace read its own
        clock a moment after ctx.wall: a lease just granted is the full period, not more."""
        left = float(self.ns.draft_info(handle)["lease"]) - ctx.wall
        return max(0.0, min(float(self.ns.config.lease), left))

    @operation({"handle": HANDLE, "count": Int(1, MAX_ALLOCATE), "exclude?": EXCLUDE},
               callers=CLIENT, mutating=True)
    def allocate(self, h: dict, payload: list, ctx: Context) -> dict:
        """Add `count` (1..1024) blocks to draft `handle`, placed on live nodes not in
        `exclude` -> {blocks: [{id, nodes, caps}], lease: seconds left}; renews the lease.
        `caps[i]` is the write capability for the block on `nodes[i]` (bound to that node).
        EDQUOT when the draft or the calling user would hold more uncommitted blocks or
        bytes (block_size each) than [mds] allows; nothing is allocated then."""
        draft = self.ns.draft_info(h["handle"])
        exclude = [str(n) for n in h.get("exclude") or []]
        blocks = self._allocate(draft, h["count"], exclude, ctx)
        return self._with_endpoints({"blocks": blocks,
                                     "lease": self._lease_left(draft["handle"], ctx)},
                                    (n for b in blocks for n in b["nodes"]))

    def _allocate(self, draft: dict, count: int, exclude: list[str],
                  ctx: Context) -> list[dict]:
        handle, nbytes = draft["handle"], count * draft["block_size"]
        if len(draft["blocks"]) + count > MAX_FILE_BLOCKS:
            raise OSError(errno.EFBIG, f"a file holds at most {MAX_FILE_BLOCKS} blocks "
                          f"({MAX_FILE_BLOCKS * draft['block_size']} bytes at this block "
                          f"size); draft {handle} has {len(draft['blocks'])}")
        # reserved before placement promises space, so a flood is cut off before it
        # can crowd other users off the DataNodes
        self.allocations.reserve(ctx.caller_id, handle, count, nbytes)
        try:
            targets = [self._place(draft["replication"], ctx, exclude=exclude, min_nodes=1,
                                   reserve=draft["block_size"])
                       for _ in range(count)]
            self.submit(lambda ns: ns.prepare_allocate(handle, targets))
        except BaseException:
            self.allocations.unreserve(handle, count, nbytes)
            raise
        blocks = self.ns.draft_info(handle)["blocks"][-count:]
        mint, wall = self.grants.mint_write, ctx.wall
        return [{"id": b["id"], "nodes": b["targets"], "caps": mint(b["id"], b["targets"], wall)}
                for b in blocks]

    def _place(self, r: int, ctx: Context, *, exclude: list[str], reserve: int,
               min_nodes: int | None = None) -> list[str]:
        """cluster.place, except right after a start: the view then knows only the
        DataNodes that have reported so far, and placing on those would commit fewer
        replicas than asked. Until every node the namespace names has reported (safe
        mode), a placement needs min(r, nodes expected) of them, else EAGAIN: the
        client waits, as through a restart."""
        waiting = self.repair.startup_wait(ctx.now)
        if waiting is not None and waiting[1]:
            min_nodes = min(r, waiting[1])
        try:
            return self.cluster.place(r, now=ctx.now, exclude=exclude, min_nodes=min_nodes,
                                      reserve=reserve)
        except OSError as exc:
            if waiting is None or exc.errno != errno.ENOSPC:
                raise
            seen = (f"{waiting[0]} of {waiting[1]} reported" if waiting[1] else
                    "none has reported since the MDS started")
            raise BlockingIOError(errno.EAGAIN, f"waiting for DataNodes: {seen} "
                                  f"({exc.strerror})") from None

    @operation({"handle": HANDLE, "block": BLOCK, "exclude": EXCLUDE}, callers=CLIENT,
               mutating=True)
    def replace_target(self, h: dict, payload: list, ctx: Context) -> dict:
        """A new target for `block` of draft `handle` (a replica write failed) -> {node,
        cap}: a live node not in `exclude` and not already a target, and the write
        capability for the block there."""
        draft = self.ns.draft_info(h["handle"])
        exclude = {str(n) for n in h["exclude"]}
        for b in draft["blocks"]:
            if b["id"] == h["block"]:
                exclude.update(b["targets"])
                break
        else:
            raise OSError(errno.ENOENT, f"block {h['block'].hex()} is not part of this draft")
        node = self._place(1, ctx, exclude=sorted(exclude), reserve=draft["block_size"])[0]
        # a target of the draft from now on: if the file is never committed with it, its
        # copy there is queued for deletion instead of waiting for orphan GC
        self.submit(lambda ns: ns.prepare_add_target(draft["handle"], h["block"], node))
        return self._with_endpoints(
            {"node": node, "cap": self.grants.mint_write(h["block"], [node], ctx.wall)[0]},
            [node])

    @operation({"handle": HANDLE, "blocks": List(COMMIT_BLOCK, MAX_FILE_BLOCKS),
                "exclusive?": Bool()}, callers=CLIENT, mutating=True)
    def commit(self, h: dict, payload: list, ctx: Context) -> dict:
        """Make draft `handle` the file at its path, with `blocks` [{id, size, checksum,
        replicas, receipts}] in file order (every block but the last exactly block_size;
        replicas = the nodes that acknowledged, receipts[i] = the receipt replicas[i]
        returned from its put) -> {path, size, refused?}. A block may instead be an
        existing one shared with another file, {id, size, checksum, from: that file's
        path}: the caller needs read on it, it must hold the block now (ENOENT: replaced
        since) with this size and checksum (EINVAL); no byte moves, and block sizes may
        then differ along the file. A replica counts only if it is a
        target of that block in this draft and its receipt is valid for exactly (node,
        id, size, checksum); others are left out and listed in `refused` [{block, node}]
        (absent when none was). A block left with no replica fails the whole commit with
        EACCES. Replaces an existing file, keeping its owner, group and mode, unless
        `exclusive`: then EEXIST if anything is at the path (the draft stays, to abort).
        Only the draft's creator may commit it, and the create's permission checks are
        made again (EACCES)."""
        cred = cred_of(ctx)
        exclusive = bool(h.get("exclusive"))
        # a malformed, refused or exclusive-losing commit fails before receipts are judged
        self.ns.prepare_commit(h["handle"], h["blocks"], exclusive=exclusive, cred=cred)
        blocks, refused = self._proven(h["handle"], h["blocks"])
        result = self.submit(lambda ns: ns.prepare_commit(h["handle"], blocks,
                                                          exclusive=exclusive, cred=cred))
        self.allocations.release(h["handle"])
        if self.repair.drain_left and any(self.cluster.is_draining(n) for b in blocks
                                          for n in b.get("replicas") or ()):
            self.repair.kick()   # a draft placed before the drain began: move it too
        path = result.get("path") or ""
        size = sum(b["size"] for b in blocks)
        ctx.emit("file.commit", path=path, size=size, blocks=len(blocks))
        out = {"path": path, "size": size}
        if refused:
            out["refused"] = refused
        return out

    def _proven(self, handle: str, blocks: list[dict]) -> tuple[list[dict], list[dict]]:
        """The commit's blocks with only the replicas a receipt proves (see commit)."""
        targets = {b["id"]: b["targets"] for b in self.ns.draft_info(handle)["blocks"]}
        ok = self.grants.receipt_ok
        out, refused = [], []
        for i, b in enumerate(blocks):
            bid, mine = b["id"], targets.get(b["id"])
            if mine is None or b.get("from") is not None:
                out.append(b)    # shared or not this draft's: the namespace checks it
                continue
            receipts = b.get("receipts") or []
            good = []
            for j, node in enumerate(b["replicas"]):
                receipt = receipts[j] if j < len(receipts) else None
                if node in mine and ok(node, receipt, bid, b["size"], b["checksum"]):
                    good.append(node)
                else:
                    refused.append({"block": bid, "node": node})
            if not good:
                raise PermissionError(errno.EACCES, f"commit: block {i} ({bid.hex()}) has "
                                      "no replica with a valid receipt from a target node",
                                      handle)
            if len(good) < len(b["replicas"]):
                log.warning("commit %s: block %s: replicas %s refused (no valid receipt)",
                            handle, bid.hex(), sorted(set(b["replicas"]) - set(good)))
            out.append({"id": bid, "size": b["size"], "checksum": b["checksum"],
                        "replicas": good})
        return out, refused

    @operation({"src": PATH, "dst": PATH, "exclusive?": Bool()}, callers=CLIENT,
               mutating=True)
    def copy(self, h: dict, payload: list, ctx: Context) -> dict:
        """Server-side copy of file `src` to `dst` (into `dst` when it is a directory) ->
        {path: final, size, blocks}: the copy shares src's blocks, no byte moves. The copy
        is the caller's with src's permission bits & ~0o022 and a new mtime; replacing a
        file keeps its owner, group and mode. Needs read on `src` (EACCES), write and
        search on the destination's parent and write on a file it replaces; a directory
        `src` is EISDIR; `exclusive` refuses an existing destination (EEXIST)."""
        cred = cred_of(ctx)
        dst = self.ns.resolve_move(h["src"], h["dst"])
        result = self.submit(lambda ns: ns.prepare_clone(
            h["src"], dst, exclusive=bool(h.get("exclusive")), cred=cred))
        ctx.emit("file.commit", path=result["path"], size=result["size"],
                 blocks=result["blocks"], copied_from=h["src"])
        return {"path": result["path"], "size": result["size"], "blocks": result["blocks"]}

    @operation({"handle": HANDLE}, callers=CLIENT, mutating=True)
    def abort(self, h: dict, payload: list, ctx: Context) -> dict:
        """Drop draft `handle`; its blocks are deleted -> {}."""
        self.submit(lambda ns: ns.prepare_abort(h["handle"]))
        self.allocations.release(h["handle"])
        return {}

    @operation({"handle": HANDLE}, callers=CLIENT, mutating=True)
    def renew(self, h: dict, payload: list, ctx: Context) -> dict:
        """Extend the lease of draft `handle` -> {lease: seconds left (float)}."""
        self.submit(lambda ns: ns.prepare_renew(h["handle"]))
        return {"lease": self._lease_left(h["handle"], ctx)}
