"""Events: dotted topics published by the MDS and DataNodes, relayed by the broker's proxy.

Wire form: [topic, msgpack body]; the body always has `src` (publisher), `seq` (numbered
per publisher and topic, from 1, so a subscriber sees gaps) and `ts` (unix time).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import msgpack
import zmq

from . import wire


@dataclass(slots=True)
class Event:
    topic: str
    body: dict

    @property
    def src(self) -> str:
        return self.body.get("src", "?")

    @property
    def seq(self) -> int:
        return self.body.get("seq", 0)


class Publisher:
    """Thread-safe PUB connected to the broker's XSUB endpoint."""

    def __init__(self, endpoint: str, source: str, context: zmq.Context | None = None,
                 hwm: int = 10_000, curve: Any = None) -> None:
        self.source = source
        self.sock = (context or zmq.Context.instance()).socket(zmq.PUB)
        wire.configure(self.sock, hwm=hwm)
        if curve is not None:   # broker.curve.CurveKeys: a member key
            curve.apply(self.sock)
        self.sock.connect(endpoint)
        self._seq: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def publish(self, topic: str, **fields: Any) -> int:
        with self._lock:
            self._seq[topic] += 1
            seq = self._seq[topic]
            body = {**fields, "src": self.source, "seq": seq, "ts": time.time()}
            wire.send(self.sock, [topic.encode(), msgpack.packb(body, use_bin_type=True)])
            return seq

    def close(self, linger: float = 0.2) -> None:
        with self._lock:
            self.sock.close(linger=int(linger * 1000))


def decode_event(frames: list) -> Event | None:
    """An Event, or None for anything that is not one (never raises on peer garbage)."""
    if len(frames) != 2:
        return None
    try:
        body = msgpack.unpackb(frames[1], raw=False, strict_map_key=True)
        topic = bytes(frames[0]).decode()
    except Exception:
        return None
    return Event(topic, body) if isinstance(body, dict) else None


class Subscriber:
    """SUB on the broker's XPUB endpoint, for one thread."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",),
                 context: zmq.Context | None = None, hwm: int = 100_000,
                 curve: Any = None) -> None:
        self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        wire.configure(self.sock, hwm=hwm)
        if curve is not None:   # broker.curve.CurveKeys: a user's or a member's key
            curve.apply(self.sock)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sock.connect(endpoint)

    def recv(self, timeout: float | None = None) -> Event | None:
        while self.sock.poll(None if timeout is None else timeout * 1000):
            _, topic, rest = wire.recv(self.sock)
            event = decode_event([topic, *wire.payload_views(rest)])
            if event is not None:
                return event
        return None

    def close(self) -> None:
        self.sock.close(linger=0)
