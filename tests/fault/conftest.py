"""Fixtures of the fault-injection tests: real clusters (tests/support/harness.py) on free ports
in a temporary directory, always stopped; event capture; figures printed at the end."""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import crc32c
import pytest

from broker.client import Client
from broker.events import Event, Subscriber
from tests.support.harness import Harness

from tests.support.figures import record  # noqa: F401  (the fault tests' figures)


@pytest.fixture
def cluster(tmp_path) -> Iterator[Callable[..., Harness]]:
    """cluster(**Harness kwargs) -> a started Harness; every one is stopped at teardown."""
    made: list[Harness] = []

    def make(**kw) -> Harness:
        h = Harness(tmp_path / f"cluster{len(made)}", **kw)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(20240611)


class Events:
    """Collects events of some topics in a thread, from before the test acts."""

    def __init__(self, endpoint: str, topics: list[str], curve=None) -> None:
        self.events: list[Event] = []
        self._sub = Subscriber(endpoint, topics, curve=curve)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.5)     # let the subscription reach the publishers through the proxy

    def _run(self) -> None:
        while not self._stop.is_set():
            ev = self._sub.recv(timeout=0.1)
            if ev is not None:
                with self._lock:
                    self.events.append(ev)

    def of(self, topic: str) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.topic == topic]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sub.close()


@pytest.fixture
def events() -> Iterator[Callable[[Harness, list[str]], Events]]:
    made: list[Events] = []

    def make(h: Harness, topics: list[str]) -> Events:
        e = Events(h.cluster.endpoints["events_out"], topics, h.cluster.curve)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt a stored block in place, as a bad disk would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def read_replicas(h: Harness, block: dict) -> dict[str, str]:
    """Each replica of `block` read straight from its DataNode: node -> "ok" or a reason."""
    out = {}
    bid = bytes.fromhex(block["id"])
    with Client(h.broker, timeout=5.0, connect_timeout=2.0, curve=h.cluster.curve) as c:
        # a read capability: stat the file the block belongs to
        path = block.get("path")
        caps = {} if path is None else {
            b["id"]: b["cap"] for b in c.call("mds", {"op": "stat", "path": path}).result["blocks"]}
        for node in block["replicas"]:
            try:
                r = c.call(f"dn.{node}", {"op": "get_block", "id": bid, "cap": caps.get(bid)})
                data = r.payload[0] if r.payload else memoryview(b"")
                if data.nbytes != block["size"]:
                    out[node] = f"{data.nbytes} bytes, expected {block['size']}"
                elif crc32c.crc32c(data) != block["checksum"]:
                    out[node] = "checksum mismatch"
                else:
                    out[node] = "ok"
            except OSError as exc:
                out[node] = f"error: {exc}"
    return out
