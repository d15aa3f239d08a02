"""Who the broker routes to: workers registering for a service (READY: capacity,
`exclusive`, the HA leadership `epoch` - a higher one replaces the service's workers, a
lower one is refused), members declaring whom they act for (MEMBER), removing a worker
(its requests answered), and the view of the key registry that revokes them. A part of
broker.routing.Router (a mixin: it uses the Router's tables and clock).
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import protocol as P
from .callers import CLIENT, CLIENT_CALLER, WORKER, Refused, Send, caller_of
from .service import Bool, Int, Map, Str, validate

log = logging.getLogger(__name__)

MAX_MEMBERS = 10_000
READY_FIELDS = Map({"capacity?": Int(-(1 << 63), 1 << 64), "exclusive?": Bool(),
                    "node?": Str(P.MAX_SERVICE_LEN), "epoch?": Int(0, 1 << 63)})


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


class Registration:
    """Workers, members and the key registry, mixed into Router."""

    if TYPE_CHECKING:    # what this part uses of the Router
        clock: Callable[[], float]
        refresh: Callable[[], frozenset[str]] | None
        _deferred: list[Send]
        interval: float
        liveness: int
        max_header: int
        services: dict[bytes, Service]
        workers: dict[bytes, Worker]
        members: dict[bytes, tuple[bytes, str | None]]
        registry: frozenset[str] | None
        _client_callers: dict[str, bytes]
        in_flight: dict[tuple[bytes, bytes], tuple[Worker, float]]

        def _drain_queue(self, svc: Service) -> list[Send]: ...

        @staticmethod
        def _error(route: bytes, service: bytes, rid: bytes, code: str,
                   message: str) -> Send: ...

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

    # -- workers and members ---------------------------------------------------------------

    def _on_member(self, identity: bytes, declared: bytes, user: str | None) -> list[Send]:
        caller_class, caller_id = caller_of(WORKER, user,
                                            P.decode_name(declared, "member name"))
        if identity not in self.members and len(self.members) >= MAX_MEMBERS:
            # members that vanished without DISCONNECT (kill -9): forget the oldest
            del self.members[next(iter(self.members))]
        self.members[identity] = (P.caller_field(caller_class, caller_id), user)
        return []

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
