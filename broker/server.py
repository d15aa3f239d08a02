"""The broker process: two ROUTER sockets around the routing core, plus the event proxy.

Clients talk to the client endpoint, workers to the worker endpoint; publishers connect to
the XSUB endpoint and subscribers to the XPUB endpoint (a C `zmq.proxy` in its own thread).
The loop only moves frames; every decision is made by `routing.Router`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from . import protocol as P
from . import wire
from .config import bind_endpoint
from .routing import CLIENT, Router

log = logging.getLogger(__name__)

DRAIN_BATCH = 256   # messages taken from one socket before looking at the other


class RateLimitedLog:
    """Log peer garbage at most `per_interval` times per interval; count the rest."""

    def __init__(self, logger: logging.Logger, per_interval: int = 5, interval: float = 10.0,
                 clock=time.monotonic) -> None:
        self.logger, self.per_interval, self.interval, self.clock = logger, per_interval, interval, clock
        self.window_start = clock()
        self.count = 0
        self.suppressed = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = self.clock()
        if now - self.window_start >= self.interval:
            if self.suppressed:
                self.logger.warning("%d more malformed messages were not logged", self.suppressed)
            self.window_start, self.count, self.suppressed = now, 0, 0
        if self.count < self.per_interval:
            self.count += 1
            self.logger.warning(msg, *args)
        else:
            self.suppressed += 1


class EventProxy:
    """XSUB (publishers connect) <-> XPUB (subscribers connect), forwarded by libzmq in C."""

    def __init__(self, ctx: zmq.Context, events_in: str, events_out: str, hwm: int) -> None:
        self.ctx = ctx
        self.xsub = ctx.socket(zmq.XSUB)
        self.xpub = ctx.socket(zmq.XPUB)
        for sock in (self.xsub, self.xpub):
            wire.configure(sock, hwm=hwm * 10)
        self.xsub.bind(events_in)
        self.xpub.bind(events_out)
        self._ctl_addr = f"inproc://event-proxy-ctl-{id(self)}"
        self._ctl = ctx.socket(zmq.PAIR)
        self._ctl.bind(self._ctl_addr)
        self.thread = threading.Thread(target=self._run, name="event-proxy", daemon=True)

    def _run(self) -> None:
        ctl = self.ctx.socket(zmq.PAIR)
        ctl.connect(self._ctl_addr)
        try:
            zmq.proxy_steerable(self.xsub, self.xpub, None, ctl)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (ctl, self.xsub, self.xpub):
                sock.close(linger=0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._ctl.send(b"TERMINATE")
        self.thread.join(timeout=5)
        self._ctl.close(linger=0)


class Broker:
    def __init__(self, cfg: dict[str, Any], ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        hwm = int(cfg["hwm"])
        maxsize = int(cfg["max_message_size"])
        self.frontend = self.ctx.socket(zmq.ROUTER)
        self.backend = self.ctx.socket(zmq.ROUTER)
        for sock in (self.frontend, self.backend):
            wire.configure(sock, hwm=hwm, max_message_size=maxsize)
        # the endpoints name the ports; [broker] bind names the address (loopback default)
        self.bound = {name: bind_endpoint(cfg[name], cfg.get("bind"))
                      for name in ("client", "worker", "events_in", "events_out")}
        self.frontend.bind(self.bound["client"])
        self.backend.bind(self.bound["worker"])
        self.events = EventProxy(self.ctx, self.bound["events_in"], self.bound["events_out"],
                                 hwm)
        self.router = Router(heartbeat_interval=float(cfg["heartbeat_interval"]),
                             liveness=int(cfg["heartbeat_liveness"]),
                             request_ttl=float(cfg["request_ttl"]),
                             max_header=int(cfg["max_header_size"]))
        self.garbage = RateLimitedLog(log)
        self.malformed = 0
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
        recv, perform, noblock = wire.recv, self._perform, wire.NOBLOCK
        # Under load messages come in runs; one zmq.Again per run is cheaper than asking
        # the socket before every message.
        for _ in range(DRAIN_BATCH):
            try:
                ident, env, payload = recv(sock, noblock, routed=True)
            except zmq.Again:
                return
            try:
                sends = handle(ident, env, payload)
            except P.ProtocolError as exc:
                self._reject(sock, from_client, ident, env, exc)
                continue
            if sends:
                perform(sends)

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
        log.info("broker up: clients %s, workers %s, events in %s out %s",
                 self.bound["client"], self.bound["worker"], self.bound["events_in"],
                 self.bound["events_out"])
        try:
            while not self._stop.is_set():
                wait_ms = max(0.0, router.next_deadline() - router.clock()) * 1000
                events = dict(poller.poll(min(wait_ms, 500)))
                if self.backend in events:
                    self._drain(self.backend, False)
                if self.frontend in events:
                    self._drain(self.frontend, True)
                sends = router.tick()
                if sends:
                    self._perform(sends)
        finally:
            self._perform(router.shutdown())
            self.events.stop()
            self.frontend.close(linger=0)
            self.backend.close(linger=0)
            log.info("broker stopped (%s, %d malformed)", router.stats, self.malformed)
