"""The MDS operations (mds/ops.py) through the service layer, with fixed clocks and no
sockets: callers per op, DataNodes speaking only for themselves, refused requests
changing nothing, the lease unit, clocks from the context, and a fuzz of every op."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

from broker import protocol as P
from broker.capability import sign_receipt
from broker.service import Context, Outcome
from mds.cluster import ClusterView
from mds.metastore import MetaStore
from mds.namespace import NamespaceConfig
from mds.ops import BATCHABLE, Handlers
from mds.repair import RepairPlanner
from tests.support.schema_fuzz import callers, payloads, requests

KIB = 1024
CLIENT = ("client", "admin")     # security off: every client is the superuser


class World:
    """An MDS without its loop: store, cluster view, planner, handlers; clocks by hand."""

    def __init__(self, root: Path) -> None:
        self.now, self.wall = 1000.0, 1_700_000_000.0
        self.store = MetaStore(root, config=NamespaceConfig(replication=2, block_size=KIB,
                                                            lease=60.0),
                               clock=lambda: self.wall)
        self.cluster = ClusterView(dead_after=5.0)
        self.repair = RepairPlanner(self.store.ns, self.cluster, clock=lambda: self.now,
                                    safemode_timeout=0.0)
        self.ops = Handlers(self.store, self.cluster, self.repair, settings=None)
        self.events: list = []

    def call(self, op: str, caller=CLIENT, payload=(), **fields) -> Outcome:
        ctx = Context(self.now, self.wall, caller[0], caller[1], self.events.append)
        return self.ops.service.run({"op": op, **fields}, list(payload), ctx)

    def ok(self, op: str, caller=CLIENT, payload=(), **fields) -> dict:
        out = self.call(op, caller, payload, **fields)
        assert out.error is None, out.error
        return out.result

    def beat(self, *nodes: str) -> None:
        for node in nodes:
            self.ok("dn_heartbeat", ("datanode", node), node=node, capacity=1 << 30,
                    used=0, blocks=0)

    def write(self, path: str, data: bytes = b"x" * 10) -> dict:
        created = self.ok("create", path=path, size=len(data), parents=True)
        (blk,) = created["blocks"]
        self.ok("commit", handle=created["handle"], blocks=[
            {"id": blk["id"], "size": len(data), "checksum": 7, "replicas": blk["nodes"],
             "receipts": [self.receipt(n, blk["id"], len(data), 7) for n in blk["nodes"]]}])
        return self.store.ns.block_info(blk["id"])

    def receipt(self, node: str, block: bytes, size: int, checksum: int) -> bytes:
        """What DataNode `node` returns for a stored block (its key from the heartbeat)."""
        return sign_receipt(self.ops.grants.node_key(node), node, block, size, checksum)

    def state(self):
        """Everything a refused request must leave as it was."""
        return (self.store.ns.dump(), self.cluster.nodes(), sorted(self.repair.corrupt),
                self.repair.fsck(), {k: set(v) for k, v in self.repair.reports.items()},
                dict(self.repair.copies))


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path / "mds")
    try:
        yield w
    finally:
        w.store.close(checkpoint=False)


def error(out: Outcome) -> OSError:
    assert isinstance(out.error, OSError), out
    return out.error


EXPECTED_CALLERS = {
    **{op: {"client"} for op in ("mkdir", "ls", "stat", "du", "create", "allocate",
                                 "replace_target", "commit", "abort", "renew", "rm", "mv",
                                 "fsck", "batch", "bad_replica", "drain", "chmod",
                                 "chown", "copy", "rename", "link", "utimens", "quota_set",
                                 "quota_clear", "quota_get", "quota_ls", "pool",
                                 "put_small")},
    "ping": {"client", "datanode", "mds", "broker"},
    "status": {"client", "datanode", "mds", "broker"},
    **{op: {"datanode"} for op in ("dn_heartbeat", "block_report", "replica_added",
                                   "block_corrupt")},
}


def test_the_callers_of_every_operation(world):
    assert {n: set(op.callers) for n, op in world.ops.service.ops.items()} == EXPECTED_CALLERS
    assert all(op.doc for op in world.ops.service.ops.values())


def test_member_ops_refuse_a_client_and_change_nothing(world):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/f")
    block = info["id"]
    stranger = [n for n in ("dn1", "dn2", "dn3") if n not in info["replicas"]][0]
    report = [msgpack.packb([[block, 10, 7]])]
    before = world.state()
    refused = [
        ("dn_heartbeat", {"node": "dn1", "capacity": 1, "used": 0, "blocks": 0,
                          "deleted": [block]}, ()),
        ("dn_heartbeat", {"node": "dn9", "capacity": 1, "used": 0, "blocks": 0}, ()),
        ("replica_added", {"node": stranger, "block": block, "size": 10, "checksum": 7}, ()),
        ("block_report", {"node": "dn1", "count": 0}, [msgpack.packb([])]),
        ("block_report", {"node": "dn1", "count": 1}, report),
        ("block_corrupt", {"node": info["replicas"][0], "block": block}, ()),
        # a client may report only a replica the block map holds
        ("bad_replica", {"node": "dn9", "block": block}, ()),             # unknown node
        ("bad_replica", {"node": stranger, "block": block}, ()),          # no replica there
        ("bad_replica", {"node": "dn1", "block": b"\x07" * 16}, ()),      # unknown block
    ]
    for op, fields, payload in refused:
        err = error(world.call(op, CLIENT, payload, **fields))
        assert isinstance(err, PermissionError), (op, fields, err)
        assert world.state() == before, (op, fields)
    assert world.events == [e for e in world.events if e[0] != "repair.drop_replica"]


def test_a_datanode_cannot_speak_for_another_node(world):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/f")
    holder, other = info["replicas"]
    before = world.state()
    for op, fields, payload in [
        ("dn_heartbeat", {"node": other, "capacity": 1, "used": 0, "blocks": 0}, ()),
        ("block_report", {"node": other}, [msgpack.packb([])]),
        ("block_corrupt", {"node": other, "block": info["id"]}, ()),
        ("replica_added", {"node": other, "block": info["id"], "size": 10, "checksum": 7}, ()),
    ]:
        err = error(world.call(op, ("datanode", holder), payload, **fields))
        assert isinstance(err, PermissionError) and other in err.strerror, (op, err)
        assert world.state() == before, op
    # a DataNode may not use the client protocol either
    assert isinstance(error(world.call("mkdir", ("datanode", holder), path="/x")),
                      PermissionError)


def test_a_client_reports_a_real_bad_replica(world):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/f")
    bad, good = info["replicas"]
    assert world.ok("bad_replica", node=bad, block=info["id"], reason="crc")["dropped"]
    assert world.store.ns.block_info(info["id"])["replicas"] == [good]
    assert ("repair.drop_replica", {"node": bad, "block": info["id"].hex(),
                                    "reason": "crc"}) in world.events


def test_a_datanode_reports_its_own_corrupt_replica(world):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/f")
    bad, good = info["replicas"]
    assert world.ok("block_corrupt", ("datanode", bad), node=bad, block=info["id"])["dropped"]
    assert world.store.ns.block_info(info["id"])["replicas"] == [good]


def test_lease_is_seconds_remaining_in_create_allocate_and_renew(world):
    world.beat("dn1", "dn2")
    created = world.ok("create", path="/d")
    assert created["lease"] == 60.0
    world.wall += 10
    assert world.ok("allocate", handle=created["handle"], count=1)["lease"] == 60.0
    world.wall += 15.5
    assert world.ok("renew", handle=created["handle"])["lease"] == 60.0
    world.store.ns.drafts.get(created["handle"]).lease -= 20     # as if renewed 20 s earlier
    assert world.ok("allocate", handle=created["handle"], count=1)["lease"] == 60.0
    assert world.ok("create", path="/e", size=5)["lease"] == 60.0


def test_handlers_take_time_from_the_context(world):
    world.beat("dn1")
    world.now += 3
    (node,) = world.ok("status")["nodes"]
    assert (node["state"], node["last_seen"]) == ("up", 3.0)
    world.now += 10                  # the cluster view's dead_after is 5 s
    assert world.ok("status")["nodes"][0]["state"] == "down"
    assert error(world.call("allocate", handle=world.ok("create", path="/x")["handle"],
                            count=1)).errno == errno.ENOSPC
    # drafts expire by the wall clock given to upkeep
    handle = world.ok("create", path="/y")["handle"]
    world.ops.upkeep(world.now, world.wall + 59)
    assert handle in world.store.ns.draft_handles()
    world.ops.upkeep(world.now, world.wall + 61)
    assert handle not in world.store.ns.draft_handles()


def test_a_lease_that_ended_while_the_mds_itself_stalled_gets_time_to_be_renewed(world):
    """The MDS gave no upkeep for 10 s (a long fsync, a pause): nobody could renew
    meanwhile, so a lease that ended in the stall does not expire at once; one that
    ended before it does, and an unrenewed one goes once the grace is over."""
    old = world.ok("create", path="/old")["handle"]
    world.ops.upkeep(world.now, world.wall + 1)
    world.store.ns.drafts.get(old).lease = world.wall + 0.5    # ended before the stall
    kept = world.ok("create", path="/kept")["handle"]
    world.store.ns.drafts.get(kept).lease = world.wall + 5      # ends during the stall
    renewed = world.ok("create", path="/renewed")["handle"]
    world.store.ns.drafts.get(renewed).lease = world.wall + 5
    world.ops.upkeep(world.now, world.wall + 11)                # 10 s without an upkeep
    assert old not in world.store.ns.draft_handles()
    assert {kept, renewed} <= set(world.store.ns.draft_handles())
    world.store.ns.drafts.get(renewed).lease = world.wall + 60  # its renew came in

    def upkeeps(start: float, end: float) -> None:              # every 0.5 s, as the loop
        t = start
        while t <= end:
            world.ops.upkeep(world.now, world.wall + t)
            t += 0.5
    upkeeps(11.5, 20.5)                                         # within the grace
    assert kept in world.store.ns.draft_handles()
    upkeeps(21, 21.5)                                           # grace over (10 s more)
    assert kept not in world.store.ns.draft_handles()
    assert renewed in world.store.ns.draft_handles()


@pytest.mark.parametrize("op,fields,code", [
    ("stat", {"path": 5}, errno.EPROTO),
    ("stat", {"path": "/", "junk": 1}, errno.EINVAL),
    ("stat", {"path": "/x" * 17000}, errno.EINVAL),      # over the field's bound
    ("stat", {"path": "/x" * 9000}, errno.ENAMETOOLONG), # within it, over the path limit
    ("create", {"path": "/a", "replication": 0}, errno.EINVAL),
    ("allocate", {"handle": "h" * 129, "count": 1}, errno.EINVAL),
    ("allocate", {"handle": "h", "count": 1025}, errno.EINVAL),
    ("allocate", {"handle": "h", "count": 1, "exclude": [[1]]}, errno.EINVAL),
    ("commit", {"handle": "h", "blocks": [{"id": b"x" * 16}]}, errno.EINVAL),
    ("commit", {"handle": "h", "blocks": [{"id": b"x" * 15, "size": 1, "checksum": 1,
                                           "replicas": []}]}, errno.EINVAL),
    ("bad_replica", {"node": "n" * 200, "block": b"x" * 16}, errno.EINVAL),
    ("bad_replica", {"node": "dn1", "block": b"x" * 16, "reason": "r" * 2000}, errno.EINVAL),
    ("batch", {"ops": []}, errno.EINVAL),
    ("batch", {"ops": [{"op": "ping"}] * 257}, errno.EINVAL),
    ("batch", {"ops": "create"}, errno.EPROTO),
])
def test_malformed_fields(world, op, fields, code):
    before = world.state()
    assert error(world.call(op, **fields)).errno == code
    assert world.state() == before


def test_member_op_with_bad_fields_is_einval_even_for_its_datanode(world):
    world.beat("dn1")
    for fields, payload in [({"node": "dn1"}, []), ({"node": "dn1"}, [b"1", b"2"]),
                            ({"node": "dn1"}, [b"\xc1"]), ({"node": "dn1"}, [msgpack.packb(1)])]:
        assert error(world.call("block_report", ("datanode", "dn1"), payload,
                                **fields)).errno == errno.EINVAL
    err = error(world.call("dn_heartbeat", ("datanode", "dn1"), node="dn1", capacity=1,
                           used=0, blocks=0, deleted=["not an id"]))
    assert err.errno == errno.EINVAL and "deleted[0]" in err.strerror


def test_batch_items_are_dispatched_one_by_one(world):
    results = world.ok("batch", ops=[
        {"op": ["stat"]}, {"op": "stat", "path": "/"}, {"op": {"x": 1}}, "junk",
        {"op": "dn_heartbeat", "node": "dn1", "capacity": 1, "used": 0, "blocks": 0},
        {"op": "batch", "ops": [{"op": "ping"}]}, {"op": "stat"}, {"op": "stat", "path": 1},
        {"op": "mkdir", "path": "/m", "extra": True}, {"op": "mkdir", "path": "/m"},
    ])["results"]
    codes = [P.error_to_exception(*r["err"]).errno if "err" in r else "ok" for r in results]
    assert codes == [errno.EOPNOTSUPP, "ok", errno.EOPNOTSUPP, errno.EOPNOTSUPP,
                     errno.EOPNOTSUPP, errno.EOPNOTSUPP, errno.EPROTO, errno.EPROTO,
                     errno.EINVAL, "ok"]
    assert world.store.ns.stat("/m")["type"] == "dir"
    assert world.cluster.nodes() == {}


def _service_for_strategies():
    """The MDS service's declarations (handlers unbound: only the schemas are read)."""
    class Bare(Handlers):
        def __init__(self) -> None:   # no store: the strategies only read the schemas
            from broker.service import Service
            self.service = Service.collect("mds", self)
    return Bare().service


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(header=requests(_service_for_strategies()), payload=payloads, caller=callers)
def test_no_request_of_any_shape_is_an_internal_error(world, header, payload, caller):
    if not world.cluster.nodes():
        world.beat("dn1", "dn2", "dn3")
    out = world.ops.service.run(header, payload, Context(world.now, world.wall, *caller,
                                                         world.events.append))
    assert out.error is None or isinstance(out.error, OSError), (header, out.error)
    if out.error is None and header.get("op") == "batch":
        for item in out.result["results"]:
            assert "ok" in item or not item["err"][1].startswith("internal error"), item


def test_drain_marks_the_node_and_status_follows_it(world):
    world.beat("dn1", "dn2", "dn3")
    before = world.state()
    refused = error(world.call("drain", ("client", "bob"), node="dn3"))
    assert isinstance(refused, PermissionError) and refused.errno == errno.EPERM
    assert world.state() == before and not world.cluster.is_draining("dn3")
    assert isinstance(error(world.call("drain", node="dn9")), FileNotFoundError)
    assert world.ok("drain", node="dn3") == {"node": "dn3", "drain": "draining",
                                             "drain_left": None}
    assert [t for t, _ in world.events][-1] == "node.drain"
    world.ops.upkeep(world.now, world.wall)
    nodes = {n["id"]: n for n in world.ok("status")["nodes"]}
    assert (nodes["dn3"]["drain"], nodes["dn3"]["drain_left"]) == ("drained", 0)
    assert nodes["dn1"]["drain"] is None
    for _ in range(20):                       # new files never land on it
        assert "dn3" not in world.write("/f")["replicas"]
    world.ok("drain", node="dn3")             # again: no change, no second event
    assert [t for t, _ in world.events].count("node.drain") == 1
    assert world.ok("drain", node="dn3", cancel=True)["drain"] is None
    assert not world.cluster.is_draining("dn3")


# ---------------------------------------------------------------- owners and permissions

ALICE, BOB = ("client", "alice"), ("client", "bob")


def homes(world: World) -> None:
    """/home/alice and /home/bob, each 0o755 and owned by its user."""
    world.beat("dn1", "dn2", "dn3")
    for user in ("alice", "bob"):
        world.ok("mkdir", path=f"/home/{user}", parents=True)
        world.ok("chown", path=f"/home/{user}", owner=user, group=user)


def write_as(world: World, caller, path: str, data: bytes = b"x" * 10, **create) -> dict:
    created = world.ok("create", caller, path=path, size=len(data), **create)
    (blk,) = created["blocks"]
    return world.ok("commit", caller, handle=created["handle"], blocks=[
        {"id": blk["id"], "size": len(data), "checksum": 7, "replicas": blk["nodes"],
         "receipts": [world.receipt(n, blk["id"], len(data), 7) for n in blk["nodes"]]}])


def test_entries_belong_to_the_caller_and_stat_ls_show_it(world):
    homes(world)
    world.ok("mkdir", ALICE, path="/home/alice/d", mode=0o750)
    write_as(world, ALICE, "/home/alice/d/f", mode=0o640)
    st = world.ok("stat", ALICE, path="/home/alice/d/f")
    assert (st["owner"], st["group"], st["mode"], st["atime"]) == ("alice", "alice", 0o640,
                                                                    st["mtime"])
    assert len(st["blocks"]) == 1 and st["ctime"] == world.wall
    (entry,) = world.ok("ls", ALICE, path="/home/alice/d")["entries"]
    assert {k: entry[k] for k in ("name", "mode", "owner", "group")} == {
        "name": "f", "mode": 0o640, "owner": "alice", "group": "alice"}
    assert world.ok("stat", ALICE, path="/home/alice/d")["mode"] == 0o750


def test_chmod_chown_ops_emit_attr_events_and_batch(world):
    homes(world)
    write_as(world, ALICE, "/home/alice/f")
    world.events.clear()
    out = world.ok("chmod", ALICE, path="/home/alice/f", mode=0o600)
    assert out == {"path": "/home/alice/f", "type": "file", "mode": 0o600, "owner": "alice",
                   "group": "alice"}
    world.ok("chown", path="/home/alice", group="staff")
    assert world.events == [("file.attr", out), ("dir.attr", {
        "path": "/home/alice", "type": "dir", "mode": 0o755, "owner": "alice",
        "group": "staff"})]
    results = world.ok("batch", ALICE, ops=[
        {"op": "chmod", "path": "/home/alice/f", "mode": 0o644},
        {"op": "chown", "path": "/home/alice/f", "owner": "bob"}])["results"]
    assert "ok" in results[0] and results[1]["err"][0] == "EPERM"
    assert world.store.ns.stat("/home/alice/f")["mode"] == 0o644


def test_another_users_files_are_refused_and_nothing_changes(world):
    """bob against alice's private file and directory: read, write, ls, rm, mv, chmod,
    chown, commit of her draft; each refused with the right errno, naming the path, with
    no change to the namespace and no event."""
    homes(world)
    write_as(world, ALICE, "/home/alice/secret")
    world.ok("chmod", ALICE, path="/home/alice/secret", mode=0o600)
    world.ok("mkdir", ALICE, path="/home/alice/private", mode=0o700)
    write_as(world, ALICE, "/home/alice/private/inner")
    draft = world.ok("create", ALICE, path="/home/alice/draft", size=10)
    # bob may stat the file (search on the ancestors) but gets no block list
    st = world.ok("stat", BOB, path="/home/alice/secret")
    assert "blocks" not in st and st["mode"] == 0o600
    blk = draft["blocks"][0]
    commit = {"handle": draft["handle"], "blocks": [
        {"id": blk["id"], "size": 10, "checksum": 7, "replicas": blk["nodes"],
         "receipts": [world.receipt(n, blk["id"], 10, 7) for n in blk["nodes"]]}]}
    world.events.clear()
    before = world.state()
    refused = [
        ("stat", {"path": "/home/alice/secret", "read": True}, errno.EACCES, "/home/alice/secret"),
        ("stat", {"path": "/home/alice/private/inner"}, errno.EACCES, "/home/alice/private/inner"),
        ("ls", {"path": "/home/alice/private"}, errno.EACCES, "/home/alice/private"),
        ("du", {"path": "/home/alice"}, errno.EACCES, "/home/alice"),
        ("create", {"path": "/home/alice/new"}, errno.EACCES, "/home/alice/new"),
        ("create", {"path": "/home/alice/secret"}, errno.EACCES, "/home/alice/secret"),
        ("mkdir", {"path": "/home/alice/new"}, errno.EACCES, "/home/alice/new"),
        ("rm", {"path": "/home/alice/secret"}, errno.EACCES, "/home/alice/secret"),
        ("rm", {"path": "/home/alice/private", "recursive": True}, errno.EACCES,
         "/home/alice/private"),
        ("mv", {"src": "/home/alice/secret", "dst": "/home/bob/stolen"}, errno.EACCES,
         "/home/alice/secret"),
        ("mv", {"src": "/home/bob", "dst": "/home/alice/bob"}, errno.EACCES, None),
        ("chmod", {"path": "/home/alice/secret", "mode": 0o666}, errno.EPERM,
         "/home/alice/secret"),
        ("chown", {"path": "/home/alice/secret", "owner": "bob"}, errno.EPERM,
         "/home/alice/secret"),
        ("chown", {"path": "/home/alice/secret", "group": "bob"}, errno.EPERM,
         "/home/alice/secret"),
        ("commit", commit, errno.EACCES, "/home/alice/draft"),
    ]
    for op, fields, code, name in refused:
        err = error(world.call(op, BOB, **fields))
        assert isinstance(err, PermissionError) and err.errno == code, (op, fields, err)
        if name is not None:
            assert name in str(err), (op, err)
        assert world.state() == before, (op, fields)
    assert world.events == []
    # batched, the same refusals
    items = [{"op": op, **f} for op, f, _, _ in refused if op in BATCHABLE]
    results = world.ok("batch", BOB, ops=items)["results"]
    assert len(items) == 12 and all(r["err"][0] in ("EACCES", "EPERM") for r in results), \
        results
    assert world.state() == before
    # and alice herself may do all of it
    assert world.ok("stat", ALICE, path="/home/alice/secret", read=True)["blocks"]
    world.ok("commit", ALICE, **commit)
    world.ok("mv", ALICE, src="/home/alice/secret", dst="/home/alice/secret2")
    world.ok("rm", ALICE, path="/home/alice/private", recursive=True)


# -- capabilities, receipts, allocation limits ----------------------------------------------

def _verify(world, token, block, access, node=None):
    from broker.capability import verify
    verify(world.ops.grants.ring, token, block, access, world.wall, node=node)


def test_allocations_carry_a_write_capability_per_target(world):
    world.beat("dn1", "dn2", "dn3")
    created = world.ok("create", path="/c", size=10)
    (first,) = created["blocks"]
    more = world.ok("allocate", handle=created["handle"], count=2)["blocks"]
    for b in [first, *more]:
        assert len(b["caps"]) == len(b["nodes"]) == 2
        for node, token in zip(b["nodes"], b["caps"]):
            _verify(world, token, b["id"], "write", node)
    other = next(n for n in ("dn1", "dn2", "dn3") if n not in first["nodes"])
    got = world.ok("replace_target", handle=created["handle"], block=first["id"],
                   exclude=[])
    assert got["node"] == other
    _verify(world, got["cap"], first["id"], "write", other)


def test_stat_gives_read_capabilities_valid_on_any_node(world, monkeypatch):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/r")
    st = world.ok("stat", path="/r")
    assert st["cap_ttl"] == world.ops.grants.read_ttl
    for node in ("dn1", "dn3", None):
        _verify(world, st["blocks"][0]["cap"], info["id"], "read", node)
    monkeypatch.setattr("mds.ops_namespace.MAX_STAT_CAPS", 1)
    assert "cap" not in world.ok("stat", path="/r", caps_from=1)["blocks"][0]
    assert world.ok("stat", path="/", caps_from=3)["blocks"] == []


def test_heartbeats_carry_the_ring_and_only_the_nodes_own_receipt_key(world):
    from broker.capability import KeyRing, node_receipt_key
    replies = {n: world.ok("dn_heartbeat", ("datanode", n), node=n, capacity=1 << 30, used=0,
                           blocks=0)["keys"] for n in ("dn1", "dn2")}
    assert replies["dn1"]["receipt_key"] == world.ops.grants.node_key("dn1")
    assert replies["dn1"]["receipt_key"] != replies["dn2"]["receipt_key"]
    assert replies["dn1"]["receipt_key"] != node_receipt_key(b"\0" * 32, "dn1")
    KeyRing.load(replies["dn1"]["ring"])


def _draft_block(world, size=10, crc=7):
    created = world.ok("create", path=f"/p{len(world.events)}{os.urandom(2).hex()}",
                       size=size, parents=True)
    return created["handle"], created["blocks"][0]


def test_commit_keeps_only_replicas_proven_by_their_receipt(world):
    world.beat("dn1", "dn2", "dn3")
    handle, b = _draft_block(world)
    n1, n2 = b["nodes"]
    stranger = next(n for n in ("dn1", "dn2", "dn3") if n not in b["nodes"])
    good = world.receipt(n1, b["id"], 10, 7)
    out = world.ok("commit", handle=handle, blocks=[{
        "id": b["id"], "size": 10, "checksum": 7, "replicas": [n1, n2, stranger],
        "receipts": [good, world.receipt(n1, b["id"], 10, 7),        # n1's claimed for n2
                     world.receipt(stranger, b["id"], 10, 7)]}])     # never a target
    assert out["refused"] == [{"block": b["id"], "node": n2}, {"block": b["id"], "node": stranger}]
    assert world.store.ns.block_info(b["id"])["replicas"] == [n1]


@pytest.mark.parametrize("why", ["none", "forged", "other block", "other size", "other node",
                                 "not a target"])
def test_a_commit_with_no_proven_replica_is_eacces_and_changes_nothing(world, why):
    world.beat("dn1", "dn2", "dn3")
    handle, b = _draft_block(world)
    n1 = b["nodes"][0]
    stranger = next(n for n in ("dn1", "dn2", "dn3") if n not in b["nodes"])
    node, receipt = n1, {
        "none": None, "forged": os.urandom(17),
        "other block": world.receipt(n1, os.urandom(16), 10, 7),
        "other size": world.receipt(n1, b["id"], 11, 7),
        "other node": world.receipt(b["nodes"][1], b["id"], 10, 7),
        "not a target": world.receipt(stranger, b["id"], 10, 7)}[why]
    if why == "not a target":
        node = stranger
    block = {"id": b["id"], "size": 10, "checksum": 7, "replicas": [node]}
    if receipt is not None:
        block["receipts"] = [receipt]
    before = world.state()
    err = error(world.call("commit", handle=handle, blocks=[block]))
    assert isinstance(err, PermissionError) and err.errno == errno.EACCES, err
    assert world.state() == before


def test_replica_added_needs_the_copy_targets_receipt(world):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/copied")
    target = next(n for n in ("dn1", "dn2", "dn3") if n not in info["replicas"])
    before = world.state()
    for receipt in (None, os.urandom(17), world.receipt(info["replicas"][0], info["id"], 10, 7)):
        fields = {"node": target, "block": info["id"], "size": 10, "checksum": 7}
        if receipt is not None:
            fields["receipt"] = receipt
        err = error(world.call("replica_added", ("datanode", target), **fields))
        assert err.errno == errno.EACCES
        assert world.state() == before
    assert world.ok("replica_added", ("datanode", target), node=target, block=info["id"],
                    size=10, checksum=7,
                    receipt=world.receipt(target, info["id"], 10, 7))["accepted"]


def test_copy_commands_carry_a_copy_and_a_write_capability(world):
    world.beat("dn1", "dn2", "dn3")
    info = world.write("/endangered")
    source, lost = info["replicas"]
    target = next(n for n in ("dn1", "dn2", "dn3") if n not in info["replicas"])
    world.now += 6
    world.beat(source, target)
    world.ops.upkeep(world.now, world.wall)        # `lost` is down: the block is endangered
    cmds = []
    for _ in range(3):
        cmds = [c for c in world.ok("dn_heartbeat", ("datanode", source), node=source,
                                    capacity=1 << 30, used=0, blocks=0)["commands"]
                if c["op"] == "copy"]
        if cmds:
            break
        world.ops.upkeep(world.now, world.wall)
    (cmd,) = cmds
    assert cmd["target"] == target
    _verify(world, cmd["cap"], info["id"], "copy", source)
    _verify(world, cmd["target_cap"], info["id"], "write", target)


def _as(user):
    return ("client", user)


def test_an_allocation_flood_is_bounded_and_other_users_keep_writing(world):
    """The issue's flood: one user sends 18 allocate(count=1024) while another writes."""
    world.beat("dn1", "dn2", "dn3")
    for user in ("mallory", "alice"):            # each writes in a directory of its own
        world.ok("mkdir", path=f"/{user}")
        world.ok("chown", path=f"/{user}", owner=user, group=user)
    flood = [world.ok("create", _as("mallory"), path=f"/mallory/flood{i}")["handle"]
             for i in range(18)]
    codes = []
    for i, handle in enumerate(flood):
        out = world.call("allocate", _as("mallory"), handle=handle, count=1024)
        codes.append("ok" if out.error is None else out.error.errno)
        created = world.ok("create", _as("alice"), path=f"/alice/f{i}", size=10, parents=True)
        (b,) = created["blocks"]
        world.ok("commit", _as("alice"), handle=created["handle"], blocks=[
            {"id": b["id"], "size": 10, "checksum": 7, "replicas": b["nodes"],
             "receipts": [world.receipt(n, b["id"], 10, 7) for n in b["nodes"]]}])
    assert codes == ["ok"] * 4 + [errno.EDQUOT] * 14          # 4096 blocks per user
    err = error(world.call("allocate", _as("mallory"), handle=flood[5], count=1))
    assert "mallory" in err.strerror and "commit or abort" in err.strerror
    assert world.ops.allocations.usage("mallory") == (4096, 4096 * KIB)
    assert world.ops.allocations.usage("alice") == (0, 0)      # committed: released
    world.ok("abort", _as("mallory"), handle=flood[0])         # an abort gives back its share
    world.ok("allocate", _as("mallory"), handle=flood[5], count=1024)
    world.ops.upkeep(world.now, world.wall + 61)               # leases expire: all released
    assert world.ops.allocations.usage("mallory") == (0, 0)


def test_a_file_past_the_largest_the_cluster_holds_is_efbig(world, monkeypatch):
    import mds.ops_write
    monkeypatch.setattr(mds.ops_write, "MAX_FILE_BLOCKS", 1500)
    world.beat("dn1", "dn2")
    handle = world.ok("create", path="/big")["handle"]
    world.ok("allocate", handle=handle, count=1024)
    err = error(world.call("allocate", handle=handle, count=477))
    assert err.errno == errno.EFBIG and "at most 1500 blocks" in err.strerror
    assert world.ops.allocations.usage("admin") == (1024, 1024 * KIB)  # nothing reserved
    world.ok("allocate", handle=handle, count=476)               # up to the limit: fine


def test_a_failed_allocate_reserves_nothing(world):
    world.beat("dn1")
    handle = world.ok("create", path="/one", replication=1)["handle"]
    world.now += 10                                            # dn1 is gone: ENOSPC
    assert error(world.call("allocate", handle=handle, count=5)).errno == errno.ENOSPC
    assert world.ops.allocations.usage("anonymous") == (0, 0)


def test_data_endpoints_from_heartbeats_go_out_once_per_reply(world):
    ends = {n: [f"tcp://10.0.0.{i}:700{i}", str(i) * 40] for i, n in ((1, "dn1"), (2, "dn2"))}
    for node, (endpoint, key) in ends.items():
        world.ok("dn_heartbeat", ("datanode", node), node=node, capacity=1 << 30, used=0,
                 blocks=0, data={"endpoint": endpoint, "key": key})
    created = world.ok("create", path="/d/f", size=3 * KIB, parents=True)
    assert created["endpoints"] == ends
    more = world.ok("allocate", handle=created["handle"], count=2)
    assert more["endpoints"] == ends and all("endpoints" not in b for b in more["blocks"])
    out = world.ok("batch", ops=[{"op": "allocate", "handle": created["handle"], "count": 1},
                                 {"op": "renew", "handle": created["handle"]}])
    assert out["endpoints"] == ends                # lifted out of the items: one table
    assert all("endpoints" not in r["ok"] for r in out["results"])
    world.write("/d/g")
    assert world.ok("stat", path="/d/g", read=True)["endpoints"] == ends
    # a node that stops advertising (restarted without a data endpoint) is dropped
    world.ok("dn_heartbeat", ("datanode", "dn2"), node="dn2", capacity=1 << 30, used=0,
             blocks=0)
    assert world.ok("stat", path="/d/g", read=True)["endpoints"] == {"dn1": ends["dn1"]}


@pytest.mark.parametrize("data", [{"endpoint": "x"}, {"endpoint": "tcp://h:1", "key": "short"},
                                  {"key": "1" * 40}, "tcp://h:1"])
def test_a_bad_data_advert_is_refused(world, data):
    err = error(world.call("dn_heartbeat", ("datanode", "dn1"), node="dn1", capacity=1,
                           used=0, blocks=0, data=data))
    assert err.errno in (errno.EINVAL, errno.EPROTO)
    assert world.ops.endpoints == {}


def test_stat_sized_to_what_the_caller_asks(world, monkeypatch):
    """blocks=False: the attributes only, with no block list built and nothing signed;
    read: the block list in one walk, the same as a plain stat's; a directory stays a
    directory either way."""
    homes(world)
    write_as(world, ALICE, "/home/alice/f", mode=0o600)
    full = world.ok("stat", ALICE, path="/home/alice/f")
    assert world.ok("stat", ALICE, path="/home/alice/f", read=True) == full

    def never(*args, **kwargs):
        raise AssertionError("built for a stat that did not ask for blocks")
    monkeypatch.setattr(world.ops.grants, "mint_read", never)
    monkeypatch.setattr(world.store.ns, "file_info", never)
    attrs = world.ok("stat", ALICE, path="/home/alice/f", blocks=False)
    assert "blocks" not in attrs and "cap_ttl" not in attrs
    assert attrs == {k: v for k, v in full.items() if k not in ("blocks", "cap_ttl")}
    top = world.ok("stat", ALICE, path="/home", blocks=False)
    assert top["type"] == "dir" and "blocks" not in top
    # a HEAD: read permission checked, still nothing built or signed
    assert world.ok("stat", ALICE, path="/home/alice/f", read=True, blocks=False) == attrs
    monkeypatch.undo()
    assert world.ok("stat", ALICE, path="/home", read=True)["blocks"] == []
    # read permission is still what decides, with or without the new paths
    assert "blocks" not in world.ok("stat", BOB, path="/home/alice/f")
    assert world.call("stat", BOB, path="/home/alice/f", read=True).error.errno == errno.EACCES
    refused = world.call("stat", BOB, path="/home/alice/f", read=True, blocks=False).error
    assert refused.errno == errno.EACCES and "/home/alice/f" in str(refused)


def test_heartbeat_answers_carry_the_leadership_epoch_only_with_ha(world):
    hb = {"node": "dn1", "capacity": 1 << 30, "used": 0, "blocks": 0}
    assert "epoch" not in world.ok("dn_heartbeat", ("datanode", "dn1"), **hb)
    assert "ha" not in world.ok("status")
    world.ops.epoch = 12
    world.ops.ha_status = lambda: {"state": "active", "epoch": 12}
    assert world.ok("dn_heartbeat", ("datanode", "dn1"), **hb)["epoch"] == 12
    assert world.ok("status")["ha"] == {"state": "active", "epoch": 12}
