"""Key files and the cluster's key registry: CURVE key pairs for the broker, the MDS, each
DataNode and each user, and the cluster secret capabilities and receipts derive from.

No sockets: the broker's ZAP handler (broker/curve.py) asks ``member_for`` / ``user_for``
after ``reload_if_changed`` at every handshake, and the broker loop re-reads it once a
second, which is how removing a user revokes the key.

Layout of the keys directory (default <data-dir>/keys, mode 0700):
    broker.key, broker.key_secret      CURVE certificates in zmq.auth's (ZPL) format;
    mds.key, mds.key_secret            *.key_secret files are 0600, *.key 0644
    dn/<id>.key, dn/<id>.key_secret
    users/<name>.key, users/<name>.key_secret
    cluster.secret                     32 random bytes, 0600
    registry.json                      {"version": 1,
                                        "members": {public z85: "broker"/"mds"/"dn.<id>"},
                                        "users": {name: {"public": z85, "created": epoch s,
                                                         "superuser": bool}}}
Every file is written tmp (already at its final mode) -> fsync -> rename -> fsync dir, so a
crash leaves the old file or the new one, never a torn one or a readable secret.

Public API:
    KeyStore(directory, *, clock=time.time)
    .ensure_cluster(datanodes) -> [what was created]   idempotent; first start also
        creates the superuser "admin"
    .add_user(name, *, superuser=False) -> Path of the secret key file
    .remove_user(name), .users() -> {name: UserInfo}, .members() -> {public: service},
    .add_node(node_id) -> Path
    .member_for(public_key) -> service | None, .user_for(public_key) -> name | None
    .reload_if_changed() -> bool, .broker_public() -> bytes (z85), .cluster_secret() -> bytes
    .member_key_path(service) -> Path, .user_key_path(name) -> Path
    load_secret(path) -> (public z85, secret z85)   PermissionError if group/world can read
    load_public(path) -> public z85, write_file_atomic(path, data, mode)
    load_broker_key(path) -> the broker public key a user's key file names, or None
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import zmq
from zmq.utils import z85

log = logging.getLogger(__name__)

CLUSTER_SECRET_BYTES = 32
ADMIN = "admin"
MAX_REGISTRY_BYTES = 16 * 1024 * 1024
# fullmatch (never match + "$", which accepts a trailing newline): these names become paths.
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
NODE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_REGISTRY = "registry.json"
_SECRET_FILE = "cluster.secret"


@dataclass(frozen=True)
class UserInfo:
    name: str
    public: str          # z85
    created: float
    superuser: bool


# --- files --------------------------------------------------------------------------------

def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace path with data: a crash leaves the old content or the new, and the file is
    never visible with wider permissions than mode."""
    # secrets (hashlib, so OpenSSL) only where keys are written: clients only read them
    import secrets
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may only have narrowed it; make it exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_private(path: Path, limit: int = 1 << 16) -> bytes:
    """Read a secret file, refusing one that anybody but its owner can access."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        mode = os.fstat(fd).st_mode  # of the file we read, not of whatever is there later
        if mode & 0o077:
            raise PermissionError(
                errno.EACCES, f"secret file {path} is accessible by group or others "
                f"(mode {mode & 0o777:04o}); fix it with: chmod 600 {path}", str(path))
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _cert(public: bytes, secret: bytes | None, broker: bytes | None = None) -> bytes:
    # The format of zmq.auth.create_certificates, so zmq.auth.load_certificate reads it too.
    # A user's certificate also names the broker's public key (metadata), so the one file
    # is all a user needs to connect.
    kind = "**Secret** Certificate" if secret else "Public Certificate"
    meta = [f'    broker-key = "{broker.decode()}"'] if broker else []
    lines = [f"#   ****  Generated on {datetime.datetime.now()} by aegisfs  ****",
             f"#   ZeroMQ CURVE {kind}", "", "metadata", *meta, "curve",
             f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _parse_cert(path: Path, raw: bytes) -> tuple[bytes | None, bytes | None]:
    public = secret = None
    for line in raw.splitlines():
        line = line.strip()
        if line.startswith(b"public-key"):
            public = line.split(b"=", 1)[1].strip(b" \t'\"")
        elif line.startswith(b"secret-key"):
            secret = line.split(b"=", 1)[1].strip(b" \t'\"")
    for key in (public, secret):
        if key is not None and _z85(key) is None:
            raise ValueError(f"{path}: not a CURVE certificate (bad key)")
    return public, secret


def load_secret(path: Path | str) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a secret certificate that only its owner can read."""
    path = Path(path)
    public, secret = _parse_cert(path, _read_private(path))
    if public is None or secret is None:
        raise ValueError(f"{path}: no public-key and secret-key in this certificate")
    if zmq.curve_public(secret) != public:
        raise ValueError(f"{path}: the public key does not belong to the secret key")
    return public, secret


def load_broker_key(path: Path | str) -> bytes | None:
    """The broker public key (z85) a user certificate names in its metadata, or None."""
    for line in _read_private(Path(path)).splitlines():
        line = line.strip()
        if line.startswith(b"broker-key"):
            key = line.split(b"=", 1)[1].strip(b" \t'\"")
            return key if _z85(key) is not None else None
    return None


def load_public(path: Path | str) -> bytes:
    path = Path(path)
    public, _ = _parse_cert(path, path.read_bytes()[:1 << 16])
    if public is None:
        raise ValueError(f"{path}: no public-key in this certificate")
    return public


def _write_keypair(secret_path: Path, broker: bytes | None = None) -> bytes:
    """Write <base>.key_secret (0600) then <base>.key (0644); return the public key."""
    public, secret = zmq.curve_keypair()
    secret_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_atomic(secret_path, _cert(public, secret, broker), 0o600)
    write_file_atomic(secret_path.with_suffix(".key"), _cert(public, None), 0o644)
    return public


def _z85(key: object) -> str | None:
    """The z85 text of a CURVE public key given raw (32 bytes) or z85 (40), else None."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        key = bytes(key)
        if len(key) == 32:
            return z85.encode(key).decode("ascii")
        try:
            key = key.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(key, str) or len(key) != 40:
        return None
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        return None
    return key


# --- the store ----------------------------------------------------------------------------

class KeyStore:
    """The keys directory of one cluster. Mutations hold an flock and re-read the registry
    first, so two processes adding users at once both land."""

    def __init__(self, directory: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self._clock = clock
        self._members: dict[str, str] = {}
        self._users: dict[str, UserInfo] = {}
        self._by_user_key: dict[str, str] = {}
        self._seen: tuple[int, int, int] | None = None
        if (self.dir / _REGISTRY).exists():
            self._load()

    # paths
    def member_key_path(self, service: str) -> Path:
        if service in ("broker", "mds"):
            return self.dir / f"{service}.key_secret"
        node = service[3:] if service.startswith("dn.") else ""
        if not NODE_ID.fullmatch(node):
            raise ValueError(f"no key file for service {service!r}")
        return self.dir / "dn" / f"{node}.key_secret"

    def user_key_path(self, name: str) -> Path:
        _check_user_name(name)
        return self.dir / "users" / f"{name}.key_secret"

    # first start
    def ensure_cluster(self, datanodes: list[str]) -> list[str]:
        """Create what is missing: directory, cluster secret, broker, MDS and DataNode keys
        and, when there is no registry yet, the superuser "admin". Returns what it made."""
        for node in datanodes:
            _check_node_id(node)
        made: list[str] = []
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._locked():
            first = not (self.dir / _REGISTRY).exists()
            self._remove_stale_tmp()
            if not (self.dir / _SECRET_FILE).exists():
                import secrets
                write_file_atomic(self.dir / _SECRET_FILE,
                                  secrets.token_bytes(CLUSTER_SECRET_BYTES), 0o600)
                made.append("cluster secret")
            for service in ["broker", "mds", *(f"dn.{n}" for n in datanodes)]:
                if service not in self._members.values():
                    self._members[self._member_key(service)] = service
                    made.append(service)
            if first and ADMIN not in self._users:
                self._add_user(ADMIN, superuser=True)
                made.append(f"user {ADMIN}")
            if made or first:
                self._save()
        return made

    def _member_key(self, service: str) -> str:
        # A key file that exists but is not registered is from a crash between writing
        # the key and the registry: register it rather than replace it.
        path = self.member_key_path(service)
        if path.exists():
            return load_secret(path)[0].decode()
        return _write_keypair(path).decode()

    # users and nodes
    def add_user(self, name: str, *, superuser: bool = False) -> Path:
        _check_user_name(name)
        with self._locked():
            if name in self._users:
                raise FileExistsError(errno.EEXIST, f"user {name} already exists", name)
            self._add_user(name, superuser=superuser)
            self._save()
        return self.user_key_path(name)

    def _add_user(self, name: str, *, superuser: bool) -> None:
        broker_file = self.member_key_path("broker").with_suffix(".key")
        broker = load_public(broker_file) if broker_file.exists() else None
        public = _write_keypair(self.user_key_path(name), broker).decode()
        self._users[name] = UserInfo(name, public, float(self._clock()), superuser)

    def remove_user(self, name: str) -> None:
        """Unregister (that revokes the key at the broker's next reload), then delete the
        key files; a copy of the secret someone kept no longer maps to anybody."""
        _check_user_name(name)
        with self._locked():
            if name not in self._users:
                raise FileNotFoundError(errno.ENOENT, f"no user {name}", name)
            del self._users[name]
            self._save()
        path = self.user_key_path(name)
        path.unlink(missing_ok=True)
        path.with_suffix(".key").unlink(missing_ok=True)

    def users(self) -> dict[str, UserInfo]:
        return dict(sorted(self._users.items()))

    def members(self) -> dict[str, str]:
        """{public key z85: service} of the registered members (broker, mds, dn.<id>)."""
        return dict(self._members)

    def add_node(self, node_id: str) -> Path:
        _check_node_id(node_id)
        service = f"dn.{node_id}"
        with self._locked():
            if service in self._members.values():
                raise FileExistsError(errno.EEXIST, f"DataNode {node_id} already has a key",
                                      node_id)
            self._members[self._member_key(service)] = service
            self._save()
        return self.member_key_path(service)

    # lookups (the ZAP handler's hot path: one dict lookup each)
    def member_for(self, public_key: object) -> str | None:
        key = _z85(public_key)
        return None if key is None else self._members.get(key)

    def user_for(self, public_key: object) -> str | None:
        key = _z85(public_key)
        return None if key is None else self._by_user_key.get(key)

    def broker_public(self) -> bytes:
        return load_public(self.member_key_path("broker").with_suffix(".key"))

    def cluster_secret(self) -> bytes:
        path = self.dir / _SECRET_FILE
        secret = _read_private(path)
        if len(secret) != CLUSTER_SECRET_BYTES:
            raise ValueError(f"{path}: expected {CLUSTER_SECRET_BYTES} bytes, got {len(secret)}")
        return secret

    def load_secret(self, path: Path | str) -> tuple[bytes, bytes]:
        return load_secret(path)

    def reload_if_changed(self) -> bool:
        """Re-read the registry if its inode, size or mtime changed (one stat otherwise).

        A registry that cannot be read keeps the last good view and is logged: writes are
        atomic, so that means a hand edit, and locking out the MDS and DataNodes too would
        turn a typo into an outage.
        """
        try:
            st = os.stat(self.dir / _REGISTRY)
        except FileNotFoundError:
            return False
        if (st.st_ino, st.st_size, st.st_mtime_ns) == self._seen:
            return False
        try:
            self._load()
        except (OSError, ValueError) as exc:
            log.error("key registry not reloaded, keeping the previous one: %s", exc)
            return False
        return True

    # registry file
    def _load(self) -> None:
        path = self.dir / _REGISTRY
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read(MAX_REGISTRY_BYTES + 1)
        if len(raw) > MAX_REGISTRY_BYTES:
            raise ValueError(f"{path}: larger than {MAX_REGISTRY_BYTES} bytes")
        members, users = _parse_registry(path, raw)
        self._members, self._users = members, users
        self._by_user_key = {u.public: name for name, u in users.items()}
        self._seen = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _save(self) -> None:
        doc = {"version": 1, "members": dict(sorted(self._members.items(), key=lambda kv: kv[1])),
               "users": {n: {"public": u.public, "created": u.created,
                             "superuser": u.superuser} for n, u in sorted(self._users.items())}}
        write_file_atomic(self.dir / _REGISTRY,
                          (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
        self._load()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if (self.dir / _REGISTRY).exists():
                self._load()  # another process may have changed it since we last looked
            yield
        finally:
            os.close(fd)

    def _remove_stale_tmp(self) -> None:
        for sub in (self.dir, self.dir / "dn", self.dir / "users"):
            for tmp in sub.glob(".*.tmp") if sub.is_dir() else ():
                tmp.unlink(missing_ok=True)


def _parse_registry(path: Path, raw: bytes) -> tuple[dict[str, str], dict[str, UserInfo]]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise ValueError(f"{path}: not a version 1 key registry")
    members, users = doc.get("members"), doc.get("users")
    if not isinstance(members, dict) or not isinstance(users, dict):
        raise ValueError(f"{path}: members and users must be maps")
    for key, service in members.items():
        if _z85(key) is None or not isinstance(service, str) or not _is_service(service):
            raise ValueError(f"{path}: bad member entry {str(key)[:40]!r}")
    out: dict[str, UserInfo] = {}
    for name, entry in users.items():
        if not (USER_NAME.fullmatch(name) and isinstance(entry, dict)
                and _z85(entry.get("public")) is not None
                and type(entry.get("created")) in (int, float)
                and type(entry.get("superuser")) is bool):
            raise ValueError(f"{path}: bad user entry {name[:40]!r}")
        out[name] = UserInfo(name, entry["public"], float(entry["created"]), entry["superuser"])
    return dict(members), out


def _is_service(service: str) -> bool:
    return service in ("broker", "mds") or (
        service.startswith("dn.") and NODE_ID.fullmatch(service[3:]) is not None)


def _check_user_name(name: object) -> None:
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        raise ValueError(f"invalid user name {str(name)[:40]!r}: use 1-32 of a-z 0-9 _ -, "
                         "starting with a letter or _")


def _check_node_id(node: object) -> None:
    if not isinstance(node, str) or not NODE_ID.fullmatch(node):
        raise ValueError(f"invalid DataNode id {str(node)[:40]!r}: use 1-32 of a-z 0-9 _ -")
