"""The S3 gateway against hostile or broken peers: every refusal is the right S3 error,
nothing is written, and the gateway keeps serving - also after a SIGKILL mid-upload."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from client.api import AegisClient
from tests.integration.s3_support import (LEASE, free_port, gateway,  # noqa: F401
                                          sign, signed_request, wait_port)
from tests.support.wait import wait_for

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3(gateway):
    c = gateway.client("alice")
    c.create_bucket(Bucket="hostile")
    return c


@pytest.fixture(scope="module")
def fs(gateway):
    with AegisClient(gateway.cluster.broker, key=gateway.cluster.key) as c:
        yield c


def still_serving(s3) -> None:
    s3.put_object(Bucket="hostile", Key="alive", Body=b"ok")
    assert s3.get_object(Bucket="hostile", Key="alive")["Body"].read() == b"ok"


def only_expected(fs, *names: str) -> None:
    """The bucket holds exactly `names` (no half-written object), and no draft is left
    open (an abandoned upload's draft was aborted, or expired with its lease)."""
    assert sorted(fs.ls("/hostile")) == sorted(names)
    wait_for(lambda: fs.status()["drafts"] == 0, timeout=LEASE * 5, what="no open drafts")


def test_wrong_signature(gateway, s3):
    import boto3
    from botocore.config import Config
    access, _ = gateway.keys["alice"]
    bad = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=access,
                       aws_secret_access_key="wrong", region_name="us-east-1",
                       config=Config(s3={"addressing_style": "path"},
                                     retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        bad.put_object(Bucket="hostile", Key="forged", Body=b"x")
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id="AKNOPE",
                           aws_secret_access_key="x", region_name="us-east-1",
                           config=Config(s3={"addressing_style": "path"},
                                         retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        unknown.list_buckets()
    assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    assert not s3.list_objects_v2(Bucket="hostile", Prefix="forged").get("Contents")


def test_anonymous_is_refused(gateway):
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{gateway.endpoint}/hostile/alive")
    assert e.value.code == 403 and b"<Code>AccessDenied</Code>" in e.value.read()


def test_expired_presigned_url(s3):
    import urllib.error
    import urllib.request
    s3.put_object(Bucket="hostile", Key="presigned", Body=b"p")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "hostile",
                                                          "Key": "presigned"}, ExpiresIn=1)
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url)
    assert e.value.code == 403 and b"expired" in e.value.read()
    s3.delete_object(Bucket="hostile", Key="presigned")


def test_another_users_bucket(gateway, s3):
    bob = gateway.client("bob")
    for call in (lambda: bob.list_objects_v2(Bucket="hostile"),
                 lambda: bob.get_object(Bucket="hostile", Key="alive"),
                 lambda: bob.put_object(Bucket="hostile", Key="bobs", Body=b"b"),
                 lambda: bob.delete_bucket(Bucket="hostile")):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "AccessDenied"
    bob.create_bucket(Bucket="bobs-bucket")
    with pytest.raises(ClientError) as e:
        bob.copy_object(Bucket="bobs-bucket", Key="stolen", CopySource="hostile/alive")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    still_serving(s3)


@pytest.mark.parametrize("key", ["a/../../etc", "..", "a/./b", "a//b", "x" * 1025])
def test_keys_that_are_not_paths(gateway, s3, fs, key):
    status, _, body = signed_request(gateway, "PUT", f"/hostile/{key}", b"payload")
    want = b"KeyTooLongError" if len(key) > 1024 else b"InvalidArgument"
    assert status == 400 and want in body, body
    assert not fs.exists("/etc") or "hostile" not in str(fs.ls("/"))
    still_serving(s3)
    only_expected(fs, "alive")


def test_malformed_xml(gateway, s3, fs):
    for doc in (b"<Delete><Object><Key>alive</Key></Object>", b"not xml at all",
                b'<!DOCTYPE x [<!ENTITY a "aaaa">]><Delete><Object><Key>&a;</Key>'
                b"</Object></Delete>", b"<Other/>"):
        status, _, body = signed_request(gateway, "POST", "/hostile?delete", doc,
                                         headers={"Content-MD5": ""} if False else None)
        assert status == 400 and b"MalformedXML" in body, body
    only_expected(fs, "alive")
    uid = s3.create_multipart_upload(Bucket="hostile", Key="mp")["UploadId"]
    status, _, body = signed_request(gateway, "POST", f"/hostile/mp?uploadId={uid}",
                                     b"<CompleteMultipartUpload><Part>")
    assert status == 400 and b"MalformedXML" in body
    s3.abort_multipart_upload(Bucket="hostile", Key="mp", UploadId=uid)
    still_serving(s3)


def _raw_put(gateway, key: str, announced: int, send: bytes, *, half_close: bool,
             headers: dict | None = None, payload: str = "UNSIGNED-PAYLOAD",
             reply: bool = False, expect: bool = False) -> bytes:
    """Send signed PUT headers announcing `announced` bytes, then only `send`; with
    half_close shut our side down, with reply read the answer to the end. With expect,
    the body goes only after the gateway's "100 Continue" (it accepted the signature)."""
    h = sign(gateway, "PUT", f"/hostile/{key}",
             {"Content-Length": str(announced), **(headers or {})}, payload=payload)
    head = f"PUT /hostile/{key} HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
    for k, v in h.items():
        if k.lower() != "host":
            head += f"{k}: {v}\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=20) as s:
        if expect:
            s.sendall(head.encode() + b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 100"), "the gateway refused the upload"
            s.sendall(send)
        else:
            s.sendall(head.encode() + b"Connection: close\r\n\r\n" + send)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        if half_close or reply:
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except OSError:
                pass
            return out
    return b""


def test_5_gib_that_never_arrives(gateway, s3, fs):
    _raw_put(gateway, "huge", 5 * 1024 ** 3, os.urandom(3 * MiB), half_close=False,
             expect=True)
    time.sleep(1.0)
    only_expected(fs, "alive")
    with pytest.raises(ClientError):
        s3.head_object(Bucket="hostile", Key="huge")
    still_serving(s3)


def test_body_shorter_than_announced(gateway, s3, fs):
    _raw_put(gateway, "short", 1000, b"x" * 10, half_close=True)
    # aws-chunked with a decoded length the chunks never reach: IncompleteBody
    body = b"a\r\n" + b"y" * 10 + b"\r\n0\r\n\r\n"
    out = _raw_put(gateway, "short2", len(body), body, half_close=False, reply=True,
                   headers={"x-amz-decoded-content-length": "500",
                            "Content-Encoding": "aws-chunked"},
                   payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    assert b"IncompleteBody" in out, out
    only_expected(fs, "alive")
    still_serving(s3)


def test_checksum_trailer_is_verified(gateway, s3, fs):
    import base64
    import zlib
    data = b"z" * 100
    good = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    for value, stored in (("AAAAAA==", False), (good, True)):
        body = (b"64\r\n" + data + b"\r\n0\r\nx-amz-checksum-crc32:" + value.encode() +
                b"\r\n\r\n")
        out = _raw_put(gateway, "trailer", len(body), body, half_close=False, reply=True,
                       headers={"x-amz-decoded-content-length": "100",
                                "Content-Encoding": "aws-chunked",
                                "x-amz-trailer": "x-amz-checksum-crc32"},
                       payload="STREAMING-UNSIGNED-PAYLOAD-TRAILER")
        assert (b" 200 " in out.split(b"\r\n")[0]) == stored, out
        assert fs.exists("/hostile/trailer") == stored
    assert s3.get_object(Bucket="hostile", Key="trailer")["Body"].read() == data
    s3.delete_object(Bucket="hostile", Key="trailer")


def test_sha256_mismatch_writes_nothing(gateway, s3, fs):
    status, _, body = signed_request(gateway, "PUT", "/hostile/tampered", b"real body",
                                     payload_hash=hashlib.sha256(b"other").hexdigest())
    assert status == 400 and b"XAmzContentSHA256Mismatch" in body
    only_expected(fs, "alive")


def test_gateway_killed_mid_upload_leaves_nothing(gateway, s3, fs):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "client.s3.server", "--port", str(port),
                             "--broker", gateway.cluster.broker,
                             "--keys-dir", str(gateway.cluster.data_dir / "keys"),
                             "--key", str(gateway.cluster.key)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        from types import SimpleNamespace
        other = SimpleNamespace(keys=gateway.keys, port=port,
                                endpoint=f"http://127.0.0.1:{port}")
        import threading
        failures: list[BaseException] = []

        def upload() -> None:
            try:
                _raw_put(other, "killed", 64 * MiB, os.urandom(20 * MiB), half_close=False,
                         expect=True)
            except OSError:
                pass                   # the gateway died under us: expected
            except BaseException as exc:
                failures.append(exc)

        t = threading.Thread(target=upload)
        t.start()
        wait_for(lambda: fs.status()["drafts"] >= 1, timeout=10)   # the upload is under way
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t.join(30)
        assert not failures, failures
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the draft nobody renews any more expires with its lease; nothing ever became visible
    wait_for(lambda: fs.status()["drafts"] == 0, timeout=LEASE * 5)
    only_expected(fs, "alive")
    with pytest.raises(ClientError):
        s3.head_object(Bucket="hostile", Key="killed")
    still_serving(s3)
