"""Wire vocabulary: envelopes, strict headers, and the error-code <-> OSError mapping."""
from __future__ import annotations

import errno

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from broker import protocol as P


@given(cmd=st.integers(1, 5), name=st.binary(max_size=255), rid=st.binary(max_size=255),
       header=st.binary(max_size=2000))
def test_envelope_round_trip(cmd, name, rid, header):
    assert P.unpack(P.pack(cmd, name, rid, header)) == (cmd, name, rid, header)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_unpack_never_raises_anything_but_protocol_error(data):
    try:
        cmd, name, rid, header = P.unpack(data)
    except P.ProtocolError:
        return
    assert data.startswith(P.TAG)
    assert len(name) + len(rid) + len(header) <= len(data)


def test_other_version_is_named_in_the_error():
    with pytest.raises(P.ProtocolError, match="version"):
        P.unpack(b"AEGIS/9\x04")
    with pytest.raises(P.ProtocolError, match="bad protocol tag"):
        P.unpack(b"GET / HTTP/1.1")


def test_heartbeat_and_disconnect_are_bare():
    assert P.unpack(P.HEARTBEAT_ENV)[0] == P.HEARTBEAT
    assert P.unpack(P.DISCONNECT_ENV)[0] == P.DISCONNECT


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decode_header_rejects_garbage_with_one_error_type(data):
    try:
        value = P.decode_header(data)
    except P.ProtocolError:
        return
    assert isinstance(value, dict)


@pytest.mark.parametrize("data", [
    msgpack.packb([1, 2]), msgpack.packb("str"), msgpack.packb({1: 2}),
    msgpack.packb({"a": 1}) + b"extra", b"", b"\xc1", b"\xdf\xff\xff\xff\xff",
])
def test_malformed_headers(data):
    with pytest.raises(P.ProtocolError):
        P.decode_header(data)


def test_header_size_limit():
    data = P.encode_header({"x": "a" * 100})
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.decode_header(data, max_size=50)


def test_encode_refuses_non_maps_and_unencodable():
    with pytest.raises(P.ProtocolError):
        P.encode_header([1])
    with pytest.raises(P.ProtocolError):
        P.encode_header({"x": object()})


@pytest.mark.parametrize("code,cls", [
    ("ENOENT", FileNotFoundError), ("EEXIST", FileExistsError),
    ("ENOTDIR", NotADirectoryError), ("EISDIR", IsADirectoryError),
    ("EACCES", PermissionError), ("ECONNREFUSED", ConnectionRefusedError),
    ("ECONNRESET", ConnectionResetError), ("ETIMEDOUT", TimeoutError),
    ("EPROTO", P.ProtocolError),
])
def test_error_codes_map_to_oserror_subclasses_both_ways(code, cls):
    exc = P.error_to_exception(code, "why")
    assert isinstance(exc, cls) and exc.errno == getattr(errno, code)
    assert P.exception_to_error(exc)[0] == code


def test_reply_parsing():
    assert P.parse_reply(P.ok_header({"a": 1})) == {"a": 1}
    with pytest.raises(FileNotFoundError, match="no such file: /x"):
        P.parse_reply(P.error_header("ENOENT", "no such file: /x"))
    exc = P.error_to_exception("EWHATEVER", "odd")
    assert exc.errno == errno.EIO and "EWHATEVER" in str(exc)
    with pytest.raises(P.ProtocolError):
        P.parse_reply(P.encode_header({"neither": 1}))


def test_unexpected_exceptions_do_not_leak_internals():
    code, message = P.exception_to_error(KeyError("secret internal detail"))
    assert code == "EIO" and "secret" not in message
    code, message = P.exception_to_error(FileNotFoundError(errno.ENOENT, "No such file", "/a/b"))
    assert code == "ENOENT" and "/a/b" in message
