"""The MDS's operations (service "mds"), each declared once with broker.service.operation:
fields with their bounds, who may call it, and a docstring that is its protocol spec.
The declarations live with their handlers in four groups, mixins of `Handlers`:
the namespace verbs (mds/ops_namespace.py), the write path and block pools
(mds/ops_write.py), DataNode traffic and replica reports (mds/ops_datanode.py), status
and administration (mds/ops_admin.py); their shared field types, `cred_of` and state are
mds/ops_base.py. This module builds that state and the one service table, and keeps
`batch` and the upkeep between batches.

A handler reads the namespace or submits a record to the MetaStore and returns the result
map; the server loop sends it only after the batch's fsync. Events go to `ctx.emit` and
are published by the loop after that same fsync. Clocks come from the Context (`now`
monotonic, `wall` wall clock), never from the handlers. Public API: `Handlers` (its
`.service`, `upkeep(now, wall)`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

from broker.limits import MAX_BATCH, MDS_SERVICE
from broker.service import Context, List, Request, Service, operation

from .cluster import ClusterView
from .grants import Grants
from .metastore import MetaStore
from .ops_admin import AdminOps
from .ops_base import CLIENT
from .ops_datanode import DataNodeOps
from .ops_namespace import NamespaceOps
from .ops_write import WriteOps
from .quota import Allocations
from .repair import RepairPlanner

log = logging.getLogger(__name__)

STALL = 2.0      # seconds without an upkeep (normally <= ~0.5) that mean this MDS stalled
# What a `batch` may carry: the namespace and write-protocol operations of clients.
BATCHABLE = frozenset({"mkdir", "stat", "ls", "create", "allocate", "replace_target",
                       "commit", "pool", "put_small", "abort", "renew", "rm", "chmod", "chown", "copy",
                       "rename", "link", "utimens"})


class Handlers(NamespaceOps, WriteOps, DataNodeOps, AdminOps):
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
        self._last_upkeep: float | None = None    # wall clock of the previous upkeep
        self._stall: tuple[float, float] | None = None   # (began, grace until), see upkeep

    def _once(self, opid: bytes, ctx: Context, call: Callable[[], Any]) -> Any:
        """A mutation with an operation id: applied at most once, its records and answer
        in one WAL record (mds/opids.py), so a retry after a restart gets the same answer.
        Keyed by caller too: one user's id never returns another user's answer."""
        return self.store.once(opid + ctx.caller_id.encode(), ctx.wall, call)

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

    # -- between batches -----------------------------------------------------------------

    def _expiry_cutoff(self, wall: float) -> float:
        """Leases ending at or before this expire now. Normally `wall`; but after this MDS
        itself stalled (no upkeep for more than STALL s: a long fsync, a paused process,
        the host starved), nobody could renew meanwhile, so a lease that ended during
        the stall gets as long again to be renewed before it expires (its renew may be
        queued at the broker right now); leases that ended before the stall expire."""
        last, self._last_upkeep = self._last_upkeep, wall
        if last is not None and wall - last > STALL:
            began, until = last, wall + (wall - last)
            if self._stall is not None:          # stalled again within a grace
                began, until = min(began, self._stall[0]), max(until, self._stall[1])
            self._stall = (began, until)
            log.warning("no upkeep for %.1f s (this MDS stalled): leases that ended "
                        "meanwhile get until %.1f s from now to be renewed",
                        wall - last, wall - last)
        if self._stall is not None:
            if wall < self._stall[1]:
                return self._stall[0]
            self._stall = None
        return wall

    def upkeep(self, now: float, wall: float) -> list[tuple[str, dict]]:
        """Lease expiry, dead nodes, repair planning; `now` monotonic, `wall` wall clock."""
        events: list[tuple[str, dict]] = []
        for ev in self.cluster.check(now):
            events.append((ev.topic, {"node": ev.node, "reason": ev.reason}))
            if ev.topic == "node.down":
                self.repair.on_node_down(ev.node)
        for rec in self.ns.expire_drafts(self._expiry_cutoff(wall)):
            self._submit_all([rec])
            self.allocations.release(rec["handle"])
        self.allocations.retain(self.ns.drafts.by_handle)
        self.grants.tick(wall)
        records, repair_events = self.repair.tick()
        self._submit_all(records)
        events.extend(repair_events)
        return events
