"""Request bodies, sans-IO: `BodyDecoder.feed(bytes) -> [payload bytes]` and `.end()`.
It undoes aws-chunked framing (signed chunks, with or without a signed trailer, or unsigned
chunks with a checksum trailer), checks every chunk signature and the trailer signature, the announced length (IncompleteBody), x-amz-content-sha256,
Content-MD5 and x-amz-checksum-* - all before the caller commits anything.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import zlib
from typing import Any, Callable, Mapping, Protocol

import crc32c

from . import sigv4
from .errors import S3Error

MAX_LINE = 4096          # a chunk header or trailer line; longer means a hostile peer
_HEADER = re.compile(rb"([0-9a-fA-F]{1,16})(?:;chunk-signature=([0-9a-f]{64}))?")


class Hasher(Protocol):
    """What a body checksum needs of hashlib's objects and of _Crc."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    def __init__(self, fn: Any) -> None:
        self.fn, self.value = fn, 0

    def update(self, data: bytes) -> None:
        self.value = self.fn(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUMS: dict[str, Callable[[], Hasher]] = {
    "crc32": lambda: _Crc(zlib.crc32),
    "crc32c": lambda: _Crc(crc32c.crc32c),
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}


def checksum_of(algorithm: str) -> Hasher:
    try:
        return CHECKSUMS[algorithm.lower()]()
    except KeyError:
        raise S3Error("InvalidArgument", f"checksum algorithm {algorithm!r} is not "
                      f"supported (use {', '.join(sorted(CHECKSUMS))})") from None


class BodyDecoder:
    """Decodes and verifies one request body; see the module docstring."""

    def __init__(self, headers: Mapping[str, str], auth: sigv4.Auth | None) -> None:
        payload = auth.payload if auth else sigv4.UNSIGNED
        self.chunked = payload.startswith("STREAMING-")
        signed = payload in (sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER)
        self.auth = auth if signed else None
        # signed trailer: the trailer lines are signed too, chained after the last chunk
        self.signed_trailer = auth is not None and payload == sigv4.STREAMING_SIGNED_TRAILER
        self._trailers: list[tuple[str, str]] = []
        self._trailer_verified = False
        self.previous = auth.signature if auth else ""
        self.sha256 = hashlib.sha256() if sigv4._HEX64.fullmatch(payload) else None
        self.expected_sha256 = payload if self.sha256 else None
        self.md5_header = headers.get("content-md5")
        try:
            length = headers.get("x-amz-decoded-content-length" if self.chunked
                                 else "content-length")
            self.length = int(length) if length is not None else None
        except ValueError:
            raise S3Error("InvalidArgument", "bad content length") from None
        if self.length is None and self.chunked:
            raise S3Error("MissingContentLength", "x-amz-decoded-content-length is missing")
        # the checksum named by a header, its value in that header or in the trailer
        self.checksum_name = None
        self.checksum_value: str | None = None
        for name, value in headers.items():
            if name.startswith("x-amz-checksum-") and name != "x-amz-checksum-algorithm" \
                    and name != "x-amz-checksum-type":
                self.checksum_name, self.checksum_value = name, value
        trailer = headers.get("x-amz-trailer", "").strip().lower()
        if trailer:
            if not trailer.startswith("x-amz-checksum-"):
                raise S3Error("InvalidArgument", f"unsupported trailer {trailer!r}")
            self.checksum_name = trailer
        self.checksum = (checksum_of(self.checksum_name[len("x-amz-checksum-"):])
                         if self.checksum_name else None)
        # the store hashes what it writes for the ETag anyway: MD5 here only when asked
        self.md5 = hashlib.md5() if self.md5_header is not None else None
        self.total = 0
        self._buf = bytearray()
        self._state = "header" if self.chunked else "plain"
        self._left = 0

    # -- feeding -------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[bytes]:
        if self._state == "plain":
            self._count(data)
            return [data] if data else []
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._state == "data":
                if not self._buf:
                    break
                take = bytes(self._buf[:self._left])
                del self._buf[:len(take)]
                self._left -= len(take)
                self._chunk_hash.update(take)
                self._count(take)
                out.append(take)
                if self._left == 0:
                    self._verify_chunk()
                    self._state = "crlf"
                continue
            if self._state == "done":
                if self._buf.strip(b"\r\n"):
                    raise S3Error("InvalidRequest", "data after the end of an aws-chunked body")
                self._buf.clear()
                break
            line = self._line()
            if line is None:
                break
            if self._state == "crlf":
                if line:
                    raise S3Error("IncompleteBody", "an aws-chunked chunk is longer than "
                                  "its header says")
                self._state = "header"
            elif self._state == "header":
                self._header(line)
            elif self._state == "trailer":
                self._trailer(line)
        return out

    def _line(self) -> bytes | None:
        i = self._buf.find(b"\r\n")
        if i < 0:
            if len(self._buf) > MAX_LINE:
                raise S3Error("InvalidRequest", "aws-chunked framing line too long")
            return None
        line = bytes(self._buf[:i])
        del self._buf[:i + 2]
        return line

    def _header(self, line: bytes) -> None:
        m = _HEADER.fullmatch(line)
        if not m:
            raise S3Error("InvalidRequest", "malformed aws-chunked chunk header")
        size, signature = int(m.group(1), 16), m.group(2)
        if self.auth is not None:
            if signature is None:
                raise S3Error("SignatureDoesNotMatch", "a chunk has no signature")
            self._signature = signature.decode()
        self._chunk_hash = hashlib.sha256()
        if size == 0:
            self._verify_chunk()
            # what follows the last chunk: trailer lines (unsigned form) or an empty line
            self._state = "trailer"
        else:
            self._left = size
            self._state = "data"

    def _verify_chunk(self) -> None:
        if self.auth is None:
            return
        expected = self.auth.chunk_signature(self.previous, self._chunk_hash.hexdigest())
        if not hmac.compare_digest(expected, self._signature):
            raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match")
        self.previous = expected

    def _trailer(self, line: bytes) -> None:
        if not line:
            if self.signed_trailer and not self._trailer_verified:
                raise S3Error("SignatureDoesNotMatch", "the trailer has no "
                              "x-amz-trailer-signature")
            self._state = "done"
            return
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip()
        if self.signed_trailer:
            if self._trailer_verified:
                raise S3Error("InvalidRequest", "a trailer line after x-amz-trailer-signature")
            if name == "x-amz-trailer-signature":
                self._verify_trailer(value)
                return
            self._trailers.append((name, value))
        if name == self.checksum_name:
            self.checksum_value = value

    def _verify_trailer(self, signature: str) -> None:
        assert self.auth is not None
        # the canonical trailer is each "name:value\n", in the order sent (the SDKs send
        # them sorted, as x-amz-trailer names them)
        canonical = "".join(f"{n}:{v}\n" for n, v in self._trailers)
        expected = self.auth.trailer_signature(
            self.previous, hashlib.sha256(canonical.encode("latin-1")).hexdigest())
        if not hmac.compare_digest(expected, signature):
            raise S3Error("SignatureDoesNotMatch", "the trailer signature does not match")
        self._trailer_verified = True

    def _count(self, data: bytes) -> None:
        self.total += len(data)
        if self.length is not None and self.total > self.length:
            raise S3Error("InvalidRequest", "the body is longer than its announced length")
        if self.md5 is not None:
            self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        if self.checksum is not None:
            self.checksum.update(data)

    # -- the end -------------------------------------------------------------------------

    def end(self) -> None:
        """The body is over: raise unless it was complete and every digest matches."""
        if self.chunked and not (self._state == "done" or self._state == "trailer"
                                 and self.checksum_value is not None):
            raise S3Error("IncompleteBody", "the aws-chunked body ended before its last chunk")
        if self.signed_trailer and not self._trailer_verified:
            raise S3Error("SignatureDoesNotMatch", "the trailer has no x-amz-trailer-signature")
        if self.length is not None and self.total != self.length:
            raise S3Error("IncompleteBody")
        if self.sha256 is not None and self.sha256.hexdigest() != self.expected_sha256:
            raise S3Error("XAmzContentSHA256Mismatch")
        if self.md5_header is not None:
            try:
                want = base64.b64decode(self.md5_header, validate=True)
            except ValueError:
                raise S3Error("InvalidDigest") from None
            if self.md5 is None or want != self.md5.digest():
                raise S3Error("BadDigest")
        if self.checksum is not None:
            if self.checksum_value is None:
                raise S3Error("InvalidRequest", f"the {self.checksum_name} trailer is missing")
            got = base64.b64encode(self.checksum.digest()).decode()
            if got != self.checksum_value:
                raise S3Error("BadDigest", f"The {self.checksum_name} you specified did "
                              "not match the calculated checksum.")
