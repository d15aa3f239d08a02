"""Worker helper: what mds/ and datanode/ use to serve a service through the broker.

A worker's loop is a few lines:

    worker = Worker(endpoint, "mds")
    while running:
        req = worker.recv(timeout=0.5)          # heartbeats, READY, reconnects handled here
        if req is not None:
            worker.reply(req, {"answer": 42})   # or worker.reply_error(req, exc)

Requests carry a decoded header and payload frames as memoryviews. Replies may also be
sent from other threads with `reply_threadsafe`, which queues them for the loop's thread
(ZeroMQ sockets belong to one thread) and wakes it. `serve(service, stop)` is the whole
loop for a broker.service.Service; each Request knows its caller (class and id, stamped by
the broker) and builds the service Context.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import zmq

from . import protocol as P
from . import wire
from .service import Context, Outcome

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    client: bytes          # the route to the caller: opaque, echoed in the reply
    rid: bytes
    header: dict
    payload: list          # memoryviews, zero-copy
    caller_class: str = P.CALLER_CLIENT   # stamped by the broker (routing.caller_of)
    caller_id: str = "admin"

    @property
    def op(self) -> Any:
        return self.header.get("op")

    def context(self, sink: Callable[[tuple[str, dict]], Any] | None = None) -> Context:
        """The service context of this request: the clocks read now, its caller."""
        return Context.now_for(self.caller_class, self.caller_id, sink)


class Worker:
    sock: zmq.Socket        # replaced by each _connect (a reconnect makes a new socket)
    _monitor: zmq.Socket

    def __init__(self, endpoint: str, service: str, *, heartbeat_interval: float = 1.0,
                 liveness: int = 3, capacity: int = 64, exclusive: bool = False,
                 info: Mapping[str, Any] | None = None,
                 context: zmq.Context | None = None, hwm: int = 1000,
                 max_message_size: int | None = None,
                 max_header: int = P.DEFAULT_MAX_HEADER, curve: Any = None) -> None:
        P.decode_name(service.encode("ascii", "replace"), "service name")
        self.endpoint = endpoint
        self.service = service
        self.interval = heartbeat_interval
        self.liveness = liveness
        self.info = {**(info or {}), "capacity": capacity, "exclusive": exclusive}
        self.ctx = context or zmq.Context.instance()
        self.hwm, self.max_message_size, self.max_header = hwm, max_message_size, max_header
        self._pending: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.reconnects = 0
        self.curve = curve          # broker.curve.CurveKeys, or None with security off
        self._refused_logged = False
        self._closed = False
        self._connect()

    # -- connection ----------------------------------------------------------------------

    def _reconnect(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)
        self.reconnects += 1
        self._connect()

    def _connect(self) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        wire.configure(self.sock, hwm=self.hwm, max_message_size=self.max_message_size)
        if self.curve is not None:
            self.curve.apply(self.sock)
        self._monitor = wire.monitor(self.sock)
        self.sock.connect(self.endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        now = time.monotonic()
        self._broker_expiry = now + self.interval * self.liveness
        self._next_heartbeat = now + self.interval
        # READY is queued now (delivered once connected), so a worker is registered even
        # before its first recv(); later reconnections (a broker restart) send it again.
        self._first_connect = True
        self._ready()

    def _ready(self) -> None:
        if not self._send_control(P.ready_envelope(self.service, self.info)):
            self._first_connect = False     # not queued: the next CONNECTED sends it
        log.info("registering as %r at %s", self.service, self.endpoint)

    def _send_control(self, envelope: bytes) -> bool:
        """READY or HEARTBEAT without blocking: after a refused handshake libzmq keeps no
        pipe to the broker and a blocking send would wait for one forever, deaf to `stop`.
        A control message that cannot be queued is worth nothing later: False."""
        try:
            wire.send(self.sock, [envelope], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    # -- receiving -----------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Request | None:
        """The next request, or None when `timeout` passes or another thread called wake()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._flush_pending()
            now = time.monotonic()
            if now >= self._next_heartbeat:
                self._send_control(P.HEARTBEAT_ENV)
                self._next_heartbeat = now + self.interval
            if now >= self._broker_expiry:
                log.warning("no word from the broker for %.1fs; reconnecting",
                            self.interval * self.liveness)
                self._reconnect()
                continue
            wait = self._next_heartbeat - now
            if deadline is not None:
                wait = min(wait, deadline - now)
            events = dict(self._poller.poll(int(max(0.0, wait) * 1000)))   # poll truncates too
            # Give up only after a poll found nothing: timeout=0 still takes what is queued.
            if not events and deadline is not None and time.monotonic() >= deadline:
                return None
            if self._wake_r in events:
                self._drain_wake()
                self._flush_pending()
                return None
            if self._monitor in events:
                seen = wire.monitor_events(self._monitor)
                if any(e in seen for e in wire.HANDSHAKE_FAILED) and not self._refused_logged:
                    # ZeroMQ keeps retrying; say it once, not every 100 ms
                    self._refused_logged = True
                    log.error("the broker at %s refuses our key%s (not registered for "
                              "%r, or revoked); retrying", self.endpoint,
                              f" {self.curve.source}" if self.curve else " (none given)",
                              self.service)
                if zmq.EVENT_CONNECTED in seen:
                    if self._first_connect:
                        self._first_connect = False
                    else:
                        self._ready()
            if self.sock in events:
                req = self._recv_one()
                if req is not None:
                    return req

    def _recv_one(self) -> Request | None:
        try:
            _, env, payload = wire.recv(self.sock, wire.NOBLOCK)
        except zmq.Again:
            return None
        self._broker_expiry = time.monotonic() + self.interval * self.liveness
        try:
            cmd, client, rid, rest = P.unpack(env)
            if cmd == P.REQUEST:
                caller_class, caller_id, header = P.split_caller(rest)
                try:
                    fields = P.decode_header(header, self.max_header)
                except P.ProtocolError as exc:
                    self._send_reply(client, rid, P.error_header(P.E_PROTOCOL, str(exc)), ())
                    return None
                return Request(client, rid, fields, wire.payload_views(payload),
                               caller_class, caller_id)
            if cmd == P.HEARTBEAT:
                return None
            if cmd == P.DISCONNECT:
                log.info("broker asked us to register again")
                self._ready()
                return None
            raise P.ProtocolError(f"unexpected command {cmd} from the broker")
        except P.ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return None

    # -- replying ------------------------------------------------------------------------

    def _send_reply(self, client: bytes, rid: bytes, header: bytes, payload: Iterable) -> None:
        wire.send(self.sock, [P.pack(P.REPLY, client, rid, header), *payload])

    def reply(self, request: Request, result: Mapping[str, Any] | None = None,
              payload: Iterable = ()) -> None:
        self._send_reply(request.client, request.rid, P.ok_header(result), payload)

    def reply_error(self, request: Request, exc: BaseException) -> None:
        code, message = P.exception_to_error(exc)
        if code == "EIO" and not isinstance(exc, OSError):
            log.exception("internal error handling %r", request.header.get("op"), exc_info=exc)
        self._send_reply(request.client, request.rid, P.error_header(code, message), ())

    def answer(self, request: Request, outcome: Outcome) -> None:
        """Send a service's Outcome: its result and payload, or its error."""
        if outcome.error is not None:
            self.reply_error(request, outcome.error)
        else:
            self.reply(request, outcome.result, outcome.payload)

    def reply_threadsafe(self, request: Request, outcome: Outcome) -> None:
        """Queue an answer from any thread; the loop's thread sends it."""
        self._pending.append((request, outcome))
        self.wake()

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass   # the pipe is full: the loop is already due to wake

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            self.answer(*pending.popleft())

    # -- convenience ---------------------------------------------------------------------

    def serve(self, service: Any, stop: threading.Event,
              sink: Callable[[tuple[str, dict]], Any] | None = None) -> None:
        """Answer each request with `service.run(header, payload, context)` (a
        broker.service.Service, or anything with that method) until `stop` is set."""
        while not stop.is_set():
            req = self.recv(timeout=0.25)
            if req is not None:
                self.answer(req, service.run(req.header, req.payload, req.context(sink)))

    def close(self) -> None:
        """Tell the broker we are leaving (it fails our in-flight requests at once)."""
        if self._closed:
            return
        self._closed = True
        self._flush_pending()
        try:
            wire.send(self.sock, [P.DISCONNECT_ENV], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.sock.setsockopt(zmq.LINGER, 200)   # let DISCONNECT leave before we go
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
