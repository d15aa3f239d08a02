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

import errno
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from . import protocol as P
from . import service as S
from .service import EVERYONE, Bool, Context, Int, Map, Str, operation, validate
from .userid import MEMBER_KEY, USER_KEY, parse_user_id  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

CLIENT = 0   # send on the client-facing socket
WORKER = 1   # send on the worker-facing socket
DATA = 2     # a DataNode's data endpoint (datanode/dataplane.py): users and members

Send = tuple[int, bytes, list]

# A request's route - what workers echo in their reply - is the side its caller is on
# (CLIENT or WORKER, one byte) and the caller's ROUTER identity: the two ROUTER sockets
# number their peers independently, so an identity alone could name two peers.
_CLIENT_SIDE = bytes((CLIENT,))
_MEMBER_SIDE = bytes((WORKER,))
MAX_IDENTITY = 254              # + the side byte fits the envelope's 255-byte name
MAX_MEMBERS = 10_000
READY_FIELDS = Map({"capacity?": Int(-(1 << 63), 1 << 64), "exclusive?": Bool(),
                    "node?": Str(P.MAX_SERVICE_LEN), "epoch?": Int(0, 1 << 63)})


# With security off every client is this user: the superuser (mds.perms.SUPERUSER and
# keys.ADMIN are the same name; a unit test holds them together).
INSECURE_USER = "admin"


class Refused(PermissionError):
    """A peer asked for something its key does not allow (register or act for another
    member, a user key on the worker side): refused and logged, never a crash."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)


def _member_caller(member: str | None) -> tuple[str, str]:
    if member == P.CALLER_MDS:
        return P.CALLER_MDS, P.CALLER_MDS
    if member is not None and member.startswith("dn.") and len(member) > 3:
        return P.CALLER_DATANODE, member[3:]
    raise P.ProtocolError(f"{member!r} is not a member of the cluster (mds or dn.<id>)")


def caller_of(side: int, user: str | None = None,
              member: str | None = None) -> tuple[str, str]:
    """(caller class, caller id) of a request: the one place that decides who is calling.

    With security on, `user` is the connection's ZAP User-Id (what the broker's
    authenticator gave the CURVE key, attached by ZeroMQ to every message): on the client
    endpoint a user key is class "client" with the user's name; on the worker endpoint a
    member key is the member it was issued for ("mds", or "dn.<id>" -> "datanode" <id>),
    and `member` (what the peer declares in MEMBER or READY) must be that same member.
    Anything else raises Refused. Nothing the sender writes in a header counts.
    On a DataNode's data endpoint (`DATA`) both kinds are admitted and take the class
    they would have at the broker; nothing is declared there.
    With security off (`user` None) the endpoint is the credential: every client is
    INSECURE_USER, a member is what it declares (on the data endpoint: a client).
    """
    if user is None:
        return (P.CALLER_CLIENT, INSECURE_USER) if side != WORKER else _member_caller(member)
    who = parse_user_id(user)
    if who is None:
        raise Refused(f"unknown User-Id {user[:60]!r}")
    kind, name = who
    if side == DATA:
        return (P.CALLER_CLIENT, name) if kind == USER_KEY else _member_caller(name)
    if side == CLIENT:
        if kind != USER_KEY:
            raise Refused(f"member key of {name!r} on the client endpoint")
        return P.CALLER_CLIENT, name
    if kind != MEMBER_KEY:
        raise Refused(f"user key of {name!r} on the worker endpoint")
    if member is not None and member != name:
        raise Refused(f"the key of {name!r} may not act for {member!r}")
    return _member_caller(name)


CLIENT_CALLER = P.caller_field(*caller_of(CLIENT))


def registry_digest(ids: frozenset[str]) -> str:
    """A short name for one view of the registry (the `registry` op's `since`)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]


class _BrokerOps:
    """Service "broker", answered by the broker itself."""

    def __init__(self, router: "Router") -> None:
        self.router = router

    @operation(callers=EVERYONE)
    def ping(self, h: dict, payload: list, ctx: Context) -> dict:
        """Liveness of the broker: {"pong": true}."""
        return {"pong": True}

    @operation(callers=EVERYONE)
    def whoami(self, h: dict, payload: list, ctx: Context) -> dict:
        """Who the broker says the caller is: {"user": id, "class": caller class} (a user's
        name for clients; "admin" for every client when security is off)."""
        return {"user": ctx.caller_id, "class": ctx.caller_class}

    @operation({"since?": Str(64)}, callers=frozenset({P.CALLER_DATANODE}))
    def registry(self, h: dict, payload: list, ctx: Context) -> dict:
        """The User-Ids the key registry admits now, for a DataNode's data endpoint to
        admit the same keys (datanode/dataplane.py) -> {digest, ids: [User-Id]}, or only
        {digest} when it equals `since` (nothing changed); {secure: false} with security
        off. The broker stays the one holder of the registry."""
        ids = self.router.registry
        if ids is None:
            return {"secure": False}
        digest = registry_digest(ids)
        if h.get("since") == digest:
            return {"secure": True, "digest": digest}
        return {"secure": True, "digest": digest, "ids": sorted(ids)}

    @operation(callers=EVERYONE)
    def services(self, h: dict, payload: list, ctx: Context) -> dict:
        """Live workers per service: {"services": {name: count}} (services with none are
        left out)."""
        return {"services": {s.name: len(s.workers)
                             for s in self.router.services.values() if s.workers}}


@dataclass(eq=False, slots=True)
class Worker:
    identity: bytes
    service: "Service"
    capacity: int
    expiry: float
    user: str | None = None                       # its key's User-Id (security on)
    in_flight: set = field(default_factory=set)   # (route, rid) keys
    epoch: int = 0                                # READY's leadership epoch (HA MDS)


@dataclass(eq=False, slots=True)
class Service:
    name: str
    name_bytes: bytes
    workers: list = field(default_factory=list)
    queue: deque = field(default_factory=deque)   # (route, rid, header, payload, caller)
    epoch: int = 0          # the highest leadership epoch a worker registered with


class Router:
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

    # -- keys ------------------------------------------------------------------------------

    def set_registry(self, ids: frozenset[str] | None) -> list[Send]:
        """The registry changed (security on: the User-Ids it admits). Requests from a key
        no longer in it are refused with EACCES from now on; its workers and member
        declarations are dropped (their in-flight requests fail with ECONNRESET)."""
        self.registry = ids
        self._client_callers.clear()
        if ids is None:
            return []
        for ident, (_, user) in list(self.members.items()):
            if user is not None and user not in ids:
                del self.members[ident]
        out: list[Send] = []
        for worker in list(self.workers.values()):
            if worker.user is not None and worker.user not in ids:
                out.extend(self._remove_worker(worker, "revoked (its key left the registry)"))
        return out

    def _registered(self, user: str) -> bool:
        if self.registry is not None and user in self.registry:
            return True
        if self.refresh is not None:
            ids = self.refresh()
            if ids != self.registry:
                self._deferred.extend(self.set_registry(ids))   # sent by the next tick()
        return self.registry is not None and user in self.registry

    def _client_caller(self, user: str | None) -> bytes | None:
        """The caller field for a client connection's User-Id; None if it is not (or no
        longer) registered."""
        if user is None:
            return CLIENT_CALLER
        caller = self._client_callers.get(user)
        if caller is None:
            if not self._registered(user):
                return None
            caller = P.caller_field(*caller_of(CLIENT, user))
            self._client_callers[user] = caller
        return caller

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

    def _on_member(self, identity: bytes, declared: bytes, user: str | None) -> list[Send]:
        caller_class, caller_id = caller_of(WORKER, user,
                                            P.decode_name(declared, "member name"))
        if identity not in self.members and len(self.members) >= MAX_MEMBERS:
            # members that vanished without DISCONNECT (kill -9): forget the oldest
            del self.members[next(iter(self.members))]
        self.members[identity] = (P.caller_field(caller_class, caller_id), user)
        return []

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

    def _on_ready(self, identity: bytes, service: bytes, header: bytes,
                  user: str | None = None) -> list[Send]:
        name = P.decode_name(service, "service name")
        if name == P.BROKER_SERVICE:
            raise P.ProtocolError(f"service name {name!r} is reserved")
        if user is not None:
            caller_of(WORKER, user, name)   # a member key serves only its own service
        info = P.decode_header(header, self.max_header)
        try:
            validate(READY_FIELDS, info, "READY")
        except OSError as exc:   # whatever is wrong with it, it breaks the protocol
            raise P.ProtocolError(exc.strerror or str(exc)) from None
        capacity = max(1, min(int(info.get("capacity") or 64), 100_000))
        epoch = int(info.get("epoch") or 0)
        svc = self.services.get(service)
        if svc is not None and epoch < svc.epoch:
            # a deposed leader (paused, then resumed) must never be routed a request
            raise Refused(f"registration for {name!r} with epoch {epoch} refused: workers "
                          f"of epoch {svc.epoch} serve it (a newer leader took over)")
        out: list[Send] = []
        if identity in self.workers:   # re-registration: its old requests are lost
            out.extend(self._remove_worker(self.workers[identity]))
        if svc is None:
            svc = self.services[service] = Service(name, service)
        if epoch > svc.epoch:
            svc.epoch = epoch
            for old in list(svc.workers):
                out.extend(self._remove_worker(old, f"superseded by epoch {epoch}"))
        if info.get("exclusive"):
            # A named worker (dn.<id>, mds) that registers again - typically restarted after
            # a crash - supersedes its dead predecessor at once instead of sharing requests
            # with it until it expires.
            for old in list(svc.workers):
                out.extend(self._remove_worker(old, "superseded by a new registration"))
        worker = Worker(identity, svc, capacity, self.clock() + self.interval * self.liveness,
                        user, epoch=epoch)
        self.workers[identity] = worker
        svc.workers.append(worker)
        log.info("worker %s registered for service %r (capacity %d)",
                 identity.hex(), name, capacity)
        out.extend(self._drain_queue(svc))
        return out

    def _remove_worker(self, worker: Worker, reason: str = "disconnected") -> list[Send]:
        self.workers.pop(worker.identity, None)
        svc = worker.service
        if worker in svc.workers:
            svc.workers.remove(worker)
        log.warning("worker %s of service %r %s with %d requests in flight",
                    worker.identity.hex(), svc.name, reason, len(worker.in_flight))
        out = []
        for key in worker.in_flight:
            self.in_flight.pop(key, None)
            out.append(self._error(key[0], svc.name_bytes, key[1], P.E_WORKER_LOST,
                                   f"worker of service {svc.name!r} was lost "
                                   f"with the request in flight"))
        worker.in_flight.clear()
        if not svc.workers:
            while svc.queue:
                route, rid = svc.queue.popleft()[:2]
                out.append(self._error(route, svc.name_bytes, rid, P.E_NO_WORKER,
                                       f"no live worker for service {svc.name!r}"))
        else:
            out.extend(self._drain_queue(svc))
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
