"""The DataNode's data endpoint without sockets (datanode/dataplane.py): who is admitted,
the caller each request is stamped with, what malformed or foreign messages get, and a
fuzz that no message makes the core raise."""
from __future__ import annotations

import random

import msgpack
import pytest

from broker import protocol as P
from datanode.dataplane import AdmittedKeys, DataPlaneCore, advertised_host

ALICE_KEY = "A" * 40
DN2_KEY = "B" * 40
ALICE = f"u:alice:{ALICE_KEY}"
DN2 = f"m:dn.dn2:{DN2_KEY}"


def keys(*ids: str) -> AdmittedKeys:
    k = AdmittedKeys()
    assert k.update({"secure": True, "digest": "d1", "ids": list(ids)})
    return k


def request(rid: bytes = b"\0" * 7 + b"\1", header: dict | None = None,
            service: bytes = b"dn.dn1") -> bytes:
    return P.pack(P.REQUEST, service, rid, P.encode_header(header or {"op": "info"}))


def error_of(frames: list) -> tuple[str, str]:
    cmd, name, rid, header = P.unpack(frames[1])
    assert cmd == P.REPLY
    return tuple(msgpack.unpackb(header)["err"])


def test_admitted_keys_follow_the_brokers_answer():
    k = keys(ALICE, DN2, "garbage", 7, "u::" + "C" * 40, "u:bob:short")
    assert k.ids == {ALICE, DN2}
    assert k.user_for(ALICE_KEY) == "alice" and k.member_for(DN2_KEY) == "dn.dn2"
    assert k.user_for(DN2_KEY) is None and k.member_for(ALICE_KEY) is None
    assert k.digest == "d1"
    assert not k.update({"secure": True, "digest": "d1"})     # unchanged: view kept
    assert k.ids == {ALICE, DN2}
    k.update({"digest": "d2", "ids": [DN2]})                   # alice revoked
    assert k.user_for(ALICE_KEY) is None and k.ids == {DN2}


def test_a_user_is_a_client_and_a_member_is_itself():
    core = DataPlaneCore("dn1", keys(ALICE, DN2))
    req, frames = core.on_message(b"C", ALICE, request(header={"op": "get_block"}), [b"xy"])
    assert frames is None
    assert (req.caller_class, req.caller_id, req.op) == ("client", "alice", "get_block")
    assert [bytes(p) for p in req.payload] == [b"xy"]
    req, _ = core.on_message(b"D", DN2, request(), [])
    assert (req.caller_class, req.caller_id) == ("datanode", "dn2")
    assert core.counters()["data_requests"] == 2 and core.counters()["data_bytes_in"] == 2


def test_nothing_in_the_header_changes_the_caller():
    core = DataPlaneCore("dn1", keys(ALICE))
    req, _ = core.on_message(b"C", ALICE, request(header={
        "op": "info", "caller": "mds", "caller_class": "mds", "user": "admin"}), [])
    assert (req.caller_class, req.caller_id) == ("client", "alice")


def test_a_revoked_key_on_an_open_connection_gets_eacces():
    k = keys(ALICE)
    core = DataPlaneCore("dn1", k)
    k.update({"digest": "d2", "ids": []})
    req, frames = core.on_message(b"C", ALICE, request(), [])
    assert req is None and error_of(frames)[0] == "EACCES"
    req, frames = core.on_message(b"C", "x:revoked:-", request(), [])
    assert req is None and error_of(frames)[0] == "EACCES"
    assert core.counters()["data_refused"] == 2


def test_security_off_every_caller_is_the_superuser_client():
    req, _ = DataPlaneCore("dn1", None).on_message(b"C", None, request(), [])
    assert (req.caller_class, req.caller_id) == ("client", "admin")


def test_another_nodes_service_is_refused_with_eproto():
    core = DataPlaneCore("dn1", keys(ALICE))
    req, frames = core.on_message(b"C", ALICE, request(service=b"dn.dn2"), [])
    assert req is None and error_of(frames)[0] == "EPROTO"


@pytest.mark.parametrize("env", [
    b"", b"AEGIS/1\x02", b"junk", P.pack(P.READY, b"dn.dn1", b"1", b""),
    P.pack(P.REQUEST, b"dn.dn1", b"", b"\x80"),             # no request id
    P.pack(P.REPLY, b"dn.dn1", b"1", P.ok_header({})),
])
def test_malformed_envelopes_are_dropped(env):
    core = DataPlaneCore("dn1", keys(ALICE))
    assert core.on_message(b"C", ALICE, env, []) == (None, None)
    assert core.counters()["data_malformed"] == 1


def test_a_bad_header_is_answered_eproto():
    core = DataPlaneCore("dn1", keys(ALICE))
    env = P.pack(P.REQUEST, b"dn.dn1", b"12345678", b"\xc1not msgpack")
    req, frames = core.on_message(b"C", ALICE, env, [])
    assert req is None and error_of(frames)[0] == "EPROTO"


def test_fuzzed_messages_never_raise():
    rng = random.Random(13)
    core = DataPlaneCore("dn1", keys(ALICE, DN2))
    good = request(header={"op": "put_block", "id": b"x" * 16, "cap": b"c" * 48})
    users = [ALICE, DN2, None, "x:revoked:-", "u:alice", "", "m:dn.:" + "Z" * 40]
    for _ in range(5_000):
        env = bytearray(good)
        for _ in range(rng.randint(0, 6)):
            choice = rng.random()
            if choice < 0.5 and env:
                env[rng.randrange(len(env))] = rng.randrange(256)
            elif choice < 0.75:
                del env[rng.randrange(len(env) + 1):]
            else:
                env += rng.randbytes(rng.randint(1, 40))
        payload = [rng.randbytes(rng.randint(0, 16)) for _ in range(rng.randint(0, 3))]
        req, frames = core.on_message(rng.randbytes(5), rng.choice(users), bytes(env), payload)
        assert req is None or frames is None
        if frames is not None:
            assert P.unpack(frames[1])[0] == P.REPLY
    assert core.counters()["data_requests"] > 0      # the fuzz also reached the service


def test_the_advertised_address():
    assert advertised_host("127.0.0.1", "", "tcp://127.0.0.1:5551") == "127.0.0.1"
    assert advertised_host("10.1.2.3", "dn1.example", "tcp://10.1.2.9:5551") == "dn1.example"
    # a wildcard bind: the address this host uses toward the broker
    assert advertised_host("0.0.0.0", "", "tcp://127.0.0.1:5551") == "127.0.0.1"
