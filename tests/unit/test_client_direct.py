"""client/direct.py's routing without sockets: which requests go to a DataNode's data
endpoint and which through the broker, the node table from MDS replies, and the fallbacks
(no endpoint, endpoint unreachable or refusing the key, a connection lost mid-request)."""
from __future__ import annotations

import errno
from collections import deque

import pytest

from broker.client import Reply
from broker.curve import CurveKeys
from client.direct import Links, parse_table
from tests.support.clock import FakeClock

KEY1, KEY2 = "1" * 40, "2" * 40
TABLE = {"dn1": ["tcp://10.0.0.1:7001", KEY1], "dn2": ["tcp://10.0.0.2:7002", KEY2]}


class FakeConn:
    """A Client that answers each request with what `answer` says, at once."""

    def __init__(self, endpoint: str, refuse: OSError | None = None, **kw) -> None:
        self.endpoint, self.kw, self.refuse = endpoint, kw, refuse
        self.sent: list[tuple[str, dict]] = []
        self.answer = lambda service, header: Reply(0, service, result={"via": endpoint})
        self._done: deque[Reply] = deque()
        self.closed = False

    def send(self, service, header, payload=(), timeout=None) -> int:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((service, header))
        reply = self.answer(service, header)
        reply.rid = len(self.sent)
        self._done.append(reply)
        return reply.rid

    def wait(self, rid, timeout=None) -> Reply:
        for r in list(self._done):
            if r.rid == rid:
                self._done.remove(r)
                return r.unwrap()
        raise KeyError(rid)

    def ready(self):
        return self._done.popleft() if self._done else None

    def next_deadline(self):
        return None

    def pollables(self):
        return []

    def close(self) -> None:
        self.closed = True


class World:
    def __init__(self, curve: CurveKeys | None = None) -> None:
        self.clock = FakeClock()
        self.broker = FakeConn("broker")
        self.broker.answer = lambda s, h: Reply(0, s, result=(
            {"endpoints": TABLE} if s == "mds" else {"via": "broker"}))
        self.made: list[FakeConn] = []
        self.refuse: dict[str, OSError] = {}
        self.links = Links(self.broker, curve=curve, timeout=5.0, clock=self.clock,
                           connect=self._connect, retry_after=30.0)

    def _connect(self, endpoint, **kw) -> FakeConn:
        conn = FakeConn(endpoint, refuse=self.refuse.get(endpoint), **kw)
        self.made.append(conn)
        return conn

    def via(self, service: str = "dn.dn1") -> str:
        return self.links.call(service, {"op": "get_block"}).result["via"]


def test_before_the_mds_names_an_endpoint_everything_goes_through_the_broker():
    w = World()
    assert w.via() == "broker" and not w.made
    w.links.call("mds", {"op": "allocate"})
    assert w.via("dn.dn1") == "tcp://10.0.0.1:7001"
    assert w.via("dn.dn2") == "tcp://10.0.0.2:7002"
    assert w.via("dn.dn3") == "broker"         # not in any table
    assert len(w.broker.sent) == 3          # dn1 before the table, the MDS, dn3
    assert len(w.made) == 2 and w.links.direct_sent == 2


def test_the_direct_connection_uses_the_users_key_and_the_nodes_server_key():
    me = CurveKeys(b"P" * 40, b"S" * 40, b"B" * 40, "alice.key_secret")
    w = World(curve=me)
    w.links.call("mds", {"op": "stat"})
    w.via("dn.dn2")
    (conn,) = [c for c in w.made if c.endpoint == "tcp://10.0.0.2:7002"]
    keys = conn.kw["curve"]
    assert (keys.public, keys.secret, keys.server) == (b"P" * 40, b"S" * 40, KEY2.encode())


def test_with_curve_a_node_without_a_key_is_reached_through_the_broker():
    w = World(curve=CurveKeys(b"P" * 40, b"S" * 40, b"B" * 40))
    w.links.learn({"endpoints": {"dn1": ["tcp://10.0.0.1:7001", ""]}})
    assert w.via() == "broker" and not w.made


@pytest.mark.parametrize("error", [
    ConnectionRefusedError(errno.ECONNREFUSED, "not reachable"),
    PermissionError(errno.EACCES, "key refused")])
def test_an_unusable_endpoint_falls_back_to_the_broker_for_a_while(error):
    w = World()
    w.refuse["tcp://10.0.0.1:7001"] = error
    w.links.call("mds", {"op": "allocate"})
    assert w.via() == "broker"
    tried = [c for c in w.made if c.endpoint == "tcp://10.0.0.1:7001"]
    assert w.via() == "broker" and len(tried) == 1      # not tried again at once
    w.clock.advance(31)
    w.refuse.clear()
    assert w.via() == "tcp://10.0.0.1:7001"


def test_the_mds_reply_starts_the_connections_before_the_first_block():
    w = World()
    w.links.call("mds", {"op": "allocate"})
    assert sorted(c.endpoint for c in w.made) == ["tcp://10.0.0.1:7001",
                                                  "tcp://10.0.0.2:7002"]
    assert all(not c.sent for c in w.made)


def test_a_refused_key_is_tried_again_sooner_than_an_unreachable_node():
    w = World()
    w.refuse["tcp://10.0.0.1:7001"] = PermissionError(errno.EACCES, "key refused")
    w.refuse["tcp://10.0.0.2:7002"] = ConnectionRefusedError(errno.ECONNREFUSED, "down")
    w.links.call("mds", {"op": "allocate"})
    assert w.via("dn.dn1") == w.via("dn.dn2") == "broker"
    w.refuse.clear()
    w.clock.advance(6)
    assert w.via("dn.dn1") == "tcp://10.0.0.1:7001"
    assert w.via("dn.dn2") == "broker"


def test_a_connection_lost_mid_request_is_resent_through_the_broker():
    w = World()
    w.links.call("mds", {"op": "allocate"})
    w.via()
    w.made[0].answer = lambda s, h: Reply(0, s, error=ConnectionResetError(
        errno.ECONNRESET, "lost"))
    rid = w.links.send("dn.dn1", {"op": "put_block", "id": b"x"}, [b"data"])
    reply = w.links.wait_any(0)
    assert reply.rid == rid and reply.error is None and reply.result == {"via": "broker"}
    assert w.broker.sent[-1] == ("dn.dn1", {"op": "put_block", "id": b"x"})
    assert w.made[0].closed and w.links.relayed == 1


def test_other_errors_are_the_callers_to_handle():
    w = World()
    w.links.call("mds", {"op": "allocate"})
    w.via()
    w.made[0].answer = lambda s, h: Reply(0, s, error=PermissionError(errno.EACCES, "cap"))
    with pytest.raises(PermissionError):
        w.via()
    assert w.links.relayed == 0 and not w.made[0].closed


def test_the_node_table_is_checked():
    assert parse_table({
        "ok": ["tcp://h:1", KEY1], "plain": ["tcp://h:2", ""],
        "ipc": ["ipc:///tmp/x", KEY1], "shortkey": ["tcp://h:3", "abc"],
        "shape": ["tcp://h:4"], 5: ["tcp://h:5", KEY1], "type": "tcp://h:6"}) == {
        "ok": ("tcp://h:1", KEY1), "plain": ("tcp://h:2", "")}
    assert parse_table(["not", "a", "map"]) == {}
