"""Self-healing decisions, sans-IO: safe mode, block reports, re-replication, orphans, fsck.

Theory of operation. The planner reads the namespace and the cluster view and *returns*
records (set_replicas, queue_delete) for the server to submit, and copy commands for the
DataNodes' heartbeat replies; it never does I/O and takes time from an injected clock.

- Safe mode: after an MDS start nothing is copied or deleted until every DataNode named
  in the namespace has sent a block report (or `safemode_timeout` passed), so a restart
  never triggers a storm of copies or deletes.
- A scan (after a node goes down/up, a bad replica, a report, or `kick()`) lists every
  committed block with fewer live replicas than its replication, most endangered first.
  A heartbeating live replica holder gets copy commands (source -> target chosen by
  placement), at most `max_copies_per_node` in flight each; a copy the source reports
  failed, or that does not report back within `copy_timeout`, is planned again.
- Block reports reconcile: a block the namespace does not know is an orphan candidate,
  deleted after `orphan_grace`; a committed block on a node not in its replica list is
  adopted if the block is short of replicas, else trimmed (deleted there); blocks with
  more live replicas than wanted are trimmed. A block the map places on a node that two
  reports in a row did not list is gone from it (lost file, quarantine never reported):
  that replica is dropped. One report is not proof, since it may have been taken before
  a copy or a commit put the block there; the second is asked for at once and is taken
  after the first was reconciled, so it lists every block that was there by then.
- A replica reported corrupt is dropped from the block map (which queues its deletion)
  when another replica exists; the scan then re-replicates from a good copy.
- Drain (`ClusterView.drain`): a draining node's replicas do not count toward R, so the
  scan lists its blocks as endangered and copies them (the draining node may be the
  source); once a block has R counting replicas elsewhere the draining replicas are
  dropped from the block map (which queues their deletion). `drain_left[node]` is what
  the last scan still found on the node; 0 after a scan = drained, safe to remove.
- Deletes wait `delete_grace` seconds after they were queued before they go to a
  DataNode: a reader that listed the blocks of a file just before an overwrite or rm can
  still fetch them meanwhile. The namespace numbers queued deletes in order; the planner
  notes (time, last number) as time passes, so "queued at least delete_grace ago" is
  "numbered no later than a note that old" - a cut through the queue, not a clock per block.
- Orphan GC is proportional: a reported block that is already queued for deletion on that
  node is not an orphan (it is on its way out), an orphan candidate that a later report no
  longer lists is forgotten, and the orphans whose grace ran out in one tick are queued in
  one record per node. So each orphan is queued once, until the node deletes it (and a
  later report shows it again, which would be a new orphan).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from .cluster import ClusterView
from .namespace import Namespace

log = logging.getLogger(__name__)

Record = dict
Event = tuple[str, dict]


class RepairPlanner:
    def __init__(self, ns: Namespace, cluster: ClusterView, *,
                 clock: Callable[[], float] = time.monotonic, safemode_timeout: float = 30.0,
                 orphan_grace: float = 60.0, max_copies_per_node: int = 4,
                 copy_timeout: float = 60.0, delete_grace: float = 0.0) -> None:
        self.ns = ns
        self.cluster = cluster
        self.clock = clock
        self.orphan_grace = orphan_grace
        self.max_copies = max_copies_per_node
        self.copy_timeout = copy_timeout
        self.started = clock()
        self.safemode_deadline = self.started + safemode_timeout
        self.expected = ns.replica_nodes()
        self.safe_mode = True
        self.reports: dict[str, set[bytes]] = {}
        self._unreconciled: set[str] = set()
        self.unlisted: dict[str, set[bytes]] = {}   # node -> mapped there, not in its report
        self._recheck: set[str] = set()             # nodes asked for a second report
        self.orphan_since: dict[tuple[str, bytes], float] = {}
        self.delete_grace = delete_grace
        # (time, ns.delete_seq then): every delete numbered <= seq was queued by that time
        self._delete_marks: deque[tuple[float, int]] = deque([(self.started, ns.delete_seq)])
        self.corrupt: set[tuple[str, bytes]] = set()
        self.copies: dict[bytes, tuple[str, str, float]] = {}   # block -> source, target, deadline
        self.endangered: list[tuple[int, bytes]] = []            # (live replicas, block)
        self.drain_left: dict[str, int | None] = {}   # draining node -> blocks still there
        self._dirty = True
        self.stats = {"copies_started": 0, "copies_done": 0, "bytes_copied": 0,
                      "orphans_found": 0, "orphans_deleted": 0, "replicas_dropped": 0,
                      "replicas_trimmed": 0, "replicas_lost": 0}

    # -- inputs --------------------------------------------------------------------------

    def has_report(self, node: str) -> bool:
        return node in self.reports

    def wants_report(self, node: str) -> bool:
        """Whether `node`'s heartbeat reply should ask for a full block report."""
        return node not in self.reports or node in self._recheck

    def kick(self) -> None:
        self._dirty = True

    def on_drain(self, node: str, on: bool) -> None:
        """`node` started (or stopped) draining: rescan; unknown progress until then."""
        if on:
            self.drain_left[node] = None
        else:
            self.drain_left.pop(node, None)
        self._dirty = True

    def drain_state(self, node: str) -> tuple[str | None, int | None]:
        """(None | "draining" | "drained", blocks still on it per the last scan)."""
        if not self.cluster.is_draining(node):
            return None, None
        left = self.drain_left.get(node)
        busy = any(src == node for src, _, _ in self.copies.values())
        done = left == 0 and not busy and not self._dirty
        return ("drained" if done else "draining"), left

    def _counts(self, node: str, now: float) -> bool:
        """Whether a replica on `node` counts toward R: live, and not being drained."""
        return self.cluster.is_live(node, now) and not self.cluster.is_draining(node)

    def on_node_up(self, node: str) -> None:
        self._dirty = True

    def on_node_down(self, node: str) -> None:
        self._dirty = True
        for block, (src, dst, _) in list(self.copies.items()):
            if node in (src, dst):
                del self.copies[block]

    def on_copy_failed(self, node: str, blocks: list[bytes]) -> None:
        for block in blocks:
            if self.copies.get(block, ("",))[0] == node:
                del self.copies[block]
                self._dirty = True

    def deletes_ready(self, node: str, limit: int | None = None) -> list[bytes]:
        """The deletes queued for `node` at least delete_grace ago, oldest first."""
        if self.delete_grace <= 0:
            return self.ns.deletes_for(node, limit)
        return self.ns.deletes_for(node, limit, max_seq=self._grace_cut(self.clock()))

    def _grace_cut(self, now: float) -> int:
        """The last delete number queued at least delete_grace before `now`, or -1."""
        marks = self._delete_marks
        if marks[-1][1] != self.ns.delete_seq:
            marks.append((now, self.ns.delete_seq))
        cutoff = now - self.delete_grace
        while len(marks) > 1 and marks[1][0] <= cutoff:
            marks.popleft()          # the newest note old enough is all that is needed
        return marks[0][1] if marks[0][0] <= cutoff else -1

    def on_deleted(self, node: str, blocks: list[bytes]) -> None:
        """`node` deleted these: they are neither its replicas nor orphans any more."""
        held = self.reports.get(node, set())
        for block in blocks:
            held.discard(block)
            self.orphan_since.pop((node, block), None)

    def on_report(self, node: str, entries: list[tuple[bytes, int, int]]) -> list[Record]:
        held = self.reports[node] = {bid for bid, _, _ in entries}
        for key in [k for k in self.orphan_since if k[0] == node and k[1] not in held]:
            del self.orphan_since[key]     # gone from the node since: nothing to delete
        self._unreconciled.add(node)
        self._recheck.discard(node)
        self._dirty = True
        log.info("block report from %s: %d blocks", node, len(entries))
        return [] if self.safe_mode else self._reconcile(node)

    def on_bad_replica(self, node: str, block: bytes) -> list[Record]:
        info = self.ns.block_info(block)
        self._dirty = True
        if info is None or "replicas" not in info:
            return []
        replicas = info["replicas"]
        self.corrupt.add((node, block))
        if node not in replicas:
            return []
        rest = [n for n in replicas if n != node]
        if not rest:
            log.error("the only replica of block %s (on %s) is bad: keeping it, data is at risk",
                      block.hex(), node)
            return []
        self.stats["replicas_dropped"] += 1
        self.reports.get(node, set()).discard(block)
        return [self.ns.prepare_set_replicas(block, rest)]

    def on_replica_added(self, node: str, block: bytes, size: int, checksum: int) -> list[Record]:
        self.copies.pop(block, None)
        info = self.ns.block_info(block)
        if info is None or "replicas" not in info:
            return []
        if info["size"] != size or info["checksum"] != checksum:
            log.error("copy of %s on %s does not match the block map", block.hex(), node)
            return []
        self.reports.setdefault(node, set()).add(block)
        self.corrupt.discard((node, block))
        self.stats["copies_done"] += 1
        self.stats["bytes_copied"] += size
        self._dirty = True
        now = self.clock()
        live = [n for n in info["replicas"] if self.cluster.is_live(n, now) and n != node]
        return [self.ns.prepare_set_replicas(block, [*live, node])]

    # -- outputs -------------------------------------------------------------------------

    def commands_for(self, node: str) -> list[dict]:
        """Copy commands for `node` as a source, most endangered blocks first."""
        if self.safe_mode or not self.endangered:
            return []
        busy = sum(1 for src, _, _ in self.copies.values() if src == node)
        if busy >= self.max_copies:
            return []
        now = self.clock()
        out = []
        for _, block in self.endangered:
            if block in self.copies:
                continue
            info = self.ns.block_info(block)
            if info is None or "replicas" not in info:
                continue
            replicas = info["replicas"]
            if node not in replicas or (node, block) in self.corrupt:
                continue
            live = [n for n in replicas if self._counts(n, now)]
            if len(live) >= info["replication"]:
                continue
            # nor to a node still told to delete this block (say, its corrupt copy was
            # dropped): the delete could land after the copy
            exclude = set(replicas).union(
                n for n, pending in self.ns.pending_deletes.items() if block in pending)
            try:
                target = self.cluster.place(1, now=now, exclude=exclude,
                                            reserve=info["size"])[0]
            except OSError:
                continue   # no node to copy to; the scan will try again later
            self.copies[block] = (node, target, now + self.copy_timeout)
            self.stats["copies_started"] += 1
            out.append({"op": "copy", "block": block, "target": target})
            busy += 1
            if busy >= self.max_copies:
                break
        return out

    def tick(self) -> tuple[list[Record], list[Event]]:
        now = self.clock()
        records: list[Record] = []
        events: list[Event] = []
        if self.safe_mode and (self._all_reported(now) or now >= self.safemode_deadline):
            self.safe_mode = False
            missing = sorted(self.expected - set(self.reports))
            log.info("leaving safe mode (%d nodes reported%s)", len(self.reports),
                     f", never heard from {missing}" if missing else "")
            events.append(("repair.safe_mode_off", {"reported": sorted(self.reports),
                                                    "missing": missing}))
        self._grace_cut(now)              # a note of the delete queue's length, for later
        if self.safe_mode:
            return records, events
        for node in list(self._unreconciled):
            records.extend(self._reconcile(node))
        ripe: dict[str, list[bytes]] = {}
        for key, since in list(self.orphan_since.items()):
            if now - since < self.orphan_grace:
                continue
            del self.orphan_since[key]
            node, block = key
            if self.ns.block_info(block) is None and not self.ns.is_pending_delete(node, block):
                ripe.setdefault(node, []).append(block)
        for node, blocks in sorted(ripe.items()):      # one record per node, not per block
            records.append(self.ns.prepare_queue_delete(node, blocks))
            held = self.reports.get(node, set())
            held.difference_update(blocks)
            self.stats["orphans_deleted"] += len(blocks)
            events.append(("repair.orphan_delete", {"node": node, "count": len(blocks),
                                                    "blocks": [b.hex() for b in blocks[:100]]}))
        for block, (_, _, deadline) in list(self.copies.items()):
            if deadline <= now:
                del self.copies[block]
                self._dirty = True
        if self._dirty:
            self._dirty = False
            records.extend(self._scan(now))
        return records, events

    def link_restored(self, now: float, wait: float) -> list[Event]:
        """The MDS lost the broker and has it again: it heard from no DataNode meanwhile,
        so they all look down to it, though most were up all along. Back to safe mode, as
        after a start, for at most `wait` seconds: no copies planned for replicas that are
        not lost, and a placement short of nodes is EAGAIN (clients wait), not ENOSPC,
        until the DataNodes heartbeat again."""
        if self.safe_mode:
            self.safemode_deadline = max(self.safemode_deadline, now + wait)
            return []
        self.safe_mode = True
        self.safemode_deadline = now + wait
        self.expected = self.ns.replica_nodes()
        log.info("broker link back: safe mode until the DataNodes are heard again "
                 "(at most %.1fs)", wait)
        return [("repair.safe_mode_on", {"why": "broker link restored", "wait": wait})]

    def startup_wait(self, now: float) -> tuple[int, int] | None:
        """While a freshly started MDS waits for the DataNodes its namespace names:
        (how many have reported and heartbeat, how many it expects); else None. An
        empty namespace names none: then (0, 0) while no DataNode at all has been heard
        from in the first `safemode_timeout` seconds (a restart, not an empty cluster)."""
        if not self.expected:
            if now < self.safemode_deadline and not self.cluster.live_nodes(now):
                return 0, 0
            return None
        if not self.safe_mode:
            return None
        ready = sum(1 for n in self.expected
                    if n in self.reports and self.cluster.is_live(n, now))
        return ready, len(self.expected)

    # -- internals -----------------------------------------------------------------------

    def _all_reported(self, now: float) -> bool:
        # a node that reported must also be heartbeating again, or the first scan would
        # count its replicas as lost and copy them
        return all(n in self.reports and self.cluster.is_live(n, now) for n in self.expected)

    def _reconcile(self, node: str) -> list[Record]:
        self._unreconciled.discard(node)
        now = self.clock()
        records: list[Record] = []
        extra: list[bytes] = []
        for block in self.reports.get(node, ()):
            info = self.ns.block_info(block)
            if info is None:
                if self.ns.is_pending_delete(node, block):
                    continue      # already on its way out: not an orphan
                if (node, block) not in self.orphan_since:
                    self.orphan_since[(node, block)] = now
                    self.stats["orphans_found"] += 1
                continue
            if "replicas" not in info or node in info["replicas"]:
                continue          # a draft's block, or where it belongs
            live = [n for n in info["replicas"] if self._counts(n, now)]
            if len(live) < info["replication"] and not self.cluster.is_draining(node):
                records.append(self.ns.prepare_set_replicas(block, [*live, node]))
            elif not self.ns.is_pending_delete(node, block):
                extra.append(block)
        if extra:
            self.stats["replicas_trimmed"] += len(extra)
            records.append(self.ns.prepare_queue_delete(node, extra))
            for block in extra:
                self.reports[node].discard(block)
        records.extend(self._drop_unlisted(node))
        return records

    def _drop_unlisted(self, node: str) -> list[Record]:
        """Drop `node` from blocks it did not list in two reports in a row (see top)."""
        held = self.reports.get(node, set())
        unlisted = {b for b, replicas, _ in self.ns.iter_blocks()
                    if node in replicas and b not in held}
        gone = unlisted & self.unlisted.get(node, set())
        self.unlisted[node] = unlisted - gone
        if self.unlisted[node]:
            self._recheck.add(node)
        records: list[Record] = []
        for block in gone:
            info = self.ns.block_info(block)
            if info is None:   # not expected: gone came from iter_blocks just above
                continue
            rest = [n for n in info["replicas"] if n != node]
            log.warning("block %s is not on %s, though the block map has it there",
                        block.hex(), node)
            if rest:
                self.stats["replicas_lost"] += 1
                records.append(self.ns.prepare_set_replicas(block, rest))
            else:   # its only replica: keep the entry, but fsck must not call it healthy
                self.corrupt.add((node, block))
        if gone:
            self._dirty = True
        return records

    def _prune_corrupt(self) -> None:
        """A corrupt replica stops counting once it left the block map (dropped, deleted)."""
        for node, block in list(self.corrupt):
            info = self.ns.block_info(block)
            if info is None or node not in info.get("replicas", ()):
                self.corrupt.discard((node, block))

    def _scan(self, now: float) -> list[Record]:
        """Rebuild the endangered list; trim replicas beyond the wanted count."""
        self._prune_corrupt()
        endangered = []
        records = []
        draining = {n for n, info in self.cluster.nodes().items() if info["draining"]}
        left = dict.fromkeys(draining, 0)
        dropped = False
        for block, replicas, wanted in self.ns.iter_blocks():
            live = [n for n in replicas if self._counts(n, now)]
            leaving = [n for n in replicas if n in draining] if draining else ()
            if len(live) < wanted:
                endangered.append((len(live), block))
                for n in leaving:
                    left[n] += 1
            elif leaving:
                # copied elsewhere: the draining replicas go (their deletion is queued)
                records.append(self.ns.prepare_set_replicas(
                    block, [n for n in replicas if n not in draining]))
                dropped = True
                for n in leaving:
                    left[n] += 1    # until that record is applied and a scan confirms
            elif len(live) > wanted and len(live) == len(replicas):
                keep = live[:wanted]
                records.append(self.ns.prepare_set_replicas(block, keep))
                self.stats["replicas_trimmed"] += len(live) - wanted
        endangered.sort()
        self.endangered = endangered
        for n in list(self.drain_left):
            if n not in draining:
                del self.drain_left[n]
        self.drain_left.update(left)
        if dropped:
            self._dirty = True      # count again once the drops are applied
        return records

    def summary(self) -> dict:
        missing = sum(1 for live, _ in self.endangered if live == 0)
        return {"under_replicated": len(self.endangered) - missing, "missing": missing,
                "corrupt": len(self.corrupt), "orphans": len(self.orphan_since),
                "copies_in_flight": len(self.copies), "safe_mode": self.safe_mode,
                **self.stats}

    def fsck(self) -> dict:
        """A fresh, read-only look at every block (the answer of `aegisfs fsck`)."""
        now = self.clock()
        self._prune_corrupt()
        missing, under = [], []
        for block, replicas, wanted in self.ns.iter_blocks():
            live = [n for n in replicas if self._counts(n, now)
                    and (n, block) not in self.corrupt]
            if not live:
                missing.append(block.hex())
            elif len(live) < wanted:
                under.append(block.hex())
        corrupt = sorted(f"{node}:{block.hex()}" for node, block in self.corrupt)
        orphans = sorted(f"{node}:{block.hex()}" for node, block in self.orphan_since)
        return {"healthy": not (missing or under or corrupt or orphans),
                "missing": missing, "under_replicated": under, "corrupt": corrupt,
                "orphans": orphans, "safe_mode": self.safe_mode,
                "live_nodes": self.cluster.live_nodes(now), **self.stats}
