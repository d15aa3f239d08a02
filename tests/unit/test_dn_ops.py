"""The DataNode operations (datanode/ops.py) through the service layer, with a real
block store and no broker: callers per op, MDS-only ops refused to clients and peers
without touching the store, a copy target reporting its replica, hostile fields, a fuzz."""
from __future__ import annotations

import errno
import os
import threading
import time

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
        for pool in (dn.pool, dn.small_pool, dn.copier, dn.deleter):
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


def test_a_slow_delete_does_not_hold_up_the_heartbeat_and_is_acked_once_done(node, monkeypatch):
    # On a disk saturated with dirty pages each directory sync can take seconds; done in
    # the heartbeat thread, the MDS's deletes once kept every DataNode silent past dead_after.
    victims = [put(node, b"x" * 200_000), put(node, b"y" * 10)]   # a block file, a pack block
    gate, started = threading.Event(), []
    real = node._delete_many

    def slow(blocks):
        started.append(list(blocks))
        assert gate.wait(10)
        return real(blocks)

    monkeypatch.setattr(node, "_delete_many", slow)
    node.member.calls.clear()
    t = time.monotonic()
    node._carry_out([{"op": "delete", "blocks": victims}])
    node.beat(node.member, timeout=1.0)            # the MDS names them again, not yet acked
    node._carry_out([{"op": "delete", "blocks": victims}])
    assert time.monotonic() - t < 1.0
    assert [h.get("deleted") for _, h in node.member.calls] == [[]]
    gate.set()
    node.deleter.submit(lambda: None).result(timeout=10)   # the deleter has drained
    assert started == [victims]                   # queued once, not once per answer
    node.member.calls.clear()
    node.beat(node.member, timeout=1.0)
    node.beat(node.member, timeout=1.0)
    assert [h["deleted"] for _, h in node.member.calls] == [victims, []]
    assert not any(i.id in victims for i in node.store.infos())


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


# -- capabilities, receipts, verified ranges ----------------------------------------------

def _bad_caps(bid: bytes, access: str) -> dict:
    good = cap(bid, access, "dn1" if access == "write" else None)
    flipped = bytearray(good)
    flipped[-1] ^= 0x80
    return {"missing": None, "forged": os.urandom(len(good)), "bit-flipped": bytes(flipped),
            "expired": cap(bid, access, expires=0.0),
            "other block": cap(os.urandom(16), access),
            "wrong access": cap(bid, "read" if access == "write" else "write"),
            "other key": mint(KeyRing.generate(0.0), bid, access, LATER)}


def test_refused_capabilities_write_nothing_and_are_counted(node):
    data = b"never stored"
    for why, token in _bad_caps(bid := os.urandom(16), "write").items():
        before = ok(node, "info")["cap_refused"]
        fields = {"id": bid, "checksum": crc32c.crc32c(data)}
        if token is not None:
            fields["cap"] = token
        out = call(node, "put_block", CLIENT, [data], **fields)
        assert isinstance(out.error, PermissionError) and out.error.errno == errno.EACCES, why
        assert ok(node, "info")["cap_refused"] == before + 1, why
        assert bid not in {i.id for i in node.store.infos()}, why
    wrong_node = cap(bid, node="dn2")
    assert call(node, "put_block", CLIENT, [data], id=bid, cap=wrong_node).error.errno \
        == errno.EACCES


def test_reads_need_a_read_capability(node):
    bid = put(node)
    for why, token in _bad_caps(bid, "read").items():
        for op in ("get_block", "stat_block"):
            out = call(node, op, CLIENT, **({"id": bid} if token is None
                                            else {"id": bid, "cap": token}))
            assert isinstance(out.error, PermissionError), (why, op, out.error)
            assert out.payload == ()
    assert ok(node, "stat_block", id=bid, cap=cap(bid, "read", None))["size"] == 10


def test_put_blocks_refuses_a_bad_capability_for_its_block_only(node):
    ids = [os.urandom(16) for _ in range(3)]
    specs = [{"id": ids[0], "cap": cap(ids[0])}, {"id": ids[1], "cap": cap(ids[0])},
             {"id": ids[2], "cap": cap(ids[2])}]
    results = ok(node, "put_blocks", CLIENT, [b"a", b"b", b"c"], blocks=specs)["results"]
    assert [("ok" in r) for r in results] == [True, False, True]
    assert results[1]["err"][0] == "EACCES"
    key = node_receipt_key(SECRET, "dn1")
    assert results[0]["ok"]["receipt"] == sign_receipt(key, "dn1", ids[0], 1, crc32c.crc32c(b"a"))
    stored = {i.id for i in node.store.infos()}
    assert ids[0] in stored and ids[1] not in stored and ids[2] in stored


def test_a_datanode_without_keys_answers_eagain(node):
    saved, node.guard = node.guard, type(node.guard)("dn1")
    try:
        bid = os.urandom(16)
        out = call(node, "put_block", CLIENT, [b"x"], id=bid, cap=cap(bid))
        assert isinstance(out.error, BlockingIOError) and out.error.errno == errno.EAGAIN
        assert ok(node, "info")["cap_unready"] == 1
    finally:
        node.guard = saved


@pytest.mark.parametrize("size,offset,length", [(300_000, 70_000, 10), (300_000, 0, 65_536),
                                                (300_000, 299_990, None), (1000, 10, 20)])
def test_range_reads_carry_a_chunk_table_the_reader_can_verify(node, size, offset, length):
    from broker.checksum import verify_range
    data = os.urandom(size)                     # 1000 bytes: a pack block, one chunk
    bid = put(node, data)
    out = call(node, "get_block", CLIENT, id=bid, offset=offset, cap=cap(bid, "read", None),
               **({} if length is None else {"length": length}))
    assert out.error is None, out.error
    r, got = out.result, bytes(out.payload[0])
    verify_range(r["chunks"], r["chunk_size"], size, crc32c.crc32c(data), r["offset"], got)
    end = size if length is None else offset + length
    assert got[offset - r["offset"]:end - r["offset"]] == data[offset:end]
    bad = bytearray(got)
    bad[0] ^= 1
    with pytest.raises(OSError) as info:
        verify_range(r["chunks"], r["chunk_size"], size, crc32c.crc32c(data), r["offset"], bad)
    assert info.value.errno == errno.EIO


class AnsweringMember(FakeMember):
    """A MemberClient whose heartbeat answers are given by the test."""

    def __init__(self, answers: list[dict]) -> None:
        super().__init__()
        self.answers = answers

    def call(self, service, header, payload=(), timeout=None):
        self.calls.append((service, dict(header)))
        return type("Reply", (), {"result": self.answers.pop(0)})()


def test_heartbeat_answers_of_a_lower_epoch_are_refused(node, monkeypatch):
    """A deposed MDS (a lower leadership epoch than one already heard) cannot make a
    DataNode delete anything; the acks it heard go to the leader's next answer."""
    victim, kept = put(node), put(node)
    deletes: list = []
    monkeypatch.setattr(node, "_start_delete", lambda ids: deletes.append(list(ids)))
    monkeypatch.setattr(node, "mds_epoch", 0)
    member = AnsweringMember([
        {"commands": [], "epoch": 7},
        {"commands": [{"op": "delete", "blocks": [kept]}], "epoch": 5},     # deposed
        {"commands": [{"op": "delete", "blocks": [kept]}], "epoch": "7"},   # malformed
        {"commands": [{"op": "delete", "blocks": [victim]}], "epoch": 8},
        {"commands": [], "epoch": 8}])
    node.beat(member, timeout=1.0)
    assert node.mds_epoch == 7
    with node._acks_lock:
        node._deleted.append(victim)          # an ack due with the next heartbeat
    node.beat(member, timeout=1.0)
    node.beat(member, timeout=1.0)
    assert deletes == [] and node.mds_epoch == 7
    # the refused answers' acks were kept for the leader
    assert [h.get("deleted") for _, h in member.calls] == [[], [victim], [victim]]
    node.beat(member, timeout=1.0)
    assert deletes == [[victim]] and node.mds_epoch == 8
    with node._acks_lock:
        node._deleting.discard(victim)
        node._deleted.clear()
    assert kept in {i.id for i in node.store.infos()}


def test_heartbeat_answers_without_an_epoch_act_as_before(node, monkeypatch):
    """An MDS without HA sends no epoch: its commands are carried out."""
    victim = put(node)
    deletes: list = []
    monkeypatch.setattr(node, "_start_delete", lambda ids: deletes.append(list(ids)))
    monkeypatch.setattr(node, "mds_epoch", 0)
    node.beat(AnsweringMember([{"commands": [{"op": "delete", "blocks": [victim]}]}]), 1.0)
    assert deletes == [[victim]]
    with node._acks_lock:
        node._deleting.discard(victim)
