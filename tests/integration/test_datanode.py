"""Real DataNodes behind a real broker: byte-identical blocks, gap-free events, kill -9."""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import crc32c

from broker import config
from broker.client import Client
from broker.curve import CurveKeys
from broker.keys import KeyStore
from broker.events import Subscriber
from run_cluster import free_base_port

HB = 0.3


class Nodes:
    def __init__(self, processes, tmp: Path, count: int) -> None:
        self.processes, self.tmp = processes, tmp
        self.base = free_base_port()
        self.ep = config.endpoints_for_base_port(self.base)
        self.procs = {f"dn{i + 1}": None for i in range(count)}
        self.keys = tmp / "keys"
        store = KeyStore(self.keys)
        store.ensure_cluster(list(self.procs))
        self.curve = CurveKeys.load(store.user_key_path("admin"))   # what clients use
        self.broker = processes.start("-m", "broker", "--base-port", str(self.base),
                                      "--heartbeat-interval", str(HB), "--keys",
                                      str(self.keys), name="broker")
        for node in self.procs:
            self.start(node)

    def start(self, node: str):
        self.procs[node] = self.processes.start(
            "-m", "datanode", "--id", node, "--data-dir", str(self.tmp / node),
            "--base-port", str(self.base), "--heartbeat-interval", str(HB),
            "--no-capabilities", "--keys", str(self.keys),
            name=node)   # no MDS here to hand out capability keys
        return self.procs[node]

    def wait(self, nodes=None, timeout: float = 20.0) -> None:
        """Until each node answers a request (a registration alone may be a dead one's)."""
        deadline = time.monotonic() + timeout
        with Client(self.ep["client"], timeout=1, connect_timeout=1, curve=self.curve) as c:
            for node in nodes or self.procs:
                while True:
                    try:
                        c.call(f"dn.{node}", {"op": "info"})
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)


def block_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix == ".blk"]


def test_1000_blocks_round_trip_and_gap_free_events(processes, tmp_path):
    nodes = Nodes(processes, tmp_path, 3)
    sub = Subscriber(nodes.ep["events_out"], ["block.commit"], curve=nodes.curve)
    nodes.wait()
    time.sleep(0.5)   # let the subscription reach the publishers through the proxy
    rng = random.Random(42)
    # the edge sizes, then 997 up to 1 MiB (0.5 GB each way: the count, not the bytes, is what
    # this test is about; test_cli moves 100 MiB files and bench/ the throughput)
    sizes = [0, 1, 8 * 1024 * 1024] + [rng.randrange(0, 1024 * 1024 + 1) for _ in range(997)]
    pool = os.urandom(8 * 1024 * 1024 + 4096)
    stored: dict[bytes, tuple[str, int, int]] = {}
    with Client(nodes.ep["client"], timeout=60, max_in_flight=8, curve=nodes.curve) as c:
        for i, size in enumerate(sizes):
            off = rng.randrange(4096)
            data = memoryview(pool)[off:off + size]
            bid = rng.randbytes(16)
            node = f"dn{i % 3 + 1}"
            stored[bid] = (node, off, size)
            c.send(f"dn.{node}", {"op": "put_block", "id": bid, "checksum": crc32c.crc32c(data)},
                   [data])
            while c.in_flight >= 8:
                c.wait_any().unwrap()
        while c.in_flight:
            c.wait_any().unwrap()
        # read everything back, pipelined, matching replies to blocks by request id
        pending: dict[int, bytes] = {}

        def check(reply) -> None:
            node, off, size = stored[pending.pop(reply.rid)]
            reply.unwrap()
            assert reply.result["size"] == size
            assert bytes(reply.payload[0]) == pool[off:off + size]

        for bid, (node, _, _) in stored.items():
            pending[c.send(f"dn.{node}", {"op": "get_block", "id": bid})] = bid
            while c.in_flight >= 8:
                check(c.wait_any())
        while c.in_flight:
            check(c.wait_any())
        assert not pending
    seen: dict[str, list[int]] = defaultdict(list)
    blocks_seen = set()
    deadline = time.monotonic() + 20
    while len(blocks_seen) < len(stored) and time.monotonic() < deadline:
        ev = sub.recv(1.0)
        if ev is not None:
            seen[ev.src].append(ev.seq)
            blocks_seen.add(ev.body["block"])
    sub.close()
    assert blocks_seen == {b.hex() for b in stored}
    for node in ("dn1", "dn2", "dn3"):
        seqs = seen[node]
        assert seqs == list(range(1, len(seqs) + 1)), f"{node}: gap or reorder"
        assert len(seqs) == sum(1 for n, _, _ in stored.values() if n == node)


def test_kill_9_during_puts_leaves_no_partial_block(processes, tmp_path):
    nodes = Nodes(processes, tmp_path, 1)
    nodes.wait()
    acked: dict[bytes, bytes] = {}
    stop = threading.Event()

    def writer():
        rng = random.Random(7)
        with Client(nodes.ep["client"], timeout=5, connect_timeout=1, max_in_flight=4,
                    curve=nodes.curve) as c:
            sent = {}
            while not stop.is_set():
                data = rng.randbytes(rng.randrange(1, 3 * 1024 * 1024))
                bid = rng.randbytes(16)
                try:
                    rid = c.send("dn.dn1", {"op": "put_block", "id": bid,
                                            "checksum": crc32c.crc32c(data)}, [data])
                    sent[rid] = (bid, data)
                    while c.in_flight >= 4:
                        r = c.wait_any()
                        item = sent.pop(r.rid)
                        if r.error is None:
                            acked[item[0]] = item[1]
                except OSError:
                    time.sleep(0.05)

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(2.0)
    nodes.procs["dn1"].send_signal(signal.SIGKILL)
    nodes.procs["dn1"].wait()
    stop.set()
    t.join(30)
    assert len(acked) > 5
    on_disk_before = {p.stem for p in block_files(tmp_path / "dn1")}
    nodes.start("dn1")
    nodes.wait(["dn1"])
    # no tmp residue, and every visible block verifies (no partial block became visible)
    assert not any((tmp_path / "dn1" / "tmp").iterdir())
    with Client(nodes.ep["client"], timeout=30, curve=nodes.curve) as c:
        for bid, data in acked.items():
            r = c.call("dn.dn1", {"op": "get_block", "id": bid})
            assert bytes(r.payload[0]) == data
        for name in on_disk_before:
            r = c.call("dn.dn1", {"op": "get_block", "id": bytes.fromhex(name)})
            assert r.result["size"] == len(r.payload[0])
