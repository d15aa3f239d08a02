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
from .config import endpoint_list
from .service import Context, Outcome

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    client: bytes          # the route to the caller: opaque, echoed in the reply
    rid: bytes
    header: dict
    payload: list          # memoryviews, zero-copy
    caller_class: str = P.CALLER_CLIENT   # stamped by the broker (callers.caller_of)
    caller_id: str = "admin"
    via: int = 0           # which broker connection of the Worker it came in on

    @property
    def op(self) -> Any:
        return self.header.get("op")

    def context(self, sink: Callable[[tuple[str, dict]], Any] | None = None) -> Context:
        """The service context of this request: the clocks read now, its caller."""
        return Context.now_for(self.caller_class, self.caller_id, sink)


class _Conn:
    """One broker connection of a Worker: its DEALER, monitor, heartbeat and expiry."""
    __slots__ = ("endpoint", "sock", "monitor", "expiry", "next_heartbeat",
                 "first_connect", "refused_logged", "heard")
    sock: zmq.Socket
    monitor: zmq.Socket
    expiry: float
    next_heartbeat: float
    first_connect: bool

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.refused_logged = False
        self.heard = True           # said "no word" only for a broker heard since the last time


class Worker:
    """Serves one service through one broker, or several: `endpoint` may list
    comma-separated worker endpoints. Each broker gets its own DEALER (one DEALER
    connected to two ROUTERs would round-robin heartbeats and replies between them), its
    own READY, heartbeats, expiry and reconnection; `recv` polls them all, and a reply
    goes back on the connection its request came from (Request.via)."""

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
        self._closed = False
        self._conns = [_Conn(each) for each in endpoint_list(endpoint)]
        self._turn = 0              # which connection is read first: fair between brokers
        self._due = 0.0             # when recv next looks at heartbeats and expiries
        for conn in self._conns:
            self._connect(conn)
        self._build_poller()

    @property
    def sock(self) -> zmq.Socket:
        """The (first) broker connection's socket."""
        return self._conns[0].sock

    # -- connection ----------------------------------------------------------------------

    def _reconnect(self, conn: _Conn) -> None:
        conn.sock.disable_monitor()
        conn.monitor.close(linger=0)
        conn.sock.close(linger=0)
        # `reconnects` tells the MDS it was cut off (mds/server.py link_restored): with
        # several brokers only when every one went silent, not while one is merely down
        now = time.monotonic()
        if not any(other.expiry > now for other in self._conns if other is not conn):
            self.reconnects += 1
        self._connect(conn)
        self._build_poller()

    def _connect(self, conn: _Conn) -> None:
        conn.sock = self.ctx.socket(zmq.DEALER)
        wire.configure(conn.sock, hwm=self.hwm, max_message_size=self.max_message_size)
        if self.curve is not None:
            self.curve.apply(conn.sock)
        conn.monitor = wire.monitor(conn.sock)
        conn.sock.connect(conn.endpoint)
        now = time.monotonic()
        conn.expiry = now + self.interval * self.liveness
        conn.next_heartbeat = now + self.interval
        # READY is queued now (delivered once connected), so a worker is registered even
        # before its first recv(); later reconnections (a broker restart) send it again.
        conn.first_connect = True
        self._ready(conn)

    def _build_poller(self) -> None:
        self._poller = zmq.Poller()
        self._by_monitor: dict[zmq.Socket, _Conn] = {}
        for conn in self._conns:
            self._poller.register(conn.sock, zmq.POLLIN)
            self._poller.register(conn.monitor, zmq.POLLIN)
            self._by_monitor[conn.monitor] = conn
        self._poller.register(self._wake_r, zmq.POLLIN)

    def _ready(self, conn: _Conn) -> None:
        if not self._send_control(conn, P.ready_envelope(self.service, self.info)):
            conn.first_connect = False     # not queued: the next CONNECTED sends it
        log.log(logging.INFO if conn.heard else logging.DEBUG,
                "registering as %r at %s", self.service, conn.endpoint)

    def update_info(self, **fields: Any) -> None:
        """New READY fields (an MDS leading again with a new epoch): registered again on
        every broker connection (the broker drops what was in flight to the old one)."""
        self.info = {**self.info, **fields}
        for conn in self._conns:
            self._ready(conn)

    def _send_control(self, conn: _Conn, envelope: bytes) -> bool:
        """READY or HEARTBEAT without blocking: after a refused handshake libzmq keeps no
        pipe to the broker and a blocking send would wait for one forever, deaf to `stop`.
        A control message that cannot be queued is worth nothing later: False."""
        try:
            wire.send(conn.sock, [envelope], zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    # -- receiving -----------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Request | None:
        """The next request, or None when `timeout` passes or another thread called wake()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conns = self._conns
        while True:
            self._flush_pending()
            now = time.monotonic()
            if now >= self._due:
                if self._upkeep(now):
                    continue
            wait = self._due - now
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
            if len(conns) == 1:           # one broker: the path as it always was
                conn = conns[0]
                if conn.monitor in events:
                    self._connection_events(conn)
                if conn.sock in events:
                    req = self._recv_one(conn, 0)
                    if req is not None:
                        return req
                continue
            for sock in events:
                watched = self._by_monitor.get(sock)
                if watched is not None:
                    self._connection_events(watched)
            n = len(conns)
            self._turn = (self._turn + 1) % n
            for k in range(n):
                i = (self._turn + k) % n
                if conns[i].sock in events:
                    req = self._recv_one(conns[i], i)
                    if req is not None:
                        return req

    def _upkeep(self, now: float) -> bool:
        """Heartbeats due, brokers silent too long (reconnected: True); then when to look
        again (`_due`: the earliest heartbeat or expiry; a message received only moves an
        expiry later, so `_due` stays a safe lower bound)."""
        expired = False
        for conn in self._conns:
            if now >= conn.next_heartbeat:
                self._send_control(conn, P.HEARTBEAT_ENV)
                conn.next_heartbeat = now + self.interval
            if now >= conn.expiry and conn.sock.poll(0, zmq.POLLIN):
                # a message has arrived meanwhile (a big one, its heartbeats queued behind
                # it): the broker is alive; read it rather than drop it with the socket
                conn.expiry = now + self.interval * self.liveness
            elif now >= conn.expiry:
                log.log(logging.WARNING if conn.heard else logging.DEBUG,
                        "no word from the broker at %s for %.1fs; reconnecting",
                        conn.endpoint, self.interval * self.liveness)
                conn.heard = False
                self._reconnect(conn)
                expired = True
        self._due = min(min(c.next_heartbeat, c.expiry) for c in self._conns)
        return expired

    def _connection_events(self, conn: _Conn) -> None:
        seen = wire.monitor_events(conn.monitor)
        if any(e in seen for e in wire.HANDSHAKE_FAILED) and not conn.refused_logged:
            # ZeroMQ keeps retrying; say it once, not every 100 ms
            conn.refused_logged = True
            log.error("the broker at %s refuses our key%s (not registered for "
                      "%r, or revoked); retrying", conn.endpoint,
                      f" {self.curve.source}" if self.curve else " (none given)",
                      self.service)
        if zmq.EVENT_CONNECTED in seen:
            if conn.first_connect:
                conn.first_connect = False
            else:
                self._ready(conn)

    def _recv_one(self, conn: _Conn, via: int) -> Request | None:
        try:
            _, env, payload = wire.recv(conn.sock, wire.NOBLOCK)
        except zmq.Again:
            return None
        conn.expiry = time.monotonic() + self.interval * self.liveness
        conn.heard = True
        try:
            cmd, client, rid, rest = P.unpack(env)
            if cmd == P.REQUEST:
                caller_class, caller_id, header = P.split_caller(rest)
                try:
                    fields = P.decode_header(header, self.max_header)
                except P.ProtocolError as exc:
                    self._send_reply(via, client, rid,
                                     P.error_header(P.E_PROTOCOL, str(exc)), ())
                    return None
                return Request(client, rid, fields, wire.payload_views(payload),
                               caller_class, caller_id, via)
            if cmd == P.HEARTBEAT:
                return None
            if cmd == P.DISCONNECT:
                log.info("broker at %s asked us to register again", conn.endpoint)
                self._ready(conn)
                return None
            raise P.ProtocolError(f"unexpected command {cmd} from the broker")
        except P.ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return None

    # -- replying ------------------------------------------------------------------------

    def _send_reply(self, via: int, client: bytes, rid: bytes, header: bytes,
                    payload: Iterable) -> None:
        # on the connection the request came from (after a reconnection its new socket:
        # a broker that forgot the route drops the reply, the client's retry covers it)
        wire.send(self._conns[via].sock, [P.pack(P.REPLY, client, rid, header), *payload])

    def reply(self, request: Request, result: Mapping[str, Any] | None = None,
              payload: Iterable = ()) -> None:
        self._send_reply(request.via, request.client, request.rid, P.ok_header(result),
                         payload)

    def reply_error(self, request: Request, exc: BaseException) -> None:
        code, message = P.exception_to_error(exc)
        if code == "EIO" and not isinstance(exc, OSError):
            log.exception("internal error handling %r", request.header.get("op"), exc_info=exc)
        self._send_reply(request.via, request.client, request.rid,
                         P.error_header(code, message), ())

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
        for conn in self._conns:
            try:
                wire.send(conn.sock, [P.DISCONNECT_ENV], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            conn.sock.setsockopt(zmq.LINGER, 200)   # let DISCONNECT leave before we go
            conn.sock.disable_monitor()
            conn.monitor.close(linger=0)
            conn.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
