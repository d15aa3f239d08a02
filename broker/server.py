"""The broker process: two ROUTER sockets around the routing core, plus the event proxy.

Clients talk to the client endpoint, workers to the worker endpoint; publishers connect to
the XSUB endpoint and subscribers to the XPUB endpoint (a C `zmq.proxy` in its own thread).
With security on all four are CURVE servers checked by the ZAP thread (broker/curve.py);
the loop hands each message's User-Id to the router and re-reads the key registry at
most once a second. The loop only moves frames; every decision is made by `routing.Router`.
"""
from __future__ import annotations

import errno
import logging
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from . import curve
from . import protocol as P
from . import wire
from .callers import CLIENT, Refused
from .config import bind_endpoint
from .keys import KeyStore
from .routing import Router
from .zap import KeyAuthenticator

log = logging.getLogger(__name__)

DRAIN_BATCH = 256   # messages taken from one socket before looking at the other


class RateLimitedLog:
    """Log peer garbage at most `per_interval` times per interval for each kind of it
    (`key`, e.g. the refusal's reason), and at most `kinds` kinds per interval; count the
    rest and say how many were left out when the interval ends. So one noisy peer cannot
    hide another's first refusal, and a peer inventing reasons cannot flood the log."""

    def __init__(self, logger: logging.Logger, per_interval: int = 5, interval: float = 10.0,
                 clock=time.monotonic, what: str = "malformed messages",
                 kinds: int = 16) -> None:
        self.logger, self.per_interval, self.interval, self.clock = logger, per_interval, interval, clock
        self.what, self.kinds = what, kinds
        self.window_start = clock()
        self.counts: dict[object, int] = {}
        self.suppressed = 0

    def warning(self, msg: str, *args: Any, key: object = None) -> None:
        now = self.clock()
        if now - self.window_start >= self.interval:
            if self.suppressed:
                self.logger.warning("%d more %s were not logged", self.suppressed, self.what)
            self.window_start, self.suppressed = now, 0
            self.counts.clear()
        count = self.counts.get(key, 0)
        if count < self.per_interval and (count or len(self.counts) < self.kinds):
            self.counts[key] = count + 1
            self.logger.warning(msg, *args)
        else:
            self.suppressed += 1


class EventProxy:
    """XSUB (publishers connect) <-> XPUB (subscribers connect), forwarded by libzmq in C.

    libzmq cannot drop one peer of a bound socket, and a forwarded event is never checked
    against the registry, so `restart` is how a revoked key loses its event connection:
    new sockets on the same endpoints; everyone reconnects through the ZAP handshake
    again (SUB sockets resubscribe by themselves) and a revoked key fails it. Events
    published during the gap are lost, as PUB/SUB may lose them anyway."""

    REBIND_FOR = 3.0    # seconds to retry binding an endpoint the old socket still holds

    def __init__(self, ctx: zmq.Context, events_in: str, events_out: str, hwm: int,
                 server_keys: tuple[bytes, bytes] | None = None) -> None:
        self.ctx = ctx
        self.hwm = hwm
        self.server_keys = server_keys
        self.endpoints = (events_in, events_out)
        self.restarts = 0
        self._open()

    def _open(self) -> None:
        self.xsub = self.ctx.socket(zmq.XSUB)
        self.xpub = self.ctx.socket(zmq.XPUB)
        for sock in (self.xsub, self.xpub):
            wire.configure(sock, hwm=self.hwm * 10)
        if self.server_keys:
            curve.secure_server(self.xsub, *self.server_keys, "events_in")
            curve.secure_server(self.xpub, *self.server_keys, "events_out")
        deadline = time.monotonic() + self.REBIND_FOR
        for sock, endpoint in zip((self.xsub, self.xpub), self.endpoints):
            while True:
                try:
                    sock.bind(endpoint)
                    break
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        # a wildcard port comes back the same on a restart
        self.endpoints = (self.xsub.LAST_ENDPOINT.decode(), self.xpub.LAST_ENDPOINT.decode())
        self._ctl_addr = f"inproc://event-proxy-ctl-{id(self)}-{self.restarts}"
        self._ctl = self.ctx.socket(zmq.PAIR)
        self._ctl.bind(self._ctl_addr)
        self.thread = threading.Thread(target=self._run, name="event-proxy", daemon=True)

    def _run(self) -> None:
        ctl = self.ctx.socket(zmq.PAIR)
        ctl.connect(self._ctl_addr)
        xsub, xpub = self.xsub, self.xpub
        try:
            zmq.proxy_steerable(xsub, xpub, None, ctl)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (ctl, xsub, xpub):
                sock.close(linger=0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._ctl.send(b"TERMINATE")
        self.thread.join(timeout=5)
        self._ctl.close(linger=0)

    def restart(self) -> None:
        """Cut every event connection; see the class docstring."""
        self.stop()
        self.restarts += 1
        self._open()
        self.start()


class Broker:
    """`keys`: the cluster's keys directory (security on), or None (security off: the
    caller has already logged the warning)."""

    RELOAD_EVERY = 1.0   # seconds between looks at the key registry (revocation delay)

    def __init__(self, cfg: dict[str, Any], ctx: zmq.Context | None = None,
                 keys: Path | str | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        hwm = int(cfg["hwm"])
        maxsize = int(cfg["max_message_size"])
        self.router = Router(heartbeat_interval=float(cfg["heartbeat_interval"]),
                             liveness=int(cfg["heartbeat_liveness"]),
                             request_ttl=float(cfg["request_ttl"]),
                             max_header=int(cfg["max_header_size"]))
        self.store: KeyStore | None = None
        self.auth: KeyAuthenticator | None = None
        server_keys = None
        if keys is not None:
            # Two stores: the ZAP thread reads its own, so no registry object is shared
            # between threads.
            self.store = KeyStore(keys)
            if not (Path(keys) / "registry.json").exists():
                raise FileNotFoundError(f"no key registry in {keys}: create the cluster's "
                                        "keys first (run_cluster.py does it on first start)")
            server_keys = self.store.load_secret(self.store.member_key_path("broker"))
            self.router.set_registry(curve.registered_ids(self.store))
            self.router.refresh = self._registry_now
            # The ZAP handler must be up before anything binds: libzmq lets a CURVE peer
            # in without asking when no handler is there.
            self.auth = KeyAuthenticator(self.ctx, KeyStore(keys))
            self.auth.start()
        self.frontend = self.ctx.socket(zmq.ROUTER)
        self.backend = self.ctx.socket(zmq.ROUTER)
        for sock in (self.frontend, self.backend):
            wire.configure(sock, hwm=hwm, max_message_size=maxsize)
        if server_keys:
            curve.secure_server(self.frontend, *server_keys, "client")
            curve.secure_server(self.backend, *server_keys, "worker")
        # the endpoints name the ports; [broker] bind names the address (loopback default)
        self.bound = {name: bind_endpoint(cfg[name], cfg.get("bind"))
                      for name in ("client", "worker", "events_in", "events_out")}
        self.frontend.bind(self.bound["client"])
        self.backend.bind(self.bound["worker"])
        self.events = EventProxy(self.ctx, self.bound["events_in"], self.bound["events_out"],
                                 hwm, server_keys)
        self.garbage = RateLimitedLog(log)
        self.refusals = RateLimitedLog(log, what="refusals")
        self.malformed = 0
        self.refused = 0
        self._next_reload = 0.0
        self._ids: frozenset[str] | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _perform(self, sends: list) -> None:
        front, back, send = self.frontend, self.backend, wire.send
        for side, ident, frames in sends:
            # ROUTER drops sends to unknown or full peers (no ROUTER_MANDATORY): a client that
            # went away costs nothing.
            send(front if side == CLIENT else back, [ident, *frames])

    def _drain(self, sock: zmq.Socket, from_client: bool) -> None:
        handle = self.router.on_client if from_client else self.router.on_worker
        perform, noblock = self._perform, wire.NOBLOCK
        secure = self.store is not None
        # Under load messages come in runs; one zmq.Again per run is cheaper than asking
        # the socket before every message.
        for _ in range(DRAIN_BATCH):
            try:
                if secure:
                    ident, user, env, payload = wire.recv_authenticated(sock, noblock)
                else:
                    ident, env, payload = wire.recv(sock, noblock, routed=True)
                    user = None
            except zmq.Again:
                return
            try:
                sends = handle(ident, env, payload, user)
            except Refused as exc:
                self.refused += 1
                side = "client" if from_client else "worker"
                self.refusals.warning("refused %s %s (%s): %s", side, ident.hex(),
                                      _who(user), exc.strerror, key=(side, exc.strerror))
                continue
            except P.ProtocolError as exc:
                self._reject(sock, from_client, ident, env, exc)
                continue
            if sends:
                perform(sends)

    def _registry_now(self) -> frozenset[str]:
        """The registry's User-Ids as of now (one stat when the file is unchanged)."""
        assert self.store is not None
        if self.store.reload_if_changed() or self._ids is None:
            self._ids = curve.registered_ids(self.store)
            log.info("key registry reloaded: %d users", len(self.store.users()))
        return self._ids

    def _reload_keys(self) -> None:
        """Pick up `aegisfs user rm` (and add) at most a second late."""
        now = time.monotonic()
        if self.store is None or now < self._next_reload:
            return
        self._next_reload = now + self.RELOAD_EVERY
        ids = self._registry_now()
        if ids != self.router.registry:
            sends = self.router.set_registry(ids)
            if sends:
                self._perform(sends)
        # Event connections carry no per-message check: when a key the ZAP thread let onto
        # an event endpoint has left the registry, cut them all (everyone else reconnects).
        assert self.auth is not None
        admitted = self.auth.admission.take_event_keys()
        gone = {k for k in admitted
                if self.store.user_for(k) is None and self.store.member_for(k) is None}
        if gone:
            log.info("keys revoked (%d): reconnecting every event connection", len(gone))
            self.events.restart()
        else:
            self.auth.admission.give_back_event_keys(admitted)

    def _reject(self, sock, from_client: bool, ident: bytes, env: bytes, exc: Exception) -> None:
        self.malformed += 1
        side = "client" if from_client else "worker"
        self.garbage.warning("malformed message from %s %s: %s", side, ident.hex(), exc)
        # A client (or a member's REQUEST) whose envelope still yields a request id learns
        # why; the rest is dropped.
        try:
            cmd, _, rid, _ = P.unpack(env)
        except P.ProtocolError:
            return
        if from_client or cmd == P.REQUEST:
            if 0 < len(rid) <= P.MAX_RID_LEN:
                wire.send(sock, [ident, P.pack(P.REPLY, b"", rid,
                                               P.error_header(P.E_PROTOCOL, str(exc)))])

    def run(self) -> None:
        self.events.start()
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        router = self.router
        log.info("broker up: clients %s, workers %s, events in %s out %s, security %s",
                 self.bound["client"], self.bound["worker"], self.bound["events_in"],
                 self.bound["events_out"], "on (CURVE)" if self.store else "OFF")
        try:
            while not self._stop.is_set():
                wait_ms = max(0.0, router.next_deadline() - router.clock()) * 1000
                events = dict(poller.poll(int(min(wait_ms, 500))))   # poll truncates too
                if self.backend in events:
                    self._drain(self.backend, False)
                if self.frontend in events:
                    self._drain(self.frontend, True)
                sends = router.tick()
                if sends:
                    self._perform(sends)
                self._reload_keys()
        finally:
            self._perform(router.shutdown())
            self.events.stop()
            self.frontend.close(linger=0)
            self.backend.close(linger=0)
            if self.auth is not None:
                self.auth.stop()
            log.info("broker stopped (%s, %d malformed, %d refused)", router.stats,
                     self.malformed, self.refused)


def _who(user: str | None) -> str:
    who = curve.parse_user_id(user) if user else None
    return f"{'user' if who[0] == curve.USER else 'member'} {who[1]}" if who else "no key"
