"""Sans-IO view of the DataNodes: liveness from heartbeats, and block placement.

Owns which nodes are up, their reported capacity/usage, and the choice of target nodes
for new blocks. Time comes in as ``now`` arguments; randomness from an injected
``random.Random``. Nothing here is durable: after an MDS restart nodes re-register.

Public API:
    ClusterView(*, dead_after=5.0, rng=None, promise_ttl=30.0)
    .register(node, capacity, used, blocks, now) -> [NodeEvent]   always "node.up"
        (a DataNode process (re)started: its in-flight work is gone)
    .heartbeat(node, capacity, used, blocks, now) -> [NodeEvent]  "node.up" only when the
        node is new or was down
    .check(now) -> [NodeEvent]   "node.down" for nodes silent for >= dead_after seconds
    .live_nodes(now=None) -> sorted node ids;  .is_live(node, now=None) -> bool
    .place(r, *, now, exclude=(), min_nodes=None, reserve=0) -> [node ids]
        r distinct live nodes, drawn at random without replacement with probability
        proportional to free space = capacity - used - bytes promised to recent
        placements (``reserve`` bytes per chosen node, forgotten after promise_ttl
        seconds, by which time heartbeats report them as used). Nodes with less than
        ``reserve`` (or no) free space are not eligible. Fewer than r nodes are returned
        only when the caller passes min_nodes; fewer eligible nodes than r (or than
        min_nodes) raise OSError(ENOSPC, "only K live DataNodes ..., need R").
    .drain(node, on=True) -> bool (whether it changed): a draining node keeps serving
        its replicas but gets no new ones (place skips it) and its replicas stop
        counting toward R (the repair planner copies them away, then drops them).
        Kept in memory like the rest: an MDS restart forgets a drain (issue it again).
    .is_draining(node) -> bool
    .forget(node), .nodes() -> {node: info dict} for stats and the visualiser
    NodeEvent(topic, node, time, reason).as_dict()
"""
from __future__ import annotations

import errno
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeEvent:
    topic: str          # "node.up" | "node.down"
    node: str
    time: float
    reason: str = ""

    def as_dict(self) -> dict:
        return {"topic": self.topic, "node": self.node, "time": self.time,
                "reason": self.reason}


@dataclass
class _Node:
    capacity: int
    used: int
    blocks: int
    last_seen: float
    up: bool = True
    draining: bool = False
    promised: int = 0
    promises: deque = field(default_factory=deque)  # (expiry, bytes), in expiry order

    def free(self, now: float) -> int:
        while self.promises and self.promises[0][0] <= now:
            self.promised -= self.promises.popleft()[1]
        return self.capacity - self.used - self.promised


class ClusterView:
    def __init__(self, *, dead_after: float = 5.0, rng: random.Random | None = None,
                 promise_ttl: float = 30.0) -> None:
        self.dead_after = dead_after
        self.promise_ttl = promise_ttl
        self._rng = rng if rng is not None else random.Random()
        self._nodes: dict[str, _Node] = {}

    def _report(self, node_id: str, capacity: int, used: int, blocks: int, now: float,
                fresh: bool) -> list[NodeEvent]:
        node = self._nodes.get(node_id)
        if node is None:
            self._nodes[node_id] = _Node(capacity, used, blocks, now)
            log.info("DataNode %s registered (%d of %d bytes used)", node_id, used, capacity)
            return [NodeEvent("node.up", node_id, now, "registered")]
        was_up = node.up
        node.capacity, node.used, node.blocks, node.last_seen = capacity, used, blocks, now
        node.up = True
        if not was_up:
            log.info("DataNode %s is back", node_id)
            return [NodeEvent("node.up", node_id, now, "heartbeat resumed")]
        if fresh:
            # promises made to the previous incarnation will never be written
            node.promises.clear()
            node.promised = 0
            return [NodeEvent("node.up", node_id, now, "re-registered")]
        return []

    def register(self, node_id: str, capacity: int, used: int, blocks: int,
                 now: float) -> list[NodeEvent]:
        return self._report(node_id, capacity, used, blocks, now, fresh=True)

    def heartbeat(self, node_id: str, capacity: int, used: int, blocks: int,
                  now: float) -> list[NodeEvent]:
        return self._report(node_id, capacity, used, blocks, now, fresh=False)

    def check(self, now: float) -> list[NodeEvent]:
        events = []
        for node_id in sorted(self._nodes):
            node = self._nodes[node_id]
            if node.up and now - node.last_seen >= self.dead_after:
                node.up = False
                log.warning("DataNode %s is down: no heartbeat for %.1f s", node_id,
                            now - node.last_seen)
                events.append(NodeEvent("node.down", node_id, now, "heartbeat timeout"))
        return events

    def is_live(self, node_id: str, now: float | None = None) -> bool:
        node = self._nodes.get(node_id)
        return (node is not None and node.up
                and (now is None or now - node.last_seen < self.dead_after))

    def live_nodes(self, now: float | None = None) -> list[str]:
        return sorted(n for n in self._nodes if self.is_live(n, now))

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def drain(self, node_id: str, on: bool = True) -> bool:
        """Start (or with on=False cancel) draining a known node; ENOENT if unknown."""
        node = self._nodes.get(node_id)
        if node is None:
            raise OSError(errno.ENOENT, f"no DataNode {node_id!r} has registered")
        changed = node.draining != on
        node.draining = on
        if changed:
            log.info("DataNode %s %s", node_id, "draining" if on else "no longer draining")
        return changed

    def is_draining(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.draining

    def nodes(self) -> dict[str, dict]:
        return {n: {"capacity": s.capacity, "used": s.used, "blocks": s.blocks,
                    "last_seen": s.last_seen, "up": s.up, "promised": s.promised,
                    "draining": s.draining}
                for n, s in sorted(self._nodes.items())}

    def place(self, r: int, *, now: float, exclude: Iterable[str] = (),
              min_nodes: int | None = None, reserve: int = 0) -> list[str]:
        """Choose up to ``r`` distinct live nodes weighted by free space (see module doc)."""
        if r < 1 or (min_nodes is not None and not 1 <= min_nodes <= r):
            raise OSError(errno.EINVAL, f"bad placement request r={r}, min_nodes={min_nodes}")
        excluded = set(exclude)
        # a draining node is being emptied: nothing new goes there
        live = [n for n in self.live_nodes(now)
                if n not in excluded and not self._nodes[n].draining]
        need = r if min_nodes is None else min_nodes
        candidates, weights = [], []
        for n in live:
            free = self._nodes[n].free(now)
            if free >= max(reserve, 1):
                candidates.append(n)
                weights.append(free)
        if len(candidates) < need:
            if len(live) < need:
                why = f"only {len(live)} live DataNodes"
            else:
                why = f"only {len(candidates)} live DataNodes with {max(reserve, 1)} bytes free"
            raise OSError(errno.ENOSPC, f"{why}, need {need}"
                          + (f" (excluding {sorted(excluded)})" if excluded else ""))
        chosen = []
        for _ in range(min(r, len(candidates))):
            i = self._rng.choices(range(len(candidates)), weights=weights)[0]
            chosen.append(candidates.pop(i))
            weights.pop(i)
        if reserve:
            for n in chosen:
                node = self._nodes[n]
                node.promises.append((now + self.promise_ttl, reserve))
                node.promised += reserve
        return chosen
