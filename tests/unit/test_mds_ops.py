"""The MDS operations (mds/ops.py) through the service layer, with fixed clocks and no
sockets: callers per op, DataNodes speaking only for themselves, refused requests
changing nothing, the lease unit, clocks from the context, and a fuzz of every op."""
from __future__ import annotations

import errno
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
from mds.ops import Handlers
from mds.repair import RepairPlanner
from tests.support.schema_fuzz import callers, payloads, requests

KIB = 1024
CLIENT = ("client", "anonymous")


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
                                 "fsck", "batch", "bad_replica")},
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


@pytest.mark.parametrize("op,fields,code", [
    ("stat", {"path": 5}, errno.EPROTO),
    ("stat", {"path": "/", "junk": 1}, errno.EINVAL),
    ("stat", {"path": "/x" * 3000}, errno.EINVAL),
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
