"""The broker's routing core, sans-IO: services, workers, dispatch, heartbeats, expiry.

Theory of operation. Inputs are parsed messages (`on_client`, `on_worker`) and the passage
of time (`tick`, with an injected clock); outputs are lists of `(side, identity, frames)`
sends that the I/O loop performs verbatim. Nothing here imports zmq.

- A worker registers with READY (service name, capacity = how many requests it takes at
  once; `exclusive` = a new registration replaces the service's older workers, for named
  workers like `dn.<id>` that restart faster than they expire; `epoch` = the leadership
  epoch of an MDS under HA: the service keeps the highest epoch it has seen and only
  workers of that epoch - a higher one replaces the others, a lower one is refused, so a
  paused-and-resumed deposed MDS never gets a request). Requests go to the live worker of the service with the fewest in flight; when every
  worker is at capacity they wait in a bounded per-service queue (full -> EBUSY).
- A request for a service with no live worker is answered at once with ECONNREFUSED.
- Any message from a worker proves it alive. Heartbeats go to every worker each interval;
  a worker silent for `liveness` intervals is expired: its in-flight requests are answered
  with ECONNRESET and queued ones (if no other worker is left) with ECONNREFUSED.
- An unregistered peer on the worker side (e.g. after a broker restart) gets DISCONNECT,
  which makes its helper send READY again.
- Members (the MDS and DataNodes making calls of their own) connect on the worker side,
  declare once which member they act for (MEMBER), then send REQUESTs like clients; their
  replies go back on the worker socket. Every request forwarded to a worker carries its
  caller's class and id (`caller_of`), never taken from what the caller claims.
- In-flight entries older than `request_ttl` are dropped, so a client that went away costs
  nothing forever; replies to unknown requests are dropped (ZeroMQ drops unroutable sends).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from . import protocol as P
from . import service as S
from .broker_ops import _BrokerOps
from .callers import CLIENT, WORKER, Refused, Send
from .registration import Registration, Service, Worker
from .service import Context
from .userid import parse_user_id

log = logging.getLogger(__name__)

# A request's route - what workers echo in their reply - is the side its caller is on
# (CLIENT or WORKER, one byte) and the caller's ROUTER identity: the two ROUTER sockets
# number their peers independently, so an identity alone could name two peers.
_CLIENT_SIDE = bytes((CLIENT,))
_MEMBER_SIDE = bytes((WORKER,))
MAX_IDENTITY = 254              # + the side byte fits the envelope's 255-byte name


class Router(Registration):
    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 heartbeat_interval: float = 1.0, liveness: int = 3,
                 max_queue: int = 10_000, request_ttl: float = 120.0,
                 max_header: int = P.DEFAULT_MAX_HEADER,
                 refresh: Callable[[], frozenset[str]] | None = None) -> None:
        self.clock = clock
        # Security on: asked for the registry's User-Ids when a key is not in the last
        # view (a user added a moment ago), before refusing it.
        self.refresh = refresh
        self._deferred: list[Send] = []
        self.interval = heartbeat_interval
        self.liveness = liveness
        self.max_queue = max_queue
        self.request_ttl = request_ttl
        self.max_header = max_header
        self.services: dict[bytes, Service] = {}
        self.workers: dict[bytes, Worker] = {}
        # identity -> (caller field of its requests, User-Id of the connection that said so)
        self.members: dict[bytes, tuple[bytes, str | None]] = {}
        # Security on: the User-Ids the key registry admits (set_registry), and the caller
        # field of each client User-Id seen, rebuilt after every registry change.
        self.registry: frozenset[str] | None = None
        self._client_callers: dict[str, bytes] = {}
        self.broker_ops = S.Service.collect(P.BROKER_SERVICE, _BrokerOps(self))
        # (route, rid) -> (worker, deadline); swept once per heartbeat interval
        self.in_flight: dict[tuple[bytes, bytes], tuple[Worker, float]] = {}
        self._next_heartbeat = clock() + heartbeat_interval
        self.stats = {"requests": 0, "replies": 0, "dropped_replies": 0, "rejected": 0,
                      "expired_workers": 0, "revoked": 0}
    # -- requests (from clients, and from members on the worker side) -------------------

    def on_client(self, client: bytes, env: bytes, payload: list,
                  user: str | None = None) -> list[Send]:
        """One message from a client: its envelope frame and payload frames; `user` is the
        connection's ZAP User-Id (None with security off)."""
        cmd, service, rid, header = P.unpack(env)
        if cmd != P.REQUEST:
            name = P.COMMAND_NAMES.get(cmd, str(cmd))
            raise P.ProtocolError(f"command {name} is not valid from a client")
        if len(client) > MAX_IDENTITY:
            raise P.ProtocolError(f"identity longer than {MAX_IDENTITY} bytes")
        route = _CLIENT_SIDE + client
        caller = self._client_caller(user)
        if caller is None:
            return self._revoked(route, service, rid, user)
        return self._request(route, service, rid, header, payload, caller)

    def _revoked(self, route: bytes, service: bytes, rid: bytes, user: str | None) -> list[Send]:
        if not rid or len(rid) > P.MAX_RID_LEN:
            raise P.ProtocolError(f"request id must be 1..{P.MAX_RID_LEN} bytes")
        self.stats["revoked"] += 1
        who = parse_user_id(user or "")
        name = who[1] if who else "?"
        return [self._error(route, service, rid, "EACCES",
                            f"the key of {name!r} is no longer registered (revoked)")]

    def _request(self, route: bytes, service: bytes, rid: bytes, header: bytes,
                 payload: list, caller: bytes) -> list[Send]:
        if not rid or len(rid) > P.MAX_RID_LEN:
            raise P.ProtocolError(f"request id must be 1..{P.MAX_RID_LEN} bytes")
        if len(header) > self.max_header:
            return [self._error(route, service, rid, "EMSGSIZE",
                                f"header of {len(header)} bytes exceeds {self.max_header}")]
        svc = self.services.get(service)
        if svc is None or not svc.workers:
            name = P.decode_name(service, "service name")
            if name == P.BROKER_SERVICE:
                return [self._broker_service(route, rid, header, caller)]
            return [self._error(route, service, rid, P.E_NO_WORKER,
                                f"no live worker for service {name!r}")]
        key = (route, rid)
        if key in self.in_flight:
            return [self._error(route, service, rid, P.E_PROTOCOL,
                                "request id already in flight")]
        self.stats["requests"] += 1
        worker = self._pick(svc)
        if worker is None:
            if len(svc.queue) >= self.max_queue:
                self.stats["rejected"] += 1
                return [self._error(route, service, rid, P.E_BUSY,
                                    f"service {svc.name!r} is overloaded; retry later")]
            svc.queue.append((route, rid, header, payload, caller))
            return []
        return [self._dispatch(worker, route, rid, header, payload, caller)]

    @staticmethod
    def _pick(svc: Service) -> Worker | None:
        workers = svc.workers
        if len(workers) == 1:
            w = workers[0]
            return w if len(w.in_flight) < w.capacity else None
        best = None
        for w in workers:
            n = len(w.in_flight)
            if n < w.capacity and (best is None or n < len(best.in_flight)):
                best = w
        return best

    def _dispatch(self, worker: Worker, route: bytes, rid: bytes, header: bytes,
                  payload: list, caller: bytes) -> Send:
        key = (route, rid)
        self.in_flight[key] = (worker, self.clock() + self.request_ttl)
        worker.in_flight.add(key)
        return (WORKER, worker.identity,
                [P.pack(P.REQUEST, route, rid, header, caller), *payload])

    @staticmethod
    def _error(route: bytes, service: bytes, rid: bytes, code: str, message: str) -> Send:
        return (route[0], route[1:], [P.pack(P.REPLY, service, rid,
                                             P.error_header(code, message))])

    def _broker_service(self, route: bytes, rid: bytes, header: bytes, caller: bytes) -> Send:
        """The broker's own service (ping, services), declared like any other."""
        service = P.BROKER_SERVICE.encode()
        try:
            fields = P.decode_header(header, self.max_header)
        except P.ProtocolError as exc:
            return self._error(route, service, rid, P.E_PROTOCOL, str(exc))
        cls, cid, _ = P.split_caller(caller)
        out = self.broker_ops.run(fields, [], Context(self.clock(), time.time(), cls, cid))
        if out.error is not None:
            return self._error(route, service, rid, *P.exception_to_error(out.error))
        return (route[0], route[1:], [P.pack(P.REPLY, service, rid, P.ok_header(out.result))])

    # -- worker side ---------------------------------------------------------------------

    def on_worker(self, identity: bytes, env: bytes, payload: list,
                  user: str | None = None) -> list[Send]:
        """One message on the worker endpoint; `user` is the connection's ZAP User-Id
        (None with security off)."""
        cmd, name, rid, header = P.unpack(env)
        if user is not None and not self._registered(user):
            # a revoked member key on a connection made before the revocation
            if cmd == P.REQUEST:
                return self._revoked(_MEMBER_SIDE + identity, name, rid, user)
            raise Refused("message from a key that is no longer registered")
        worker = self.workers.get(identity)
        if worker is not None:
            # A routing id is the peer's to choose: one that reappears on a connection with
            # another key is not the worker we registered.
            if worker.user != user:
                raise Refused("a routing id of a registered worker on another key")
            worker.expiry = self.clock() + self.interval * self.liveness
        if cmd == P.REPLY:
            if worker is None:
                return [(WORKER, identity, [P.DISCONNECT_ENV])]
            return self._on_reply(worker, name, rid, header, payload)
        if cmd == P.REQUEST:
            entry = self.members.get(identity)
            if entry is None or entry[1] != user:
                raise P.ProtocolError("REQUEST on the worker endpoint from a peer that has "
                                      "not declared which member it acts for (MEMBER)")
            if len(identity) > MAX_IDENTITY:
                raise P.ProtocolError(f"identity longer than {MAX_IDENTITY} bytes")
            return self._request(_MEMBER_SIDE + identity, name, rid, header, payload, entry[0])
        if cmd == P.HEARTBEAT:
            return [] if worker else [(WORKER, identity, [P.DISCONNECT_ENV])]
        if cmd == P.READY:
            return self._on_ready(identity, name, header, user)
        if cmd == P.MEMBER:
            return self._on_member(identity, name, user)
        if cmd == P.DISCONNECT:
            self.members.pop(identity, None)
            return self._remove_worker(worker) if worker else []
        cname = P.COMMAND_NAMES.get(cmd, str(cmd))
        raise P.ProtocolError(f"command {cname} is not valid from a worker")

    def _on_reply(self, worker: Worker, route: bytes, rid: bytes, header: bytes,
                  payload: list) -> list[Send]:
        key = (route, rid)
        entry = self.in_flight.get(key)
        if entry is None or entry[0] is not worker:
            self.stats["dropped_replies"] += 1
            return []
        del self.in_flight[key]
        worker.in_flight.discard(key)
        self.stats["replies"] += 1
        svc = worker.service
        # the route's first byte says which socket the caller is on (CLIENT or WORKER)
        out: list[Send] = [(route[0], route[1:],
                            [P.pack(P.REPLY, svc.name_bytes, rid, header), *payload])]
        if svc.queue:
            out.extend(self._drain_queue(svc))
        return out

    def _drain_queue(self, svc: Service) -> list[Send]:
        out = []
        while svc.queue:
            worker = self._pick(svc)
            if worker is None:
                break
            out.append(self._dispatch(worker, *svc.queue.popleft()))
        return out
    # -- time ----------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self.clock() if self._deferred else self._next_heartbeat

    def tick(self) -> list[Send]:
        """Send due heartbeats, expire silent workers and forget stale in-flight entries."""
        now = self.clock()
        out, self._deferred = self._deferred, []
        if now < self._next_heartbeat:
            return out
        self._next_heartbeat = now + self.interval
        for worker in list(self.workers.values()):
            if worker.expiry <= now:
                self.stats["expired_workers"] += 1
                out.extend(self._remove_worker(worker, "expired (missed heartbeats)"))
            else:
                out.append((WORKER, worker.identity, [P.HEARTBEAT_ENV]))
        stale = [(key, w) for key, (w, deadline) in self.in_flight.items() if deadline <= now]
        for key, worker in stale:
            del self.in_flight[key]
            worker.in_flight.discard(key)
            out.extend(self._drain_queue(worker.service))
        return out

    def shutdown(self) -> list[Send]:
        """Tell every worker to go (they reconnect to whatever broker comes next)."""
        return [(WORKER, ident, [P.DISCONNECT_ENV]) for ident in self.workers]