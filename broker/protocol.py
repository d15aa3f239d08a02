"""The AegisFS wire vocabulary: protocol tag, commands, frame layouts, headers, error codes.

Pure: no sockets. Everything that decides what a frame means, and the one mapping between
error codes on the wire and Python's OSError subclasses, lives here.

Every message is one *envelope* frame followed by payload frames (a ROUTER adds/strips the
peer identity in front). The envelope packs the routing fields and the msgpack header:

    envelope = TAG (7 bytes) | command (1) | len (1) | name | len (1) | rid | header (rest)

    client -> broker   REQUEST  name=service  rid  header   + payload frames
    broker -> client   REPLY    name=service  rid  header   + payload frames
    broker -> worker   REQUEST  name=client   rid  header   + payload frames
    worker -> broker   REPLY    name=client   rid  header   + payload frames
    worker -> broker   READY    name=service       header {"capacity": int, ...}
    either way         HEARTBEAT, DISCONNECT (no name, rid or header)

Why one frame and not five: pyzmq spends 4-7 us of Python per frame on this machine, so
the five-frame layout of MDP cost the broker more than all its routing logic. The header is
a small msgpack map; bulk data travels only as payload frames, never inside msgpack.
A reply header is {"ok": result-map} or {"err": [code, message]}, code an errno name.
"""
from __future__ import annotations

import errno
from typing import Any, Mapping

import msgpack

TAG = b"AEGIS/1"             # protocol name and version; a peer of another version is refused
TAG_PREFIX = b"AEGIS/"

READY = 1
REQUEST = 2
REPLY = 3
HEARTBEAT = 4
DISCONNECT = 5

COMMAND_NAMES = {READY: "READY", REQUEST: "REQUEST", REPLY: "REPLY",
                 HEARTBEAT: "HEARTBEAT", DISCONNECT: "DISCONNECT"}
CLIENT_COMMANDS = frozenset({REQUEST})
WORKER_COMMANDS = frozenset({READY, REPLY, HEARTBEAT, DISCONNECT})

BROKER_SERVICE = "broker"    # answered by the broker itself: ping, services
MAX_SERVICE_LEN = 128
MAX_RID_LEN = 64
DEFAULT_MAX_HEADER = 8 * 1024 * 1024   # a commit of ~120k blocks, an ls of ~150k entries

# The broker and helpers refer to these names; any errno name is a valid code.
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


def decode_header(data: bytes | memoryview, max_size: int = DEFAULT_MAX_HEADER,
                  schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Strictly unpack a header: one msgpack map with str keys, at most `max_size` bytes.

    `schema` maps key -> type or tuple of types; a key ending in "?" is optional.
    Anything else raises ProtocolError (never msgpack's own exceptions).
    """
    if len(data) > max_size:
        raise ProtocolError(f"header of {len(data)} bytes exceeds the limit of {max_size}")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types (ExtraData, ValueError, ...)
        raise ProtocolError(f"header is not valid msgpack: {exc.__class__.__name__}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"header must be a map, not {type(value).__name__}")
    if schema:
        check_fields(value, schema)
    return value


def check_fields(header: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Check required/optional keys and their types; raise ProtocolError naming the key."""
    for spec, types in schema.items():
        optional = spec.endswith("?")
        key = spec[:-1] if optional else spec
        if key not in header:
            if optional:
                continue
            raise ProtocolError(f"header is missing required key {key!r}")
        value = header[key]
        # bool is an int subclass: never accept True as a size or count
        if isinstance(value, bool) and bool not in _as_tuple(types):
            raise ProtocolError(f"header key {key!r} has type bool")
        if value is None and optional:
            continue
        if not isinstance(value, types):
            raise ProtocolError(f"header key {key!r} has type {type(value).__name__}")


def _as_tuple(types: Any) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


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
        return errno.errorcode[exc.errno], message
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


def pack(cmd: int, name: bytes = b"", rid: bytes = b"", header: bytes = b"") -> bytes:
    """Build an envelope frame. `name` and `rid` must each be at most 255 bytes."""
    return b"".join((TAG, bytes((cmd, len(name))), name, bytes((len(rid),)), rid, header))


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
