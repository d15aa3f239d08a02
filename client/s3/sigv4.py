"""AWS Signature Version 4, server side and sans-IO: the header form, the query form
(presigned URLs) and the per-chunk signatures of STREAMING-AWS4-HMAC-SHA256-PAYLOAD. The
clock (`now`) and the access-key lookup come in as arguments; nothing here does I/O.
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import quote, unquote

from .errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = 15 * 60                   # seconds, as S3
MAX_PRESIGN = 7 * 24 * 3600          # X-Amz-Expires at most a week, as S3
UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_CREDENTIAL = re.compile(r"([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
_HEX64 = re.compile(r"[0-9a-f]{64}")

Lookup = Callable[[str], "tuple[str, str] | None"]     # access key -> (secret, user)


@dataclass(frozen=True)
class Auth:
    """Who signed the request, and what the body must then satisfy."""
    access_key: str
    user: str
    payload: str               # a hex SHA-256, UNSIGNED-PAYLOAD or a STREAMING-* mode
    signing_key: bytes
    amz_date: str
    scope: str
    signature: str             # the seed signature of a chunked body

    def chunk_signature(self, previous: str, chunk_sha256: str) -> str:
        to_sign = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope,
                             previous, EMPTY_SHA256, chunk_sha256])
        return hmac.new(self.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()

    def trailer_signature(self, previous: str, trailer_sha256: str) -> str:
        """The x-amz-trailer-signature: chained after the last (empty) chunk's signature,
        over the SHA-256 of the canonical trailer lines."""
        to_sign = "\n".join(["AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope,
                             previous, trailer_sha256])
        return hmac.new(self.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()


def parse_query(query_string: bytes) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, percent-decoded; a literal "+" stays a "+"
    (SigV4 clients send a space as %20)."""
    pairs = []
    for part in query_string.decode("latin-1").split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def _encode(s: str, safe: str = "-_.~") -> str:
    return quote(s, safe=safe)


def canonical_request(method: str, raw_path: bytes, query: list[tuple[str, str]],
                      headers: Mapping[str, str], signed: list[str], payload: str) -> str:
    path = _encode(unquote(raw_path.decode("latin-1")), safe="-_.~/") or "/"
    q = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in
                 sorted((k, v) for k, v in query if k != "X-Amz-Signature"))
    lines = []
    for name in signed:
        value = headers.get(name)
        if value is None:
            raise S3Error("SignatureDoesNotMatch", f"signed header {name!r} is missing")
        lines.append(f"{name}:{' '.join(value.split())}\n")
    return "\n".join([method, path, q, "".join(lines), ";".join(signed), payload])


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _epoch(amz_date: str) -> float:
    try:
        return calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise S3Error("AccessDenied", f"bad X-Amz-Date {amz_date!r}") from None


def authenticate(method: str, raw_path: bytes, query_string: bytes,
                 headers: Mapping[str, str], lookup: Lookup, now: float) -> Auth:
    """Verify a request's signature (header or presigned form); raises S3Error
    (AccessDenied for anonymous requests: there is no anonymous access)."""
    query = parse_query(query_string)
    qd = dict(query)
    authz = headers.get("authorization", "")
    if authz:
        if not authz.startswith(ALGORITHM + " "):
            raise S3Error("AccessDenied", "only AWS4-HMAC-SHA256 (SigV4) signatures are "
                          "accepted")
        fields = {}
        for item in authz[len(ALGORITHM) + 1:].split(","):
            k, _, v = item.strip().partition("=")
            fields[k] = v
        credential, signed_s, signature = (fields.get("Credential", ""),
                                           fields.get("SignedHeaders", ""),
                                           fields.get("Signature", ""))
        amz_date = headers.get("x-amz-date", "")
        payload = headers.get("x-amz-content-sha256", "")
        if not payload:
            raise S3Error("InvalidRequest", "Missing required header for this request: "
                          "x-amz-content-sha256")
        if payload not in (UNSIGNED, STREAMING_SIGNED, STREAMING_UNSIGNED_TRAILER,
                           STREAMING_SIGNED_TRAILER) and not _HEX64.fullmatch(payload):
            raise S3Error("InvalidArgument", "bad x-amz-content-sha256")
        expires = None
    elif "X-Amz-Signature" in qd:
        if qd.get("X-Amz-Algorithm") != ALGORITHM:
            raise S3Error("AccessDenied", "only AWS4-HMAC-SHA256 signatures are accepted")
        credential, signed_s, signature = (qd.get("X-Amz-Credential", ""),
                                           qd.get("X-Amz-SignedHeaders", ""),
                                           qd["X-Amz-Signature"])
        amz_date = qd.get("X-Amz-Date", "")
        payload = qd.get("X-Amz-Content-Sha256", UNSIGNED)
        try:
            expires = int(qd.get("X-Amz-Expires", ""))
        except ValueError:
            raise S3Error("AccessDenied", "X-Amz-Expires must be a number") from None
        if not 0 < expires <= MAX_PRESIGN:
            raise S3Error("AccessDenied", "X-Amz-Expires must be between 1 and 604800")
    elif "AWSAccessKeyId" in qd or authz.startswith("AWS "):
        raise S3Error("AccessDenied", "Signature Version 2 is not supported: sign with "
                      "SigV4 (boto3: Config(signature_version='s3v4'))")
    else:
        raise S3Error("AccessDenied", "anonymous access is not allowed: sign the request")
    m = _CREDENTIAL.fullmatch(credential)
    if not m:
        raise S3Error("AccessDenied", "malformed credential")
    access_key, date, region, service = m.groups()
    found = lookup(access_key)
    if found is None:
        raise S3Error("InvalidAccessKeyId")
    secret, user = found
    when = _epoch(amz_date)
    if not amz_date.startswith(date):
        raise S3Error("SignatureDoesNotMatch", "the credential date is not the request date")
    if expires is None:
        if abs(now - when) > MAX_SKEW:
            raise S3Error("RequestTimeTooSkewed", RequestTime=amz_date,
                          ServerTime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                          MaxAllowedSkewMilliseconds=str(MAX_SKEW * 1000))
    else:
        if when - now > MAX_SKEW:
            raise S3Error("AccessDenied", "Request is not valid yet")
        if now > when + expires:
            raise S3Error("AccessDenied", "Request has expired", Expires=str(expires))
    signed = signed_s.split(";") if signed_s else []
    if "host" not in signed or signed != sorted(signed):
        raise S3Error("AccessDenied", "SignedHeaders must include host, in sorted order")
    canonical = canonical_request(method, raw_path, query, headers, signed, payload)
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = signing_key(secret, date, region, service)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise S3Error("SignatureDoesNotMatch", AWSAccessKeyId=access_key,
                      StringToSign=to_sign, CanonicalRequest=canonical)
    return Auth(access_key, user, payload, key, amz_date, scope, signature)
