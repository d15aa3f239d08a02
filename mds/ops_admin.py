"""The status and administration operations of the MDS (service "mds"): ping, status
(the cluster view), drain (empty a DataNode before removing it) and fsck (the health of
the block map, and a repair pass on demand). A mixin of `mds.ops.Handlers`.
"""
from __future__ import annotations

import errno

from broker.service import EVERYONE, Bool, Context, operation

from .ops_base import CLIENT, NODE, HandlerBase, cred_of
from .perms import SUPERUSER


class AdminOps(HandlerBase):
    """Status and administration, mixed into Handlers."""

    @operation(callers=EVERYONE)
    def ping(self, h: dict, payload: list, ctx: Context) -> dict:
        """Liveness: {pong: true, safe_mode: bool}."""
        return {"pong": True, "safe_mode": self.repair.safe_mode}

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
