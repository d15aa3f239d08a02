"""The DataNode-facing operations of the MDS (service "mds"): heartbeats (which carry the
DataNodes' commands back), block reports, and the replica changes DataNodes and clients
report (replica_added, block_corrupt, bad_replica), all handed to the RepairPlanner
(mds/repair.py). A mixin of `mds.ops.Handlers`; the DataNode operations are callable
only by DataNodes speaking for themselves (`binds="node"`).
"""
from __future__ import annotations

import errno

import msgpack

from broker.limits import MAX_DELETES
from broker.service import Context, Int, List, Str, operation

from .namespace import MAX_BLOCK_SIZE
from .ops_base import (BLOCK, CHECKSUM, CLIENT, COUNT, DATA_ADVERT, DATANODE, NODE, RECEIPT,
                       HandlerBase, bad_request)

MAX_DELETES_PER_HEARTBEAT = MAX_DELETES
MAX_ACKS = 100_000         # deletions / failed copies a heartbeat may acknowledge


class DataNodeOps(HandlerBase):
    """DataNode traffic and replica reports, mixed into Handlers."""

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
            raise bad_request("block_report payload is not valid msgpack") from None
        if not isinstance(blocks, list):
            raise bad_request("block_report payload must be a list")
        entries = []
        for item in blocks:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)
                    and len(item[0]) == 16 and isinstance(item[1], int) and isinstance(item[2], int)):
                entries.append((item[0], item[1], item[2]))
        self._submit_all(self.repair.on_report(h["node"], entries))
        return {"accepted": len(entries)}
