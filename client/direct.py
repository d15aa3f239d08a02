"""Direct data connections: a Client-like transport that sends a DataNode's requests to its
data endpoint (datanode/dataplane.py) instead of through the broker, so payload bytes are
encrypted once on the way to each replica and never cross the broker.

`Links` has broker.client.Client's interface (send, call, wait, wait_any, close), so the
streams and batches above it do not change. It learns each node's endpoint and CURVE
public key from the node tables the MDS puts in its replies (`endpoints: {node: [endpoint,
key]}`: create, allocate, replace_target, stat, batch). A request for `dn.<id>` goes
direct when that node has an endpoint; through the broker when it has none, when the
connection cannot be made or its key is refused (then the node is tried direct again after
`retry_after` s, 5 s after a refused key), and again through the broker when a direct
connection drops with the request out. Capabilities and receipts are the same either way.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Iterable, Mapping

import zmq

from broker.client import Client, Reply
from broker.curve import CurveKeys
from broker.limits import MDS_SERVICE

log = logging.getLogger(__name__)

RETRY_AFTER = 30.0          # seconds a node whose endpoint failed goes through the broker
# a refused key is tried again sooner: a user added a moment ago is refused by a DataNode
# until its next look at the broker's registry (a second or so)
RETRY_REFUSED = 5.0
DIRECT_CONNECT = 2.0        # seconds to wait for a data endpoint before using the broker
NodeTable = dict[str, tuple[str, str]]


def parse_table(raw: object) -> NodeTable:
    """The MDS's `endpoints` map, checked: tcp endpoints and 40-character z85 keys (or ""
    for a node without CURVE); anything else is left out (then: the broker)."""
    out: NodeTable = {}
    if not isinstance(raw, Mapping):
        return out
    for node, entry in raw.items():
        if not (isinstance(node, str) and isinstance(entry, (list, tuple)) and len(entry) == 2):
            continue
        endpoint, key = entry
        if not (isinstance(endpoint, str) and endpoint.startswith("tcp://")
                and len(endpoint) <= 256 and isinstance(key, str) and len(key) in (0, 40)):
            continue
        out[node] = (endpoint, key)
    return out


class Links:
    """The broker Client plus one direct Client per DataNode that has a data endpoint."""

    def __init__(self, broker: Client, *, curve: CurveKeys | None, timeout: float,
                 max_in_flight: int = 4096, connect_timeout: float = DIRECT_CONNECT,
                 retry_after: float = RETRY_AFTER,
                 clock: Callable[[], float] = time.monotonic,
                 connect: Callable[..., Client] = Client) -> None:
        self.broker = broker
        self.curve = curve
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self.clock = clock
        self._connect = connect
        self.table: NodeTable = {}
        self.conns: dict[str, Client] = {}
        self._down: dict[str, float] = {}               # node -> retry direct after
        self._ids = itertools.count(1)
        self._out: dict[int, tuple[Client, int]] = {}    # rid -> (connection, its rid)
        self._back: dict[tuple[int, int], int] = {}      # (id(connection), its rid) -> rid
        # direct requests' contents, for a resend through the broker if the link drops
        self._resend: dict[int, tuple[str, Mapping, list, float | None]] = {}
        self._poller: zmq.Poller | None = None
        self.direct_sent = 0
        self.relayed = 0

    # -- routing -------------------------------------------------------------------------

    def learn(self, result: object) -> None:
        """Take the node table of an MDS reply, and start connecting to its nodes now:
        the handshakes then overlap the MDS round trips instead of the first block."""
        if isinstance(result, dict) and "endpoints" in result:
            table = parse_table(result["endpoints"])
            self.table.update(table)
            for node in table:
                if node not in self.conns:
                    self._direct("dn." + node)

    def _direct(self, service: str) -> tuple[str, Client] | None:
        if not service.startswith("dn."):
            return None
        node = service[3:]
        entry = self.table.get(node)
        if entry is None or (self.curve is not None and not entry[1]):
            return None
        if self._down.get(node, 0.0) > self.clock():
            return None
        conn = self.conns.get(node)
        if conn is not None and conn.endpoint != entry[0]:
            self._drop(node)     # the node moved (restart on a new port)
            conn = None
        if conn is None:
            keys = None
            if self.curve is not None:
                keys = CurveKeys(self.curve.public, self.curve.secret, entry[1].encode("ascii"),
                                 self.curve.source)
            try:
                conn = self._connect(entry[0], timeout=self.timeout,
                                     max_in_flight=self.max_in_flight,
                                     connect_timeout=self.connect_timeout, curve=keys)
            except zmq.ZMQError as exc:       # an endpoint ZeroMQ cannot dial
                self._fail(node, OSError(str(exc)))
                return None
            self.conns[node] = conn
            self._poller = None
        return node, conn

    def _drop(self, node: str) -> None:
        conn = self.conns.pop(node, None)
        self._poller = None
        if conn is None:
            return
        for rid, (c, lrid) in list(self._out.items()):
            if c is conn:       # answered through the broker now, if they can be
                self._back.pop((id(c), lrid), None)
                self._relay(rid)
        conn.close()

    def _fail(self, node: str, exc: OSError) -> None:
        pause = min(RETRY_REFUSED, self.retry_after) if isinstance(exc, PermissionError) \
            else self.retry_after
        log.info("data endpoint of %s not usable (%s); through the broker for %.0fs",
                 node, exc, pause)
        self._down[node] = self.clock() + pause
        self._drop(node)

    def _relay(self, rid: int) -> None:
        """Send request `rid` (again) through the broker under the same id."""
        service, header, payload, timeout = self._resend.pop(rid)
        lrid = self.broker.send(service, header, payload, timeout)
        self._out[rid] = (self.broker, lrid)
        self._back[(id(self.broker), lrid)] = rid
        if service.startswith("dn."):
            self.relayed += 1

    # -- Client's interface --------------------------------------------------------------

    def send(self, service: str, header: Mapping[str, Any], payload: Iterable = (),
             timeout: float | None = None) -> int:
        rid = next(self._ids)
        frames = list(payload)
        direct = self._direct(service)
        if direct is not None:
            node, conn = direct
            try:
                lrid = conn.send(service, header, frames, timeout)
            except (ConnectionRefusedError, PermissionError) as exc:   # not up, key refused
                self._fail(node, exc)
            else:
                self._out[rid] = (conn, lrid)
                self._back[(id(conn), lrid)] = rid
                self._resend[rid] = (service, header, frames, timeout)
                self.direct_sent += 1
                return rid
        self._resend[rid] = (service, header, frames, timeout)
        self._relay(rid)
        return rid

    def call(self, service: str, header: Mapping[str, Any], payload: Iterable = (),
             timeout: float | None = None) -> Reply:
        return self.wait(self.send(service, header, payload, timeout))

    def _finish(self, conn: Client, reply: Reply) -> Reply | None:
        """Our reply for a connection's reply, or None when it was sent again instead."""
        rid = self._back.pop((id(conn), reply.rid), None)
        if rid is None:
            return None
        del self._out[rid]
        if conn is not self.broker and isinstance(reply.error, ConnectionResetError):
            node = next((n for n, c in self.conns.items() if c is conn), None)
            if node is not None:
                self._fail(node, reply.error)
            if rid in self._resend:
                self._relay(rid)
                return None
        self._resend.pop(rid, None)
        reply.rid = rid
        if reply.service == MDS_SERVICE and reply.error is None:
            self.learn(reply.result)
        return reply

    def wait(self, rid: int, timeout: float | None = None) -> Reply:
        """The reply to `rid` (raising its error); others are kept for wait_any."""
        limit = None if timeout is None else self.clock() + timeout
        while True:
            if rid not in self._out:
                raise KeyError(f"request {rid} is not outstanding")
            conn, lrid = self._out[rid]
            left = None if limit is None else max(0.0, limit - self.clock())
            try:
                reply = conn.wait(lrid, left)
            except OSError as exc:
                reply = Reply(lrid, "", error=exc)
                if isinstance(exc, TimeoutError) and timeout is not None:
                    self._back.pop((id(conn), lrid), None)
                    self._out.pop(rid, None)
                    self._resend.pop(rid, None)
                    raise
                reply.service = self._resend.get(rid, ("",))[0]
            done = self._finish(conn, reply)
            if done is not None:
                return done.unwrap()

    def wait_any(self, timeout: float | None = None) -> Reply | None:
        """The next finished reply of any connection (not raised), or None on timeout."""
        limit = None if timeout is None else self.clock() + timeout
        while True:
            resent = False
            for conn in self._connections():
                while True:
                    reply = conn.ready()
                    if reply is None:
                        break
                    done = self._finish(conn, reply)
                    if done is not None:
                        return done
                    resent = True
            if resent:
                continue         # a resent request may be answered already
            if not self._out:
                return None
            now = self.clock()
            deadlines = [d for d in (c.next_deadline() for c in self._connections())
                         if d is not None]
            wait = min(deadlines) - now if deadlines else 1.0
            if limit is not None:
                if now >= limit:
                    return None
                wait = min(wait, limit - now)
            self._poll(max(0.0, wait))

    def _connections(self) -> list[Client]:
        return [self.broker, *self.conns.values()]

    def _poll(self, seconds: float) -> None:
        if self._poller is None:
            self._poller = zmq.Poller()
            for conn in self._connections():
                for sock in conn.pollables():
                    self._poller.register(sock, zmq.POLLIN)
        self._poller.poll(int(seconds * 1000) + 1)

    @property
    def in_flight(self) -> int:
        return len(self._out)

    @property
    def ever_connected(self) -> bool:
        """Whether the broker was ever reached: the retry policy waits for a lost broker
        but reports a never-seen one at once (client/mux.py Mux.call)."""
        return self.broker.ever_connected

    def post(self, service: str, header: Mapping[str, Any]) -> bool:
        """Client.post, through the broker."""
        return self.broker.post(service, header)

    def close(self) -> None:
        for node in list(self.conns):
            self.conns.pop(node).close()
        self.broker.close()
