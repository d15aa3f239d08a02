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


# The example of AWS's "Signature calculations for trailing headers (chunked uploads)":
# 64 KiB + 1 KiB of "a", a crc32c trailer; the seed, chunk and trailer signatures there.
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SEED = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
AWS_CHUNKS = ["b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
              "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
              "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"]
AWS_TRAILER = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"


def _trailer_case():
    auth = sigv4.Auth("AKIAIOSFODNN7EXAMPLE", "alice", sigv4.STREAMING_SIGNED_TRAILER,
                      sigv4.signing_key(AWS_SECRET, "20130524", "us-east-1", "s3"),
                      "20130524T000000Z", "20130524/us-east-1/s3/aws4_request", AWS_SEED)
    headers = {"x-amz-decoded-content-length": "66560", "x-amz-trailer": "x-amz-checksum-crc32c"}
    body = (f"10000;chunk-signature={AWS_CHUNKS[0]}\r\n".encode() + b"a" * 65536 + b"\r\n" +
            f"400;chunk-signature={AWS_CHUNKS[1]}\r\n".encode() + b"a" * 1024 + b"\r\n" +
            f"0;chunk-signature={AWS_CHUNKS[2]}\r\n".encode() +
            b"x-amz-checksum-crc32c:sOO8/Q==\r\n" +
            f"x-amz-trailer-signature:{AWS_TRAILER}\r\n\r\n".encode())
    return auth, headers, body


def test_signed_trailer_aws_example():
    auth, headers, body = _trailer_case()
    assert auth.trailer_signature(AWS_CHUNKS[2], hashlib.sha256(
        b"x-amz-checksum-crc32c:sOO8/Q==\n").hexdigest()) == AWS_TRAILER
    d = BodyDecoder(headers, auth)
    got = b"".join(b"".join(d.feed(body[i:i + 1000])) for i in range(0, len(body), 1000))
    d.end()
    assert got == b"a" * 66560


@pytest.mark.parametrize("change, code", [
    ((b"x-amz-checksum-crc32c:sOO8/Q==", b"x-amz-checksum-crc32c:AAAAAA=="),
     "SignatureDoesNotMatch"),                        # the trailer is signed
    ((AWS_TRAILER.encode(), b"0" * 64), "SignatureDoesNotMatch"),
    ((b"a" * 1024 + b"\r\n", b"b" + b"a" * 1023 + b"\r\n"), "SignatureDoesNotMatch"),
    ((f"x-amz-trailer-signature:{AWS_TRAILER}\r\n".encode(), b""), "SignatureDoesNotMatch"),
])
def test_signed_trailer_refused(change, code):
    auth, headers, body = _trailer_case()
    d = BodyDecoder(headers, auth)
    with pytest.raises(S3Error) as e:
        d.feed(body.replace(*change))
        d.end()
    assert e.value.code == code


def test_signed_trailer_checksum_verified():
    """A trailer whose signature is right but whose checksum is not: BadDigest."""
    auth, headers, body = _trailer_case()
    lines = b"x-amz-checksum-crc32c:AAAAAA==\n"
    sig = auth.trailer_signature(AWS_CHUNKS[2], hashlib.sha256(lines).hexdigest())
    body = body.replace(b"sOO8/Q==", b"AAAAAA==").replace(AWS_TRAILER.encode(), sig.encode())
    d = BodyDecoder(headers, auth)
    d.feed(body)
    refused("BadDigest", d.end)
