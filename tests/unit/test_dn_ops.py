"""The DataNode operations (datanode/server.py) through the service layer, with a real
block store and no broker: callers per op, MDS-only ops refused to clients and peers
without touching the store, a copy target reporting its replica, hostile fields, a fuzz."""
from __future__ import annotations

import errno
import os

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.capability import KeyRing, mint, node_receipt_key, sign_receipt
from broker.service import Context, Outcome
from datanode.server import DataNode
from run_cluster import free_base_port
from tests.support.schema_fuzz import callers, payloads, requests

CLIENT = ("client", "anonymous")
MDS = ("mds", "mds")
PEER = ("datanode", "dn2")
SECRET = b"s" * 32
RING = KeyRing.generate(0.0)
LATER = 10_000.0              # expiry of the capabilities minted here (the Context wall is 0)


def cap(bid: bytes, access: str = "write", node: str | None = "dn1",
        expires: float = LATER) -> bytes:
    return mint(RING, bid, access, expires, node=node)


class FakeMember:
    """Stands in for the DataNode's MemberClient: records the calls, answers {}."""

    def __init__(self) -> None:
        self.calls: list = []

    def call(self, service, header, payload=(), timeout=None):
        self.calls.append((service, dict(header)))
        return type("Reply", (), {"result": {}})()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    # No broker listens on these ports: the sockets only queue, nothing is sent anywhere.
    base = free_base_port()
    dn = DataNode("dn1", tmp_path_factory.mktemp("dn1"),
                  worker_endpoint=f"tcp://127.0.0.1:{base + 1}",
                  events_endpoint=f"tcp://127.0.0.1:{base + 2}")
    dn.member = FakeMember()
    dn._client = lambda: dn.member
    dn.guard.install({"ring": RING.export(), "receipt_key": node_receipt_key(SECRET, "dn1")},
                     now=0.0)
    try:
        yield dn
    finally:
        for pool in (dn.pool, dn.small_pool, dn.copier):
            pool.shutdown()
        dn.worker.close()
        dn.events.close()
        dn.store.close()


def call(dn: DataNode, op: str, caller=CLIENT, payload=(), **fields) -> Outcome:
    return dn.service.run({"op": op, **fields}, list(payload),
                          Context(0.0, 0.0, caller[0], caller[1]))


def ok(dn: DataNode, op: str, caller=CLIENT, payload=(), **fields) -> dict:
    out = call(dn, op, caller, payload, **fields)
    assert out.error is None, out.error
    return out.result


def put(dn: DataNode, data: bytes = b"block data") -> bytes:
    bid = os.urandom(16)
    ok(dn, "put_block", CLIENT, [data], id=bid, checksum=crc32c.crc32c(data), cap=cap(bid))
    return bid


def contents(dn: DataNode) -> list:
    return sorted((i.id, i.size, i.crc) for i in dn.store.infos())


def test_the_callers_of_every_operation(node):
    peers, mds = {"client", "datanode"}, {"mds"}
    assert {n: set(op.callers) for n, op in node.service.ops.items()} == {
        "put_block": peers, "put_blocks": peers, "get_block": peers, "stat_block": peers,
        "info": peers, "delete_block": mds, "copy_block": mds, "block_report": mds}


@pytest.mark.parametrize("caller", [CLIENT, PEER])
def test_mds_only_ops_refuse_others_and_change_nothing(node, caller):
    bid = put(node)
    node.member.calls.clear()
    node._report_now.clear()
    before = contents(node)
    for op, fields in [("delete_block", {"id": bid}),
                       ("copy_block", {"id": bid, "target": "dn2", "cap": cap(bid, "copy"),
                                       "target_cap": cap(bid, node="dn2")}),
                       ("block_report", {})]:
        out = call(node, op, caller, **fields)
        assert isinstance(out.error, PermissionError), (op, out.error)
        assert f"not allowed for a {caller[0]} caller" in out.error.strerror
    assert contents(node) == before
    assert node.member.calls == [] and not node._report_now.is_set()
    out = call(node, "get_block", caller, id=bid, cap=cap(bid, "read", None))
    assert out.result["size"] == 10 and bytes(out.payload[0]) == b"block data"


def test_an_mds_caller_may_delete_copy_and_ask_for_a_report(node):
    bid = put(node)
    node.member.calls.clear()
    assert ok(node, "copy_block", MDS, id=bid, target="dn2", cap=cap(bid, "copy"),
              target_cap=cap(bid, node="dn2"))["size"] == 10
    assert [(s, h["op"], h["cap"]) for s, h in node.member.calls] == [
        ("dn.dn2", "put_block", cap(bid, node="dn2"))]
    ok(node, "block_report", MDS)
    assert node._report_now.is_set()
    assert ok(node, "delete_block", MDS, id=bid) == {"deleted": True}
    assert isinstance(call(node, "stat_block", id=bid, cap=cap(bid, "read", None)).error,
                      FileNotFoundError)


def test_a_copy_target_reports_its_own_replica(node):
    node.member.calls.clear()
    data = b"copied"
    bid = os.urandom(16)
    ok(node, "put_block", PEER, [data], id=bid, checksum=crc32c.crc32c(data), cap=cap(bid))
    receipt = sign_receipt(node_receipt_key(SECRET, "dn1"), "dn1", bid, 6, crc32c.crc32c(data))
    assert node.member.calls == [("mds", {"op": "replica_added", "node": "dn1", "block": bid,
                                          "size": 6, "checksum": crc32c.crc32c(data),
                                          "receipt": receipt})]
    node.member.calls.clear()
    put(node)                         # a client's put is not a copy
    assert node.member.calls == []


@pytest.mark.parametrize("op,fields,payload,code", [
    ("copy_block", {"id": b"x" * 16, "target": "t" * 100_000}, [], errno.EINVAL),
    ("delete_block", {"id": b"x" * 100_000}, [], errno.EINVAL),
    ("delete_block", {"id": "00" * 16}, [], errno.EPROTO),
    ("put_block", {"id": b"x" * 15}, [b"d"], errno.EINVAL),
    ("put_block", {"id": b"x" * 16, "checksum": -1}, [b"d"], errno.EINVAL),
    ("put_block", {"id": b"x" * 16, "checksum": "1"}, [b"d"], errno.EPROTO),
    ("get_block", {"id": b"x" * 16, "offset": -1}, [], errno.EINVAL),
    ("get_block", {"id": b"x" * 16}, [b"no payload wanted"], errno.EINVAL),
    ("put_blocks", {"blocks": []}, [], errno.EINVAL),
    ("put_blocks", {"blocks": [{"id": b"x" * 16}]}, [b"1", b"2"], errno.EINVAL),
    ("put_blocks", {"blocks": [{"id": b"x" * 16, "checksum": [1]}]}, [b"1"], errno.EINVAL),
    ("put_blocks", {"blocks": ["x"]}, [b"1"], errno.EINVAL),
    ("info", {"extra": 1}, [], errno.EINVAL),
    ("format", {}, [], errno.EOPNOTSUPP),
])
def test_malformed_requests_reach_no_handler(node, op, fields, payload, code):
    node.member.calls.clear()
    before = contents(node)
    out = call(node, op, MDS if op in ("copy_block", "delete_block") else CLIENT, payload,
               **fields)
    assert isinstance(out.error, OSError) and out.error.errno == code, out.error
    assert contents(node) == before and node.member.calls == []


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), payload=payloads, caller=callers)
def test_no_request_of_any_shape_is_an_internal_error(node, data, payload, caller):
    if not hasattr(node, "fuzz"):
        node.fuzz = requests(node.service)     # read off the node's own declarations
    header = data.draw(node.fuzz)
    out = node.service.run(header, payload, Context(0.0, 0.0, *caller))
    assert out.error is None or isinstance(out.error, OSError), (header, out.error)
