"""Files under construction: the table of drafts by handle, the records that touch a
draft only (allocate, add_target, renew, abort) and the draft reads. The Namespace owns
the two records that join a draft to the tree, create and commit.
"""
from __future__ import annotations

import errno
import logging
from typing import Any, Mapping

from mds.blockmap import BlockMap
from mds.fields import check, error, is_block_id, is_node_list, is_time
from mds.inode import Draft

log = logging.getLogger(__name__)

# The path of a block pool (the `pool` record): blocks allocated ahead of the small files
# a client will write, each moved to its file's draft by `adopt`. No file has this path
# (every path starts with "/"), so a pool can never be committed.
POOL_PATH = ""


class Drafts:
    def __init__(self, blockmap: BlockMap) -> None:
        self.by_handle: dict[str, Draft] = {}
        self._blockmap = blockmap

    def get(self, handle: Any) -> Draft:
        """The draft, or ENOENT naming the handle."""
        draft = self.by_handle.get(handle) if isinstance(handle, str) else None
        if draft is None:
            raise error(errno.ENOENT, handle, "no such draft (aborted, expired or committed)")
        return draft

    # ------------------------------------------------------------------ reads

    def info(self, handle: str) -> dict:
        d = self.get(handle)
        return {"handle": d.handle, "path": d.path, "inode": d.inode,
                "replication": d.replication, "block_size": d.block_size, "lease": d.lease,
                "blocks": [{"id": b, "targets": list(t)} for b, t in zip(d.bids, d.targets)]}

    def expired(self, now: float) -> list[dict]:
        """Abort records for drafts whose lease deadline is at or before ``now``."""
        return [{"op": "abort", "handle": h, "reason": "expired"}
                for h, d in sorted(self.by_handle.items()) if d.lease <= now]

    # ------------------------------------------------------------------ records

    def check_allocate(self, rec: Mapping) -> None:
        handle = rec["handle"]
        self.get(handle)
        blocks = rec["blocks"]
        check(isinstance(blocks, list) and len(blocks) > 0, handle, "no blocks to allocate")
        check(is_time(rec["lease"]), handle, "bad lease")
        seen = set()
        for entry in blocks:
            check(isinstance(entry, (list, tuple)) and len(entry) == 2, handle, "bad block")
            bid, nodes = entry
            check(is_block_id(bid), handle, "block id must be 16 bytes")
            check(bid not in self._blockmap and bid not in seen, handle, "block id in use")
            check(is_node_list(nodes), handle, "targets must be distinct node ids")
            seen.add(bid)

    def apply_allocate(self, rec: Mapping) -> dict:
        d = self.by_handle[rec["handle"]]
        owners = self._blockmap.owners
        for bid, nodes in rec["blocks"]:
            d.bids.append(bid)
            d.targets.append(tuple(nodes))
            owners[bid] = d
        d.lease = rec["lease"]
        return {"handle": d.handle, "lease": d.lease,
                "blocks": [{"id": bid, "targets": list(nodes)} for bid, nodes in rec["blocks"]]}

    def check_add_target(self, rec: Mapping) -> None:
        d = self.get(rec["handle"])
        check(is_block_id(rec["block"]), d.handle, "block id must be 16 bytes")
        check(self._blockmap.owners.get(rec["block"]) is d, d.handle,
              "block is not part of this draft")
        check(isinstance(rec["node"], str) and rec["node"] != "", d.handle, "bad node id")

    def apply_add_target(self, rec: Mapping) -> dict:
        d = self.by_handle[rec["handle"]]
        i = d.bids.index(rec["block"])
        if rec["node"] not in d.targets[i]:
            d.targets[i] = (*d.targets[i], rec["node"])
        return {"handle": d.handle, "block": rec["block"], "targets": list(d.targets[i])}

    def check_adopt(self, rec: Mapping) -> None:
        pool, d = self.get(rec["pool"]), self.get(rec["handle"])
        check(pool.path == POOL_PATH, pool.handle, "not a block pool")
        check(d.path != POOL_PATH, d.handle, "a block pool cannot adopt blocks")
        blocks = rec["blocks"]
        check(isinstance(blocks, list) and len(blocks) <= len(pool.bids), pool.handle,
              "bad block list")
        owners = self._blockmap.owners
        check(len(set(blocks)) == len(blocks), pool.handle, "block listed twice")
        for bid in blocks:
            check(is_block_id(bid) and owners.get(bid) is pool, pool.handle,
                  "block is not part of this pool")
        check(d.block_size == pool.block_size and d.replication == pool.replication,
              d.handle, "the draft's replication and block size differ from the pool's")

    def apply_adopt(self, rec: Mapping) -> dict:
        pool, d = self.by_handle[rec["pool"]], self.by_handle[rec["handle"]]
        owners = self._blockmap.owners
        for bid in rec["blocks"]:
            i = pool.bids.index(bid)
            d.bids.append(pool.bids.pop(i))     # the id object the index is keyed by
            d.targets.append(pool.targets.pop(i))
            owners[bid] = d
        return {"handle": d.handle, "pool": pool.handle, "blocks": len(rec["blocks"])}

    def check_renew(self, rec: Mapping) -> None:
        self.get(rec["handle"])
        check(is_time(rec["lease"]), rec["handle"], "bad lease")

    def apply_renew(self, rec: Mapping) -> dict:
        self.by_handle[rec["handle"]].lease = rec["lease"]
        return {"handle": rec["handle"], "lease": rec["lease"]}

    def check_abort(self, rec: Mapping) -> None:
        self.get(rec["handle"])

    def apply_abort(self, rec: Mapping) -> dict:
        d = self.by_handle.pop(rec["handle"])
        for bid, nodes in zip(d.bids, d.targets):
            self._blockmap.release_block(bid, nodes)
        if rec.get("reason") == "expired":
            log.info("draft %s for %s expired; %d blocks queued for deletion",
                     d.handle, d.path, len(d.bids))
        return {"handle": d.handle, "path": d.path, "blocks": len(d.bids)}
