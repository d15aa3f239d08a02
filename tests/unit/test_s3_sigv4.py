"""client/s3/sigv4.py and chunked.py without a network: requests signed by botocore are
accepted, any change to them is refused, the clock is injected."""
from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from client.s3 import naming, sigv4
from client.s3.chunked import BodyDecoder
from client.s3.errors import S3Error

KEYS = {"AKTEST": ("secret", "alice")}
lookup = KEYS.get


def signed(method="GET", url="http://127.0.0.1:9000/bkt/a%20b/c?list-type=2&prefix=x",
           body=b"", headers=None):
    req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    S3SigV4Auth(Credentials("AKTEST", "secret"), "s3", "us-east-1").add_auth(req)
    return req


def parts(req):
    from urllib.parse import urlsplit
    u = urlsplit(req.url)
    headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v)
               for k, v in req.headers.items()}
    headers["host"] = u.netloc
    return req.method, u.path.encode(), u.query.encode(), headers


def now_of(req) -> float:
    import calendar
    import time
    return calendar.timegm(time.strptime(req.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))


def refused(code, fn, *args):
    with pytest.raises(S3Error) as e:
        fn(*args)
    assert e.value.code == code, e.value
    return e.value


def test_header_signature_accepted_and_tampering_refused():
    req = signed()
    m, path, q, h = parts(req)
    auth = sigv4.authenticate(m, path, q, h, lookup, now_of(req))
    assert auth.user == "alice"
    refused("SignatureDoesNotMatch", sigv4.authenticate, "PUT", path, q, h, lookup,
            now_of(req))
    refused("SignatureDoesNotMatch", sigv4.authenticate, m, b"/bkt/other", q, h, lookup,
            now_of(req))
    refused("SignatureDoesNotMatch", sigv4.authenticate, m, path, q + b"&x=1", h, lookup,
            now_of(req))
    refused("InvalidAccessKeyId", sigv4.authenticate, m, path, q, h, {}.get, now_of(req))


def test_clock_skew_is_15_minutes():
    req = signed()
    m, path, q, h = parts(req)
    t = now_of(req)
    sigv4.authenticate(m, path, q, h, lookup, t + 14 * 60)
    refused("RequestTimeTooSkewed", sigv4.authenticate, m, path, q, h, lookup, t + 16 * 60)
    refused("RequestTimeTooSkewed", sigv4.authenticate, m, path, q, h, lookup, t - 16 * 60)


def test_presigned_query_form_and_expiry():
    req = AWSRequest(method="GET", url="http://127.0.0.1:9000/bkt/key", headers={})
    S3SigV4QueryAuth(Credentials("AKTEST", "secret"), "s3", "us-east-1",
                     expires=60).add_auth(req)
    m, path, q, h = parts(req)
    h = {"host": h["host"]}
    date = dict(sigv4.parse_query(q))["X-Amz-Date"]
    import calendar
    import time
    t = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    assert sigv4.authenticate(m, path, q, h, lookup, t + 59).user == "alice"
    assert "expired" in refused("AccessDenied", sigv4.authenticate, m, path, q, h, lookup,
                                t + 61).message


def test_anonymous_refused():
    e = refused("AccessDenied", sigv4.authenticate, "GET", b"/bkt", b"", {"host": "h"},
                lookup, 0.0)
    assert "anonymous" in e.message


def test_signed_chunks_verified():
    req = signed("PUT", "http://127.0.0.1:9000/bkt/k", headers={
        "x-amz-decoded-content-length": "5"})
    # re-sign with the streaming payload marker, as botocore's chunked signers do
    req.headers["X-Amz-Content-SHA256"] = sigv4.STREAMING_SIGNED
    m, path, q, h = parts(req)
    h["x-amz-content-sha256"] = sigv4.STREAMING_SIGNED
    # compute the seed signature the server will expect, then sign chunks with it
    canonical = sigv4.canonical_request(m, path, [], h, sorted(
        ["host", "x-amz-content-sha256", "x-amz-date", "x-amz-decoded-content-length"]),
        sigv4.STREAMING_SIGNED)
    date = h["x-amz-date"]
    scope = f"{date[:8]}/us-east-1/s3/aws4_request"
    key = sigv4.signing_key("secret", date[:8], "us-east-1", "s3")
    import hmac
    to_sign = "\n".join([sigv4.ALGORITHM, date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    seed = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = (f"AWS4-HMAC-SHA256 Credential=AKTEST/{scope}, SignedHeaders="
                          "host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length"
                          f", Signature={seed}")
    auth = sigv4.authenticate(m, path, q, h, lookup, now_of(req))
    s1 = auth.chunk_signature(seed, hashlib.sha256(b"hello").hexdigest())
    s2 = auth.chunk_signature(s1, sigv4.EMPTY_SHA256)
    body = (f"5;chunk-signature={s1}\r\n".encode() + b"hello\r\n" +
            f"0;chunk-signature={s2}\r\n\r\n".encode())
    d = BodyDecoder(h, auth)
    assert b"".join(d.feed(body[:7]) + d.feed(body[7:])) == b"hello"
    d.end()
    bad = BodyDecoder(h, auth)
    with pytest.raises(S3Error) as e:
        bad.feed(body.replace(b"hello", b"jello"))
    assert e.value.code == "SignatureDoesNotMatch"


def unsigned_trailer_headers(n):
    return {"x-amz-decoded-content-length": str(n), "x-amz-trailer": "x-amz-checksum-crc32"}


class _Auth:
    payload = sigv4.STREAMING_UNSIGNED_TRAILER
    signature = ""


def test_unsigned_trailer_checksum_and_incomplete_body():
    data = b"abc" * 100
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
    body = b"%x\r\n" % len(data) + data + b"\r\n0\r\nx-amz-checksum-crc32:" + crc + b"\r\n\r\n"
    d = BodyDecoder(unsigned_trailer_headers(len(data)), _Auth())
    got = b""
    for i in range(0, len(body), 7):          # fed in pieces smaller than a frame line
        got += b"".join(d.feed(body[i:i + 7]))
    d.end()
    assert got == data
    bad = BodyDecoder(unsigned_trailer_headers(len(data)), _Auth())
    bad.feed(body.replace(crc, b"AAAAAA=="))
    assert refused("BadDigest", bad.end)
    short = BodyDecoder(unsigned_trailer_headers(len(data) + 1), _Auth())
    short.feed(body)
    refused("IncompleteBody", short.end)
    cut = BodyDecoder(unsigned_trailer_headers(len(data)), _Auth())
    cut.feed(body[:50])
    refused("IncompleteBody", cut.end)


def test_plain_body_length_and_md5():
    d = BodyDecoder({"content-length": "3", "content-md5":
                     base64.b64encode(hashlib.md5(b"abc").digest()).decode()}, None)
    d.feed(b"ab")
    refused("IncompleteBody", d.end)
    d.feed(b"c")
    d.end()
    e = BodyDecoder({"content-length": "3", "content-md5": base64.b64encode(
        hashlib.md5(b"xyz").digest()).decode()}, None)
    e.feed(b"abc")
    refused("BadDigest", e.end)


@pytest.mark.parametrize("key,code", [("..", "InvalidArgument"), ("a/../b", "InvalidArgument"),
                                      ("a//b", "InvalidArgument"), ("./a", "InvalidArgument"),
                                      ("", "InvalidArgument"), ("a\x00b", "InvalidArgument"),
                                      ("x" * 1025, "KeyTooLongError"),
                                      ("y" * 256, "KeyTooLongError")])
def test_keys_that_cannot_be_paths(key, code):
    refused(code, naming.object_path, "bkt", key)


def test_keys_stay_in_their_bucket():
    assert naming.object_path("bkt", "a/b c/d.txt") == "/bkt/a/b c/d.txt"
    assert naming.object_path("bkt", "folder/") == "/bkt/folder"
    assert naming.meta_path("bkt", "folder/") == f"/.s3meta/bkt/folder/{naming.MARKER}"
    for bad in ("..", ".s3meta", "A", "ab", "a_b", "-ab"):
        refused("InvalidBucketName", naming.bucket_path, bad)
