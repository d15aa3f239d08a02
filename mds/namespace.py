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
    mkdir        {path, parents, mtime}
    create       {path, handle, replication, block_size, parents, lease, mtime}
    allocate     {handle, blocks: [[id, [node, ...]], ...], lease}
    add_target   {handle, block, node}         a replacement target (replace_target)
    commit       {handle, blocks: [[id, size, checksum, [node, ...]], ...], mtime}
    abort        {handle, reason}              reason: "abort" | "expired"
    renew        {handle, lease}
    rm           {path, recursive, mtime}
    rename       {src, dst, mtime}             exact target; see resolve_move()
    set_replicas {block, replicas}
    queue_delete {node, blocks}                orphans found by block reports
    ack_delete   {node, blocks}                a DataNode confirmed these deletions

apply() results: mkdir {path, created}; create {handle, path, inode, lease}; allocate
{handle, lease, blocks: [{id, targets}]}; commit {path, inode, size, blocks, replaced};
abort {handle, path, blocks}; renew {handle, lease}; rm {path, files, dirs, bytes};
rename {src, dst, replaced}; set_replicas {block, replicas}; queue_delete {node, queued};
ack_delete {node, acked}.

Semantics worth knowing: a draft keeps the path it was created with (a rename or rm of
its parent makes its commit fail ENOENT); several drafts may target one path and the
last commit wins; every block of a commit but the last must be exactly block_size;
blocks of replaced/removed files, aborted/expired drafts, targets that did not end up
as replicas, and replicas dropped by set_replicas all go to ``pending_deletes``.

Reads (never mutate): stat, ls, du, file_info, block_info, draft_info, draft_handles,
deletes_for, iter_files, iter_blocks, counts, dump (canonical form, for equality tests).
``expire_drafts(now)`` returns abort records for drafts whose lease passed.

Errors are OSError subclasses with errno and the path (or draft handle) as filename:
ENOENT FileNotFoundError, EEXIST FileExistsError, ENOTDIR NotADirectoryError, EISDIR
IsADirectoryError, ENOTEMPTY and EINVAL plain OSError.

Memory: a committed file is an ``Inode`` with two slots, a packed ``meta`` bytes (header
+ 16 bytes per block) and a tuple of block ids shared with the block index; replica
lists are interned in a table and referenced by index. Measured: 1M files hold ~390 MiB
RSS with one block each, ~680 MiB with three (the 16-byte id objects and their index
entries dominate: ~145 bytes a block).
"""
from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from mds import paths

log = logging.getLogger(__name__)

# inode id, size, mtime, replication, block size
HDR = struct.Struct("<QQdBI")
# block size, CRC32C, index into the replica-set table
BLK = struct.Struct("<QII")
_SIZE = struct.Struct("<Q")
BLOCK_ID_LEN = 16
# files with more blocks than this keep an id -> position map, so block lookups stay
# O(1) for huge files while small files pay no memory for it (a C scan of <= 32 ids)
BIG_FILE_BLOCKS = 32
MAX_BLOCK_SIZE = 1 << 31
MAX_HANDLE_LEN = 128


@dataclass(frozen=True)
class NamespaceConfig:
    """Defaults applied by ``prepare_create``/``allocate``; not part of the state."""
    replication: int = 2
    block_size: int = 4 * 1024 * 1024
    lease: float = 60.0


class Dir:
    __slots__ = ("children", "mtime")

    def __init__(self, mtime: float) -> None:
        self.children: dict[str, Dir | Inode] = {}
        self.mtime = mtime


class Inode:
    """A committed file: immutable except for replica sets (``set_replicas``)."""
    __slots__ = ("meta", "bids")

    def __init__(self, meta: bytes, bids: tuple[bytes, ...]) -> None:
        self.meta = meta
        self.bids = bids

    @property
    def id(self) -> int:
        return HDR.unpack_from(self.meta)[0]

    @property
    def size(self) -> int:
        return _SIZE.unpack_from(self.meta, 8)[0]

    def header(self) -> tuple[int, int, float, int, int]:
        """(inode id, size, mtime, replication, block size)"""
        return HDR.unpack_from(self.meta)

    def block(self, i: int) -> tuple[int, int, int]:
        """(size, checksum, replica-set index) of block ``i``"""
        return BLK.unpack_from(self.meta, HDR.size + i * BLK.size)

    def iter_block_meta(self) -> Iterator[tuple[int, int, int]]:
        return BLK.iter_unpack(memoryview(self.meta)[HDR.size:])


class Draft:
    """A file under construction: invisible to readers until commit."""
    __slots__ = ("handle", "path", "inode", "replication", "block_size", "lease", "mtime",
                 "bids", "targets")

    def __init__(self, handle: str, path: str, inode: int, replication: int,
                 block_size: int, lease: float, mtime: float) -> None:
        self.handle = handle
        self.path = path
        self.inode = inode
        self.replication = replication
        self.block_size = block_size
        self.lease = lease
        self.mtime = mtime
        self.bids: list[bytes] = []
        self.targets: list[tuple[str, ...]] = []

    def to_list(self) -> list:
        return [self.handle, self.path, self.inode, self.replication, self.block_size,
                self.lease, self.mtime, list(self.bids), [list(t) for t in self.targets]]


def _error(code: int, name: object, detail: str | None = None) -> OSError:
    # OSError(code, ...) returns the matching subclass (FileNotFoundError, ...)
    return OSError(code, detail or os.strerror(code), name)


def _check(cond: bool, name: object, detail: str) -> None:
    if not cond:
        raise _error(errno.EINVAL, name, detail)


def _is_node_list(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(n, str) and n for n in value) and len(set(value)) == len(value))


def _nodes_arg(value: Any, name: object, what: str) -> list:
    # list("dn1") would quietly become ["d", "n", "1"]: insist on a real sequence
    if not isinstance(value, (list, tuple)):
        raise _error(errno.EINVAL, name, f"{what} must be a list of node ids")
    return list(value)


def _is_time(value: Any) -> bool:
    return type(value) is float or type(value) is int


def _is_block_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == BLOCK_ID_LEN


class Namespace:
    def __init__(self, config: NamespaceConfig = NamespaceConfig(), *,
                 clock: Callable[[], float] = time.time,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self._clock = clock
        self._random = random_bytes
        self._root = Dir(0.0)
        self._drafts: dict[str, Draft] = {}
        self._blocks: dict[bytes, Inode | Draft] = {}
        self._positions: dict[Inode, dict[bytes, int]] = {}
        self._rsets: list[tuple[str, ...]] = []
        self._rset_ids: dict[tuple[str, ...], int] = {}
        # node -> block id -> queue number, oldest first (insertion order). The numbers let
        # the repair planner tell how long ago a delete was queued without a clock here.
        self.pending_deletes: dict[str, dict[bytes, int]] = {}
        self.delete_seq = 0
        self.next_inode = 1
        self.files = self.dirs = self.blocks = self.bytes = 0
        self._ops = {op: (getattr(self, "_check_" + op), getattr(self, "_apply_" + op))
                     for op in ("mkdir", "create", "allocate", "commit", "abort", "renew",
                                "rm", "rename", "set_replicas", "queue_delete", "ack_delete",
                                "add_target")}

    # ------------------------------------------------------------------ dispatch

    def validate(self, record: Mapping[str, Any]) -> None:
        """Raise the typed OSError ``apply`` would hit; never mutates."""
        op = record.get("op") if isinstance(record, Mapping) else None
        handlers = self._ops.get(op) if isinstance(op, str) else None
        if handlers is None:
            raise _error(errno.EINVAL, None, f"unknown record op {op!r}"
                         if isinstance(record, Mapping) else "record is not a mapping")
        try:
            handlers[0](record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # a hand-built or damaged record: refuse it before apply can trip on it
            raise _error(errno.EINVAL, None, f"malformed {record['op']} record: {exc!r}") from None

    def apply(self, record: Mapping[str, Any]) -> dict:
        """Mutate the namespace; must only be given records that validated."""
        return self._ops[record["op"]][1](record)

    # ------------------------------------------------------------------ lookups

    def _walk_parent(self, path: str, names: list[str], missing_ok: bool = False) -> Dir | None:
        """The directory holding the last component; None if absent and missing_ok."""
        node = self._root
        for name in names[:-1]:
            child = node.children.get(name)
            if child is None:
                if missing_ok:
                    return None
                raise _error(errno.ENOENT, path)
            if type(child) is not Dir:
                raise _error(errno.ENOTDIR, path)
            node = child
        return node

    def _node(self, path: str) -> tuple[list[str], Dir | Inode]:
        names = paths.components(path)
        if not names:
            return names, self._root
        node = self._walk_parent(path, names).children.get(names[-1])
        if node is None:
            raise _error(errno.ENOENT, path)
        return names, node

    def _canonical(self, path: Any) -> list[str]:
        names = paths.components(path)
        _check(path == "/" + "/".join(names), path, "path is not normalised")
        return names

    def _draft(self, handle: Any) -> Draft:
        draft = self._drafts.get(handle) if isinstance(handle, str) else None
        if draft is None:
            raise _error(errno.ENOENT, handle, "no such draft (aborted, expired or committed)")
        return draft

    def _rset(self, nodes: Sequence[str]) -> int:
        key = tuple(nodes)
        idx = self._rset_ids.get(key)
        if idx is None:
            idx = self._rset_ids[key] = len(self._rsets)
            self._rsets.append(key)
        return idx

    def _locate(self, bid: bytes) -> tuple[Inode | Draft, int] | None:
        owner = self._blocks.get(bid)
        if owner is None:
            return None
        pos = self._positions.get(owner) if type(owner) is Inode else None
        return owner, (pos[bid] if pos is not None else owner.bids.index(bid))

    def _queue(self, node: str, bid: bytes) -> None:
        pending = self.pending_deletes.setdefault(node, {})
        if bid not in pending:        # queued once: a second reason keeps the first number
            self.delete_seq += 1
            pending[bid] = self.delete_seq

    # ------------------------------------------------------------------ reads

    def stat(self, path: str) -> dict:
        path = paths.normalize(path)
        _, node = self._node(path)
        if type(node) is Dir:
            return {"path": path, "type": "dir", "size": 0, "mtime": node.mtime,
                    "entries": len(node.children)}
        ino, size, mtime, repl, bsize = node.header()
        return {"path": path, "type": "file", "inode": ino, "size": size, "mtime": mtime,
                "replication": repl, "block_size": bsize, "blocks": len(node.bids)}

    @staticmethod
    def _entry(name: str, node: Dir | Inode) -> dict:
        if type(node) is Dir:
            return {"name": name, "type": "dir", "size": 0, "mtime": node.mtime}
        _, size, mtime, _, _ = node.header()
        return {"name": name, "type": "file", "size": size, "mtime": mtime}

    def ls(self, path: str, *, start_after: str | None = None,
           limit: int | None = None) -> list[dict]:
        """Entries of a directory sorted by name (or the file itself); pageable."""
        path = paths.normalize(path)
        names, node = self._node(path)
        if type(node) is not Dir:
            return [self._entry(names[-1], node)]
        keys = sorted(node.children)
        if start_after is not None:
            keys = keys[bisect.bisect_right(keys, start_after):]
        if limit is not None:
            keys = keys[:limit]
        return [self._entry(k, node.children[k]) for k in keys]

    def du(self, path: str) -> dict:
        """Total committed bytes, files and directories under a path (inclusive)."""
        _, node = self._node(paths.normalize(path))
        total = files = dirs = 0
        stack = [node]
        while stack:
            node = stack.pop()
            if type(node) is Dir:
                dirs += 1
                stack.extend(node.children.values())
            else:
                files += 1
                total += node.size
        return {"bytes": total, "files": files, "dirs": dirs}

    def _blocks_of(self, node: Inode) -> list[dict]:
        return [{"id": bid, "size": size, "checksum": crc, "replicas": list(self._rsets[rs])}
                for bid, (size, crc, rs) in zip(node.bids, node.iter_block_meta())]

    def file_info(self, path: str) -> dict:
        """What a reader needs: stat plus each block's id, size, checksum, replicas."""
        info = self.stat(path)
        if info["type"] == "dir":
            raise _error(errno.EISDIR, info["path"])
        _, node = self._node(info["path"])
        info["blocks"] = self._blocks_of(node)
        return info

    def block_info(self, bid: bytes) -> dict | None:
        """Where a block belongs, or None for an unknown (orphan) id."""
        found = self._locate(bid)
        if found is None:
            return None
        owner, i = found
        if type(owner) is Draft:
            return {"id": bid, "draft": owner.handle, "index": i,
                    "targets": list(owner.targets[i]), "replication": owner.replication}
        size, crc, rs = owner.block(i)
        return {"id": bid, "inode": owner.id, "index": i, "size": size, "checksum": crc,
                "replicas": list(self._rsets[rs]), "replication": owner.header()[3]}

    def draft_info(self, handle: str) -> dict:
        d = self._draft(handle)
        return {"handle": d.handle, "path": d.path, "inode": d.inode,
                "replication": d.replication, "block_size": d.block_size, "lease": d.lease,
                "blocks": [{"id": b, "targets": list(t)} for b, t in zip(d.bids, d.targets)]}

    def draft_handles(self) -> list[str]:
        return sorted(self._drafts)

    def deletes_for(self, node: str, limit: int | None = None,
                    max_seq: int | None = None) -> list[bytes]:
        """Block ids ``node`` should delete, oldest first: at most ``limit``, and only those
        queued as number ``max_seq`` or earlier. Read-only: removal is an ack_delete record."""
        pending = self.pending_deletes.get(node)
        if not pending:
            return []
        if limit is None and max_seq is None:
            return list(pending)
        out = []
        for bid, seq in pending.items():
            if (limit is not None and len(out) >= limit) or (max_seq is not None
                                                             and seq > max_seq):
                break
            out.append(bid)
        return out

    def is_pending_delete(self, node: str, bid: bytes) -> bool:
        pending = self.pending_deletes.get(node)
        return pending is not None and bid in pending

    def iter_files(self, path: str = "/") -> Iterator[tuple[str, dict]]:
        """(path, stat) of every committed file under ``path``, depth first."""
        path = paths.normalize(path)
        names, node = self._node(path)
        stack: list[tuple[str, Dir | Inode]] = [(path, node)]
        while stack:
            p, node = stack.pop()
            if type(node) is Dir:
                stack.extend((paths.join(p, k), c) for k, c in node.children.items())
            else:
                ino, size, mtime, repl, bsize = node.header()
                yield p, {"type": "file", "inode": ino, "size": size, "mtime": mtime,
                          "replication": repl, "block_size": bsize, "blocks": len(node.bids)}

    def iter_blocks(self) -> Iterator[tuple[bytes, tuple[str, ...], int]]:
        """(block id, replicas, wanted replication) of every committed block."""
        for bid, owner in self._blocks.items():
            if type(owner) is Inode:
                i = self._locate(bid)[1]
                yield bid, self._rsets[owner.block(i)[2]], owner.header()[3]

    def replica_nodes(self) -> set[str]:
        """Every node named in a replica set ever used (cheap: the interned table)."""
        return {node for rs in self._rsets for node in rs}

    def counts(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "blocks": self.blocks,
                "bytes": self.bytes, "drafts": len(self._drafts),
                "pending_deletes": sum(len(s) for s in self.pending_deletes.values())}

    def resolve_move(self, src: str, dst: str) -> str:
        """``mv src dst`` semantics: into ``dst`` when it is an existing directory."""
        src, dst = paths.normalize(src), paths.normalize(dst)
        try:
            _, node = self._node(dst)
        except (FileNotFoundError, NotADirectoryError):
            return dst
        if type(node) is Dir and src != "/":
            return paths.join(dst, paths.basename(src))
        return dst

    def expire_drafts(self, now: float) -> list[dict]:
        """Abort records for drafts whose lease deadline is at or before ``now``."""
        return [{"op": "abort", "handle": h, "reason": "expired"}
                for h, d in sorted(self._drafts.items()) if d.lease <= now]

    def dump(self) -> dict:
        """Canonical plain-data form of the whole state; equal states dump equal."""
        dirs, files = {"/": self._root.mtime}, {}
        stack: list[tuple[str, Dir]] = [("/", self._root)]
        while stack:
            p, d = stack.pop()
            for name, child in d.children.items():
                cp = paths.join(p, name)
                if type(child) is Dir:
                    dirs[cp] = child.mtime
                    stack.append((cp, child))
                else:
                    ino, size, mtime, repl, bsize = child.header()
                    files[cp] = {"inode": ino, "size": size, "mtime": mtime,
                                 "replication": repl, "block_size": bsize,
                                 "blocks": [(b["id"], b["size"], b["checksum"],
                                             tuple(b["replicas"]))
                                            for b in self._blocks_of(child)]}
        drafts = {h: d.to_list() for h, d in self._drafts.items()}
        return {"dirs": dirs, "files": files, "drafts": drafts, "next_inode": self.next_inode,
                "pending_deletes": {n: sorted(s) for n, s in self.pending_deletes.items() if s},
                "counts": self.counts()}

    # ------------------------------------------------------------------ mkdir

    def prepare_mkdir(self, path: str, *, parents: bool = False) -> dict:
        rec = {"op": "mkdir", "path": paths.normalize(path), "parents": bool(parents),
               "mtime": self._clock()}
        self._check_mkdir(rec)
        return rec

    def _check_mkdir(self, rec: Mapping) -> None:
        path = rec["path"]
        names = self._canonical(path)
        _check(_is_time(rec["mtime"]), path, "bad mtime")
        node = self._root
        for i, name in enumerate(names):
            child = node.children.get(name)
            last = i == len(names) - 1
            if child is None:
                if not last and not rec["parents"]:
                    raise _error(errno.ENOENT, path)
                return
            if type(child) is not Dir:
                raise _error(errno.EEXIST if last else errno.ENOTDIR, path)
            node = child
        if not rec["parents"]:
            raise _error(errno.EEXIST, path)

    def _mkdirs(self, names: list[str], mtime: float) -> tuple[Dir, int]:
        node, created = self._root, 0
        for name in names:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Dir(mtime)
                node.mtime = mtime
                created += 1
            node = child
        self.dirs += created
        return node, created

    def _apply_mkdir(self, rec: Mapping) -> dict:
        _, created = self._mkdirs(paths.components(rec["path"]), rec["mtime"])
        return {"path": rec["path"], "created": created}

    # ------------------------------------------------------------------ drafts

    def prepare_create(self, path: str, *, handle: str | None = None,
                       replication: int | None = None, block_size: int | None = None,
                       parents: bool = False, lease: float | None = None) -> dict:
        now = self._clock()
        rec = {"op": "create", "path": paths.normalize(path),
               "handle": handle if handle is not None else self._random(12).hex(),
               "replication": self.config.replication if replication is None else replication,
               "block_size": self.config.block_size if block_size is None else block_size,
               "parents": bool(parents),
               "lease": now + (self.config.lease if lease is None else lease), "mtime": now}
        self._check_create(rec)
        return rec

    def _check_create(self, rec: Mapping) -> None:
        path, handle = rec["path"], rec["handle"]
        names = self._canonical(path)
        if not names:
            raise _error(errno.EISDIR, path)
        repl, bsize = rec["replication"], rec["block_size"]
        _check(type(repl) is int and 1 <= repl <= 255, path, "replication must be 1..255")
        _check(type(bsize) is int and 1 <= bsize <= MAX_BLOCK_SIZE, path,
               f"block size must be 1..{MAX_BLOCK_SIZE}")
        _check(isinstance(handle, str) and 0 < len(handle) <= MAX_HANDLE_LEN, handle,
               "bad draft handle")
        _check(_is_time(rec["lease"]) and _is_time(rec["mtime"]), path, "bad lease or mtime")
        if handle in self._drafts:
            raise _error(errno.EEXIST, handle, "draft handle already in use")
        parent = self._walk_parent(path, names, missing_ok=rec["parents"])
        if parent is not None and type(parent.children.get(names[-1])) is Dir:
            raise _error(errno.EISDIR, path)

    def _apply_create(self, rec: Mapping) -> dict:
        names = paths.components(rec["path"])
        if rec["parents"]:
            self._mkdirs(names[:-1], rec["mtime"])
        d = Draft(rec["handle"], rec["path"], self.next_inode, rec["replication"],
                  rec["block_size"], rec["lease"], rec["mtime"])
        self.next_inode += 1
        self._drafts[d.handle] = d
        return {"handle": d.handle, "path": d.path, "inode": d.inode, "lease": d.lease}

    def _new_block_id(self, taken: set[bytes]) -> bytes:
        while True:
            bid = self._random(BLOCK_ID_LEN)
            if bid not in self._blocks and bid not in taken:
                taken.add(bid)
                return bid

    def prepare_allocate(self, handle: str, targets: Sequence[Sequence[str]], *,
                         lease: float | None = None) -> dict:
        """One new block per entry of ``targets`` (the nodes chosen by placement)."""
        self._draft(handle)
        taken: set[bytes] = set()
        try:
            blocks = [[self._new_block_id(taken), _nodes_arg(t, handle, "targets")]
                      for t in targets]
        except TypeError:
            raise _error(errno.EINVAL, handle, "targets must be lists of node ids") from None
        rec = {"op": "allocate", "handle": handle, "blocks": blocks,
               "lease": self._clock() + (self.config.lease if lease is None else lease)}
        self._check_allocate(rec)
        return rec

    def _check_allocate(self, rec: Mapping) -> None:
        handle = rec["handle"]
        self._draft(handle)
        blocks = rec["blocks"]
        _check(isinstance(blocks, list) and len(blocks) > 0, handle, "no blocks to allocate")
        _check(_is_time(rec["lease"]), handle, "bad lease")
        seen = set()
        for entry in blocks:
            _check(isinstance(entry, (list, tuple)) and len(entry) == 2, handle, "bad block")
            bid, nodes = entry
            _check(_is_block_id(bid), handle, "block id must be 16 bytes")
            _check(bid not in self._blocks and bid not in seen, handle, "block id in use")
            _check(_is_node_list(nodes), handle, "targets must be distinct node ids")
            seen.add(bid)

    def _apply_allocate(self, rec: Mapping) -> dict:
        d = self._drafts[rec["handle"]]
        for bid, nodes in rec["blocks"]:
            d.bids.append(bid)
            d.targets.append(tuple(nodes))
            self._blocks[bid] = d
        d.lease = rec["lease"]
        return {"handle": d.handle, "lease": d.lease,
                "blocks": [{"id": bid, "targets": list(nodes)} for bid, nodes in rec["blocks"]]}

    def prepare_add_target(self, handle: str, block_id: bytes, node: str) -> dict:
        """Record a replacement target of a draft's block, so that an abort, an expiry or
        a commit without it queues its copy there for deletion (no orphan left behind)."""
        rec = {"op": "add_target", "handle": handle, "block": block_id, "node": node}
        self._check_add_target(rec)
        return rec

    def _check_add_target(self, rec: Mapping) -> None:
        d = self._draft(rec["handle"])
        _check(_is_block_id(rec["block"]), d.handle, "block id must be 16 bytes")
        _check(self._blocks.get(rec["block"]) is d, d.handle,
               "block is not part of this draft")
        _check(isinstance(rec["node"], str) and rec["node"] != "", d.handle, "bad node id")

    def _apply_add_target(self, rec: Mapping) -> dict:
        d = self._drafts[rec["handle"]]
        i = d.bids.index(rec["block"])
        if rec["node"] not in d.targets[i]:
            d.targets[i] = (*d.targets[i], rec["node"])
        return {"handle": d.handle, "block": rec["block"], "targets": list(d.targets[i])}

    def prepare_renew(self, handle: str, *, lease: float | None = None) -> dict:
        rec = {"op": "renew", "handle": handle,
               "lease": self._clock() + (self.config.lease if lease is None else lease)}
        self._check_renew(rec)
        return rec

    def _check_renew(self, rec: Mapping) -> None:
        self._draft(rec["handle"])
        _check(_is_time(rec["lease"]), rec["handle"], "bad lease")

    def _apply_renew(self, rec: Mapping) -> dict:
        self._drafts[rec["handle"]].lease = rec["lease"]
        return {"handle": rec["handle"], "lease": rec["lease"]}

    def prepare_abort(self, handle: str, *, reason: str = "abort") -> dict:
        rec = {"op": "abort", "handle": handle, "reason": reason}
        self._check_abort(rec)
        return rec

    def _check_abort(self, rec: Mapping) -> None:
        self._draft(rec["handle"])

    def _apply_abort(self, rec: Mapping) -> dict:
        d = self._drafts.pop(rec["handle"])
        for bid, nodes in zip(d.bids, d.targets):
            del self._blocks[bid]
            for node in nodes:
                self._queue(node, bid)
        if rec.get("reason") == "expired":
            log.info("draft %s for %s expired; %d blocks queued for deletion",
                     d.handle, d.path, len(d.bids))
        return {"handle": d.handle, "path": d.path, "blocks": len(d.bids)}

    # ------------------------------------------------------------------ commit

    def prepare_commit(self, handle: str, blocks: Sequence[Mapping[str, Any]]) -> dict:
        """``blocks``: [{"id", "size", "checksum", "replicas"}] in file order."""
        try:
            entries = [[b["id"], b["size"], b["checksum"],
                        _nodes_arg(b["replicas"], handle, "replicas")] for b in blocks]
        except (KeyError, TypeError):
            raise _error(errno.EINVAL, handle,
                         "blocks must be mappings with id, size, checksum, replicas") from None
        rec = {"op": "commit", "handle": handle, "blocks": entries, "mtime": self._clock()}
        self._check_commit(rec)
        return rec

    def _check_commit(self, rec: Mapping) -> None:
        d = self._draft(rec["handle"])
        path, blocks = d.path, rec["blocks"]
        _check(isinstance(blocks, list), path, "blocks must be a list")
        _check(_is_time(rec["mtime"]), path, "bad mtime")
        mine, seen = set(d.bids), set()
        for i, entry in enumerate(blocks):
            _check(isinstance(entry, (list, tuple)) and len(entry) == 4, path, "bad block entry")
            bid, size, crc, nodes = entry
            _check(bid in mine, path, f"block {i} was not allocated to this draft")
            _check(bid not in seen, path, f"block {i} listed twice")
            seen.add(bid)
            last = i == len(blocks) - 1
            # full blocks except the last keep offset -> block a division for readers
            _check(type(size) is int and (0 < size <= d.block_size if last
                                          else size == d.block_size),
                   path, f"block {i}: size must be the block size except for the last block")
            _check(type(crc) is int and 0 <= crc < 1 << 32, path, f"block {i}: bad checksum")
            _check(_is_node_list(nodes), path, f"block {i}: replicas must be distinct node ids")
        names = paths.components(path)
        if type(self._walk_parent(path, names).children.get(names[-1])) is Dir:
            raise _error(errno.EISDIR, path)

    def _apply_commit(self, rec: Mapping) -> dict:
        d = self._drafts.pop(rec["handle"])
        names = paths.components(d.path)
        parent = self._walk_parent(d.path, names)
        # reuse the id objects already keyed in the index: one bytes object per block
        where = {bid: i for i, bid in enumerate(d.bids)}
        size, bids, parts = 0, [], [b""]
        for bid, bsize, crc, nodes in rec["blocks"]:
            i = where.pop(bid)
            bid = d.bids[i]
            bids.append(bid)
            for node in d.targets[i]:
                if node not in nodes:
                    self._queue(node, bid)
            parts.append(BLK.pack(bsize, crc, self._rset(nodes)))
            size += bsize
        for bid, i in where.items():  # allocated but not committed: garbage
            del self._blocks[bid]
            for node in d.targets[i]:
                self._queue(node, bid)
        parts[0] = HDR.pack(d.inode, size, rec["mtime"], d.replication, d.block_size)
        inode = Inode(b"".join(parts), tuple(bids))
        for bid in inode.bids:
            self._blocks[bid] = inode
        if len(bids) > BIG_FILE_BLOCKS:
            self._positions[inode] = {bid: i for i, bid in enumerate(inode.bids)}
        old = parent.children.get(names[-1])
        if old is not None:
            self._release_file(old)
        parent.children[names[-1]] = inode
        parent.mtime = rec["mtime"]
        self.files += 1
        self.blocks += len(bids)
        self.bytes += size
        return {"path": d.path, "inode": d.inode, "size": size, "blocks": len(bids),
                "replaced": old is not None}

    def _release_file(self, node: Inode) -> None:
        """Forget a committed file; its blocks go to the deletion queue."""
        for bid, (_, _, rs) in zip(node.bids, node.iter_block_meta()):
            del self._blocks[bid]
            for n in self._rsets[rs]:
                self._queue(n, bid)
        self._positions.pop(node, None)
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
            else:
                files += 1
                self._release_file(node)
        self.dirs -= dirs
        return files, dirs

    # ------------------------------------------------------------------ rm / rename

    def prepare_rm(self, path: str, *, recursive: bool = False) -> dict:
        rec = {"op": "rm", "path": paths.normalize(path), "recursive": bool(recursive),
               "mtime": self._clock()}
        self._check_rm(rec)
        return rec

    def _check_rm(self, rec: Mapping) -> None:
        path = rec["path"]
        names = self._canonical(path)
        if not names:
            raise _error(errno.EINVAL, path, "cannot remove the root directory")
        _check(_is_time(rec["mtime"]), path, "bad mtime")
        _, node = self._node(path)
        if type(node) is Dir and node.children and not rec["recursive"]:
            raise _error(errno.ENOTEMPTY, path)

    def _apply_rm(self, rec: Mapping) -> dict:
        names = paths.components(rec["path"])
        parent = self._walk_parent(rec["path"], names)
        node = parent.children.pop(names[-1])
        parent.mtime = rec["mtime"]
        nbytes = self.bytes
        files, dirs = self._release_tree(node)
        return {"path": rec["path"], "files": files, "dirs": dirs, "bytes": nbytes - self.bytes}

    def prepare_rename(self, src: str, dst: str) -> dict:
        """Exact rename (``dst`` is the new path); use resolve_move() for ``mv`` into dirs."""
        rec = {"op": "rename", "src": paths.normalize(src), "dst": paths.normalize(dst),
               "mtime": self._clock()}
        self._check_rename(rec)
        return rec

    def _check_rename(self, rec: Mapping) -> None:
        src, dst = rec["src"], rec["dst"]
        snames, dnames = self._canonical(src), self._canonical(dst)
        if not snames:
            raise _error(errno.EINVAL, src, "cannot rename the root directory")
        if not dnames:
            raise _error(errno.EINVAL, dst, "cannot replace the root directory")
        _check(_is_time(rec["mtime"]), src, "bad mtime")
        _, node = self._node(src)
        if src == dst:
            return
        if type(node) is Dir and paths.is_within(dst, src):
            raise _error(errno.EINVAL, dst, "cannot move a directory into its own subtree")
        target = self._walk_parent(dst, dnames).children.get(dnames[-1])
        if target is None:
            return
        if type(node) is not Dir and type(target) is Dir:
            raise _error(errno.EISDIR, dst)
        if type(node) is Dir and type(target) is not Dir:
            raise _error(errno.ENOTDIR, dst)
        if type(target) is Dir and target.children:
            raise _error(errno.ENOTEMPTY, dst)

    def _apply_rename(self, rec: Mapping) -> dict:
        src, dst = rec["src"], rec["dst"]
        if src == dst:
            return {"src": src, "dst": dst, "replaced": False}
        snames, dnames = paths.components(src), paths.components(dst)
        sparent = self._walk_parent(src, snames)
        node = sparent.children.pop(snames[-1])
        sparent.mtime = rec["mtime"]
        dparent = self._walk_parent(dst, dnames)
        old = dparent.children.get(dnames[-1])
        if old is not None:
            self._release_tree(old)
        dparent.children[dnames[-1]] = node
        dparent.mtime = rec["mtime"]
        return {"src": src, "dst": dst, "replaced": old is not None}

    # ------------------------------------------------------------------ blocks

    def prepare_set_replicas(self, block_id: bytes, replicas: Sequence[str]) -> dict:
        rec = {"op": "set_replicas", "block": block_id,
               "replicas": _nodes_arg(replicas, None, "replicas")}
        self._check_set_replicas(rec)
        return rec

    def _check_set_replicas(self, rec: Mapping) -> None:
        bid = rec["block"]
        _check(_is_block_id(bid), None, "block id must be 16 bytes")
        if type(self._blocks.get(bid)) is not Inode:
            raise _error(errno.ENOENT, bid.hex(), "no committed block with this id")
        _check(_is_node_list(rec["replicas"]), bid.hex(), "replicas must be distinct node ids")

    def _apply_set_replicas(self, rec: Mapping) -> dict:
        bid, nodes = rec["block"], rec["replicas"]
        inode, i = self._locate(bid)
        size, crc, rs = inode.block(i)
        for n in self._rsets[rs]:
            if n not in nodes:
                self._queue(n, bid)
        for n in nodes:
            pending = self.pending_deletes.get(n)
            if pending is not None:  # a node that holds it again must not delete it
                pending.pop(bid, None)
                if not pending:
                    del self.pending_deletes[n]
        off = HDR.size + i * BLK.size
        meta = inode.meta
        inode.meta = meta[:off] + BLK.pack(size, crc, self._rset(nodes)) + meta[off + BLK.size:]
        return {"block": bid, "replicas": list(nodes)}

    def _live_on(self, bid: bytes, node: str) -> bool:
        found = self._locate(bid)
        if found is None:
            return False
        owner, i = found
        if type(owner) is Draft:
            return node in owner.targets[i]
        return node in self._rsets[owner.block(i)[2]]

    def prepare_queue_delete(self, node: str, block_ids: Sequence[bytes]) -> dict:
        """Queue orphans for deletion; blocks live on ``node`` are left out."""
        rec = {"op": "queue_delete", "node": node,
               "blocks": [b for b in dict.fromkeys(block_ids) if not self._live_on(b, node)]}
        self._check_queue_delete(rec)
        return rec

    def _check_queue_delete(self, rec: Mapping) -> None:
        node = rec["node"]
        _check(isinstance(node, str) and node != "", node, "bad node id")
        _check(isinstance(rec["blocks"], list) and all(map(_is_block_id, rec["blocks"])),
               node, "block ids must be 16 bytes")
        for bid in rec["blocks"]:
            _check(not self._live_on(bid, node), node, f"block {bid.hex()} is live on {node}")

    def _apply_queue_delete(self, rec: Mapping) -> dict:
        for bid in rec["blocks"]:
            self._queue(rec["node"], bid)
        return {"node": rec["node"], "queued": len(rec["blocks"])}

    def prepare_ack_delete(self, node: str, block_ids: Sequence[bytes]) -> dict:
        rec = {"op": "ack_delete", "node": node, "blocks": list(block_ids)}
        self._check_ack_delete(rec)
        return rec

    def _check_ack_delete(self, rec: Mapping) -> None:
        node = rec["node"]
        _check(isinstance(node, str) and node != "", node, "bad node id")
        _check(isinstance(rec["blocks"], list) and all(map(_is_block_id, rec["blocks"])),
               node, "block ids must be 16 bytes")

    def _apply_ack_delete(self, rec: Mapping) -> dict:
        pending = self.pending_deletes.get(rec["node"])
        before = len(pending) if pending else 0
        if pending:
            for bid in rec["blocks"]:
                pending.pop(bid, None)
            if not pending:
                del self.pending_deletes[rec["node"]]
        return {"node": rec["node"], "acked": before - (len(pending) if pending else 0)}

    # ------------------------------------------------------------------ snapshot support
    # Used by mds/snapshot.py only: plain-data export and import of the whole state.

    def export_state(self) -> dict:
        return {"next_inode": self.next_inode, "root_mtime": self._root.mtime,
                "rsets": [list(t) for t in self._rsets],
                "drafts": [d.to_list() for d in self._drafts.values()],
                "counts": {"files": self.files, "dirs": self.dirs, "blocks": self.blocks,
                           "bytes": self.bytes}}

    def export_tree(self) -> Iterator[tuple]:
        """Pre-order entries: (0, parent dir no., name, mtime) for a directory, numbered
        in order of appearance from 1 (the root is 0), and (1, dir no., name, meta, bids)."""
        stack: list[tuple[int, Dir]] = [(0, self._root)]
        count = 0
        while stack:
            idx, d = stack.pop()
            for name, child in d.children.items():
                if type(child) is Dir:
                    count += 1
                    yield (0, idx, name, child.mtime)
                    stack.append((count, child))
                else:
                    yield (1, idx, name, child.meta, child.bids)

    def restore_state(self, state: Mapping) -> None:
        self.next_inode = state["next_inode"]
        self._root.mtime = state["root_mtime"]
        for nodes in state["rsets"]:
            self._rset(nodes)
        for handle, path, ino, repl, bsize, lease, mtime, bids, targets in state["drafts"]:
            d = self._drafts[handle] = Draft(handle, path, ino, repl, bsize, lease, mtime)
            d.bids = list(bids)
            d.targets = [tuple(t) for t in targets]
            for bid in d.bids:
                self._blocks[bid] = d
        self._restore_dirs = [self._root]

    def restore_dirs(self, flat: Sequence) -> None:
        """Directories as a flat list: parent no., name, mtime, parent no., ..."""
        dirs = self._restore_dirs
        it = iter(flat)
        for parent, name, mtime in zip(it, it, it):
            d = dirs[parent].children[name] = Dir(mtime)
            dirs.append(d)

    def restore_files(self, flat: Sequence) -> None:
        """Files as a flat list: dir no., name, meta, block ids, dir no., ..."""
        dirs, blocks, size_of, positions = (self._restore_dirs, self._blocks,
                                            _SIZE.unpack_from, self._positions)
        nfiles, nblocks, nbytes = 0, 0, 0
        it = iter(flat)
        for di, name, meta, bids in zip(it, it, it, it):
            if type(bids) is not tuple:
                bids = tuple(bids)
            node = dirs[di].children[name] = Inode(meta, bids)
            for bid in bids:
                blocks[bid] = node
            n = len(bids)
            if n > BIG_FILE_BLOCKS:
                positions[node] = {b: i for i, b in enumerate(node.bids)}
            nfiles += 1
            nblocks += n
            nbytes += size_of(meta, 8)[0]
        self.files += nfiles
        self.blocks += nblocks
        self.bytes += nbytes

    def restore_deletes(self, node: str, block_ids: Sequence[bytes]) -> None:
        for bid in block_ids:
            self._queue(node, bid)

    def finish_restore(self) -> None:
        self.dirs = len(self._restore_dirs) - 1
        del self._restore_dirs
