"""Events: dotted topics published by the MDS and DataNodes, relayed by the broker's proxy.

Wire form: [topic, msgpack body]; the body always has `src` (publisher), `seq` (numbered
per publisher and topic, from 1, so a subscriber sees gaps), `run` (drawn per Publisher, so
a restarted publisher is a new stream) and `ts` (unix time). With several brokers (an
endpoint string of comma-separated endpoints) a Publisher sends each event to every broker
and a Subscriber hears it from each, accepting the first copy (broker/failover.py).
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import msgpack
import zmq

from . import wire
from .config import endpoint_list
from .failover import EventDedupe


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

    @property
    def stream(self) -> tuple:
        """What `seq` counts within: the publisher, its run, the topic (hashable whatever a
        peer put in the body)."""
        src, run = self.body.get("src"), self.body.get("run")
        return (src if isinstance(src, str) else repr(src),
                run if isinstance(run, int) else repr(run), self.topic)


class Publisher:
    """Thread-safe PUB connected to the XSUB endpoint of each broker (a PUB sends every
    message to each connected peer that subscribed: each broker relays it)."""

    def __init__(self, endpoint: str, source: str, context: zmq.Context | None = None,
                 hwm: int = 10_000, curve: Any = None) -> None:
        self.source = source
        self.sock = (context or zmq.Context.instance()).socket(zmq.PUB)
        wire.configure(self.sock, hwm=hwm)
        if curve is not None:   # broker.curve.CurveKeys: a member key
            curve.apply(self.sock)
        for each in endpoint_list(endpoint):
            self.sock.connect(each)
        self.run = int.from_bytes(os.urandom(4), "big")
        self._seq: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def publish(self, topic: str, **fields: Any) -> int:
        with self._lock:
            self._seq[topic] += 1
            seq = self._seq[topic]
            body = {**fields, "src": self.source, "seq": seq, "run": self.run, "ts": time.time()}
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
    """SUB on the XPUB endpoint of each broker, for one thread; with several brokers each
    event is returned once (the copies relayed by the other brokers are dropped)."""

    def __init__(self, endpoint: str, topics: Iterable[str] = ("",),
                 context: zmq.Context | None = None, hwm: int = 100_000,
                 curve: Any = None) -> None:
        self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        wire.configure(self.sock, hwm=hwm)
        if curve is not None:   # broker.curve.CurveKeys: a user's or a member's key
            curve.apply(self.sock)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        endpoints = endpoint_list(endpoint)
        for each in endpoints:
            self.sock.connect(each)
        self.dedupe = EventDedupe() if len(endpoints) > 1 else None

    def recv(self, timeout: float | None = None) -> Event | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            if not self.sock.poll(wait):
                return None
            _, topic, rest = wire.recv(self.sock)
            event = decode_event([topic, *wire.payload_views(rest)])
            if event is None:
                continue
            if self.dedupe is None or not isinstance(event.seq, int) or \
                    self.dedupe.first(event.stream, event.seq):
                return event

    def close(self) -> None:
        self.sock.close(linger=0)
