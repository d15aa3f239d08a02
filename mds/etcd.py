"""A minimal etcd v3 client over etcd's JSON gateway (HTTP, `/v3/...`): the five calls the
MDS leader election needs - lease grant, keep-alive and revoke, a create-if-absent
transaction (also guarded by the "ran alone" mark), transactions guarded by the leader
key's create revision, and a get. Request bodies and answers are built and read by pure
functions.

Why hand-written and not a library: etcd3gw (the maintained JSON-gateway client) pulls
in requests, futurist and pbr, and hides the per-call timeout we need short (the caller
must learn within a fraction of the lease that etcd is unreachable); python-etcd3 is
gRPC and unmaintained. The gateway protocol for these calls is five small JSON shapes.

Public API:
    Gateway(endpoint, timeout=1.0)   endpoint "http://127.0.0.1:2379"
        .grant(ttl) -> (lease id, granted ttl)
        .keepalive(lease) -> remaining ttl (0: the lease is gone in etcd)
        .revoke(lease)
        .create(key, value, lease) -> Held(won, create_revision, value, lease, mod_revision)
        .campaign(key, value, lease, mark, mark_mod) -> Held   create only if `mark` is
                                  absent (mark_mod 0) or unchanged (its mod revision)
        .put_if_leader(key, value, leader, epoch) -> bool     only while `leader`'s create
        .delete_if_leader(key, leader, epoch) -> bool         revision equals `epoch`
        .get(key) -> Held | None      .delete(key) -> count
    EtcdUnavailable (ConnectionError): etcd could not be reached or answered garbage
"""
from __future__ import annotations

import base64
import json
import socket
from typing import Any, NamedTuple


class EtcdUnavailable(ConnectionError):
    """etcd did not answer (down, paused, unreachable) or answered something unusable."""


class Held(NamedTuple):
    """Who holds a key: `won` says whether our transaction just created it."""
    won: bool
    create_revision: int
    value: bytes
    lease: int
    mod_revision: int = 0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(value: Any) -> int:
    """The gateway writes int64 fields as JSON strings and omits zero values."""
    return int(value or 0)


def create_body(key: bytes, value: bytes, lease: int) -> dict:
    """A transaction that puts `key` bound to `lease` only if the key does not exist
    (create revision 0), else reads it."""
    return {"compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value),
                                         "lease": str(lease)}}],
            "failure": [{"request_range": {"key": _b64(key)}}]}


def campaign_body(key: bytes, value: bytes, lease: int, mark: bytes, mark_mod: int) -> dict:
    """create_body, and also only if the mark key is absent (mark_mod 0) or still the
    version the candidate read (mod revision mark_mod): one atomic decision, so a mark
    written after the candidate looked cannot be missed. The failure branch reads both."""
    body = create_body(key, value, lease)
    body["compare"].append(
        {"key": _b64(mark), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        if not mark_mod else
        {"key": _b64(mark), "target": "MOD", "result": "EQUAL", "mod_revision": str(mark_mod)})
    body["failure"].append({"request_range": {"key": _b64(mark)}})
    return body


def guarded_body(leader: bytes, epoch: int, op: dict) -> dict:
    """`op` (a request_put or request_delete_range) only while `leader` is the key created
    at revision `epoch`: a deposed leader's write changes nothing."""
    return {"compare": [{"key": _b64(leader), "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(epoch)}],
            "success": [op], "failure": []}


def _kv(kv: dict) -> tuple[int, bytes, int, int]:
    return (_int(kv.get("create_revision")), base64.b64decode(kv.get("value") or ""),
            _int(kv.get("lease")), _int(kv.get("mod_revision")))


def parse_create(answer: dict, value: bytes, lease: int) -> Held:
    """The answer of create_body's transaction. On success the key's create revision is
    the revision of the transaction itself (etcd's header revision)."""
    if answer.get("succeeded"):
        return Held(True, _int(answer["header"]["revision"]), value, lease)
    for response in answer.get("responses") or []:
        kvs = (response.get("response_range") or {}).get("kvs") or []
        if kvs:
            return Held(False, *_kv(kvs[0]))
    # the key vanished between compare and range cannot happen inside one transaction;
    # an empty failure branch means a malformed answer
    raise EtcdUnavailable(f"etcd transaction answer without the key: {answer!r}")


def parse_campaign(answer: dict, key: bytes, value: bytes, lease: int) -> Held:
    """campaign_body's answer: won, or the leader key's holder; a failure with the leader
    key absent (the mark was set or changed) is Held(False, 0, b"", 0)."""
    if answer.get("succeeded"):
        return Held(True, _int(answer["header"]["revision"]), value, lease)
    for response in answer.get("responses") or []:
        for kv in (response.get("response_range") or {}).get("kvs") or []:
            if base64.b64decode(kv.get("key") or "") == key:
                return Held(False, *_kv(kv))
    return Held(False, 0, b"", 0)


def parse_get(answer: dict) -> Held | None:
    kvs = answer.get("kvs") or []
    return Held(False, *_kv(kvs[0])) if kvs else None


def parse_keepalive(answer: dict) -> int:
    """Remaining TTL; the gateway streams `{"result": {...}}` objects, one per request,
    and a lease that no longer exists answers TTL 0 (omitted) or an error."""
    if "error" in answer:
        return 0
    return _int((answer.get("result") or answer).get("TTL"))


class Gateway:
    def __init__(self, endpoint: str, timeout: float = 1.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def _post(self, path: str, body: dict) -> dict:
        # imported here: urllib.request (http.client, email, ssl) is ~15 % of the MDS's
        # start-up imports, and only an MDS with [ha] etcd set ever posts
        import urllib.error
        import urllib.request
        request = urllib.request.Request(
            f"{self.endpoint}/v3/{path}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except OSError:
                raise EtcdUnavailable(f"etcd {path}: HTTP {exc.code}") from exc
            if exc.code >= 500 and b"lease not found" not in raw:
                raise EtcdUnavailable(f"etcd {path}: HTTP {exc.code} {raw[:200]!r}") from exc
        except (urllib.error.URLError, OSError, socket.timeout) as exc:
            raise EtcdUnavailable(f"etcd at {self.endpoint} unreachable: {exc}") from exc
        try:
            # a streamed answer (keepalive) may hold several objects; the first is ours
            text = raw.decode().strip().splitlines()[0] if raw.strip() else "{}"
            answer = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EtcdUnavailable(f"etcd {path}: unreadable answer {raw[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise EtcdUnavailable(f"etcd {path}: unexpected answer {answer!r}")
        return answer

    def grant(self, ttl: int) -> tuple[int, int]:
        answer = self._post("lease/grant", {"TTL": str(ttl)})
        lease = _int(answer.get("ID"))
        if not lease:
            raise EtcdUnavailable(f"etcd refused a lease: {answer!r}")
        return lease, _int(answer.get("TTL")) or ttl

    def keepalive(self, lease: int) -> int:
        return parse_keepalive(self._post("lease/keepalive", {"ID": str(lease)}))

    def revoke(self, lease: int) -> None:
        self._post("lease/revoke", {"ID": str(lease)})

    def create(self, key: bytes, value: bytes, lease: int) -> Held:
        return parse_create(self._post("kv/txn", create_body(key, value, lease)), value, lease)

    def campaign(self, key: bytes, value: bytes, lease: int, mark: bytes,
                 mark_mod: int) -> Held:
        return parse_campaign(self._post("kv/txn", campaign_body(key, value, lease, mark,
                                                                 mark_mod)), key, value, lease)

    def put_if_leader(self, key: bytes, value: bytes, leader: bytes, epoch: int) -> bool:
        op = {"request_put": {"key": _b64(key), "value": _b64(value)}}
        return bool(self._post("kv/txn", guarded_body(leader, epoch, op)).get("succeeded"))

    def delete_if_leader(self, key: bytes, leader: bytes, epoch: int) -> bool:
        op = {"request_delete_range": {"key": _b64(key)}}
        return bool(self._post("kv/txn", guarded_body(leader, epoch, op)).get("succeeded"))

    def delete(self, key: bytes) -> int:
        """Unguarded: how many keys went (the operator's `--drop-alone-mark`)."""
        return _int(self._post("kv/deleterange", {"key": _b64(key)}).get("deleted"))

    def get(self, key: bytes) -> Held | None:
        return parse_get(self._post("kv/range", {"key": _b64(key)}))
