"""The socket layer: the only code that sends or receives multipart messages.

Routing frames (tag, command, names, ids, header) are small and received as bytes;
everything after them - payload - is received with copy=False and handed on as
zmq.Frame objects or memoryviews, and sent with copy=False, so bulk data is never copied
by Python on its way through.
"""
from __future__ import annotations

import struct

import zmq

# Plain ints: pyzmq's enum flags cost ~1 us per `|` on the hot path.
_RCVMORE = int(zmq.RCVMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)


def recv(sock: zmq.Socket, flags: int = 0, routed: bool = False) -> tuple[bytes, bytes, list]:
    """Receive one message as (identity, envelope, payload frames as zmq.Frame).

    `routed` means a ROUTER socket, whose first frame is the peer identity (else identity
    is b""). A message with no envelope frame gets envelope b"". Raises zmq.Again under
    NOBLOCK when nothing is waiting.
    """
    getsockopt = sock.getsockopt
    ident = b""
    env = sock.recv(flags)
    if routed:
        ident, env = env, (sock.recv() if getsockopt(_RCVMORE) else b"")
    if not getsockopt(_RCVMORE):
        return ident, env, []
    payload = []
    while True:
        payload.append(sock.recv(copy=False))
        if not getsockopt(_RCVMORE):
            return ident, env, payload


def recv_authenticated(sock: zmq.Socket, flags: int = 0) -> tuple[bytes, str, bytes, list]:
    """A ROUTER message as (identity, ZAP User-Id, envelope, payload frames).

    The User-Id is what the broker's authenticator answered for this connection's CURVE
    key; ZeroMQ attaches it to every frame (taken from the identity frame here), so it is
    never anything the peer wrote. Only for CURVE sockets: a NULL socket has none.
    """
    first = sock.recv(flags, copy=False)
    # pyzmq types Frame.get as int | str for any option name; "User-Id" is a string one
    user: str = first.get("User-Id")  # type: ignore[assignment]
    getsockopt = sock.getsockopt
    env = sock.recv() if getsockopt(_RCVMORE) else b""
    if not getsockopt(_RCVMORE):
        return first.bytes, user, env, []
    payload = []
    while True:
        payload.append(sock.recv(copy=False))
        if not getsockopt(_RCVMORE):
            return first.bytes, user, env, payload


def readable(sock: zmq.Socket) -> bool:
    """Another message is waiting (cheaper than a recv that raises zmq.Again)."""
    # getsockopt is typed int | bytes for every option; ZMQ_EVENTS is an int bit mask
    return bool(sock.getsockopt(_EVENTS) & _POLLIN)  # type: ignore[operator]


def send(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send frames (bytes, memoryviews or zmq.Frame) without copying large buffers."""
    send_one = sock.send
    more = int(flags) | _SNDMORE
    for i in range(len(frames) - 1):
        send_one(frames[i], more, copy=False)
    send_one(frames[-1], int(flags), copy=False)


def payload_views(payload: list) -> list[memoryview]:
    """Frames as memoryviews; a view keeps its frame (and the received bytes) alive."""
    return [f.buffer if isinstance(f, zmq.Frame) else memoryview(f) for f in payload]


def configure(sock: zmq.Socket, *, hwm: int = 1000, max_message_size: int | None = None) -> None:
    """Common options: no lingering on close, bounded queues, a frame-size limit."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if max_message_size:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)


# The broker refused our CURVE key (ZAP said no), or the handshake failed otherwise.
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def monitor(sock: zmq.Socket) -> zmq.Socket:
    """A PAIR socket that reports the connection coming up or going down, and a failed
    CURVE handshake (a refused key)."""
    events = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
    for event in HANDSHAKE_FAILED:
        events |= event
    return sock.get_monitor_socket(events)


def monitor_events(mon: zmq.Socket) -> list[int]:
    """Drain the monitor socket; return the event numbers seen.

    An event is two frames, the first 16-bit event number then 32-bit value (libzmq's
    zmq_socket_monitor). Parsed here, not by zmq.utils.monitor: that module imports
    zmq.asyncio, hence asyncio, which would double a CLI call's start-up."""
    seen: list[int] = []
    while True:
        try:
            frames = mon.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return seen
        if len(frames) == 2 and len(frames[0]) == 6:
            seen.append(struct.unpack_from("=H", frames[0])[0])
