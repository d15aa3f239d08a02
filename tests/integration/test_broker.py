"""The real broker process with echo workers on free loopback ports, with security on
(CURVE; the echo workers hold the member key of "dn.echo", clients the admin user's key)
unless a test says otherwise."""
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
from broker.curve import CurveKeys
from broker.keys import KeyStore
from run_cluster import free_base_port

HB = 0.2   # heartbeat interval for these tests: expiry after 0.6 s
SVC = "dn.echo"          # a member key serves only its own service: the echo workers' key
NODES = ["echo", "dn7", "drain"]


class BrokerSetup:
    def __init__(self, processes, secure: bool = True, hb: float = HB) -> None:
        self.processes = processes
        self.hb = hb
        self.base = free_base_port()
        self.ep = config.endpoints_for_base_port(self.base)
        self.broker = None
        self.workers: list = []
        self.secure = secure
        self.keys = processes.tmp / "keys"
        self.store = KeyStore(self.keys)
        self.curve = None
        if secure:
            self.store.ensure_cluster(NODES)
            self.curve = CurveKeys.load(self.store.user_key_path("admin"))

    def member(self, service: str) -> CurveKeys | None:
        if not self.secure:
            return None
        return CurveKeys.load(self.store.member_key_path(service), self.keys / "broker.key")

    def start_broker(self):
        sec = ["--keys", str(self.keys)] if self.secure else ["--security", "off"]
        self.broker = self.processes.start("-m", "broker", "--base-port", str(self.base),
                                           "--heartbeat-interval", str(self.hb), *sec,
                                           name="broker")
        return self.broker

    def start_worker(self, name: str = "w", service: str = SVC, capacity: int = 64,
                     key_of: str | None = None):
        key = []
        if self.secure:
            key = ["--key", str(self.store.member_key_path(key_of or service)),
                   "--broker-key", str(self.keys / "broker.key")]
        proc = self.processes.start("-m", "tests.support.echo_worker", "--endpoint",
                                    self.ep["worker"], "--service", service, "--name", name,
                                    "--heartbeat-interval", str(self.hb), "--capacity",
                                    str(capacity), *key, name=name)
        self.workers.append(proc)
        return proc

    def client(self, **kw) -> Client:
        return Client(self.ep["client"], **{"timeout": 10.0, "connect_timeout": 5.0,
                                            "curve": self.curve, **kw})

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
    setup.wait_service(SVC, 2)
    answers: dict[int, list] = {i: [] for i in range(4)}
    errors = []

    def run(cid: int) -> None:
        try:
            with setup.client(max_in_flight=32) as c:
                for n in range(2500):
                    c.send(SVC, {"op": "echo", "cid": cid, "n": n})
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


@pytest.fixture
def setup_1s(processes):
    """The default 1 s heartbeats (3 s before a silent peer is dropped): 64 MiB over CURVE
    on a loaded 2-core machine took longer than HB's 0.6 s, and a heartbeat queued behind
    a message on the same connection cannot arrive before it (ECONNRESET in a CI run)."""
    s = BrokerSetup(processes, hb=1.0)
    s.start_broker()
    return s


def test_64_mib_payload_in_4_mib_frames_is_byte_identical(setup_1s):
    setup = setup_1s
    setup.start_worker()
    setup.wait_service(SVC)
    frames = [os.urandom(4 * 1024 * 1024) for _ in range(16)]
    with setup.client(timeout=60) as c:
        reply = c.call(SVC, {"op": "echo"}, frames)
    assert len(reply.payload) == 16
    assert all(bytes(got) == sent for got, sent in zip(reply.payload, frames))


def test_payload_that_is_not_msgpack_passes_untouched(setup):
    setup.start_worker()
    setup.wait_service(SVC)
    odd = [b"\xc1\xc1\xc1", b"", b"AEGIS/1\x02", msgpack.packb({"x": 1})[:-1]]
    with setup.client() as c:
        reply = c.call(SVC, {"op": "echo"}, odd)
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
    setup.wait_service(SVC)
    with setup.client(timeout=30) as c:
        rids = [c.send(SVC, {"op": "sleep", "seconds": 20}) for _ in range(3)]
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


VALID = [
    [P.pack(P.REQUEST, SVC.encode(), b"1", P.encode_header({"op": "echo"}))],
    [P.pack(P.REQUEST, SVC.encode(), b"2", P.encode_header({"op": "echo"})), b"payload"],
    [P.pack(P.REQUEST, b"broker", b"3", P.encode_header({"op": "services"}))],
    [P.ready_envelope("hostile", {"capacity": 1})],
    [P.ready_envelope(SVC, {"capacity": 1, "exclusive": True})],
    [P.member_envelope("mds")],
    [P.pack(P.REPLY, b"\x00abcd", b"1", P.ok_header())],
    [P.HEARTBEAT_ENV], [P.DISCONNECT_ENV],
]
SOCKET_TYPES = {"client": zmq.DEALER, "worker": zmq.DEALER, "events_in": zmq.PUB,
                "events_out": zmq.XSUB}


def _fuzz(endpoint: str, sock_type: int, rng: random.Random, count: int,
          curve: CurveKeys | None, block: bool, valid: list = VALID) -> int:
    """Send `count` mutated messages through 3 sockets; returns how many were queued.
    `block`: wait (up to 2 s) for the connection; without a key nothing ever connects,
    so those sends are attempts that ZeroMQ queues until the high-water mark."""
    ctx = zmq.Context.instance()
    socks = [ctx.socket(sock_type) for _ in range(3)]
    for s in socks:
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 2000 if block else 0)
        if curve is not None:
            curve.apply(s)
        s.connect(endpoint)
    time.sleep(0.2)
    sent = 0
    for i in range(count):
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
    return sent


def _broker_serves(setup, only_real: bool = True) -> None:
    """The broker is up and the real worker answers; `only_real`: nothing the fuzz sent
    got registered (with security on no key may register a service it was not issued)."""
    assert setup.broker.poll() is None, "broker died"
    with setup.client() as c:
        for i in range(20):
            r = c.call(SVC, {"op": "echo", "i": i}, [b"after"])
            assert r.result["echo"]["i"] == i and bytes(r.payload[0]) == b"after"
        assert c.call("broker", {"op": "ping"}).result == {"pong": True}
        services = c.call("broker", {"op": "services"}).result["services"]
        assert services == {SVC: 1} if only_real else services[SVC] == 1, services


def test_hostile_input_at_every_endpoint(setup):
    """Security on: at every endpoint, 10,000+ mutated messages through a connection whose
    key that endpoint admits (they reach the routing core or the event proxy), then the
    same without a key and with a key the endpoint refuses (the handshake fails), then
    raw bytes. The broker stays up and the real worker keeps its registration."""
    setup.start_worker()
    setup.wait_service(SVC)
    rng = random.Random(1234)
    user, member = setup.curve, setup.member("dn.dn7")
    admitted = {"client": user, "worker": member, "events_in": member, "events_out": user}
    refused = {"client": member, "worker": user, "events_in": user, "events_out": None}
    for name, sock_type in SOCKET_TYPES.items():
        sent = _fuzz(setup.ep[name], sock_type, rng, 10_000, admitted[name], block=True)
        assert sent >= 10_000, (name, sent)
        for curve in (None, refused[name]):
            _fuzz(setup.ep[name], sock_type, rng, 1_000, curve, block=False)
    # raw bytes that are not ZMTP at all, and a ZMTP 3 greeting asking for NULL, at each port
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + \
        b"\0" * 32
    for port in range(setup.base, setup.base + 4):
        for junk in (os.urandom(4096), greeting + os.urandom(512)):
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(junk)
    time.sleep(0.5)
    _broker_serves(setup)


def test_hostile_input_with_security_off(processes):
    """The insecure mode (benchmarks) takes the same garbage at the client and worker
    endpoints without falling over."""
    setup = BrokerSetup(processes, secure=False)
    setup.start_broker()
    setup.start_worker()
    setup.wait_service(SVC)
    rng = random.Random(99)
    # without keys anyone may register anything (that is what security off means), so
    # leave out the valid READY that would supersede the real worker
    valid = [m for m in VALID if m != [P.ready_envelope(SVC, {"capacity": 1,
                                                             "exclusive": True})]]
    for name in ("client", "worker"):
        assert _fuzz(setup.ep[name], zmq.DEALER, rng, 5_000, None, block=True,
                     valid=valid) >= 5_000
    time.sleep(0.5)
    _broker_serves(setup, only_real=False)   # without keys a fuzzed READY may register


def test_broker_restart_under_load(setup):
    for i in range(2):
        setup.start_worker(f"w{i}")
    setup.wait_service(SVC, 2)
    stop = threading.Event()
    stats = {"ok": 0, "failed": 0, "ok_after_restart": 0}
    restarted = threading.Event()

    def load() -> None:
        with setup.client(timeout=2.0, connect_timeout=0.5) as c:
            while not stop.is_set():
                try:
                    c.call(SVC, {"op": "echo"})
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
        setup.wait_service(SVC, 2, timeout=10)
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
    # exclusive, as the real workers register: a second registration of the same worker
    # (seen once in a while after the fuzz tests: a first connection that went quiet)
    # supersedes the first instead of sharing the requests with it
    # 1 s heartbeats (3 s expiry), not HB: what is tested is the draining, and a broker
    # slowed by the other xdist worker's load for 0.6 s made this worker reconnect and
    # lose the ten requests (seen once in a clean-clone run)
    worker = Worker(setup.ep["worker"], "dn.drain", heartbeat_interval=1.0, exclusive=True,
                    curve=setup.member("dn.drain"))
    try:
        setup.wait_service("dn.drain")
        with setup.client() as c:
            rids = [c.send("dn.drain", {"op": "x", "i": i}) for i in range(10)]
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
    """Client endpoint -> class client with the key's user; a member connection on the
    worker endpoint -> the member its key was issued for; replies reach each on its own
    socket. A member key declaring another member is refused (and told why on request)."""
    from broker.client import MemberClient
    setup.start_worker("w0")
    setup.wait_service(SVC)
    with setup.client() as c:
        reply = c.call(SVC, {"op": "echo", "caller": ["mds", "mds"]})
        assert reply.result["caller"] == ["client", "admin"]
        assert c.call("broker", {"op": "whoami"}).result == {"user": "admin",
                                                             "class": "client"}
    for member, caller in (("dn.dn7", ["datanode", "dn7"]), ("mds", ["mds", "mds"])):
        with MemberClient(setup.ep["worker"], member, timeout=10, connect_timeout=5,
                          curve=setup.member(member)) as m:
            for i in range(3):
                reply = m.call(SVC, {"op": "echo", "i": i}, [b"frame"])
                assert reply.result["caller"] == caller and reply.result["echo"]["i"] == i
                assert bytes(reply.payload[0]) == b"frame"
            assert m.call("broker", {"op": "services"}).result["services"] == {SVC: 1}
    for declared in ("bob", "mds", "dn.dn1"):   # dn7's key acting for someone else
        with MemberClient(setup.ep["worker"], declared, timeout=5, connect_timeout=2,
                          curve=setup.member("dn.dn7")) as liar:
            with pytest.raises(P.ProtocolError):   # its declaration was refused
                liar.call(SVC, {"op": "echo"})


def test_security_off_stamps_every_client_admin(processes):
    setup = BrokerSetup(processes, secure=False)
    setup.start_broker()
    setup.start_worker("w0")
    setup.wait_service(SVC)
    from broker.client import MemberClient
    with setup.client() as c:
        assert c.call(SVC, {"op": "echo"}).result["caller"] == ["client", "admin"]
        assert c.call("broker", {"op": "whoami"}).result["user"] == "admin"
    with MemberClient(setup.ep["worker"], "dn.dn9", timeout=5, connect_timeout=2) as m:
        assert m.call(SVC, {"op": "echo"}).result["caller"] == ["datanode", "dn9"]


def test_post_never_waits_for_a_broker_that_is_not_there():
    """Client.post (the best-effort cleanup a closing AegisClient sends) over no live
    connection: False at once, and close() does not linger for it."""
    c = Client(f"tcp://127.0.0.1:{free_base_port()}", connect_timeout=5)
    started = time.monotonic()
    assert c.post("mds", {"op": "abort", "handle": "x"}) is False
    c.close()
    assert time.monotonic() - started < 0.5
