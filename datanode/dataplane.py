"""A DataNode's data endpoint: clients send block payloads here directly instead of
through the broker, so each byte is encrypted once per replica, not twice.

The broker stays the control plane and the one holder of the key registry: this node asks
it (op `registry`) for the User-Ids it admits and admits the same keys (`AdmittedKeys`,
refreshed every second, so a revoked key is cut off within seconds on open connections
too). The socket is a ROUTER; with security on a CURVE server with this node's member key,
its ZAP domain `data` admitting user and member keys. Requests are AEGIS/2 REQUESTs as a
client sends them to the broker, the caller decided by `broker.callers.caller_of(DATA,
...)`; every block op still needs its capability (guard.py): the capability, not the
socket, authorizes. `DataPlaneCore` is the sans-IO part (parse, admit, stamp);
`DataEndpoint` the socket loop around it.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import threading
from typing import Any, Callable, Iterable

import zmq

from broker import protocol as P
from broker import wire
from broker.curve import secure_server
from broker.zap import KeyAuthenticator
from broker.keys import _z85
from broker.callers import DATA, Refused, caller_of
from broker.userid import MEMBER_KEY, USER_KEY
from broker.service import Outcome
from broker.worker import Request

log = logging.getLogger(__name__)

DOMAIN = "data"
REVOKED = "x:revoked:-"      # curve.Admission's User-Id for a key removed mid-handshake


class AdmittedKeys:
    """The broker's registry view, as the ZAP handler and the loop here need it: public key
    (z85) -> user name or member service, and the set of admitted User-Ids. Updated from
    the broker's `registry` answers; read by the ZAP thread (one reference swap)."""

    def __init__(self) -> None:
        self.digest: str | None = None
        self._view: tuple[frozenset[str], dict[str, str], dict[str, str]] = (
            frozenset(), {}, {})

    @property
    def ids(self) -> frozenset[str]:
        return self._view[0]

    def update(self, answer: dict) -> bool:
        """Take a `registry` answer; whether the view changed. Ids that do not parse are
        left out (the broker made them, but a peer's garbage must not stop us)."""
        ids = answer.get("ids")
        digest = answer.get("digest")
        if not isinstance(ids, list):
            return False
        users: dict[str, str] = {}
        members: dict[str, str] = {}
        kept = set()
        for uid in ids:
            if not isinstance(uid, str):
                continue
            kind, _, rest = uid.partition(":")
            name, _, key = rest.partition(":")
            if not name or len(key) != 40 or kind not in (USER_KEY, MEMBER_KEY):
                continue
            (users if kind == USER_KEY else members)[key] = name
            kept.add(uid)
        self._view = (frozenset(kept), users, members)
        self.digest = digest if isinstance(digest, str) else None
        return True

    # curve.KeyView
    def reload_if_changed(self) -> bool:
        return False           # refreshed by the DataNode's registry thread

    def member_for(self, public_key: object) -> str | None:
        key = _z85(public_key)
        return None if key is None else self._view[2].get(key)

    def user_for(self, public_key: object) -> str | None:
        key = _z85(public_key)
        return None if key is None else self._view[1].get(key)


class DataPlaneCore:
    """Turns one received message into a Request to run, or an error reply to send, with
    no sockets. `keys` is None with security off (no User-Ids; every caller a client)."""

    def __init__(self, node_id: str, keys: AdmittedKeys | None,
                 max_header: int = P.DEFAULT_MAX_HEADER) -> None:
        self.service = f"dn.{node_id}".encode("ascii")
        self.keys = keys
        self.max_header = max_header
        self.malformed = 0
        self.refused = 0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def reply(self, ident: bytes, rid: bytes, header: bytes, payload: Iterable = ()) -> list:
        return [ident, P.pack(P.REPLY, self.service, rid, header), *payload]

    def error(self, ident: bytes, rid: bytes, exc: BaseException) -> list:
        return self.reply(ident, rid, P.error_header(*P.exception_to_error(exc)))

    def on_message(self, ident: bytes, user: str | None, env: bytes,
                   payload: list) -> tuple[Request | None, list | None]:
        """(request to run, None) or (None, reply frames or None to drop silently)."""
        try:
            cmd, name, rid, rest = P.unpack(env)
        except P.ProtocolError as exc:
            self.malformed += 1
            log.debug("dropped a malformed message on the data endpoint: %s", exc)
            return None, None
        if cmd != P.REQUEST or not 0 < len(rid) <= P.MAX_RID_LEN:
            self.malformed += 1
            return None, None
        if name != self.service:
            self.malformed += 1
            return None, self.error(ident, rid, P.ProtocolError(
                f"this is the data endpoint of {self.service.decode()}, not of "
                f"{name[:64]!r}"))
        if self.keys is not None:
            # the ZAP check admitted the key at the handshake; this one catches keys
            # revoked since, on connections that stay open
            if user is None or user not in self.keys.ids:
                self.refused += 1
                return None, self.error(ident, rid, PermissionError(
                    errno.EACCES, "key revoked (not in the cluster's registry)"))
        try:
            caller_class, caller_id = caller_of(DATA, user)
            header = P.decode_header(rest, self.max_header)
        except Refused as exc:
            self.refused += 1
            return None, self.error(ident, rid, PermissionError(errno.EACCES, exc.strerror))
        except P.ProtocolError as exc:
            self.malformed += 1
            return None, self.error(ident, rid, exc)
        self.requests += 1
        self.bytes_in += sum(len(f) for f in payload)
        return Request(ident, rid, header, wire.payload_views(payload),
                       caller_class, caller_id), None

    def counters(self) -> dict:
        return {"data_requests": self.requests, "data_bytes_in": self.bytes_in,
                "data_bytes_out": self.bytes_out, "data_refused": self.refused,
                "data_malformed": self.malformed}


def advertised_host(bind: str, advertise: str, broker_endpoint: str) -> str:
    """The address clients should dial: `advertise` when set; else the bound address; for
    a wildcard bind, the local address this host uses toward the broker (what a client
    on the broker's network can reach)."""
    if advertise:
        return advertise
    if bind not in ("0.0.0.0", "*", "", "::"):
        return bind
    return route_source(broker_endpoint)


def route_source(endpoint: str) -> str:
    """The local address the kernel would use to reach `endpoint`'s host (no packet sent:
    a UDP connect only picks the route)."""
    host = endpoint.rpartition("//")[2].rpartition(":")[0].strip("[]") or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


class DataEndpoint:
    """The socket around DataPlaneCore. `run(stop)` is the loop (its own thread); requests
    go to `submit(request, self)`, whose answer comes back through `reply_threadsafe`."""

    def __init__(self, node_id: str, host: str, port: int, *,
                 submit: Callable[[Request, "DataEndpoint"], None],
                 server_keys: tuple[bytes, bytes] | None = None,
                 keys: AdmittedKeys | None = None, advertise: str = "",
                 context: zmq.Context | None = None, max_message_size: int | None = None,
                 hwm: int = 1000) -> None:
        self.ctx = context or zmq.Context.instance()
        self.core = DataPlaneCore(node_id, keys if server_keys else None)
        self.public = server_keys[0] if server_keys else None
        self.submit = submit
        self.auth: KeyAuthenticator | None = None
        if server_keys:
            assert keys is not None
            # before the bind: libzmq admits CURVE peers unasked while no handler runs
            self.auth = KeyAuthenticator(self.ctx, keys, domains=(DOMAIN,))
            self.auth.start()
        self.sock = self.ctx.socket(zmq.ROUTER)
        wire.configure(self.sock, hwm=hwm, max_message_size=max_message_size)
        if server_keys:
            secure_server(self.sock, *server_keys, DOMAIN)
        if port:
            self.sock.bind(f"tcp://{host}:{port}")
        else:
            port = self.sock.bind_to_random_port(f"tcp://{host}")
        self.port = port
        self.endpoint = f"tcp://{advertise or host}:{port}"
        self._pending: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def advert(self) -> dict:
        """What the heartbeat tells the MDS: where to dial and which server key to expect."""
        out: dict[str, Any] = {"endpoint": self.endpoint}
        if self.public is not None:
            out["key"] = self.public.decode("ascii")
        return out

    def reply_threadsafe(self, request: Request, outcome: Outcome) -> None:
        self._pending.append((request, outcome))
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    def _flush(self) -> None:
        core, pending = self.core, self._pending
        while pending:
            req, outcome = pending.popleft()
            if outcome.error is not None:
                frames = core.error(req.client, req.rid, outcome.error)
            else:
                frames = core.reply(req.client, req.rid, P.ok_header(outcome.result),
                                    outcome.payload)
                core.bytes_out += sum(len(f) for f in outcome.payload)
            wire.send(self.sock, frames)

    def run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        secure = self.auth is not None
        log.info("data endpoint %s (%s)", self.endpoint, "CURVE" if secure else "plain TCP")
        while not stop.is_set():
            events = dict(poller.poll(500))
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            self._flush()
            if self.sock not in events:
                continue
            for _ in range(256):
                try:
                    if secure:
                        ident, user, env, payload = wire.recv_authenticated(
                            self.sock, wire.NOBLOCK)
                    else:
                        ident, env, payload = wire.recv(self.sock, wire.NOBLOCK, routed=True)
                        user = None
                except zmq.Again:
                    break
                try:
                    req, frames = self.core.on_message(ident, user, env, payload)
                except Exception:     # never let a peer's message end the loop
                    log.exception("data endpoint: message handling failed")
                    continue
                if frames:
                    wire.send(self.sock, frames)
                if req is not None:
                    self.submit(req, self)
        self._flush()

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        os.close(self._wake_r)
        os.close(self._wake_w)
