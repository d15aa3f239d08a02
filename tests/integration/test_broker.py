"""The real broker process with echo workers on free loopback ports."""
from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time

import msgpack
import pytest
import zmq

from broker import config
from broker import protocol as P
from broker.client import Client
from run_cluster import free_base_port

HB = 0.2   # heartbeat interval for these tests: expiry after 0.6 s


class BrokerSetup:
    def __init__(self, processes) -> None:
        self.processes = processes
        self.base = free_base_port()
        self.ep = config.endpoints_for_base_port(self.base)
        self.broker = None
        self.workers: list = []

    def start_broker(self):
        self.broker = self.processes.start("-m", "broker", "--base-port", str(self.base),
                                           "--heartbeat-interval", str(HB), name="broker")
        return self.broker

    def start_worker(self, name: str = "w", service: str = "echo", capacity: int = 64):
        proc = self.processes.start("-m", "tests.support.echo_worker", "--endpoint",
                                    self.ep["worker"], "--service", service, "--name", name,
                                    "--heartbeat-interval", str(HB), "--capacity",
                                    str(capacity), name=name)
        self.workers.append(proc)
        return proc

    def client(self, **kw) -> Client:
        return Client(self.ep["client"], **{"timeout": 10.0, "connect_timeout": 5.0, **kw})

    def wait_service(self, service: str, count: int = 1, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client(timeout=1.0) as c:
            while time.monotonic() < deadline:
                try:
                    if c.call("broker", {"op": "services"}).result["services"].get(service, 0) >= count:
                        return
                except OSError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"service {service} did not get {count} workers")


@pytest.fixture
def setup(processes):
    s = BrokerSetup(processes)
    s.start_broker()
    return s


def test_10000_requests_from_4_clients_answered_exactly_once(setup):
    for i in range(2):
        setup.start_worker(f"w{i}")
    setup.wait_service("echo", 2)
    answers: dict[int, list] = {i: [] for i in range(4)}
    errors = []

    def run(cid: int) -> None:
        try:
            with setup.client(max_in_flight=32) as c:
                for n in range(2500):
                    c.send("echo", {"op": "echo", "cid": cid, "n": n})
                    while c.in_flight >= 32:
                        answers[cid].append(c.wait_any(10).unwrap().result["echo"]["n"])
                while c.in_flight:
                    answers[cid].append(c.wait_any(10).unwrap().result["echo"]["n"])
        except Exception as exc:   # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    for cid in range(4):
        assert sorted(answers[cid]) == list(range(2500)), f"client {cid}"


def test_64_mib_payload_in_4_mib_frames_is_byte_identical(setup):
    setup.start_worker()
    setup.wait_service("echo")
    frames = [os.urandom(4 * 1024 * 1024) for _ in range(16)]
    with setup.client(timeout=60) as c:
        reply = c.call("echo", {"op": "echo"}, frames)
    assert len(reply.payload) == 16
    assert all(bytes(got) == sent for got, sent in zip(reply.payload, frames))


def test_payload_that_is_not_msgpack_passes_untouched(setup):
    setup.start_worker()
    setup.wait_service("echo")
    odd = [b"\xc1\xc1\xc1", b"", b"AEGIS/1\x02", msgpack.packb({"x": 1})[:-1]]
    with setup.client() as c:
        reply = c.call("echo", {"op": "echo"}, odd)
    assert [bytes(p) for p in reply.payload] == odd


def test_no_worker_gets_an_immediate_error(setup):
    setup.wait_service("broker", 0)
    with setup.client() as c:
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError, match="no live worker"):
            c.call("mds", {"op": "stat"})
        assert time.monotonic() - start < 1.0


def test_worker_killed_with_requests_in_flight(setup):
    w = setup.start_worker()
    setup.wait_service("echo")
    with setup.client(timeout=30) as c:
        rids = [c.send("echo", {"op": "sleep", "seconds": 20}) for _ in range(3)]
        time.sleep(0.3)
        w.send_signal(signal.SIGKILL)
        start = time.monotonic()
        for rid in rids:
            with pytest.raises(ConnectionResetError, match="lost"):
                c.wait(rid)
        assert time.monotonic() - start < 3 * HB + 1.0


def test_cluster_down_is_reported_quickly(processes):
    ep = config.endpoints_for_base_port(free_base_port())
    with Client(ep["client"], connect_timeout=0.5) as c:
        start = time.monotonic()
        with pytest.raises(ConnectionRefusedError, match="cannot reach the broker"):
            c.call("mds", {"op": "stat"})
        assert time.monotonic() - start < 2


def _mutations(rng: random.Random, valid: list[list[bytes]]) -> list[bytes]:
    msg = [bytearray(f) for f in rng.choice(valid)]
    kind = rng.randrange(10)
    if kind == 0:
        return [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6))]
    if kind == 1 and msg[0]:
        i = rng.randrange(len(msg[0]))
        msg[0][i] ^= 1 << rng.randrange(8)
    elif kind == 2:
        msg[0] = msg[0][:rng.randrange(len(msg[0]) + 1)]
    elif kind == 3:
        msg.append(bytearray(os.urandom(rng.randrange(100))))
    elif kind == 4:
        msg = [bytearray()]                                       # empty message
    elif kind == 5:
        msg[0] = bytearray(b"AEGIS/9" + bytes(msg[0][7:]))        # other version
    elif kind == 6:
        msg[0] = bytearray(P.pack(rng.randrange(256), b"echo", b"r1", b"\xc1garbage"))
    elif kind == 7:
        msg[0] = bytearray(P.pack(P.REQUEST, b"echo", b"r%d" % rng.randrange(9),
                                  b"\x80" * 70_000))              # huge header
    elif kind == 8:
        msg[0] = bytearray(P.pack(rng.choice([P.READY, P.REPLY, P.HEARTBEAT, P.DISCONNECT,
                                              P.REQUEST]),
                                  b"svc%d" % rng.randrange(5), b"x", os.urandom(8)))
    return [bytes(f) for f in msg]


def test_hostile_input_at_every_endpoint(setup):
    setup.start_worker()
    setup.wait_service("echo")
    ctx = zmq.Context.instance()
    rng = random.Random(1234)
    valid = [
        [P.pack(P.REQUEST, b"echo", b"1", P.encode_header({"op": "echo"}))],
        [P.pack(P.REQUEST, b"echo", b"2", P.encode_header({"op": "echo"})), b"payload"],
        [P.pack(P.REQUEST, b"broker", b"3", P.encode_header({"op": "services"}))],
        [P.ready_envelope("hostile", {"capacity": 1})],
        [P.pack(P.REPLY, b"\x00abcd", b"1", P.ok_header())],
        [P.HEARTBEAT_ENV], [P.DISCONNECT_ENV],
    ]
    sent = 0
    for endpoint, sock_type in ((setup.ep["client"], zmq.DEALER), (setup.ep["worker"], zmq.DEALER),
                                (setup.ep["events_in"], zmq.PUB), (setup.ep["events_out"], zmq.XSUB)):
        socks = [ctx.socket(sock_type) for _ in range(3)]
        for s in socks:
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDTIMEO, 2000)
            s.connect(endpoint)
        time.sleep(0.2)
        for i in range(2600):
            frames = _mutations(rng, valid)
            if sock_type == zmq.XSUB and frames and frames[0]:
                frames[0] = bytes([rng.choice([0, 1, 2])]) + frames[0]   # (un)subscribe-ish
            try:
                socks[i % 3].send_multipart(frames)
                sent += 1
            except zmq.Again:
                pass
        for s in socks:
            s.close()
    # raw bytes that are not ZMTP at all, at each port
    for port in range(setup.base, setup.base + 4):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(os.urandom(4096))
    assert sent >= 10_000
    time.sleep(0.5)
    assert setup.broker.poll() is None, "broker died"
    with setup.client() as c:
        for i in range(20):
            r = c.call("echo", {"op": "echo", "i": i}, [b"after"])
            assert r.result["echo"]["i"] == i and bytes(r.payload[0]) == b"after"
        assert c.call("broker", {"op": "ping"}).result == {"pong": True}


def test_broker_restart_under_load(setup):
    for i in range(2):
        setup.start_worker(f"w{i}")
    setup.wait_service("echo", 2)
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "ok_after_restart": 0}
    restarted = threading.Event()

    def load() -> None:
        with setup.client(timeout=2.0, connect_timeout=0.5) as c:
            while not stop.is_set():
                try:
                    c.call("echo", {"op": "echo"})
                    stats["ok"] += 1
                    if restarted.is_set():
                        stats["ok_after_restart"] += 1
                except OSError:
                    stats["failed"] += 1
                    time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = stats["ok"]
    setup.broker.send_signal(signal.SIGKILL)
    setup.broker.wait()
    time.sleep(0.5)
    setup.start_broker()
    restarted.set()
    try:
        setup.wait_service("echo", 2, timeout=10)
        deadline = time.monotonic() + 10
        while stats["ok_after_restart"] < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert before > 100
    assert stats["ok_after_restart"] >= 200, stats
    assert all(w.poll() is None for w in setup.workers)


def test_worker_recv_with_zero_timeout_takes_what_is_queued(setup):
    """What the MDS's group commit relies on: recv(timeout=0) drains queued requests."""
    from broker.worker import Worker
    worker = Worker(setup.ep["worker"], "drain", heartbeat_interval=HB)
    try:
        setup.wait_service("drain")
        with setup.client() as c:
            rids = [c.send("drain", {"op": "x", "i": i}) for i in range(10)]
            first = worker.recv(timeout=5)
            assert first is not None
            time.sleep(0.2)                       # the other nine are queued by now
            batch = [first]
            while (req := worker.recv(timeout=0)) is not None:
                batch.append(req)
            assert [r.header["i"] for r in batch] == list(range(10))
            for req in batch:
                worker.reply(req, {"i": req.header["i"]})
            assert [c.wait(rid).result["i"] for rid in rids] == list(range(10))
    finally:
        worker.close()


def test_callers_are_stamped_by_the_broker_not_the_sender(setup):
    """Client endpoint -> class client; a member connection on the worker endpoint -> the
    member it declared; replies reach each on its own socket."""
    from broker.client import MemberClient
    setup.start_worker("w0")
    setup.wait_service("echo")
    with setup.client() as c:
        reply = c.call("echo", {"op": "echo", "caller": ["mds", "mds"]})
        assert reply.result["caller"] == ["client", "admin"]
    for member, caller in (("dn.dn7", ["datanode", "dn7"]), ("mds", ["mds", "mds"])):
        with MemberClient(setup.ep["worker"], member, timeout=10, connect_timeout=5) as m:
            for i in range(3):
                reply = m.call("echo", {"op": "echo", "i": i}, [b"frame"])
                assert reply.result["caller"] == caller and reply.result["echo"]["i"] == i
                assert bytes(reply.payload[0]) == b"frame"
            assert m.call("broker", {"op": "services"}).result["services"] == {"echo": 1}
    with MemberClient(setup.ep["worker"], "bob", timeout=5, connect_timeout=2) as bob:
        with pytest.raises(P.ProtocolError):   # not a cluster member: refused, and told so
            bob.call("echo", {"op": "echo"})
