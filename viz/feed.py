"""The event feed: one daemon thread per events endpoint that SUB-scribes to the broker's
XPUB and folds every event into a bounded `VizState`, which pages read as a `View`.

`shared_feed` starts it once per process (st.cache_resource), so it outlives reruns and
is shared by every browser session; ZeroMQ reconnects by itself when the broker returns.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import streamlit as st
import zmq

from broker import wire
from broker.curve import client_keys
from broker.config import endpoint_list
from broker.events import decode_event
from broker.failover import EventDedupe

from .state import View, VizState

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25        # how soon the thread notices stop()
HWM = 100_000              # events queued in ZeroMQ while a page render holds the lock


class Feed:
    def __init__(self, endpoint: str, *, state: VizState | None = None,
                 clock: Callable[[], float] = time.time, curve: Any = None) -> None:
        self.endpoint = endpoint
        self.curve = curve         # broker.curve.CurveKeys (a user's key), None = security off
        self.clock = clock
        self.started = clock()
        self.connected = False
        self.errors = 0
        self._state = state or VizState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        # A daemon: under AppTest the thread lives in the test process, which must exit.
        self._thread = threading.Thread(target=self._run, name=f"viz-feed {endpoint}",
                                        daemon=True)

    def start(self, wait: float = 2.0) -> "Feed":
        self._thread.start()
        self._ready.wait(wait)   # subscribed (not necessarily connected) before we return
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def view(self, recent: int = 50) -> View:
        with self._lock:
            return self._state.view(self.clock(), recent)

    def _run(self) -> None:
        # The socket is made, used and closed in this thread: ZeroMQ sockets are not
        # thread-safe. Not broker.events.Subscriber: the monitor must exist before the
        # connect, or the first "connected" is never seen.
        sock: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        wire.configure(sock, hwm=HWM)
        if self.curve is not None:
            self.curve.apply(sock)
        mon = wire.monitor(sock)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        endpoints = endpoint_list(self.endpoint)
        for each in endpoints:          # several brokers: each relays every event
            sock.connect(each)
        self._dedupe = EventDedupe() if len(endpoints) > 1 else None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        self._ready.set()
        log.info("event feed subscribed to %s", self.endpoint)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(int(POLL_SECONDS * 1000)))
                if mon in ready:
                    self._connection(wire.monitor_events(mon))
                if sock in ready:
                    self._drain(sock)
        finally:
            sock.disable_monitor()
            mon.close(linger=0)
            sock.close(linger=0)
            log.info("event feed for %s stopped", self.endpoint)

    def _connection(self, events: list[int]) -> None:
        for e in events:
            if e == zmq.EVENT_CONNECTED:
                self.connected = True
            elif e == zmq.EVENT_DISCONNECTED:
                self.connected = False

    def _drain(self, sock: zmq.Socket) -> None:
        """Fold what is waiting, without blocking (at most a batch, so stop() is noticed
        even under a flood)."""
        for _ in range(10_000):
            try:
                _, topic, rest = wire.recv(sock, wire.NOBLOCK)
            except zmq.Again:
                return
            event = decode_event([topic, *wire.payload_views(rest)])
            if event is None:    # garbage from a peer: count it, never stop for it
                self.errors += 1
                continue
            if self._dedupe is not None and isinstance(event.seq, int) and \
                    not self._dedupe.first(event.stream, event.seq):
                continue         # the copy another broker relayed
            try:
                with self._lock:
                    self._state.apply(event.topic, event.body, self.clock())
            except Exception:    # a body we cannot fold must not end the feed either
                self.errors += 1
                log.exception("event feed: cannot fold %s from %s", event.topic, event.src)


def _release(feed: Feed) -> None:
    feed.stop()


@st.cache_resource(max_entries=4, on_release=_release, show_spinner=False)
def shared_feed(endpoint: str, security: tuple[tuple[str, str], ...] = ()) -> Feed:
    """The process's feed for `endpoint`, started on first use; with security on it
    subscribes with the user key found as the CLI finds it (--key, AEGISFS_KEY, ...).
    `security`: the [security] settings as sorted pairs (hashable, for the cache)."""
    settings = dict(security)
    return Feed(endpoint, curve=client_keys(settings.get("key") or None, settings)).start()
