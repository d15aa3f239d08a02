"""Client helper: requests to services through the broker, matched to replies by id.

    c = Client("tcp://127.0.0.1:5550")
    r = c.call("mds", {"op": "stat", "path": "/a"})       # r.result, r.payload
    rid = c.send("dn.dn1", {"op": "get_block", ...})      # pipelined: up to max_in_flight
    r = c.wait(rid)

Errors arrive as OSError subclasses (FileNotFoundError, ...). No broker within
`connect_timeout` -> BrokerUnavailable; no reply within the timeout -> TimeoutError; the
broker connection dropping with requests out -> ConnectionResetError for each, at once,
so callers can retry instead of waiting out a timeout. One Client per thread.
With several brokers ("tcp://a:5550,tcp://b:5560") a lost broker's requests go again
through another one instead (see Client).
`MemberClient` is the same for the cluster's own processes, on the worker endpoint.
With `curve=` (broker.curve.CurveKeys) the connection is CURVE; a key the broker refuses
(unknown, revoked, not allowed on that endpoint) is a PermissionError (EACCES) at once.
"""
from __future__ import annotations

import errno
import itertools
import logging
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import zmq

from . import protocol as P
from . import wire
from .config import endpoint_list
from .failover import BrokerChoice

log = logging.getLogger(__name__)


class BrokerUnavailable(ConnectionRefusedError):
    """The broker cannot be reached (the cluster is down or the endpoint is wrong)."""


@dataclass(slots=True)
class Reply:
    rid: int
    service: str
    result: dict = field(default_factory=dict)   # the result map; {} when error is set
    error: OSError | None = None
    payload: list = field(default_factory=list)   # memoryviews

    def unwrap(self) -> "Reply":
        if self.error is not None:
            raise self.error
        return self


POST_LINGER = 200    # ms a closing Client waits for what post() queued to leave


class _Link:
    """One broker connection of a Client: its DEALER, the socket monitor, member state."""
    __slots__ = ("endpoint", "sock", "monitor", "declared")

    def __init__(self, endpoint: str, sock: zmq.Socket, monitor: zmq.Socket) -> None:
        self.endpoint, self.sock, self.monitor = endpoint, sock, monitor
        self.declared = False       # MemberClient: MEMBER sent on this connection

    def writable(self) -> bool:
        # with IMMEDIATE a DEALER is writable only over a live (handshaken) connection
        return bool(self.sock.poll(0, zmq.POLLOUT))


class Client:
    """Requests through one broker, or several: `endpoint` may list comma-separated
    broker client endpoints (one DEALER each: a DEALER connected to two ROUTERs would
    round-robin). Requests go to a sticky preferred broker (broker.failover.BrokerChoice,
    started at random so clients spread); when a broker's connection drops, the requests
    out on it are sent again, unchanged, through another connected broker (MDS mutations
    carry op ids and DataNode block writes are idempotent, so a repeat is answered the
    same); with no other broker up they fail with ECONNRESET as with one broker."""

    def __init__(self, endpoint: str, *, timeout: float = 30.0, max_in_flight: int = 64,
                 connect_timeout: float = 5.0, context: zmq.Context | None = None,
                 hwm: int = 1000, max_header: int = P.DEFAULT_MAX_HEADER,
                 curve: Any = None) -> None:
        self.endpoint = endpoint
        self.curve = curve
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout
        self.max_header = max_header
        self.ctx = context or zmq.Context.instance()
        self._poller = zmq.Poller()
        self._links: list[_Link] = []
        for each in endpoint_list(endpoint):
            sock = self.ctx.socket(zmq.DEALER)
            wire.configure(sock, hwm=hwm)
            # Queue only on a live connection, so a down broker is seen at once (POLLOUT).
            sock.setsockopt(zmq.IMMEDIATE, 1)
            # A broker that stops answering with its connection open (SIGSTOP, a wedged
            # host) is dropped like one that died, not waited on until each request's timeout.
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(P.BROKER_PING_IVL * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(P.BROKER_DEAD_AFTER * 1000))
            if curve is not None:
                curve.apply(sock)
            link = _Link(each, sock, wire.monitor(sock))
            sock.connect(each)
            self._poller.register(sock, zmq.POLLIN)
            self._poller.register(link.monitor, zmq.POLLIN)
            self._links.append(link)
        self.sock = self._links[0].sock
        self._by_monitor = {link.monitor: link for link in self._links}
        self._by_sock = {link.sock: link for link in self._links}
        self.choice = BrokerChoice(len(self._links), random.randrange(len(self._links)))
        self._several = len(self._links) > 1
        self.resent = 0                      # requests moved to another broker
        self.ever_connected = False          # a lost broker is waited for, a never seen one not
        self._hello: bytes | None = None     # MemberClient: its MEMBER declaration
        self._ids = itertools.count(1)
        self._posted = False                 # post() queued something: linger at close
        # rid -> (service, deadline, link index, frames to send again or None, brokers tried)
        self._pending: dict[int, tuple[str, float, int, list | None, int]] = {}
        self._done: dict[int, Reply] = {}

    @property
    def endpoints(self) -> list[str]:
        return [link.endpoint for link in self._links]

    @property
    def in_flight(self) -> int:
        """Requests sent whose replies have not been collected yet (by wait/wait_any)."""
        return len(self._pending) + len(self._done)

    # -- sending -------------------------------------------------------------------------

    def send(self, service: str, header: Mapping[str, Any], payload: Iterable = (),
             timeout: float | None = None) -> int:
        """Send a request; returns its id. Blocks while `max_in_flight` requests are out."""
        while len(self._pending) >= self.max_in_flight:
            self._pump(self._earliest_deadline())
        i = self._pick() if self._several else 0 if self.sock.poll(0, zmq.POLLOUT) else None
        if i is None:
            self._wait_connected()
            i = self._pick()
            if i is None:      # connected and lost again at once: the next send waits
                raise ConnectionResetError(errno.ECONNRESET, "lost the connection to the "
                                           f"broker at {self.endpoint}")
        rid = next(self._ids)
        env = P.pack(P.REQUEST, service.encode("ascii"), struct.pack(">Q", rid),
                     P.encode_header(header))
        frames = [env, *payload]
        # registered before the send: a drop of this connection noticed while sending (a
        # member's declaration drains the monitor) then moves or fails this request too
        self._pending[rid] = (service, time.monotonic() + (timeout or self.timeout), i,
                              frames if self._several else None, 1)
        try:
            sent = self._send_on(i, frames)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        if not sent:
            self._move(rid, i)
        return rid

    def post(self, service: str, header: Mapping[str, Any]) -> bool:
        """Send a request whose reply nobody waits for (the broker's answer is dropped),
        only over a broker connection that is up now: never blocks or waits for a
        connection, False when none is up. What was posted leaves at close() (it lingers
        up to POST_LINGER ms for it). For best-effort cleanup on the way out."""
        i = self._pick() if self._hello is None else None    # clients only
        if i is None:
            return False
        env = P.pack(P.REQUEST, service.encode("ascii"), struct.pack(">Q", next(self._ids)),
                     P.encode_header(header))
        try:
            wire.send(self._links[i].sock, [env], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        self._posted = True
        return True

    def _pick(self, exclude: int | None = None) -> int | None:
        links = self._links
        if not self._several:
            return 0 if exclude != 0 and links[0].writable() else None
        return self.choice.pick(lambda i: i != exclude and links[i].writable())

    def _send_on(self, i: int, frames: list) -> bool:
        """Send on connection `i`; False when it went down meanwhile (several brokers: a
        send never blocks on a dead connection while another could take it)."""
        link = self._links[i]
        flags = zmq.NOBLOCK if self._several else 0
        try:
            if self._hello is not None:
                self._declare(link, flags)
            wire.send(link.sock, frames, flags)
        except zmq.Again:
            return False
        return True

    def _move(self, rid: int, lost: int) -> None:
        """Request `rid`, out on connection `lost` that is gone, again through another
        writable one; with none, it fails ECONNRESET (callers retry)."""
        entry = self._pending.get(rid)
        if entry is None or entry[2] != lost:
            return      # already answered, failed or moved (while we were sending)
        service, dl, _, frames, tried = entry
        exclude = lost
        for _ in range(len(self._links) - 1):
            other = self._pick(exclude=exclude) if frames is not None else None
            if other is None or frames is None:
                break
            self._pending[rid] = (service, dl, other, frames, tried)
            self.resent += 1
            if self._send_on(other, frames):
                return
            entry = self._pending.get(rid)
            if entry is None or entry[2] != other:
                return
            exclude = other
        del self._pending[rid]
        self._done[rid] = Reply(rid, service, error=ConnectionResetError(
            errno.ECONNRESET, f"lost the connection to the broker at "
            f"{self._links[lost].endpoint}"))

    def call(self, service: str, header: Mapping[str, Any], payload: Iterable = (),
             timeout: float | None = None) -> Reply:
        return self.wait(self.send(service, header, payload, timeout))

    # -- receiving -----------------------------------------------------------------------

    def wait(self, rid: int, timeout: float | None = None) -> Reply:
        """The reply to `rid` (raising its error). Other replies are kept for later."""
        limit = None if timeout is None else time.monotonic() + timeout
        while rid not in self._done:
            if rid not in self._pending:
                raise KeyError(f"request {rid} is not outstanding")
            deadline = self._pending[rid][1]
            if limit is not None:
                if time.monotonic() >= limit:
                    service = self._pending.pop(rid)[0]
                    raise TimeoutError(errno.ETIMEDOUT, f"no reply from service {service!r} in time")
                deadline = min(limit, deadline)
            self._pump(deadline)
        return self._done.pop(rid).unwrap()

    def wait_any(self, timeout: float | None = None) -> Reply | None:
        """The next finished reply (not raised: check .error), or None on timeout."""
        limit = time.monotonic() + timeout if timeout is not None else None
        while not self._done:
            if not self._pending:
                return None
            deadline = self._earliest_deadline()
            if limit is not None:
                if time.monotonic() >= limit:
                    return None
                deadline = min(deadline, limit)
            self._pump(deadline)
        rid = next(iter(self._done))
        return self._done.pop(rid)

    def pollables(self) -> list[zmq.Socket]:
        """The sockets to poll for this client's progress (with others, as client/direct.py
        does for several connections at once); then call `ready()`."""
        return [s for link in self._links for s in (link.sock, link.monitor)]

    def ready(self) -> Reply | None:
        """Take what the socket holds (never blocking), expire overdue requests, and
        return one finished reply if there is one (not raised: check .error)."""
        self._pump(time.monotonic())
        return self.wait_any(0) if self._done else None

    def next_deadline(self) -> float | None:
        """When the earliest outstanding request times out (None: nothing outstanding)."""
        return self._earliest_deadline() if self._pending else None

    def _earliest_deadline(self) -> float:
        return min(entry[1] for entry in self._pending.values())

    def _pump(self, deadline: float) -> None:
        """Receive what is waiting (or wait until `deadline`); expire overdue requests."""
        wait = max(0.0, deadline - time.monotonic())
        events = dict(self._poller.poll(int(wait * 1000)))   # poll truncates too
        if events:
            self._take(events)
        now = time.monotonic()
        for rid, (service, dl, i, _, _) in list(self._pending.items()):
            if dl <= now:
                del self._pending[rid]
                if self._several:
                    self.choice.failed(i)
                self._done[rid] = Reply(rid, service, error=TimeoutError(
                    errno.ETIMEDOUT, f"no reply from service {service!r} in time"))

    def _take(self, events: dict) -> None:
        """Connection events first (a drop moves its requests), then every reply waiting."""
        for link in self._links:
            if link.monitor in events:
                self._connection_events(link)
        for link in self._links:
            if link.sock not in events:
                continue
            sock = link.sock
            while True:
                try:
                    _, env, payload = wire.recv(sock, wire.NOBLOCK)
                except zmq.Again:
                    break
                self._accept(env, payload)
                if not wire.readable(sock):
                    break

    def _accept(self, env: bytes, payload: list) -> None:
        try:
            cmd, _, rid_bytes, header = P.unpack(env)
        except P.ProtocolError as exc:
            log.warning("dropped a malformed reply from the broker: %s", exc)
            return
        if cmd != P.REPLY or len(rid_bytes) != 8:
            log.warning("dropped a reply with command %d / request id of %d bytes",
                        cmd, len(rid_bytes))
            return
        rid = struct.unpack(">Q", rid_bytes)[0]
        entry = self._pending.pop(rid, None)
        if entry is None:
            return   # a late reply to a request we already gave up on (or got twice)
        reply = Reply(rid, entry[0], payload=wire.payload_views(payload))
        try:
            reply.result = P.parse_reply(header, self.max_header)
        except OSError as exc:
            reply.error = exc
            if isinstance(exc, ConnectionRefusedError) and self._elsewhere(rid, entry):
                return
        self._done[rid] = reply

    def _elsewhere(self, rid: int, entry: tuple) -> bool:
        """"No live worker" from one broker: a restarted broker the service has not
        registered with again yet. Try the request once on each other broker that is up
        (the caller's own retry policy covers a service missing from all of them)."""
        service, dl, via, frames, tried = entry
        if frames is None or tried >= len(self._links):
            return False
        other = self._pick(exclude=via)
        if other is None:
            return False
        self._pending[rid] = (service, dl, other, frames, tried + 1)
        self.resent += 1
        if not self._send_on(other, frames):
            self._move(rid, other)
        return True

    def _wait_connected(self) -> None:
        """Until a connection is up (CURVE handshake done), or fail: BrokerUnavailable
        after connect_timeout, PermissionError at once when the broker refuses our key."""
        deadline = time.monotonic() + self.connect_timeout
        poller = zmq.Poller()
        for link in self._links:
            poller.register(link.sock, zmq.POLLOUT)
            poller.register(link.monitor, zmq.POLLIN)
        while True:
            left = deadline - time.monotonic()
            events = dict(poller.poll(int(max(0.0, left) * 1000)))
            for sock in events:
                if sock in self._by_monitor:
                    self._connection_events(self._by_monitor[sock], raise_refused=True)
            if any(sock in self._by_sock for sock in events):
                self.ever_connected = True
                return
            if left <= 0:
                where = (f"the broker at {self.endpoint}" if not self._several else
                         f"any of the brokers {', '.join(self.endpoints)}")
                raise BrokerUnavailable(errno.ECONNREFUSED,
                                        f"cannot reach {where} within "
                                        f"{self.connect_timeout:g}s (is the cluster running?)")

    def _refused(self, link: _Link) -> PermissionError:
        key = f" {self.curve.source}" if self.curve is not None and self.curve.source else ""
        if self.curve is None:
            why = ("it requires a CURVE key and none was given (pass a key, or the cluster "
                   "runs with security on and this client with security off)")
        else:
            why = ("the key is not registered (unknown or revoked), not allowed on this "
                   "endpoint, or the broker public key is wrong")
        return PermissionError(errno.EACCES, f"the broker at {link.endpoint} refused the "
                               f"key{key}: {why}")

    def _connection_events(self, link: _Link, raise_refused: bool = False) -> None:
        seen = wire.monitor_events(link.monitor)
        if any(event in seen for event in wire.HANDSHAKE_FAILED):
            exc = self._refused(link)
            self._fail_all(exc)
            if raise_refused:
                raise exc
        if zmq.EVENT_DISCONNECTED in seen:
            self._lost(self._links.index(link))
        if zmq.EVENT_CONNECTED in seen:
            link.declared = False
            self.ever_connected = True

    def _lost(self, i: int) -> None:
        """Connection `i` dropped: its requests go again through another broker that is
        up, or fail with ECONNRESET (callers retry) when there is none."""
        for rid in [rid for rid, entry in self._pending.items() if entry[2] == i]:
            self._move(rid, i)
        if self.resent:
            log.debug("broker %s lost; %d requests moved so far", self._links[i].endpoint,
                      self.resent)

    def _declare(self, link: _Link, flags: int = 0) -> None:
        """A member says whom it acts for once per connection, before its first request.
        With IMMEDIATE, send() waited for the connection, whose CONNECTED event the monitor
        reported first; a broker restart is a new connection and gets a new declaration."""
        self._connection_events(link)
        if not link.declared:
            wire.send(link.sock, [self._hello], flags)
            link.declared = True

    def _fail_all(self, exc: OSError) -> None:
        for rid, entry in self._pending.items():
            self._done[rid] = Reply(rid, entry[0], error=exc)
        self._pending.clear()

    def close(self) -> None:
        for link in self._links:
            if self._hello is not None and link.declared:
                try:   # the broker forgets the member at once
                    wire.send(link.sock, [P.DISCONNECT_ENV], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
                link.sock.setsockopt(zmq.LINGER, 100)
            if self._posted:          # let what post() queued leave before we go
                link.sock.setsockopt(zmq.LINGER, POST_LINGER)
            link.sock.disable_monitor()
            link.monitor.close(linger=0)
            link.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class MemberClient(Client):
    """A cluster member's own outbound calls (a DataNode's heartbeats, reports and copies).

    It connects to the broker's *worker* endpoint and declares which member it acts for
    ("mds" or "dn.<id>"); the broker then stamps its requests with that caller class and
    id (broker.callers.caller_of), which services check. Otherwise it is a Client.
    """

    def __init__(self, worker_endpoint: str, member: str, **kw: Any) -> None:
        P.decode_name(member.encode("ascii", "replace"), "member name")
        super().__init__(worker_endpoint, **kw)
        self.member = member
        self._hello = P.member_envelope(member)
