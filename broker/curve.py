"""CURVE on every broker socket: the key material each role connects with, the broker's
ZAP admission decisions (the pyzmq thread that asks them is zap.py, apart because it
imports asyncio, which clients need not load) and the User-Id it gives each connection,
which `callers.caller_of` turns into the caller.

User-Id, carried by ZeroMQ on every message of an authenticated connection:
    "u:<user name>:<public key z85>"   a user's key (client endpoint, events out)
    "m:<service>:<public key z85>"     a member's key: "mds" or "dn.<id>"
The public key is part of it so that a user removed and added again under the same name
does not bring back connections made with the old key.

Domains (the ZAP domain of each broker socket) and whom they admit:
    client      users                events_in    members (publishers)
    worker      members              events_out   users and members (subscribers)
    data        users and members    (a DataNode's data endpoint, datanode/dataplane.py)
The broker's own key is never admitted anywhere: nothing should connect with it.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import zmq
from zmq.utils import z85

from .keys import KeyStore, load_broker_key, load_public, load_secret
from .userid import MEMBER_KEY as MEMBER
from .userid import USER_KEY as USER
from .userid import parse_user_id  # noqa: F401  (the inverse of user_id, re-exported)

ON, OFF = "on", "off"
DOMAINS = ("client", "worker", "events_in", "events_out")
# which kinds of key each domain admits
ADMITS: dict[str, frozenset[str]] = {
    "client": frozenset({USER}), "worker": frozenset({MEMBER}),
    "events_in": frozenset({MEMBER}), "events_out": frozenset({USER, MEMBER}),
    "data": frozenset({USER, MEMBER}),
}
ADMIN_KEY = Path("users") / "admin.key_secret"
INSECURE_WARNING = ("SECURITY IS OFF: no CURVE, no authentication, every client is the "
                    "superuser 'admin'. Use this only for benchmarks on a trusted host.")


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE client's key pair and the broker's public key, all z85."""

    public: bytes
    secret: bytes
    server: bytes
    source: str = ""       # the key file, for messages

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client of the broker (before connect)."""
        sock.curve_serverkey = self.server
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    @classmethod
    def load(cls, key_file: Path | str, broker_key: Path | str | bytes | None = None) -> "CurveKeys":
        """From a secret key file (0600) and the broker's public key: given (a .key file or
        z85), else named inside a user's key file, else broker.key in the keys directory
        the key file belongs to. Errors name the file and what to do."""
        key_file = Path(key_file)
        try:
            public, secret = load_secret(key_file)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"key file not found: {key_file}",
                                    str(key_file)) from None
        server = _broker_public(key_file, broker_key)
        return cls(public, secret, server, str(key_file))


def _broker_public(key_file: Path, broker_key: Path | str | bytes | None) -> bytes:
    if isinstance(broker_key, bytes):   # bytes are a z85 key itself, never a path
        if len(broker_key) == 40:
            return broker_key
        if broker_key:
            raise ValueError(f"broker key: expected 40 z85 characters, got {len(broker_key)}")
        broker_key = None
    if broker_key:
        return load_public(broker_key)
    named = load_broker_key(key_file)
    if named:
        return named
    # users/<name>.key_secret, dn/<id>.key_secret -> ../broker.key; mds.key_secret -> ./
    for directory in (key_file.parent, key_file.parent.parent):
        candidate = directory / "broker.key"
        if candidate.is_file():
            return load_public(candidate)
    raise FileNotFoundError(errno.ENOENT, f"no broker public key for {key_file}: give "
                            "--broker-key FILE (the broker.key of the cluster's keys "
                            "directory)", str(key_file))


def secure_server(sock: zmq.Socket, public: bytes, secret: bytes, domain: str) -> None:
    """Make `sock` a CURVE server whose peers ZAP checks in `domain` (before bind)."""
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.zap_domain = domain.encode()


# --- the User-Id ----------------------------------------------------------------------

def user_id(kind: str, name: str, public_z85: str) -> str:
    return f"{kind}:{name}:{public_z85}"


def registered_ids(store: KeyStore) -> frozenset[str]:
    """Every User-Id the registry admits now: what the broker checks requests against."""
    ids = {user_id(USER, name, u.public) for name, u in store.users().items()}
    ids.update(user_id(MEMBER, service, key) for key, service in store.members().items()
               if service != "broker")
    return frozenset(ids)


class KeyView(Protocol):
    """What admission needs of a registry: the broker's KeyStore, or a DataNode's copy of
    the broker's view (datanode/dataplane.AdmittedKeys)."""

    def reload_if_changed(self) -> bool: ...
    def member_for(self, public_key: object) -> str | None: ...
    def user_for(self, public_key: object) -> str | None: ...


class Admission:
    """The decisions of the ZAP handler, without sockets: does `domain` admit this key, and
    which User-Id does it get.

    The registry is re-read (one stat when unchanged) before every decision, not once a
    second: libzmq does not reconnect after a refused handshake, so a key added a moment
    ago must not be refused on a stale view. Handshakes are rare and cost far more than
    a stat, so this does not make a flood of them any cheaper to send.
    """

    EVENT_DOMAINS = frozenset({"events_in", "events_out"})

    def __init__(self, store: KeyView) -> None:
        self.store = store
        self.refused = 0
        # Keys let onto an event endpoint since the last take_event_keys(): the broker
        # cuts event connections when one of them leaves the registry. Its own view of
        # the registry is a second behind and may never have held a key that was added
        # and removed within that second, so it asks this side, which admitted it.
        self._event_keys: set[Any] = set()
        self._lock = threading.Lock()

    def take_event_keys(self) -> set[Any]:
        """The keys admitted onto an event endpoint since the last call (any thread)."""
        with self._lock:
            keys, self._event_keys = self._event_keys, set()
        return keys

    def give_back_event_keys(self, keys: set[Any]) -> None:
        """Keys still connected (none of them revoked): remembered for the next look."""
        with self._lock:
            self._event_keys |= keys

    def _fresh(self) -> None:
        self.store.reload_if_changed()

    def kind_of(self, key: object) -> tuple[str, str] | None:
        service = self.store.member_for(key)
        if service is not None:
            return (MEMBER, service) if service != "broker" else None
        name = self.store.user_for(key)
        return (USER, name) if name is not None else None

    def admit(self, domain: str, key: object) -> bool:
        self._fresh()
        who = self.kind_of(key)
        ok = who is not None and who[0] in ADMITS.get(domain, frozenset())
        if not ok:
            self.refused += 1
        elif domain in self.EVENT_DOMAINS:
            with self._lock:
                self._event_keys.add(key)   # z85 bytes from zmq.auth
        return ok

    def user_id_for(self, key: bytes) -> str:
        who = self.kind_of(key)
        if who is None:   # removed between the callback and now: a User-Id nobody matches
            return "x:revoked:-"
        return user_id(who[0], who[1], z85.encode(key).decode("ascii"))


# --- configuration -----------------------------------------------------------------

def enabled(security: Mapping[str, Any]) -> bool:
    """The [security] mode: "on" (the default) or "off"; anything else is an error."""
    mode = str(security.get("mode", ON)).strip().lower()
    if mode not in (ON, OFF):
        raise ValueError(f"[security] mode must be \"on\" or \"off\", not {mode!r}")
    return mode == ON


def warn_if_off(security: Mapping[str, Any], role: str) -> bool:
    """True when security is on; otherwise log the loud warning every role gives."""
    if enabled(security):
        return True
    logging.getLogger(role).warning("%s (%s)", INSECURE_WARNING, role)
    return False


def keys_dir(security: Mapping[str, Any]) -> Path:
    return Path(security.get("keys") or "data/keys")


def member_keys(security: Mapping[str, Any], service: str) -> CurveKeys | None:
    """The CURVE keys of member `service` ("mds", "dn.<id>"), None when security is off:
    the role's --key flag (`member_key`) or the keys directory's file for the service; the
    broker key from --broker-key / [security] broker_key or the keys directory."""
    if not warn_if_off(security, service):
        return None
    directory = keys_dir(security)
    key = security.get("member_key") or KeyStore(directory).member_key_path(service)
    broker = security.get("broker_key") or directory / "broker.key"
    return CurveKeys.load(key, broker)


def client_key_file(key: str | os.PathLike[str] | None, security: Mapping[str, Any],
                    environ: Mapping[str, str] | None = None) -> Path | None:
    """Which user key a client uses: `key` (a file, or a keys directory: its admin key),
    else $AEGISFS_KEY, else [security] key, else <keys directory>/users/admin.key_secret
    when it exists (a local cluster started by `make run`). None if there is none."""
    env = os.environ if environ is None else environ
    for candidate in (key, env.get("AEGISFS_KEY"), security.get("key")):
        if candidate:
            path = Path(candidate).expanduser()
            return path / ADMIN_KEY if path.is_dir() else path
    default = keys_dir(security) / ADMIN_KEY
    return default if default.exists() else None


def client_keys(key: str | os.PathLike[str] | None, security: Mapping[str, Any],
                environ: Mapping[str, str] | None = None) -> CurveKeys | None:
    """The CURVE keys of a client (None when security is off); a clear error when none
    is found or the file may not be used."""
    if not enabled(security):
        return None
    path = client_key_file(key, security, environ)
    if path is None:
        raise FileNotFoundError(errno.ENOENT, "no user key: give --key FILE, set AEGISFS_KEY, "
                                "set [security] key in the config, or run where the local "
                                f"cluster's {keys_dir(security) / ADMIN_KEY} is")
    return CurveKeys.load(path, security.get("broker_key") or None)
