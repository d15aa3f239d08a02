"""The AegisFS wire vocabulary: protocol tag, commands, frame layouts, headers, error codes.

Pure: no sockets. Everything that decides what a frame means, and the one mapping between
error codes on the wire and Python's OSError subclasses, lives here.

Every message is one *envelope* frame followed by payload frames (a ROUTER adds/strips the
peer identity in front). The envelope packs the routing fields and the msgpack header:

    envelope = TAG (7 bytes) | command (1) | len (1) | name | len (1) | rid | header (rest)

    client -> broker   REQUEST  name=service  rid  header   + payload frames
    broker -> client   REPLY    name=service  rid  header   + payload frames
    broker -> worker   REQUEST  name=route    rid  caller | header   + payload frames
    worker -> broker   REPLY    name=route    rid  header   + payload frames
    worker -> broker   READY    name=service       header {"capacity": int, ...}
    member -> broker   MEMBER   name=service it acts for ("mds", "dn.<id>")
    member -> broker   REQUEST / broker -> member REPLY: as client <-> broker
    either way         HEARTBEAT, DISCONNECT (no name, rid or header)

`route` is opaque to workers (a side byte and the caller's ROUTER identity); they echo it.
`caller` = class (1 byte, CALLER_CLASSES index + 1) | len (1) | caller id (ASCII): who
sent the request, stamped by the broker and never taken from the sender's own words.
Members are the cluster's own processes (MDS, DataNodes) making outbound calls: they
connect to the worker endpoint, declare once per connection which member they act for,
and then send REQUESTs like a client.

Why one frame and not five: pyzmq spends 4-7 us of Python per frame on this machine, so
the five-frame layout of MDP cost the broker more than all its routing logic. The header is
a small msgpack map; bulk data travels only as payload frames, never inside msgpack.
A reply header is {"ok": result-map} or {"err": [code, message]}, code an errno name.
"""
from __future__ import annotations

import errno
from typing import Any, Mapping

import msgpack

TAG = b"AEGIS/2"             # protocol name and version; a peer of another version is refused
TAG_PREFIX = b"AEGIS/"

READY = 1
REQUEST = 2
REPLY = 3
HEARTBEAT = 4
DISCONNECT = 5
MEMBER = 6

COMMAND_NAMES = {READY: "READY", REQUEST: "REQUEST", REPLY: "REPLY",
                 HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT", MEMBER: "MEMBER"}
CLIENT_COMMANDS = frozenset({REQUEST})
WORKER_COMMANDS = frozenset({READY, REPLY, HEARTBEAT, DISCONNECT, MEMBER, REQUEST})

# Caller classes, stamped by the broker on every request it forwards (callers.caller_of).
CALLER_CLIENT = "client"
CALLER_DATANODE = "datanode"
CALLER_MDS = "mds"
CALLER_BROKER = "broker"       # the broker itself (its own service)
CALLER_CLASSES = (CALLER_CLIENT, CALLER_DATANODE, CALLER_MDS, CALLER_BROKER)
MAX_CALLER_ID_LEN = 128

BROKER_SERVICE = "broker"    # answered by the broker itself: ping, services
MAX_SERVICE_LEN = 128
MAX_RID_LEN = 64
DEFAULT_MAX_HEADER = 8 * 1024 * 1024   # a commit of ~120k blocks, an ls of ~150k entries

# The broker and helpers refer to these names; any errno name is a valid code.
# A client's connection to a broker carries ZMTP heartbeats (libzmq's PING/PONG, answered
# by the peer's I/O thread, so a busy broker answers and a stopped or wedged host does not):
# a PING every BROKER_PING_IVL s; no traffic for BROKER_DEAD_AFTER s closes the connection,
# and its requests go again through another broker (broker/client.py).
BROKER_PING_IVL = 0.5
BROKER_DEAD_AFTER = 2.0

E_NO_WORKER = "ECONNREFUSED"    # no live worker for the service: fail over at once
E_WORKER_LOST = "ECONNRESET"    # the worker died with the request in flight
E_BUSY = "EBUSY"                # the service's queue is full
E_PROTOCOL = "EPROTO"           # a malformed message
E_TIMEOUT = "ETIMEDOUT"


class ProtocolError(OSError):
    """A message that breaks the wire protocol: bad tag, frames, msgpack or header fields."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


# ---------------------------------------------------------------------------------------
# Headers

def encode_header(header: Mapping[str, Any]) -> bytes:
    """Pack a header map; refuses anything that is not a str-keyed map."""
    if not isinstance(header, Mapping):
        raise ProtocolError(f"header must be a map, not {type(header).__name__}")
    try:
        return msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"header cannot be encoded: {exc}") from exc


def decode_header(data: bytes | memoryview,
                  max_size: int = DEFAULT_MAX_HEADER) -> dict[str, Any]:
    """Strictly unpack a header: one msgpack map with str keys, at most `max_size` bytes.

    Anything else raises ProtocolError (never msgpack's own exceptions). Fields are checked
    by the one schema checker, broker.service.
    """
    if len(data) > max_size:
        raise ProtocolError(f"header of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types (ExtraData, ValueError, ...)
        raise ProtocolError(f"header is not valid msgpack: {exc.__class__.__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"header must be a map, not {type(value).__name__}")
    return value


def ok_header(result: Mapping[str, Any] | None = None) -> bytes:
    return encode_header({"ok": dict(result or {})})


def error_header(code: str, message: str) -> bytes:
    return encode_header({"err": [code, message]})


def parse_reply(data: bytes | memoryview, max_size: int = DEFAULT_MAX_HEADER) -> dict[str, Any]:
    """Return a reply's result map, or raise the OSError subclass its error code maps to."""
    header = decode_header(data, max_size)
    if "ok" in header and isinstance(header["ok"], dict):
        return header["ok"]
    err = header.get("err")
    if isinstance(err, list) and len(err) == 2 and all(isinstance(x, str) for x in err):
        raise error_to_exception(err[0], err[1])
    raise ProtocolError("reply header has neither 'ok' nor a valid 'err'")


# ---------------------------------------------------------------------------------------
# Error codes <-> exceptions: the one mapping on each side.

def error_to_exception(code: str, message: str) -> OSError:
    """OSError(errno, msg) picks the subclass itself: ENOENT -> FileNotFoundError, ..."""
    number = getattr(errno, code, None) if code.startswith("E") else None
    if not isinstance(number, int):
        return OSError(errno.EIO, f"{message} (unknown error code {code})")
    if code == "EPROTO":
        return ProtocolError(message)
    return OSError(number, message)


def exception_to_error(exc: BaseException) -> tuple[str, str]:
    """(code, message) for a reply. Unknown exceptions become EIO without internals."""
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        message = exc.strerror or str(exc)
        if exc.filename is not None and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        return errno.errorcode[exc.errno or 0], message
    if isinstance(exc, TimeoutError):
        return E_TIMEOUT, str(exc) or "timed out"
    return "EIO", f"internal error ({exc.__class__.__name__})"


def item_ok(result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One entry of a batched reply's result list (same shape as a reply header)."""
    return {"ok": dict(result or {})}


def item_error(exc: BaseException) -> dict[str, Any]:
    return {"err": list(exception_to_error(exc))}


def item_result(item: Any) -> dict[str, Any]:
    """The result map of one batched entry, or raise the OSError its error code maps to."""
    if isinstance(item, dict):
        if isinstance(item.get("ok"), dict):
            return item["ok"]
        err = item.get("err")
        if isinstance(err, list) and len(err) == 2 and all(isinstance(x, str) for x in err):
            raise error_to_exception(err[0], err[1])
    raise ProtocolError("a batched result has neither 'ok' nor a valid 'err'")


# ---------------------------------------------------------------------------------------
# Frame builders and checks shared by the broker and the helpers.

_TAG_LEN = len(TAG)


def pack(cmd: int, name: bytes = b"", rid: bytes = b"", header: bytes = b"",
         caller: bytes = b"") -> bytes:
    """Build an envelope frame. `name` and `rid` must each be at most 255 bytes; `caller`
    (from `caller_field`) goes only on broker -> worker REQUESTs."""
    return b"".join((TAG, bytes((cmd, len(name))), name, bytes((len(rid),)), rid, caller,
                     header))


def unpack(env: bytes) -> tuple[int, bytes, bytes, bytes]:
    """Split an envelope into (command, name, rid, header); ProtocolError if malformed."""
    if env[:_TAG_LEN] != TAG:
        if env.startswith(TAG_PREFIX):
            raise ProtocolError(f"protocol version {bytes(env[6:_TAG_LEN])!r} is not supported "
                                f"(this peer speaks {TAG.decode()})")
        raise ProtocolError("not an AegisFS message (bad protocol tag)")
    size = len(env)
    if size == _TAG_LEN + 1:          # HEARTBEAT / DISCONNECT
        return env[_TAG_LEN], b"", b"", b""
    if size < _TAG_LEN + 3:
        raise ProtocolError("truncated envelope")
    n = env[_TAG_LEN + 1]
    i = _TAG_LEN + 2 + n
    if i >= size:
        raise ProtocolError("truncated envelope (name)")
    r = env[i]
    j = i + 1 + r
    if j > size:
        raise ProtocolError("truncated envelope (request id)")
    return env[_TAG_LEN], env[_TAG_LEN + 2:i], env[i + 1:j], env[j:]


def caller_field(caller_class: str, caller_id: str) -> bytes:
    """The caller part of a broker -> worker REQUEST (built once per connection, not per
    request): class code, id length, id."""
    raw = caller_id.encode("ascii")
    if caller_class not in CALLER_CLASSES or not 0 < len(raw) <= MAX_CALLER_ID_LEN:
        raise ProtocolError(f"bad caller {caller_class!r}/{caller_id!r}")
    return bytes((CALLER_CLASSES.index(caller_class) + 1, len(raw))) + raw


def split_caller(rest: bytes) -> tuple[str, str, bytes]:
    """(caller class, caller id, header) from what `unpack` returned as a broker -> worker
    REQUEST's header; the inverse of pack(..., caller=caller_field(...))."""
    if len(rest) < 2:
        raise ProtocolError("truncated envelope (caller)")
    code, n = rest[0], rest[1]
    if not 0 < code <= len(CALLER_CLASSES) or not 0 < n <= MAX_CALLER_ID_LEN \
            or len(rest) < 2 + n:
        raise ProtocolError("malformed caller in the envelope")
    return CALLER_CLASSES[code - 1], decode_name(rest[2:2 + n], "caller id",
                                                 MAX_CALLER_ID_LEN), rest[2 + n:]


def member_envelope(member: str) -> bytes:
    return pack(MEMBER, member.encode("ascii"))


def decode_name(raw: bytes, what: str, limit: int = MAX_SERVICE_LEN) -> str:
    if not raw or len(raw) > limit:
        raise ProtocolError(f"{what} must be 1..{limit} bytes")
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} must be ASCII") from None
    if not name.isprintable() or " " in name:
        raise ProtocolError(f"{what} has unprintable characters")
    return name


def ready_envelope(service: str, info: Mapping[str, Any]) -> bytes:
    return pack(READY, service.encode("ascii"), b"", encode_header(info))


HEARTBEAT_ENV = TAG + bytes((HEARTBEAT,))
DISCONNECT_ENV = TAG + bytes((DISCONNECT,))
