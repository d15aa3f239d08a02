"""The block index of the namespace: block id -> owner (a committed ``Inode`` or a
``Draft``, or a tuple of the committed files that share it) and position, the interned
replica sets, and the deletion queue; with the records that touch blocks only
(set_replicas, queue_delete, ack_delete).

Shared blocks (server-side copies, commits that reuse blocks): ``owners[bid]`` is a
single ``Inode`` or ``Draft`` while one reference exists, as cheap as before, and a
tuple of ``Inode``s (one entry per reference, so a file holding a block twice appears
twice) only while several do. Drafts never share: the blocks a commit reuses are
referenced when it applies. Every holder keeps the block's (size, checksum, replica set)
in its own packed meta; ``apply_set_replicas`` writes them all, so repairs see one block
and fix every file. A block's copies are queued for deletion only when its last
reference goes.

The Namespace indexes and releases blocks as drafts allocate, commit and go away; a
released block's copies go to the deletion queue, ``pending_deletes``: node -> block id
-> queue number, oldest first (insertion order). The numbers (``delete_seq`` is the last
one given) let the repair planner tell how long ago a delete was queued without a clock
here. Deterministic like the rest of the namespace: no clock, no randomness, no I/O.
"""
from __future__ import annotations

import errno
from typing import Iterator, Mapping, Sequence, cast

from mds.fields import check, error, is_block_id, is_node_list
from mds.inode import BIG_FILE_BLOCKS, Draft, Inode, ReplicaSets


Owner = Inode | Draft | tuple[Inode, ...]


class BlockMap:
    def __init__(self) -> None:
        self.owners: dict[bytes, Owner] = {}
        # only files with more than BIG_FILE_BLOCKS blocks have an entry
        self.positions: dict[Inode, dict[bytes, int]] = {}
        self.rsets = ReplicaSets()
        self.pending_deletes: dict[str, dict[bytes, int]] = {}
        self.delete_seq = 0
        self.shared = 0             # blocks with more than one reference

    def __contains__(self, bid: bytes) -> bool:
        return bid in self.owners

    def locate(self, bid: bytes) -> tuple[Inode | Draft, int] | None:
        owner = self.owners.get(bid)
        if owner is None:
            return None
        if isinstance(owner, tuple):
            owner = owner[0]
        pos = self.positions.get(owner) if type(owner) is Inode else None
        return owner, (pos[bid] if pos is not None else owner.bids.index(bid))

    def _locate_committed(self, bid: bytes) -> tuple[Inode, int]:
        """locate() for a block the caller knows committed files hold (its owner entry
        is an Inode or a tuple of them): the checker cannot follow that from owners."""
        return cast("tuple[Inode, int]", self.locate(bid))

    # ------------------------------------------------------------------ indexing

    def add_file(self, inode: Inode, shared: frozenset[int] = frozenset()) -> None:
        """Index a committed file: its own blocks (until now a draft's, or new) become
        its; the positions in ``shared`` name blocks other files hold, which gain a
        reference."""
        owners = self.owners
        if shared:
            for i, bid in enumerate(inode.bids):
                if i in shared:
                    self.add_ref(bid, inode)
                else:
                    owners[bid] = inode
        else:
            for bid in inode.bids:
                owners[bid] = inode
        if len(inode.bids) > BIG_FILE_BLOCKS:
            self.positions[inode] = {bid: i for i, bid in enumerate(inode.bids)}

    def add_ref(self, bid: bytes, inode: Inode) -> None:
        """One more reference to committed block ``bid``, held by ``inode``."""
        held = self.owners[bid]
        if type(held) is tuple:
            self.owners[bid] = (*held, inode)
        else:
            self.owners[bid] = (held, inode)    # type: ignore[assignment]
            self.shared += 1

    def holders(self, bid: bytes) -> tuple[Inode, ...]:
        """The committed files holding ``bid`` (each once), or () for a draft's or none."""
        held = self.owners.get(bid)
        if type(held) is tuple:
            return tuple({id(h): h for h in held}.values())
        return (held,) if type(held) is Inode else ()

    def refs(self, bid: bytes) -> int:
        """How many references (file block entries) hold ``bid``; 0 for none."""
        held = self.owners.get(bid)
        return len(held) if type(held) is tuple else int(held is not None)

    def release_file(self, inode: Inode) -> None:
        """Forget a committed file's blocks: a block it alone held goes with its replicas
        to the deletion queue; a shared one loses one reference."""
        rsets, owners = self.rsets, self.owners
        for bid, (_, _, rs) in zip(inode.bids, inode.iter_block_meta()):
            held = owners.pop(bid)
            if held is inode:
                for n in rsets[rs]:
                    self.queue(n, bid)
            else:                                   # shared: _drop_ref puts it back
                self._drop_ref(bid, held, inode)    # type: ignore[arg-type]
        self.positions.pop(inode, None)

    def _drop_ref(self, bid: bytes, held: tuple[Inode, ...], inode: Inode) -> None:
        i = next(i for i, h in enumerate(held) if h is inode)
        rest = held[:i] + held[i + 1:]
        if len(rest) == 1:
            self.owners[bid] = rest[0]
            self.shared -= 1
        else:
            self.owners[bid] = rest

    def release_block(self, bid: bytes, nodes: Sequence[str]) -> None:
        """Forget a draft's block; its copies on ``nodes`` go to the deletion queue."""
        del self.owners[bid]
        for node in nodes:
            self.queue(node, bid)

    def queue(self, node: str, bid: bytes) -> None:
        pending = self.pending_deletes.setdefault(node, {})
        if bid not in pending:        # queued once: a second reason keeps the first number
            self.delete_seq += 1
            pending[bid] = self.delete_seq

    # ------------------------------------------------------------------ reads

    def blocks_of(self, inode: Inode) -> list[dict]:
        rsets = self.rsets
        return [{"id": bid, "size": size, "checksum": crc, "replicas": list(rsets[rs])}
                for bid, (size, crc, rs) in zip(inode.bids, inode.iter_block_meta())]

    def block_info(self, bid: bytes) -> dict | None:
        """Where a block belongs, or None for an unknown (orphan) id."""
        found = self.locate(bid)
        if found is None:
            return None
        owner, i = found
        if type(owner) is Draft:
            return {"id": bid, "draft": owner.handle, "index": i,
                    "targets": list(owner.targets[i]), "replication": owner.replication}
        size, crc, rs = owner.block(i)
        info = {"id": bid, "inode": owner.id, "index": i, "size": size, "checksum": crc,
                "replicas": list(self.rsets[rs]), "replication": owner.header()[3]}
        held = self.owners[bid]
        if type(held) is tuple:     # the most any holder wants is what the block gets
            info["replication"] = max(h.header()[3] for h in held)
            info["refs"] = len(held)
        return info

    def live_on(self, bid: bytes, node: str) -> bool:
        found = self.locate(bid)
        if found is None:
            return False
        owner, i = found
        if type(owner) is Draft:
            return node in owner.targets[i]
        return node in self.rsets[owner.block(i)[2]]

    def iter_blocks(self) -> Iterator[tuple[bytes, tuple[str, ...], int]]:
        """(block id, replicas, wanted replication) of every committed block."""
        for bid, owner in self.owners.items():
            if type(owner) is Inode:
                i = self._locate_committed(bid)[1]
                yield bid, self.rsets[owner.block(i)[2]], owner.header()[3]
            elif type(owner) is tuple:
                first, i = self._locate_committed(bid)
                yield (bid, self.rsets[first.block(i)[2]],
                       max(h.header()[3] for h in owner))

    def replica_nodes(self) -> set[str]:
        """Every node named in a replica set ever used (cheap: the interned table)."""
        return {node for rs in self.rsets for node in rs}

    def deletes_for(self, node: str, limit: int | None = None,
                    max_seq: int | None = None) -> list[bytes]:
        """Block ids ``node`` should delete, oldest first: at most ``limit``, and only those
        queued as number ``max_seq`` or earlier. Read-only: removal is an ack_delete record."""
        pending = self.pending_deletes.get(node)
        if not pending:
            return []
        if limit is None and max_seq is None:
            return list(pending)
        out: list[bytes] = []
        for bid, seq in pending.items():
            if (limit is not None and len(out) >= limit) or (max_seq is not None
                                                             and seq > max_seq):
                break
            out.append(bid)
        return out

    def is_pending_delete(self, node: str, bid: bytes) -> bool:
        pending = self.pending_deletes.get(node)
        return pending is not None and bid in pending

    def pending_count(self) -> int:
        return sum(len(s) for s in self.pending_deletes.values())

    # ------------------------------------------------------------------ records

    def check_set_replicas(self, rec: Mapping) -> None:
        bid = rec["block"]
        check(is_block_id(bid), None, "block id must be 16 bytes")
        if type(self.owners.get(bid)) not in (Inode, tuple):
            raise error(errno.ENOENT, bid.hex(), "no committed block with this id")
        check(is_node_list(rec["replicas"]), bid.hex(), "replicas must be distinct node ids")

    def apply_set_replicas(self, rec: Mapping) -> dict:
        bid, nodes = rec["block"], rec["replicas"]
        inode, i = self._locate_committed(bid)     # check_set_replicas: a committed block
        size, crc, rs = inode.block(i)
        for n in self.rsets[rs]:
            if n not in nodes:
                self.queue(n, bid)
        for n in nodes:
            pending = self.pending_deletes.get(n)
            if pending is not None:  # a node that holds it again must not delete it
                pending.pop(bid, None)
                if not pending:
                    del self.pending_deletes[n]
        rs = self.rsets.intern(nodes)
        if type(self.owners[bid]) is tuple:     # every file holding it: one block
            for h in self.holders(bid):
                for j, b in enumerate(h.bids):
                    if b == bid:
                        h.meta = h.with_block(j, size, crc, rs)
        else:
            inode.meta = inode.with_block(i, size, crc, rs)
        return {"block": bid, "replicas": list(nodes)}

    def check_queue_delete(self, rec: Mapping) -> None:
        node = rec["node"]
        self._check_node_blocks(rec)
        for bid in rec["blocks"]:
            check(not self.live_on(bid, node), node, f"block {bid.hex()} is live on {node}")

    def apply_queue_delete(self, rec: Mapping) -> dict:
        for bid in rec["blocks"]:
            self.queue(rec["node"], bid)
        return {"node": rec["node"], "queued": len(rec["blocks"])}

    def check_ack_delete(self, rec: Mapping) -> None:
        self._check_node_blocks(rec)

    def apply_ack_delete(self, rec: Mapping) -> dict:
        pending = self.pending_deletes.get(rec["node"])
        before = len(pending) if pending else 0
        if pending:
            for bid in rec["blocks"]:
                pending.pop(bid, None)
            if not pending:
                del self.pending_deletes[rec["node"]]
        return {"node": rec["node"], "acked": before - (len(pending) if pending else 0)}

    @staticmethod
    def _check_node_blocks(rec: Mapping) -> None:
        node = rec["node"]
        check(isinstance(node, str) and node != "", node, "bad node id")
        check(isinstance(rec["blocks"], list) and all(map(is_block_id, rec["blocks"])),
              node, "block ids must be 16 bytes")
