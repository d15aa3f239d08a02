"""The repair planner, sans-IO: a real Namespace and ClusterView, a fake clock, no sockets."""
from __future__ import annotations

import random

import pytest

from mds.cluster import ClusterView
from mds.namespace import Namespace, NamespaceConfig
from mds.repair import RepairPlanner
from tests.support.clock import FakeClock

GiB = 1 << 30


def commit_file(ns: Namespace, path: str, replicas: list[str], size: int = 10) -> bytes:
    """A committed one-block file whose block sits on `replicas`; returns the block id."""
    handle = ns.apply(ns.prepare_create(path, parents=True, replication=2))["handle"]
    ns.apply(ns.prepare_allocate(handle, [replicas]))
    bid = ns.draft_info(handle)["blocks"][0]["id"]
    ns.apply(ns.prepare_commit(handle, [{"id": bid, "size": size, "checksum": 7,
                                         "replicas": replicas}]))
    return bid


def submit(ns: Namespace, records: list) -> None:
    for rec in records:
        ns.apply(rec)


@pytest.fixture
def clock():
    return FakeClock(100.0)


@pytest.fixture
def world(clock):
    ns = Namespace(NamespaceConfig(replication=2), clock=lambda: 1_000.0)
    cluster = ClusterView(dead_after=5.0, rng=random.Random(1))
    return ns, cluster


def beat(cluster: ClusterView, clock: FakeClock, *nodes: str) -> None:
    for node in nodes:
        cluster.heartbeat(node, 10 * GiB, 0, 0, clock.now)


def planner(world, clock, **kw) -> RepairPlanner:
    ns, cluster = world
    return RepairPlanner(ns, cluster, clock=clock, **{"safemode_timeout": 30.0,
                                                      "orphan_grace": 10.0, **kw})


def report(p: RepairPlanner, node: str, blocks: list[bytes]) -> list:
    return p.on_report(node, [(b, 10, 7) for b in blocks])


def test_safe_mode_holds_until_every_expected_node_reported_and_beats(world, clock):
    ns, cluster = world
    bid = commit_file(ns, "/a", ["dn1", "dn2"])
    p = planner(world, clock)
    assert p.safe_mode
    beat(cluster, clock, "dn1")
    assert report(p, "dn1", [bid]) == []        # nothing is decided in safe mode
    p.tick()
    assert p.safe_mode                           # dn2 has not reported yet
    beat(cluster, clock, "dn2")
    report(p, "dn2", [bid])
    records, events = p.tick()
    assert not p.safe_mode and [t for t, _ in events] == ["repair.safe_mode_off"]
    assert records == []                         # a healthy cluster: no data movement


def test_safe_mode_ends_at_the_timeout_with_a_node_missing(world, clock):
    ns, cluster = world
    bid = commit_file(ns, "/a", ["dn1", "dn2"])
    p = planner(world, clock)
    beat(cluster, clock, "dn1")
    report(p, "dn1", [bid])
    p.tick()
    assert p.safe_mode
    clock.now += 31
    beat(cluster, clock, "dn1")
    _, events = p.tick()
    assert not p.safe_mode
    assert events[0][1]["missing"] == ["dn2"]


def test_no_copy_commands_in_safe_mode(world, clock):
    ns, cluster = world
    commit_file(ns, "/a", ["dn1", "dn2"])
    p = planner(world, clock)
    beat(cluster, clock, "dn1", "dn3")            # dn2 never comes
    p.tick()
    assert p.commands_for("dn1") == []


def _healthy_then_down(world, clock, files: int = 1):
    ns, cluster = world
    blocks = [commit_file(ns, f"/f{i}", ["dn1", "dn2"]) for i in range(files)]
    p = planner(world, clock)
    beat(cluster, clock, "dn1", "dn2", "dn3")
    for node in ("dn1", "dn2", "dn3"):
        report(p, node, blocks if node != "dn3" else [])
    p.tick()
    assert not p.safe_mode
    clock.now += 6                                # dn2 falls silent past dead_after
    beat(cluster, clock, "dn1", "dn3")
    for ev in cluster.check(clock.now):
        p.on_node_down(ev.node)
    p.tick()
    return p, blocks


def test_a_dead_nodes_blocks_are_copied_from_a_live_holder_to_a_new_node(world, clock):
    p, (bid,) = _healthy_then_down(world, clock)
    assert p.summary()["under_replicated"] == 1
    assert p.commands_for("dn3") == []            # dn3 does not hold the block
    (cmd,) = p.commands_for("dn1")
    assert cmd == {"op": "copy", "block": bid, "target": "dn3"}
    assert p.commands_for("dn1") == []            # not planned twice while in flight
    ns, _ = world
    submit(ns, p.on_replica_added("dn3", bid, 10, 7))
    assert sorted(ns.block_info(bid)["replicas"]) == ["dn1", "dn3"]
    p.tick()
    assert p.summary()["under_replicated"] == 0 and p.stats["bytes_copied"] == 10


def test_after_the_mds_was_cut_off_it_waits_for_the_nodes_instead_of_copying(world, clock):
    """The MDS heard no DataNode for a while because its own broker link was down: every
    node looks dead. link_restored puts it back in safe mode (placements wait, EAGAIN; no
    copies) until the nodes heartbeat, and for at most `wait` seconds."""
    ns, cluster = world
    bid = commit_file(ns, "/a", ["dn1", "dn2"])
    p = planner(world, clock)
    beat(cluster, clock, "dn1", "dn2", "dn3")
    for node in ("dn1", "dn2", "dn3"):
        report(p, node, [bid] if node != "dn3" else [])
    p.tick()
    assert not p.safe_mode
    clock.now += 6                                 # 6 s without a word from anyone
    for ev in cluster.check(clock.now):
        p.on_node_down(ev.node)
    events = p.link_restored(clock.now, 10.0)
    assert p.safe_mode and [t for t, _ in events] == ["repair.safe_mode_on"]
    assert p.startup_wait(clock.now) == (0, 2)     # _place turns ENOSPC into EAGAIN
    beat(cluster, clock, "dn1", "dn3")             # dn2 is a moment later
    p.tick()
    assert p.safe_mode and p.commands_for("dn1") == []     # no copy of dn2's replica
    assert p.link_restored(clock.now, 10.0) == []  # again while waiting: one event
    beat(cluster, clock, "dn2")
    _, events = p.tick()
    assert not p.safe_mode and [t for t, _ in events] == ["repair.safe_mode_off"]
    assert p.commands_for("dn1") == [] and p.summary()["under_replicated"] == 0
    # a node that really died meanwhile is copied once the wait is over
    clock.now += 6
    beat(cluster, clock, "dn1", "dn3")
    for ev in cluster.check(clock.now):
        p.on_node_down(ev.node)
    p.link_restored(clock.now, 10.0)
    p.tick()
    assert p.safe_mode and p.commands_for("dn1") == []
    clock.now += 10.5
    beat(cluster, clock, "dn1", "dn3")
    p.tick()
    assert not p.safe_mode
    assert p.commands_for("dn1") == [{"op": "copy", "block": bid, "target": "dn3"}]


def test_copies_in_flight_per_source_are_bounded(world, clock):
    p, blocks = _healthy_then_down(world, clock, files=10)
    assert len(p.commands_for("dn1")) == 4        # max_copies_per_node default
    assert p.commands_for("dn1") == []


def test_a_copy_that_does_not_match_the_block_map_is_refused(world, clock):
    p, (bid,) = _healthy_then_down(world, clock)
    p.commands_for("dn1")
    assert p.on_replica_added("dn3", bid, 11, 7) == []
    assert p.on_replica_added("dn3", bid, 10, 8) == []


def test_a_bad_replica_is_dropped_only_while_another_exists(world, clock):
    ns, cluster = world
    bid = commit_file(ns, "/a", ["dn1", "dn2"])
    p = planner(world, clock)
    submit(ns, p.on_bad_replica("dn1", bid))
    assert ns.block_info(bid)["replicas"] == ["dn2"]
    assert bid in ns.deletes_for("dn1")           # the bad copy is deleted on its node
    assert p.on_bad_replica("dn2", bid) == []     # the last copy is kept, reported corrupt
    assert ("dn2", bid) in p.corrupt


def test_unknown_blocks_are_deleted_only_after_the_grace_period(world, clock):
    ns, cluster = world
    orphan = bytes(range(16))
    p = planner(world, clock, safemode_timeout=0.0)
    beat(cluster, clock, "dn1")
    p.tick()
    report(p, "dn1", [orphan])
    records, _ = p.tick()
    assert records == [] and p.fsck()["orphans"] == [f"dn1:{orphan.hex()}"]
    clock.now += 11
    beat(cluster, clock, "dn1")
    records, events = p.tick()
    submit(ns, records)
    assert ns.deletes_for("dn1") == [orphan]
    assert [t for t, _ in events] == ["repair.orphan_delete"]


def test_a_returning_nodes_extra_replica_is_trimmed(world, clock):
    p, (bid,) = _healthy_then_down(world, clock)
    ns, cluster = world
    p.commands_for("dn1")
    submit(ns, p.on_replica_added("dn3", bid, 10, 7))
    clock.now += 1
    beat(cluster, clock, "dn1", "dn2", "dn3")      # dn2 is back, still holding its copy
    p.on_node_up("dn2")
    submit(ns, report(p, "dn2", [bid]))
    records, _ = p.tick()
    submit(ns, records)
    assert sorted(ns.block_info(bid)["replicas"]) == ["dn1", "dn3"]
    assert bid in ns.deletes_for("dn2")
    assert p.fsck()["healthy"]


def test_deletes_wait_out_the_grace_period(world, clock):
    ns, _ = world
    p = planner(world, clock, delete_grace=5.0)
    old = commit_file(ns, "/a", ["dn1", "dn2"])
    ns.apply(ns.prepare_rm("/a"))
    assert ns.deletes_for("dn1") == [old]
    assert p.deletes_ready("dn1") == []      # just queued
    clock.now += 3
    newer = commit_file(ns, "/b", ["dn1", "dn3"])
    ns.apply(ns.prepare_rm("/b"))
    assert p.deletes_ready("dn1") == []
    clock.now += 2.5                                               # old: 5.5 s, newer: 2.5 s
    assert p.deletes_ready("dn1") == [old]
    assert p.deletes_ready("dn3") == []     # queued only 2.5 s ago
    clock.now += 3
    assert sorted(p.deletes_ready("dn1")) == sorted([old, newer])
    # without a grace every queued delete goes at once
    assert planner(world, clock).deletes_ready("dn3") == [newer]


def _out_of_safe_mode(world, clock, **kw) -> RepairPlanner:
    _, cluster = world
    p = planner(world, clock, safemode_timeout=0.0, **kw)
    beat(cluster, clock, "dn1", "dn2")
    p.tick()
    assert not p.safe_mode
    return p


def test_a_block_already_queued_for_deletion_is_not_an_orphan(world, clock):
    # an overwrite queues the old blocks; the node lists them until it deletes them, and
    # they must not be found, graced and queued again once per report (issue 11)
    ns, cluster = world
    p = _out_of_safe_mode(world, clock, delete_grace=5.0)
    old = commit_file(ns, "/a", ["dn1", "dn2"])
    ns.apply(ns.prepare_rm("/a"))
    for _ in range(5):                              # five report cycles with it still there
        assert report(p, "dn1", [old]) == []
        clock.now += 11
        beat(cluster, clock, "dn1", "dn2")
        records, events = p.tick()
        assert [r for r in records if r["op"] == "queue_delete"] == []
        assert not any(t == "repair.orphan_delete" for t, _ in events)
    assert p.fsck()["orphans"] == [] and p.stats["orphans_found"] == 0
    assert ns.deletes_for("dn1") == [old]


def test_orphans_are_queued_once_in_one_record_per_node(world, clock):
    ns, cluster = world
    p = _out_of_safe_mode(world, clock)
    one = [bytes([1, i]) * 8 for i in range(50)]
    two = [bytes([2, i]) * 8 for i in range(30)]
    report(p, "dn1", one)
    report(p, "dn2", two)
    p.tick()
    clock.now += 11
    beat(cluster, clock, "dn1", "dn2")
    records, events = p.tick()
    deletes = [r for r in records if r["op"] == "queue_delete"]
    assert sorted((r["node"], len(r["blocks"])) for r in deletes) == [("dn1", 50), ("dn2", 30)]
    submit(ns, records)
    assert p.stats["orphans_deleted"] == p.stats["orphans_found"] == 80
    assert sorted(e["count"] for t, e in events if t == "repair.orphan_delete") == [30, 50]
    # the nodes report them again before carrying the deletes out: nothing is queued twice
    report(p, "dn1", one)
    report(p, "dn2", two)
    clock.now += 11
    beat(cluster, clock, "dn1", "dn2")
    records, _ = p.tick()
    assert [r for r in records if r["op"] == "queue_delete"] == []
    assert p.stats["orphans_deleted"] == 80 and p.fsck()["orphans"] == []


def test_an_orphan_candidate_gone_from_the_next_report_is_forgotten(world, clock):
    ns, cluster = world
    p = _out_of_safe_mode(world, clock)
    stray = bytes(range(16))
    report(p, "dn1", [stray])
    assert p.fsck()["orphans"] == [f"dn1:{stray.hex()}"]
    report(p, "dn1", [])                  # deleted meanwhile (a client's abort, say)
    assert p.fsck()["orphans"] == []
    clock.now += 11
    beat(cluster, clock, "dn1", "dn2")
    records, _ = p.tick()
    assert [r for r in records if r["op"] == "queue_delete"] == []


def test_a_long_delete_queue_drains_at_the_heartbeat_limit_after_one_grace(world, clock):
    # the grace is counted from when each delete was queued, not from when it reached the
    # front of a heartbeat's window: 3,000 old deletes go 1,000 per heartbeat, no waiting
    ns, cluster = world
    p = _out_of_safe_mode(world, clock, delete_grace=5.0)
    victims = [bytes([7, i >> 8, i & 255]) + bytes(13) for i in range(3000)]
    submit(ns, [ns.prepare_queue_delete("dn1", victims)])
    assert p.deletes_ready("dn1", 1000) == []
    clock.now += 5.5
    sent = []
    for _ in range(3):
        batch = p.deletes_ready("dn1", 1000)
        assert len(batch) == 1000
        sent += batch
        ns.apply(ns.prepare_ack_delete("dn1", batch))
        clock.now += 0.3
    assert sent == victims and p.deletes_ready("dn1", 1000) == []


# -- drain ---------------------------------------------------------------------------------

def _drain_world(world, clock, files: int = 2, nodes=("dn1", "dn2", "dn3")):
    """Files on dn1+dn2, every node up and reported, out of safe mode."""
    ns, cluster = world
    blocks = [commit_file(ns, f"/d{i}", ["dn1", "dn2"]) for i in range(files)]
    p = planner(world, clock)
    beat(cluster, clock, *nodes)
    for node in nodes:
        report(p, node, blocks if node in ("dn1", "dn2") else [])
    p.tick()
    assert not p.safe_mode
    return p, blocks


def drain(p: RepairPlanner, node: str, on: bool = True) -> None:
    p.cluster.drain(node, on)
    p.on_drain(node, on)


def test_a_draining_node_gets_no_new_blocks(world, clock):
    _, cluster = world
    p, _ = _drain_world(world, clock)
    drain(p, "dn3")
    for _ in range(50):
        assert "dn3" not in cluster.place(2, now=clock.now)
    with pytest.raises(OSError, match="only 2 live"):
        cluster.place(3, now=clock.now)
    with pytest.raises(FileNotFoundError):
        cluster.drain("dn9")


def test_drain_copies_every_replica_away_then_drops_it(world, clock):
    ns, cluster = world
    p, blocks = _drain_world(world, clock)
    drain(p, "dn2")
    assert p.drain_state("dn2") == ("draining", None)   # not counted yet
    assert p.drain_state("dn1") == (None, None)
    p.tick()
    assert p.drain_state("dn2") == ("draining", 2)
    assert sorted(p.fsck()["under_replicated"]) == sorted(b.hex() for b in blocks)
    # the only other target is dn3; sources are the holders (dn2 itself may be one)
    cmds = p.commands_for("dn2") + p.commands_for("dn1")
    assert sorted(c["block"] for c in cmds) == sorted(blocks)
    assert {c["target"] for c in cmds} == {"dn3"}
    for bid in blocks:
        submit(ns, p.on_replica_added("dn3", bid, 10, 7))
    assert p.drain_state("dn2")[0] == "draining"        # still mapped there
    records, _ = p.tick()                               # the scan drops dn2's replicas
    assert len(records) == 2
    submit(ns, records)
    for bid in blocks:
        assert sorted(ns.block_info(bid)["replicas"]) == ["dn1", "dn3"]
        assert ns.is_pending_delete("dn2", bid)          # its copies are deleted there
    p.tick()
    assert p.drain_state("dn2") == ("drained", 0)
    assert p.fsck()["healthy"]
    clock.now += 6                                       # dn2 removed: nothing at risk
    beat(cluster, clock, "dn1", "dn3")
    for ev in cluster.check(clock.now):
        p.on_node_down(ev.node)
    p.tick()
    assert p.fsck()["healthy"] and p.summary()["under_replicated"] == 0


def test_a_drain_without_anywhere_to_go_stays_draining(world, clock):
    ns, _ = world
    p, blocks = _drain_world(world, clock, nodes=("dn1", "dn2"))
    drain(p, "dn2")
    p.tick()
    assert p.commands_for("dn2") == [] and p.commands_for("dn1") == []
    p.tick()
    assert p.drain_state("dn2") == ("draining", 2)
    for bid in blocks:                                   # nothing was dropped
        assert sorted(ns.block_info(bid)["replicas"]) == ["dn1", "dn2"]


def test_a_cancelled_drain_keeps_the_replicas(world, clock):
    ns, cluster = world
    p, blocks = _drain_world(world, clock)
    drain(p, "dn2")
    p.tick()
    drain(p, "dn2", on=False)
    records, _ = p.tick()
    assert records == [] and p.drain_state("dn2") == (None, None)
    assert p.summary()["under_replicated"] == 0
    assert p.commands_for("dn1") == [] and p.commands_for("dn2") == []
    assert "dn2" in set().union(*(cluster.place(2, now=clock.now) for _ in range(50)))


def test_a_draining_node_does_not_adopt_a_reported_block(world, clock):
    ns, cluster = world
    p, (bid, _) = _drain_world(world, clock)
    drain(p, "dn3")
    clock.now += 6                                       # dn2 dies: bid is short
    beat(cluster, clock, "dn1", "dn3")
    for ev in cluster.check(clock.now):
        p.on_node_down(ev.node)
    records = report(p, "dn3", [bid])                    # dn3 happens to hold a copy
    assert all(r.get("op") != "set_replicas" or "dn3" not in r["replicas"] for r in records)
