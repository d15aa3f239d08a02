"""Routing core with a fake clock: dispatch, balancing, expiry, worker loss, restarts."""
from __future__ import annotations

import pytest

from broker import protocol as P
from broker.callers import CLIENT, WORKER
from broker.routing import Router
from tests.support.clock import FakeClock


def request(service: bytes, rid: bytes, header: dict | None = None) -> bytes:
    return P.pack(P.REQUEST, service, rid, P.encode_header(header or {"op": "x"}))


def ready(router: Router, ident: bytes, service: str, capacity: int = 10) -> list:
    return router.on_worker(ident, P.ready_envelope(service, {"capacity": capacity}), [])


def reply_to(router: Router, worker: bytes, sent) -> list:
    """The worker answers the request it was sent (sent = a WORKER send)."""
    side, ident, frames = sent
    assert side == WORKER and ident == worker
    cmd, client, rid, header = P.unpack(frames[0])
    assert cmd == P.REQUEST
    return router.on_worker(worker, P.pack(P.REPLY, client, rid, P.ok_header({"w": worker})),
                            frames[1:])


def error_of(send) -> tuple[str, str]:
    side, _, frames = send
    assert side == CLIENT
    cmd, _, _, header = P.unpack(frames[0])
    assert cmd == P.REPLY
    with pytest.raises(OSError) as info:
        P.parse_reply(header)
    return P.exception_to_error(info.value)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def router(clock):
    return Router(clock=clock, heartbeat_interval=1.0, liveness=3, max_queue=2,
                  request_ttl=30.0)


def test_request_is_dispatched_and_reply_routed_back(router):
    ready(router, b"W1", "echo")
    sends = router.on_client(b"C1", request(b"echo", b"r1"), [b"payload"])
    assert len(sends) == 1 and sends[0][:2] == (WORKER, b"W1")
    assert sends[0][2][1:] == [b"payload"]           # payload forwarded as the same object
    out = reply_to(router, b"W1", sends[0])
    assert len(out) == 1
    side, ident, frames = out[0]
    assert (side, ident) == (CLIENT, b"C1")
    cmd, service, rid, header = P.unpack(frames[0])
    assert (cmd, service, rid) == (P.REPLY, b"echo", b"r1")
    assert P.parse_reply(header) == {"w": b"W1"}
    assert frames[1:] == [b"payload"]
    assert router.in_flight == {}


def test_unknown_service_gets_immediate_error(router):
    (send,) = router.on_client(b"C1", request(b"nosuch", b"r1"), [])
    code, message = error_of(send)
    assert code == "ECONNREFUSED" and "nosuch" in message


def test_load_balancing_prefers_least_loaded(router):
    ready(router, b"W1", "echo")
    ready(router, b"W2", "echo")
    targets = [router.on_client(b"C", request(b"echo", b"r%d" % i), [])[0][1] for i in range(10)]
    assert targets.count(b"W1") == 5 and targets.count(b"W2") == 5


def test_named_worker_is_addressed_by_its_service(router):
    ready(router, b"A", "dn.dn1")
    ready(router, b"B", "dn.dn2")
    for i in range(5):
        assert router.on_client(b"C", request(b"dn.dn2", b"%d" % i), [])[0][1] == b"B"


def test_capacity_queues_then_busy(router):
    ready(router, b"W1", "echo", capacity=1)
    first = router.on_client(b"C", request(b"echo", b"1"), [])
    assert router.on_client(b"C", request(b"echo", b"2"), []) == []     # queued
    assert router.on_client(b"C", request(b"echo", b"3"), []) == []     # queued (max 2)
    code, _ = error_of(router.on_client(b"C", request(b"echo", b"4"), [])[0])
    assert code == "EBUSY"
    out = reply_to(router, b"W1", first[0])
    # the reply goes out and the next queued request is dispatched
    assert [s[0] for s in out] == [CLIENT, WORKER]
    assert P.unpack(out[1][2][0])[2] == b"2"


def test_expiry_after_missed_heartbeats_fails_in_flight(router, clock):
    ready(router, b"W1", "echo")
    router.on_client(b"C1", request(b"echo", b"r1"), [])
    router.on_client(b"C2", request(b"echo", b"r2"), [])
    clock.now += 1.0
    beats = router.tick()
    assert beats == [(WORKER, b"W1", [P.HEARTBEAT_ENV])]
    clock.now += 2.5                       # 3.5 s silent > 3 x 1 s liveness
    out = router.tick()
    errors = sorted((s[1], error_of(s)[0]) for s in out)
    assert errors == [(b"C1", "ECONNRESET"), (b"C2", "ECONNRESET")]
    assert router.workers == {}
    code, _ = error_of(router.on_client(b"C1", request(b"echo", b"r3"), [])[0])
    assert code == "ECONNREFUSED"


def test_heartbeats_keep_a_worker_alive(router, clock):
    ready(router, b"W1", "echo")
    for _ in range(10):
        clock.now += 1.0
        router.on_worker(b"W1", P.HEARTBEAT_ENV, [])
        router.tick()
    assert b"W1" in router.workers


def test_worker_disconnect_fails_in_flight_and_queued(router):
    ready(router, b"W1", "echo", capacity=1)
    router.on_client(b"C", request(b"echo", b"1"), [])
    router.on_client(b"C", request(b"echo", b"2"), [])    # queued
    out = router.on_worker(b"W1", P.DISCONNECT_ENV, [])
    assert sorted(error_of(s)[0] for s in out) == ["ECONNREFUSED", "ECONNRESET"]


def test_in_flight_moves_to_other_worker_only_for_new_requests(router):
    ready(router, b"W1", "echo")
    ready(router, b"W2", "echo")
    s1 = router.on_client(b"C", request(b"echo", b"1"), [])[0]
    dead = s1[1]
    out = router.on_worker(dead, P.DISCONNECT_ENV, [])
    assert [error_of(s)[0] for s in out] == ["ECONNRESET"]
    alive = ({b"W1", b"W2"} - {dead}).pop()
    assert router.on_client(b"C", request(b"echo", b"2"), [])[0][1] == alive


def test_unknown_worker_is_told_to_reregister(router):
    # what a worker sees after a broker restart: its heartbeat is answered by DISCONNECT
    out = router.on_worker(b"OLD", P.HEARTBEAT_ENV, [])
    assert out == [(WORKER, b"OLD", [P.DISCONNECT_ENV])]
    out = router.on_worker(b"OLD", P.pack(P.REPLY, b"C", b"r", P.ok_header()), [])
    assert out == [(WORKER, b"OLD", [P.DISCONNECT_ENV])]
    ready(router, b"OLD", "echo")
    assert router.on_client(b"C", request(b"echo", b"1"), [])[0][1] == b"OLD"


def test_reply_from_wrong_worker_or_late_is_dropped(router):
    ready(router, b"W1", "echo")
    ready(router, b"W2", "other")
    router.on_client(b"C", request(b"echo", b"1"), [])
    assert router.on_worker(b"W2", P.pack(P.REPLY, b"C", b"1", P.ok_header()), []) == []
    assert router.on_worker(b"W1", P.pack(P.REPLY, b"C", b"9", P.ok_header()), []) == []
    assert router.stats["dropped_replies"] == 2


def test_stale_in_flight_entries_are_forgotten(router, clock):
    ready(router, b"W1", "echo")
    router.on_client(b"GONE", request(b"echo", b"1"), [])
    for _ in range(31):                       # keep the worker alive past the 30 s TTL
        clock.now += 1.0
        router.on_worker(b"W1", P.HEARTBEAT_ENV, [])
        router.tick()
    assert router.in_flight == {} and not router.workers[b"W1"].in_flight


def test_duplicate_request_id_is_rejected(router):
    ready(router, b"W1", "echo")
    router.on_client(b"C", request(b"echo", b"1"), [])
    code, _ = error_of(router.on_client(b"C", request(b"echo", b"1"), [])[0])
    assert code == "EPROTO"


@pytest.mark.parametrize("env", [
    b"", b"AEGIS/1", b"AEGIS/9\x02\x04echo\x011", b"HTTP/1.1 GET /",
    P.pack(P.READY, b"echo", b"", P.encode_header({})),      # worker command from a client
    P.pack(P.REQUEST, b"echo", b"", b""),                    # empty request id
    P.pack(99, b"echo", b"1", b""),                          # unknown command
    P.TAG + b"\x02\xffecho",                                 # truncated name
])
def test_malformed_client_messages_raise_protocol_error(router, env):
    ready(router, b"W1", "echo")
    with pytest.raises(P.ProtocolError):
        router.on_client(b"C", env, [])
    assert router.in_flight == {}


@pytest.mark.parametrize("env", [
    P.pack(P.REQUEST, b"echo", b"1", b""),                   # client command from a worker
    P.pack(P.READY, b"broker", b"", P.encode_header({})),    # reserved service
    P.pack(P.READY, b"echo", b"", b"\xc1"),                  # bad msgpack
    P.pack(P.READY, b"echo", b"", P.encode_header({"capacity": "many"})),
    P.pack(P.READY, b"bad name", b"", P.encode_header({})),
])
def test_malformed_worker_messages_raise_protocol_error(router, env):
    with pytest.raises(P.ProtocolError):
        router.on_worker(b"W", env, [])
    assert router.workers == {}


def test_oversized_header_is_refused_not_forwarded(router):
    ready(router, b"W1", "echo")
    big = P.pack(P.REQUEST, b"echo", b"1", b"\x80" * (P.DEFAULT_MAX_HEADER + 1))
    code, _ = error_of(router.on_client(b"C", big, [])[0])
    assert code == "EMSGSIZE"


def test_broker_service(router):
    ready(router, b"W1", "echo")
    ready(router, b"W2", "echo")
    (send,) = router.on_client(b"C", request(b"broker", b"1", {"op": "services"}), [])
    assert P.parse_reply(P.unpack(send[2][0])[3]) == {"services": {"echo": 2}}


def test_exclusive_registration_supersedes_a_dead_predecessor(router):
    ready(router, b"OLD", "dn.dn1")
    router.on_client(b"C", request(b"dn.dn1", b"1"), [])
    out = router.on_worker(b"NEW", P.ready_envelope("dn.dn1", {"exclusive": True}), [])
    assert [error_of(s)[0] for s in out] == ["ECONNRESET"]
    assert [w.identity for w in router.services[b"dn.dn1"].workers] == [b"NEW"]
    assert router.on_client(b"C", request(b"dn.dn1", b"2"), [])[0][1] == b"NEW"


# -- security: the caller from the ZAP User-Id (callers.caller_of) ------------------------

ALICE = "u:alice:" + "A" * 40
MDS_KEY = "m:mds:" + "M" * 40
DN1_KEY = "m:dn.dn1:" + "D" * 40
DN2_KEY = "m:dn.dn2:" + "E" * 40


def secure_router(clock, ids=(ALICE, MDS_KEY, DN1_KEY, DN2_KEY), refresh=None) -> Router:
    r = Router(clock=clock, heartbeat_interval=1.0, liveness=3, refresh=refresh)
    r.set_registry(frozenset(ids))
    return r


def caller_sent(send) -> tuple[str, str]:
    side, _, frames = send
    assert side == WORKER
    cmd, _, _, rest = P.unpack(frames[0])
    return P.split_caller(rest)[:2]


def test_a_user_key_is_a_client_named_after_its_user(clock):
    r = secure_router(clock)
    r.on_worker(b"W", P.ready_envelope("mds", {"capacity": 4}), [], MDS_KEY)
    (send,) = r.on_client(b"C", request(b"mds", b"1", {"op": "ls", "caller": "mds"}), [], ALICE)
    assert caller_sent(send) == ("client", "alice")


def test_security_off_every_client_is_the_superuser(router):
    from broker.keys import ADMIN
    from broker.callers import INSECURE_USER
    from mds.perms import SUPERUSER
    assert INSECURE_USER == SUPERUSER == ADMIN
    ready(router, b"W", "mds")
    (send,) = router.on_client(b"C", request(b"mds", b"1"), [])
    assert caller_sent(send) == ("client", "admin")


def test_a_member_key_registers_and_declares_only_its_own_service(clock):
    from broker.callers import Refused
    r = secure_router(clock)
    r.on_worker(b"MDS", P.ready_envelope("mds", {"capacity": 4, "exclusive": True}), [], MDS_KEY)
    for ident, key, service in ((b"X", DN1_KEY, "mds"), (b"Y", DN2_KEY, "dn.dn1"),
                                (b"Z", MDS_KEY, "dn.dn1"), (b"U", ALICE, "mds")):
        with pytest.raises(Refused):
            r.on_worker(ident, P.ready_envelope(service, {"capacity": 1, "exclusive": True}),
                        [], key)
        with pytest.raises(Refused):
            r.on_worker(ident, P.member_envelope(service), [], key)
        with pytest.raises(P.ProtocolError):   # nothing was declared, so no request goes
            r.on_worker(ident, request(b"mds", b"1"), [], key)
    # the real MDS was never superseded and still gets the requests
    (send,) = r.on_client(b"C", request(b"mds", b"2"), [], ALICE)
    assert send[1] == b"MDS"
    r.on_worker(b"D1", P.member_envelope("dn.dn1"), [], DN1_KEY)
    (send,) = r.on_worker(b"D1", request(b"mds", b"3"), [], DN1_KEY)
    assert caller_sent(send) == ("datanode", "dn1")


def test_a_key_on_the_wrong_endpoint_is_refused(clock):
    from broker.callers import Refused
    r = secure_router(clock)
    with pytest.raises(Refused):
        r.on_client(b"C", request(b"broker", b"1", {"op": "ping"}), [], MDS_KEY)
    (send,) = r.on_client(b"C", request(b"broker", b"1", {"op": "ping"}), [], "garbage")
    assert error_of(send)[0] == "EACCES"        # a User-Id the registry does not know
    with pytest.raises(Refused):
        r.on_worker(b"W", P.member_envelope("mds"), [], ALICE)


def test_a_removed_user_gets_eacces_on_its_open_connection(clock):
    r = secure_router(clock)
    r.on_worker(b"W", P.ready_envelope("mds", {"capacity": 4}), [], MDS_KEY)
    assert r.on_client(b"C", request(b"mds", b"1"), [], ALICE)[0][0] == WORKER
    r.set_registry(frozenset({MDS_KEY}))
    code, message = error_of(r.on_client(b"C", request(b"mds", b"2"), [], ALICE)[0])
    assert code == "EACCES" and "alice" in message and "revoked" in message


def test_a_user_added_since_the_last_reload_is_looked_up_again(clock):
    views = [frozenset({MDS_KEY}), frozenset({MDS_KEY, ALICE})]
    asked = []

    def refresh():
        asked.append(1)
        return views[min(len(asked), 1)]
    r = secure_router(clock, ids=views[0], refresh=refresh)
    r.on_worker(b"W", P.ready_envelope("mds", {"capacity": 4}), [], MDS_KEY)
    (send,) = r.on_client(b"C", request(b"mds", b"1"), [], ALICE)
    assert caller_sent(send) == ("client", "alice") and asked == [1]


def test_a_revoked_member_key_loses_its_registration_and_requests(clock):
    r = secure_router(clock)
    r.on_worker(b"D2", P.ready_envelope("dn.dn2", {"capacity": 4}), [], DN2_KEY)
    r.on_client(b"C", request(b"dn.dn2", b"1"), [], ALICE)
    out = r.set_registry(frozenset({ALICE, MDS_KEY}))
    assert error_of(out[0])[0] == "ECONNRESET"
    assert error_of(r.on_client(b"C", request(b"dn.dn2", b"2"), [], ALICE)[0])[0] == \
        "ECONNREFUSED"


def test_a_routing_id_reused_with_another_key_is_not_the_worker(clock):
    from broker.callers import Refused
    r = secure_router(clock)
    r.on_worker(b"W", P.ready_envelope("dn.dn1", {"capacity": 4}), [], DN1_KEY)
    (sent,) = r.on_client(b"C", request(b"dn.dn1", b"1"), [], ALICE)
    _, _, frames = sent
    _, route, rid, _ = P.unpack(frames[0])
    with pytest.raises(Refused):   # a forged reply from another key under the same id
        r.on_worker(b"W", P.pack(P.REPLY, route, rid, P.ok_header({})), [], DN2_KEY)
    assert len(r.in_flight) == 1


# -- DataNodes' data endpoints: the DATA side of caller_of, the registry op --------------

def test_on_a_data_endpoint_users_are_clients_and_members_are_themselves():
    from broker.callers import DATA, Refused, caller_of
    assert caller_of(DATA, ALICE) == ("client", "alice")
    assert caller_of(DATA, DN2_KEY) == ("datanode", "dn2")
    assert caller_of(DATA, MDS_KEY) == ("mds", "mds")
    assert caller_of(DATA, None) == ("client", "admin")       # security off
    with pytest.raises(Refused):
        caller_of(DATA, "x:revoked:-")


def _member_call(r: Router, key: str, member: str, header: dict) -> list:
    r.on_worker(b"M", P.member_envelope(member), [], key)
    return r.on_worker(b"M", request(b"broker", b"9", header), [], key)


def test_the_registry_op_gives_datanodes_the_admitted_ids_and_no_one_else(clock):
    from broker.broker_ops import registry_digest
    r = secure_router(clock)
    (send,) = _member_call(r, DN1_KEY, "dn.dn1", {"op": "registry"})
    answer = P.parse_reply(P.unpack(send[2][0])[3])
    assert sorted(answer["ids"]) == sorted([ALICE, MDS_KEY, DN1_KEY, DN2_KEY])
    assert answer["digest"] == registry_digest(frozenset(answer["ids"]))
    (send,) = _member_call(r, DN1_KEY, "dn.dn1", {"op": "registry",
                                                   "since": answer["digest"]})
    assert "ids" not in P.parse_reply(P.unpack(send[2][0])[3])    # unchanged: no list
    r.set_registry(frozenset({MDS_KEY, DN1_KEY}))                  # alice revoked
    (send,) = _member_call(r, DN1_KEY, "dn.dn1", {"op": "registry",
                                                   "since": answer["digest"]})
    assert ALICE not in P.parse_reply(P.unpack(send[2][0])[3])["ids"]
    r.set_registry(frozenset({ALICE, MDS_KEY, DN1_KEY}))
    (send,) = r.on_client(b"C", request(b"broker", b"1", {"op": "registry"}), [], ALICE)
    assert error_of(send)[0] == "EPERM"


def test_the_registry_op_says_when_security_is_off(router):
    router.on_worker(b"M", P.member_envelope("dn.dn1"), [])
    out = router.on_worker(b"M", request(b"broker", b"9", {"op": "registry"}), [])
    assert P.parse_reply(P.unpack(out[0][2][0])[3]) == {"secure": False}
