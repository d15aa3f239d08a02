"""Direct data connections through a real cluster with security on: block payloads go to
the DataNodes' data endpoints and not through the broker; a node whose endpoint cannot be
reached is used through the broker; keyless, unknown-key and wrong-server-key peers are
refused; a revoked user is cut off within 5 s; forged and expired capabilities are EACCES
there too; fuzzed messages leave the endpoint serving."""
from __future__ import annotations

import errno
import os
import random
import time
from typing import Iterator

import pytest
import zmq

from broker import protocol as P
from broker.client import Client
from broker.curve import CurveKeys
from broker.keys import KeyStore
from client import AegisClient
from run_cluster import Cluster
from tests.support.caps import cap_for
from tests.support.cluster import start_cluster
from tests.support.wait import wait_for

MIB = 1024 * 1024
DOWN = "dn3"      # advertises an address nobody listens on: its endpoint is "down"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    c = start_cluster(tmp_path_factory.mktemp("direct"),
                      extra={DOWN: ["--advertise", "127.0.0.2"]})
    try:
        with AegisClient(c.broker, key=c.key) as fs, \
                Client(c.broker, timeout=20, curve=c.curve) as raw:
            fs.write_bytes("/ready", b"x", replication=3)
            # a DataNode advertises its endpoint once it holds the broker's registry
            wait_for(lambda: len(stat(raw, "/ready").get("endpoints", {})) == 3,
                     timeout=15, what="every DataNode's data endpoint at the MDS")
        yield c
    finally:
        c.stop()


@pytest.fixture
def raw(cluster) -> Iterator[Client]:
    with Client(cluster.broker, timeout=20, connect_timeout=5, curve=cluster.curve) as c:
        yield c


def info(raw: Client, node: str) -> dict:
    return raw.call(f"dn.{node}", {"op": "info"}).result


def stat(raw: Client, path: str) -> dict:
    return raw.call("mds", {"op": "stat", "path": path, "read": True}).result


def direct(cluster: Cluster, raw: Client, node: str, path: str,
           keys: CurveKeys | None = None, **kw) -> Client:
    """A connection to `node`'s data endpoint as the MDS describes it (endpoint, key)."""
    endpoint, server = stat(raw, path)["endpoints"][node]
    me = keys or cluster.curve
    return Client(endpoint, curve=CurveKeys(me.public, me.secret, server.encode()),
                  timeout=kw.pop("timeout", 5), connect_timeout=kw.pop("connect_timeout", 3),
                  **kw)


def test_payloads_go_straight_to_the_datanodes_and_a_down_endpoint_is_relayed(
        cluster, raw, tmp_path):
    data = os.urandom(6 * MIB + 123)
    src, out = tmp_path / "src", tmp_path / "out"
    src.write_bytes(data)
    before = {n: info(raw, n) for n in cluster.node_ids}
    with AegisClient(cluster.broker, key=cluster.key, timeout=30) as fs:
        fs.put(str(src), "/direct/a", replication=3, block_size=MIB)
        fs.get("/direct/a", str(out))
        links = fs._io().rpc
        assert links.direct_sent > 0 and links.relayed > 0
    assert out.read_bytes() == data
    after = {n: info(raw, n) for n in cluster.node_ids}
    st = stat(raw, "/direct/a")
    assert all(set(b["replicas"]) == set(cluster.node_ids) for b in st["blocks"])
    for node in cluster.node_ids:
        got = after[node]["data_bytes_in"] - before[node]["data_bytes_in"]
        # every byte a node stored came through its data endpoint, or (its endpoint
        # unreachable) all of them through the broker: the block is still there
        assert got == (0 if node == DOWN else len(data)), node
        assert after[node]["blocks"] - before[node]["blocks"] == len(st["blocks"])
    served = sum(after[n]["data_bytes_out"] - before[n]["data_bytes_out"]
                 for n in cluster.node_ids)
    assert 0 < served <= len(data)        # the reads not sent to dn3 came direct
    assert after[DOWN]["data_requests"] == before[DOWN]["data_requests"]


def test_keyless_unknown_and_wrong_server_key_peers_are_refused(cluster, raw, tmp_path):
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        fs.write_bytes("/direct/k", b"k" * 1000, replication=3)
    endpoint, server = stat(raw, "/direct/k")["endpoints"]["dn1"]
    admin = cluster.curve
    public, secret = zmq.curve_keypair()
    other = stat(raw, "/direct/k")["endpoints"]["dn2"][1].encode()
    attempts = {
        "no key": None,
        "unregistered key": CurveKeys(public, secret, server.encode()),
        "wrong server key": CurveKeys(admin.public, admin.secret, other),
    }
    for what, keys in attempts.items():
        with Client(endpoint, curve=keys, timeout=3, connect_timeout=3) as c:
            with pytest.raises((PermissionError, ConnectionRefusedError, TimeoutError)):
                c.call("dn.dn1", {"op": "info"})
                pytest.fail(f"{what}: answered")
    with direct(cluster, raw, "dn1", "/direct/k") as c:    # the right key still works
        assert c.call("dn.dn1", {"op": "info"}).result["node"] == "dn1"


def test_a_revoked_user_is_cut_off_from_the_data_endpoint_within_5s(cluster, raw):
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        fs.write_bytes("/direct/r", b"r" * 5000, replication=3)
    store = KeyStore(cluster.keys_dir)
    carol = CurveKeys.load(store.add_user("carol"))
    (b,) = stat(raw, "/direct/r")["blocks"]
    ask = {"op": "get_block", "id": b["id"], "cap": b["cap"]}
    deadline = time.monotonic() + 10
    while True:       # the DataNode learns of carol within a second or so; a handshake
        c = direct(cluster, raw, "dn1", "/direct/r", keys=carol, connect_timeout=1)
        try:          # refused before that is not retried by ZeroMQ: a new connection
            assert bytes(c.call("dn.dn1", ask).payload[0]) == b"r" * 5000
            break
        except (PermissionError, ConnectionRefusedError):
            c.close()
            assert time.monotonic() < deadline, "carol never admitted"
            time.sleep(0.2)
    with c:
        store.remove_user("carol")
        t0 = time.monotonic()
        while True:
            try:
                c.call("dn.dn1", ask)
            except PermissionError as exc:
                assert exc.errno == errno.EACCES
                break
            assert time.monotonic() - t0 < 5, "revoked key still served"
            time.sleep(0.1)
        print(f"revoked user cut off from the data endpoint after "
              f"{time.monotonic() - t0:.2f}s")


def test_forged_and_expired_capabilities_are_eacces_on_the_data_endpoint(cluster, raw):
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        fs.write_bytes("/direct/c", b"c" * 3000, replication=3)
    (b,) = stat(raw, "/direct/c")["blocks"]
    refused = info(raw, "dn1")["cap_refused"]
    forged = bytearray(b["cap"])
    forged[-1] ^= 1
    expired = cap_for(cluster.data_dir, b["id"], "read", ttl=-5)
    write = cap_for(cluster.data_dir, os.urandom(16), "write", node="dn1")
    with direct(cluster, raw, "dn1", "/direct/c") as c:
        for header, payload in (
                ({"op": "get_block", "id": b["id"], "cap": bytes(forged)}, ()),
                ({"op": "get_block", "id": b["id"], "cap": expired}, ()),
                ({"op": "get_block", "id": b["id"]}, ()),
                ({"op": "put_block", "id": b["id"], "cap": write}, [b"evil"]),
                ({"op": "put_block", "id": b["id"], "cap": os.urandom(48)}, [b"evil"])):
            with pytest.raises(PermissionError) as err:
                c.call("dn.dn1", header, payload)
            assert err.value.errno == errno.EACCES
        # DataNode-only and MDS-only operations keep their caller checks here too
        with pytest.raises(PermissionError):
            c.call("dn.dn1", {"op": "delete_block", "id": b["id"]})
    assert info(raw, "dn1")["cap_refused"] >= refused + 5
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        assert fs.read_bytes("/direct/c") == b"c" * 3000


def test_fuzzed_messages_leave_the_data_endpoint_serving(cluster, raw):
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        fs.write_bytes("/direct/f", b"f" * 100, replication=3)
    endpoint, server = stat(raw, "/direct/f")["endpoints"]["dn2"]
    admin = cluster.curve
    rng = random.Random(5)
    good = P.pack(P.REQUEST, b"dn.dn2", b"\0" * 7 + b"\1",
                  P.encode_header({"op": "info"}))
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    CurveKeys(admin.public, admin.secret, server.encode()).apply(sock)
    sock.connect(endpoint)
    try:
        for i in range(10_000):
            env = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                if rng.random() < 0.6 and env:
                    env[rng.randrange(len(env))] = rng.randrange(256)
                else:
                    env = env[:rng.randrange(len(env) + 1)] + rng.randbytes(rng.randint(0, 9))
            frames = [bytes(env)] + [rng.randbytes(rng.randint(0, 64))
                                     for _ in range(rng.randint(0, 2))]
            sock.send_multipart(frames)
            while sock.poll(0):
                sock.recv_multipart()
    finally:
        sock.close()
    with direct(cluster, raw, "dn2", "/direct/f", timeout=20) as c:
        counters = c.call("dn.dn2", {"op": "info"}).result
    assert counters["data_malformed"] > 0
    assert info(raw, "dn2")["node"] == "dn2"
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        assert fs.read_bytes("/direct/f") == b"f" * 100
