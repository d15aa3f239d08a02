"""The MDS's operations (service "mds"), each declared once with broker.service.operation:
fields with their bounds, who may call it, and a docstring that is its protocol spec.

A handler reads the namespace or submits a record to the MetaStore and returns the result
map; the server loop sends it only after the batch's fsync. Events go to `ctx.emit` and
are published by the loop after that same fsync. Clocks come from the Context (`now`
monotonic, `wall` wall clock), never from here. DataNode traffic (heartbeats, reports)
lands here too, callable only by DataNodes speaking for themselves, and is handed to the
RepairPlanner. Block access: allocate/create/replace_target mint write capabilities,
stat read ones, copy commands copy + write ones (mds/grants.py); commit accepts only
replicas with a DataNode's receipt; outstanding allocations are bounded per draft and per
user (mds/quota.py); directory trees may have quotas (mds/treequota.py). Public API: `Handlers` (its `.service`, `upkeep(now, wall)`).

Who a client is comes from the broker's stamp (`ctx.caller_id`), made a `perms.Cred` by
`cred_of` in one place; the namespace's `prepare_*` and reads check it (mds/perms.py).
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Any, Callable

import msgpack

from broker import protocol as P
from broker.capability import RECEIPT_BYTES
from broker.limits import (FIRST_ALLOCATION, MAX_ALLOCATE, MAX_BATCH, MAX_DELETES,
                           MAX_FILE_BLOCKS, MDS_SERVICE)
from broker.service import (EVERYONE, Bool, Bytes, Context, Float, Int, List, Map, Nil,
                            OneOf, Request, Service, Str, operation)

from .cluster import ClusterView
from .grants import Grants
from .drafts import POOL_PATH
from .metastore import MetaStore
from .namespace import BLOCK_ID_LEN, MAX_BLOCK_SIZE, MAX_HANDLE_LEN
from .paths import MAX_PATH_BYTES
from .perms import MODE_BITS, SUPERUSER, Cred
from .quota import Allocations
from .tree import MAX_NAME
from .repair import RepairPlanner

log = logging.getLogger(__name__)

MAX_DELETES_PER_HEARTBEAT = MAX_DELETES
MAX_ACKS = 100_000         # deletions / failed copies a heartbeat may acknowledge
# read capabilities in one stat reply (~60 bytes each): more blocks ask with caps_from
MAX_STAT_CAPS = 4096
# What a `batch` may carry: the namespace and write-protocol operations of clients.
BATCHABLE = frozenset({"mkdir", "stat", "ls", "create", "allocate", "replace_target",
                       "commit", "pool", "put_small", "abort", "renew", "rm", "chmod", "chown", "copy",
                       "rename", "utimens"})

CLIENT = frozenset({P.CALLER_CLIENT})
DATANODE = frozenset({P.CALLER_DATANODE})

# Field types shared by the declarations below.
# the path module checks the rest (EINVAL; ENAMETOOLONG over MAX_PATH_BYTES: the bound
# here is wider so that a too-long path gets that errno, and still bounds the request)
PATH = Str(2 * MAX_PATH_BYTES)
HANDLE = Str(MAX_HANDLE_LEN)
NODE = Str(P.MAX_SERVICE_LEN - 3)     # registered as "dn.<id>"
BLOCK = Bytes(BLOCK_ID_LEN, BLOCK_ID_LEN)
COUNT = Int(0, 1 << 63)
CHECKSUM = Int(0, 0xFFFF_FFFF)
# odd exclude entries are taken as (unknown) node names: they exclude nothing
EXCLUDE = List(OneOf(NODE, Int(-(1 << 63), 1 << 64), Nil()), 1024)
MODE = Int(0, MODE_BITS)
UMASK = Int(0, 0o777)                 # the caller's umask (default 0o022; a mount: 0)
NAME = Str(MAX_NAME, 1)               # an owner or group name
RECEIPT = Bytes(RECEIPT_BYTES)  # a wrong one is refused by the receipt check, not here
# a DataNode's data endpoint (datanode/dataplane.py), as its heartbeat advertises it
DATA_ADVERT = Map({"endpoint": Str(256, 8), "key?": Str(40, 40)})
COMMIT_BLOCK = Map({"id": BLOCK, "size": Int(0, MAX_BLOCK_SIZE), "checksum": CHECKSUM,
                    "replicas?": List(NODE, 255), "receipts?": List(RECEIPT, 255),
                    "from?": PATH})


def _bad(message: str) -> OSError:
    return OSError(errno.EINVAL, message)


def cred_of(ctx: Context) -> Cred:
    """The credentials of a client request: the user the broker stamped, in the group of
    its own name (group membership beyond that is not kept yet); the superuser is the
    user named perms.SUPERUSER."""
    return Cred(ctx.caller_id, superuser=ctx.caller_id == SUPERUSER)


class Handlers:
    def __init__(self, store: MetaStore, cluster: ClusterView, repair: RepairPlanner,
                 settings: Any, *, grants: Grants | None = None,
                 allocations: Allocations | None = None) -> None:
        self.store = store
        self.ns = store.ns
        self.cluster = cluster
        self.repair = repair
        self.s = settings
        # with HA on, the server's view of its leadership, for status (mds/election.py)
        self.ha_status: Callable[[], dict] | None = None
        self.epoch: int | None = None       # the leadership epoch (set by the server)
        # without a cluster secret (tests of the handlers alone) receipts use a random one
        self.grants = grants if grants is not None else Grants(os.urandom(32))
        self.allocations = allocations if allocations is not None else Allocations()
        # node -> [data endpoint, CURVE public key or ""], from heartbeats (in memory)
        self.endpoints: dict[str, list[str]] = {}
        self.service = Service.collect(MDS_SERVICE, self, once=self._once)

    def _once(self, opid: bytes, ctx: Context, call: Callable[[], Any]) -> Any:
        """A mutation with an operation id: applied at most once, its records and answer
        in one WAL record (mds/opids.py), so a retry after a restart gets the same answer.
        Keyed by caller too: one user's id never returns another user's answer."""
        return self.store.once(opid + ctx.caller_id.encode(), ctx.wall, call)

    def _with_endpoints(self, out: dict, nodes: Any) -> dict:
        """Add the data endpoints of `nodes` that have one, as one table per reply
        (`endpoints: {node: [endpoint, key]}`), for the client to send payloads there."""
        table = {n: self.endpoints[n] for n in set(nodes) if n in self.endpoints}
        if table:
            out["endpoints"] = table
        return out

    @operation({"ops": List(Request(), MAX_BATCH, 1)}, callers=CLIENT)
    def batch(self, h: dict, payload: list, ctx: Context) -> dict:
        """Several client operations in one request (`ops`: 1..256 maps, each {op, ...}, of
        mkdir stat ls create allocate replace_target commit abort renew rm chmod chown
        copy pool put_small) ->
        `results`:
        one {ok: result} or {err: [code, message]} per op, in order. Each item is checked
        and dispatched like a request of its own (schema, caller class); one that fails
        does not stop the others. They run in order inside the same loop turn, so their WAL
        records share the turn's one fsync, and the reply waits for it."""
        item = self.service.item
        results = [item(sub, ctx, BATCHABLE) for sub in h["ops"]]
        table: dict = {}
        for r in results:       # one node table for the whole reply
            ok = r.get("ok") if isinstance(r, dict) else None
            if isinstance(ok, dict) and "endpoints" in ok:
                table.update(ok.pop("endpoints"))
        return {"results": results, **({"endpoints": table} if table else {})}

    def submit(self, prepare: Callable) -> dict:
        return self.store.submit(prepare)

    # -- namespace -----------------------------------------------------------------------

    @operation(callers=EVERYONE)
    def ping(self, h: dict, payload: list, ctx: Context) -> dict:
        """Liveness: {pong: true, safe_mode: bool}."""
        return {"pong": True, "safe_mode": self.repair.safe_mode}

    @operation({"path": PATH, "parents?": Bool(), "mode?": MODE, "umask?": UMASK},
               callers=CLIENT, mutating=True)
    def mkdir(self, h: dict, payload: list, ctx: Context) -> dict:
        """Make directory `path` (with missing parents when `parents`), owned by the
        caller, with `mode` (default 0o777) & ~`umask` (default 0o022) -> {}. Needs
        write and search on the directory that gets the new entry (EACCES)."""
        cred = cred_of(ctx)
        self.submit(lambda ns: ns.prepare_mkdir(h["path"], parents=bool(h.get("parents")),
                                                cred=cred, mode=h.get("mode"),
                                                umask=h.get("umask")))
        ctx.emit("dir.create", path=h["path"])
        return {}

    @operation({"path": PATH, "start_after?": Str(MAX_NAME), "limit?": Int(1, 1 << 31)},
               callers=CLIENT)
    def ls(self, h: dict, payload: list, ctx: Context) -> dict:
        """List `path` -> entries: [{name, type: file/dir, size, mtime, mode, owner, group,
        ctime, atime}], sorted by name; a page: `limit` entries after `start_after`.
        Needs read on a directory listed (EACCES)."""
        return {"entries": self.ns.ls(h["path"], start_after=h.get("start_after"),
                                      limit=h.get("limit"), cred=cred_of(ctx))}

    @operation({"path": PATH, "read?": Bool(), "caps_from?": COUNT, "blocks?": Bool()},
               callers=CLIENT)
    def stat(self, h: dict, payload: list, ctx: Context) -> dict:
        """Describe `path` -> {path, type, size, mtime, mode, owner, group, ctime, atime,
        replication, block_size, blocks: [{id, size, checksum, replicas, cap?}], cap_ttl,
        endpoints?} (blocks empty for a directory; endpoints: the replicas' data
        endpoints). Needs search on the ancestors only; a file's block
        list (the read path) only goes to a caller that may read it, else `blocks` is left
        out; with `read` (a client about to read) such a caller gets EACCES instead.
        `cap` is a read capability valid on every replica for `cap_ttl` seconds, given for
        at most 4096 blocks from index `caps_from` (default 0); stat again with caps_from
        for the others, or when a DataNode refuses an expired one. `blocks: false` (a
        caller that only wants the attributes, like a HEAD) leaves the block list and
        the capabilities out without building them; `read` overrides it."""
        cred = cred_of(ctx)
        read, want_blocks = bool(h.get("read")), h.get("blocks", True)
        if read or want_blocks:
            # file_info resolves the path and checks read permission itself: a file the
            # caller may read costs one lookup, not stat + may_read + file_info
            try:
                info = self.ns.file_info(h["path"], cred=cred)
            except IsADirectoryError:
                pass                 # described below, as without `read`
            except PermissionError:
                if read:
                    raise
                # no read on the file (stat then describes it without blocks) or no
                # search on an ancestor (stat then raises the same EACCES)
            else:
                self._add_caps(info, h.get("caps_from") or 0, ctx)
                return info
        info = self.ns.stat(h["path"], cred=cred)
        if info["type"] == "file":
            del info["blocks"]       # the count tree.stat gives, not a block list
        elif want_blocks or read:
            info["blocks"] = []
        return info

    def _add_caps(self, info: dict, first: int, ctx: Context) -> None:
        """Read capabilities for at most MAX_STAT_CAPS blocks of a file_info from `first`."""
        mint, wall = self.grants.mint_read, ctx.wall
        for b in info["blocks"][first:first + MAX_STAT_CAPS]:
            b["cap"] = mint(b["id"], wall)
        info["cap_ttl"] = self.grants.read_ttl
        self._with_endpoints(info, (n for b in info["blocks"] for n in b["replicas"]))

    @operation({"path": PATH}, callers=CLIENT)
    def du(self, h: dict, payload: list, ctx: Context) -> dict:
        """Usage below `path` -> {bytes, files, dirs}. Needs read and search on every
        directory below (EACCES)."""
        return self.ns.du(h["path"], cred=cred_of(ctx))

    @operation({"path": PATH, "bytes?": COUNT, "files?": COUNT}, callers=CLIENT,
               mutating=True)
    def quota_set(self, h: dict, payload: list, ctx: Context) -> dict:
        """Limit directory tree `path` to `bytes` and/or `files` (entries: files and
        directories below it; an absent limit: none) -> {path, bytes, files}. Every
        enclosing tree's quota applies too; a limit below the usage is taken (the tree can
        then only shrink). The superuser only (EPERM); EINVAL without a limit."""
        if h.get("bytes") is None and h.get("files") is None:
            raise _bad("quota_set needs bytes or files (quota_clear removes a quota)")
        cred = cred_of(ctx)
        return self.submit(lambda ns: ns.prepare_quota(h["path"], h.get("bytes"),
                                                       h.get("files"), cred=cred))

    @operation({"path": PATH}, callers=CLIENT, mutating=True)
    def quota_clear(self, h: dict, payload: list, ctx: Context) -> dict:
        """Remove the quota of directory `path` (no-op without one) -> {path}. The
        superuser only (EPERM)."""
        cred = cred_of(ctx)
        self.submit(lambda ns: ns.prepare_quota(h["path"], None, None, cred=cred))
        return {"path": h["path"]}

    @operation({"path": PATH}, callers=CLIENT)
    def quota_get(self, h: dict, payload: list, ctx: Context) -> dict:
        """The quotas that apply in directory `path`, root first, its own last ->
        {quotas: [{path, max_bytes, max_files, bytes, files}]} (a limit None: none).
        Needs read on `path` (EACCES)."""
        return {"quotas": self.ns.quota_get(h["path"], cred=cred_of(ctx))}

    @operation(callers=CLIENT)
    def quota_ls(self, h: dict, payload: list, ctx: Context) -> dict:
        """Every quota on a directory the caller may read -> {quotas: [...]} as
        quota_get, by path."""
        return {"quotas": self.ns.quota_ls(cred=cred_of(ctx))}

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
            raise _bad(f"put_small {h['path']}: a block is not (or no longer) in the pool")
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

    @operation({"path": PATH, "recursive?": Bool()}, callers=CLIENT, mutating=True)
    def rm(self, h: dict, payload: list, ctx: Context) -> dict:
        """Remove file or directory `path` (a non-empty one only when `recursive`) -> {}.
        Needs write and search on the parent, the sticky rule, and with `recursive` read,
        write and search on every directory emptied (EACCES)."""
        cred = cred_of(ctx)
        kind = self.ns.stat(h["path"], cred=cred)["type"]
        self.submit(lambda ns: ns.prepare_rm(h["path"], recursive=bool(h.get("recursive")),
                                             cred=cred))
        ctx.emit("file.delete" if kind == "file" else "dir.delete", path=h["path"])
        return {}

    @operation({"src": PATH, "dst": PATH}, callers=CLIENT, mutating=True)
    def mv(self, h: dict, payload: list, ctx: Context) -> dict:
        """Rename `src` to `dst` (into `dst` when it is a directory) -> {path: final}.
        Needs write and search on both parents and the sticky rule on both (EACCES)."""
        cred = cred_of(ctx)
        dst = self.ns.resolve_move(h["src"], h["dst"])
        self.submit(lambda ns: ns.prepare_rename(h["src"], dst, cred=cred))
        ctx.emit("file.rename", src=h["src"], dst=dst)
        return {"path": dst}

    @operation({"src": PATH, "dst": PATH, "noreplace?": Bool()}, callers=CLIENT,
               mutating=True)
    def rename(self, h: dict, payload: list, ctx: Context) -> dict:
        """rename(2): `src` becomes exactly `dst` -> {path}. A file replaces a file, a
        directory an empty directory (ENOTEMPTY, EISDIR, ENOTDIR otherwise); with
        `noreplace`, EEXIST when `dst` exists. Permissions as mv."""
        cred = cred_of(ctx)
        if h.get("noreplace"):
            try:
                self.ns.stat(h["dst"], cred=cred)
            except (FileNotFoundError, NotADirectoryError):
                pass
            else:
                raise FileExistsError(errno.EEXIST, "File exists", h["dst"])
        result = self.submit(lambda ns: ns.prepare_rename(h["src"], h["dst"], cred=cred))
        ctx.emit("file.rename", src=result["src"], dst=result["dst"])
        return {"path": result["dst"]}

    @operation({"path": PATH, "mtime?": Float(-1e11, 1e11), "atime?": Float(-1e11, 1e11)},
               callers=CLIENT, mutating=True)
    def utimens(self, h: dict, payload: list, ctx: Context) -> dict:
        """utimensat(2): set the mtime of `path` (now when absent) -> {path, mtime}. An
        explicit time needs the owner or the superuser (EPERM); now, write permission
        too (EACCES). atime is accepted and not kept (reported as the mtime)."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_utimes(h["path"], h.get("mtime"),
                                                          cred=cred))
        ctx.emit("file.attr", path=result["path"], mtime=result["mtime"])
        return result

    @operation({"path": PATH, "mode": MODE}, callers=CLIENT, mutating=True)
    def chmod(self, h: dict, payload: list, ctx: Context) -> dict:
        """Set the 12 mode bits of `path` -> {path, type, mode, owner, group}. The owner
        or the superuser only (EPERM); the setgid bit is dropped for a caller outside the
        entry's group."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_chmod(h["path"], h["mode"], cred=cred))
        ctx.emit(f"{result['type']}.attr", **result)
        return result

    @operation({"path": PATH, "owner?": NAME, "group?": NAME}, callers=CLIENT,
               mutating=True)
    def chown(self, h: dict, payload: list, ctx: Context) -> dict:
        """Set the `owner` and/or `group` of `path` -> {path, type, mode, owner, group}.
        A new owner: the superuser only; a new group: the owner to a group it is in, or
        the superuser (EPERM)."""
        cred = cred_of(ctx)
        result = self.submit(lambda ns: ns.prepare_chown(h["path"], h.get("owner"),
                                                         h.get("group"), cred=cred))
        ctx.emit(f"{result['type']}.attr", **result)
        return result

    # -- replicas and repair ----------------------------------------------------------------

    def _submit_all(self, records: list) -> None:
        for rec in records:
            try:
                self.store.submit(rec)
            except OSError as exc:   # the state moved on since the planner looked
                log.info("repair record %s skipped: %s", rec.get("op"), exc)

    @operation({"block": BLOCK, "node": NODE, "reason?": Str(1024)}, callers=CLIENT)
    def bad_replica(self, h: dict, payload: list, ctx: Context) -> dict:
        """A client found the replica of `block` on `node` missing or corrupt -> {dropped}.
        Only a replica the block map holds may be reported (else EPERM): `node` must be a
        known DataNode and `block` a committed block with a replica there."""
        node, block = h["node"], h["block"]
        info = self.ns.block_info(block)
        if node not in self.cluster.nodes() or info is None \
                or node not in info.get("replicas", ()):
            raise PermissionError(errno.EPERM, f"bad_replica: block {block.hex()} has no "
                                               f"replica on node {node!r} to report")
        return self._corrupt(node, block, h.get("reason") or "reported by a client", ctx)

    @operation({"node": NODE, "block": BLOCK}, callers=DATANODE, binds="node")
    def block_corrupt(self, h: dict, payload: list, ctx: Context) -> dict:
        """DataNode `node` (the caller) found its replica of `block` corrupt and set it
        aside -> {dropped}: dropped from the block map and re-replicated."""
        return self._corrupt(h["node"], h["block"], "found by the DataNode", ctx)

    def _corrupt(self, node: str, block: bytes, reason: str, ctx: Context) -> dict:
        records = self.repair.on_bad_replica(node, block)
        self._submit_all(records)
        if records:
            ctx.emit("repair.drop_replica", node=node, block=block.hex(), reason=reason)
        return {"dropped": bool(records)}

    @operation({"node": NODE, "block": BLOCK, "size": Int(0, MAX_BLOCK_SIZE),
                "checksum": CHECKSUM, "receipt?": RECEIPT}, callers=DATANODE, binds="node")
    def replica_added(self, h: dict, payload: list, ctx: Context) -> dict:
        """DataNode `node` (the caller) now holds a copy of `block` (re-replication) with
        this size and checksum, proven by its `receipt` -> {accepted}: added to the block
        map if they match. Without a valid receipt: EACCES, nothing changes."""
        if not self.grants.receipt_ok(h["node"], h.get("receipt"), h["block"], h["size"],
                                      h["checksum"]):
            raise PermissionError(errno.EACCES, f"replica_added: no valid receipt from "
                                  f"{h['node']} for block {h['block'].hex()}")
        records = self.repair.on_replica_added(h["node"], h["block"], h["size"], h["checksum"])
        self._submit_all(records)
        if records:
            ctx.emit("repair.replica_added", node=h["node"], block=h["block"].hex())
        return {"accepted": bool(records)}

    @operation(callers=EVERYONE)
    def status(self, h: dict, payload: list, ctx: Context) -> dict:
        """Cluster view -> {nodes: [{id, state, capacity, used, blocks, last_seen, drain:
        None/"draining"/"drained", drain_left: blocks still there or None}], files, dirs,
        blocks, health, safe_mode, block_size (of new files), and with HA on ha: {state:
        active/candidate, epoch, lease_left, holder, etcd_error}}."""
        now = ctx.now
        nodes = []
        for node, info in sorted(self.cluster.nodes().items()):
            drain, left = self.repair.drain_state(node)
            nodes.append({"id": node, "state": "up" if self.cluster.is_live(node, now) else "down",
                          "capacity": info.get("capacity", 0), "used": info.get("used", 0),
                          "blocks": info.get("blocks", 0),
                          "last_seen": round(now - info.get("last_seen", now), 2),
                          "drain": drain, "drain_left": left})
        ha = {"ha": self.ha_status()} if self.ha_status is not None else {}
        return {"nodes": nodes, **self.ns.counts(), "health": self.repair.summary(),
                "safe_mode": self.repair.safe_mode, "block_size": self.ns.config.block_size,
                **ha}

    @operation({"node": NODE, "cancel?": Bool()}, callers=CLIENT)
    def drain(self, h: dict, payload: list, ctx: Context) -> dict:
        """Empty DataNode `node` so it can be removed: no new blocks go there, its replicas
        stop counting toward R, are copied to other nodes and then dropped from it;
        `cancel` stops draining -> {node, drain: None/"draining"/"drained", drain_left}.
        ENOENT for a node that never registered; EPERM unless the caller is the superuser.
        Not durable: an MDS restart forgets it."""
        if not cred_of(ctx).superuser:
            raise PermissionError(errno.EPERM, f"only {SUPERUSER} may drain a DataNode")
        node, on = h["node"], not h.get("cancel")
        if self.cluster.drain(node, on):
            self.repair.on_drain(node, on)
            ctx.emit("node.drain" if on else "node.drain_cancel", node=node)
        drain, left = self.repair.drain_state(node)
        return {"node": node, "drain": drain, "drain_left": left}

    @operation({"repair?": Bool()}, callers=CLIENT)
    def fsck(self, h: dict, payload: list, ctx: Context) -> dict:
        """Health of the block map -> {healthy, missing, under_replicated, corrupt, orphans,
        ...}; `repair` starts a repair pass now."""
        if h.get("repair"):
            self.repair.kick()
        return self.repair.fsck()

    # -- DataNode traffic ----------------------------------------------------------------

    @operation({"node": NODE, "capacity": COUNT, "used": COUNT, "blocks": COUNT,
                "free?": COUNT, "deleted?": List(BLOCK, MAX_ACKS),
                "copy_failed?": List(BLOCK, MAX_ACKS), "data?": DATA_ADVERT},
               callers=DATANODE, binds="node")
    def dn_heartbeat(self, h: dict, payload: list, ctx: Context) -> dict:
        """DataNode `node` (the caller) is alive with this capacity/used/blocks, finished
        the deletions `deleted` and failed the copies `copy_failed` -> {commands: [{op:
        delete, blocks} / {op: copy, block, target, cap, target_cap} / {op: report}], keys:
        {ring, receipt_key}} for it to carry out. `keys` is the capability key ring (to
        verify capabilities with) and this node's own receipt key; `cap` of a copy is a
        copy capability for this node, `target_cap` the write capability for the target.
        `data` is the node's data endpoint {endpoint, key?} (its CURVE public key), handed
        to clients with allocations and block lists."""
        node, now = h["node"], ctx.now
        data = h.get("data")
        if data:
            self.endpoints[node] = [data["endpoint"], data.get("key", "")]
        else:
            self.endpoints.pop(node, None)
        for ev in self.cluster.heartbeat(node, h["capacity"], h["used"], h["blocks"], now):
            ctx.emit(ev.topic, node=ev.node, reason=ev.reason)
            self.repair.on_node_up(node)
        deleted = h.get("deleted")
        if deleted:
            self.submit(lambda ns: ns.prepare_ack_delete(node, deleted))
            self.repair.on_deleted(node, deleted)
        failed = h.get("copy_failed")
        if failed:
            self.repair.on_copy_failed(node, failed)
        commands: list[dict] = []
        if self.repair.wants_report(node):
            commands.append({"op": "report"})
        if not self.repair.safe_mode:
            deletes = self.repair.deletes_ready(node, MAX_DELETES_PER_HEARTBEAT)
            if deletes:
                commands.append({"op": "delete", "blocks": deletes})
            copies = self.repair.commands_for(node)
            for cmd in copies:
                cmd["cap"], cmd["target_cap"] = self.grants.mint_copy(
                    cmd["block"], node, cmd["target"], ctx.wall)
                ctx.emit("repair.copy", node=node, block=cmd["block"].hex(),
                         target=cmd["target"])
            commands.extend(copies)
        # the leader's epoch with its commands: DataNodes refuse a deposed leader's
        fence = {"epoch": self.epoch} if self.epoch else {}
        return {"commands": commands, "keys": self.grants.for_node(node), **fence}

    @operation({"node": NODE, "count?": COUNT}, callers=DATANODE, binds="node", frames=(1, 1))
    def block_report(self, h: dict, payload: list, ctx: Context) -> dict:
        """Every replica DataNode `node` (the caller) holds, as ONE payload frame: msgpack
        [[id, size, checksum], ...] (`count` entries) -> {accepted}: entries taken.
        Missing and unknown (orphan) blocks are found from it."""
        try:
            blocks = msgpack.unpackb(payload[0], raw=False, use_list=True)
        except Exception:
            raise _bad("block_report payload is not valid msgpack") from None
        if not isinstance(blocks, list):
            raise _bad("block_report payload must be a list")
        entries = []
        for item in blocks:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)
                    and len(item[0]) == 16 and isinstance(item[1], int) and isinstance(item[2], int)):
                entries.append((item[0], item[1], item[2]))
        self._submit_all(self.repair.on_report(h["node"], entries))
        return {"accepted": len(entries)}

    # -- between batches -----------------------------------------------------------------

    def upkeep(self, now: float, wall: float) -> list[tuple[str, dict]]:
        """Lease expiry, dead nodes, repair planning; `now` monotonic, `wall` wall clock."""
        events: list[tuple[str, dict]] = []
        for ev in self.cluster.check(now):
            events.append((ev.topic, {"node": ev.node, "reason": ev.reason}))
            if ev.topic == "node.down":
                self.repair.on_node_down(ev.node)
        for rec in self.ns.expire_drafts(wall):
            self._submit_all([rec])
            self.allocations.release(rec["handle"])
        self.allocations.retain(self.ns.drafts.by_handle)
        self.grants.tick(wall)
        records, repair_events = self.repair.tick()
        self._submit_all(records)
        events.extend(repair_events)
        return events
