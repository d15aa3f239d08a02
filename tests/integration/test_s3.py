"""The S3 gateway driven by boto3: every supported operation against a real cluster, with
results checked byte for byte and errors checked by S3 code."""
from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import io
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from botocore.exceptions import ClientError

from client.api import AegisClient
from tests.integration.s3_support import gateway  # noqa: F401  (fixture)

MiB = 1024 * 1024


def code(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def status(exc_info) -> int:
    return exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def s3(gateway):
    return gateway.client("alice")


@pytest.fixture(scope="module")
def fs(gateway):
    with AegisClient(gateway.cluster.broker, key=gateway.cluster.key) as c:
        yield c


def test_buckets(s3, gateway):
    s3.create_bucket(Bucket="buckets-1")
    assert "buckets-1" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="buckets-1")
    assert s3.get_bucket_location(Bucket="buckets-1").get("LocationConstraint") in (None, "")
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="buckets-1")
    assert code(e) == "BucketAlreadyOwnedByYou"
    bob = gateway.client("bob")
    with pytest.raises(ClientError) as e:
        bob.create_bucket(Bucket="buckets-1")
    assert code(e) == "BucketAlreadyExists"
    assert "buckets-1" not in [b["Name"] for b in bob.list_buckets()["Buckets"]]
    s3.put_object(Bucket="buckets-1", Key="x", Body=b"1")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="buckets-1")
    assert code(e) == "BucketNotEmpty"
    s3.delete_object(Bucket="buckets-1", Key="x")
    s3.delete_bucket(Bucket="buckets-1")
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="buckets-1")
    assert status(e) == 404
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket="no-such-bucket")
    assert code(e) == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="Bad_Name")
    assert code(e) == "InvalidBucketName"


def test_put_get_head_delete(s3, fs):
    s3.create_bucket(Bucket="objects")
    body = os.urandom(300_000)
    r = s3.put_object(Bucket="objects", Key="dir/sub/file.bin", Body=body,
                      ContentType="application/x-test", Metadata={"color": "blue"})
    assert r["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    # the object is a file of the file system, under the bucket's directory
    assert fs.read_bytes("/objects/dir/sub/file.bin") == body
    got = s3.get_object(Bucket="objects", Key="dir/sub/file.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"color": "blue"}
    assert got["ETag"] == r["ETag"]
    head = s3.head_object(Bucket="objects", Key="dir/sub/file.bin")
    assert head["ContentLength"] == len(body) and head["Metadata"] == {"color": "blue"}
    s3.put_object(Bucket="objects", Key="empty", Body=b"")
    assert s3.get_object(Bucket="objects", Key="empty")["Body"].read() == b""
    assert s3.head_object(Bucket="objects", Key="empty")["ETag"] == \
        f'"{hashlib.md5(b"").hexdigest()}"'
    s3.delete_object(Bucket="objects", Key="dir/sub/file.bin")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="objects", Key="dir/sub/file.bin")
    assert code(e) == "NoSuchKey"
    # the emptied directories go too, so they do not list as prefixes
    assert not fs.exists("/objects/dir")
    s3.delete_object(Bucket="objects", Key="never-was")     # S3: deleting nothing is fine


def test_ranges_and_conditions(s3):
    s3.create_bucket(Bucket="ranges")
    body = bytes(range(256)) * 4000
    etag = s3.put_object(Bucket="ranges", Key="r", Body=body)["ETag"]
    for rng, want in (("bytes=0-9", body[:10]), ("bytes=-5", body[-5:]),
                      ("bytes=1000-", body[1000:]), ("bytes=5-5", body[5:6]),
                      ("bytes=100-99999999", body[100:])):
        got = s3.get_object(Bucket="ranges", Key="r", Range=rng)
        assert got["Body"].read() == want, rng
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="ranges", Key="r", Range=f"bytes={len(body)}-")
    assert code(e) == "InvalidRange" and status(e) == 416
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="ranges", Key="r", IfNoneMatch=etag)
    assert status(e) == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="ranges", Key="r", IfMatch='"0000"')
    assert status(e) == 412
    assert s3.get_object(Bucket="ranges", Key="r", IfMatch=etag)["Body"].read() == body
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="ranges", Key="r", IfModifiedSince=future)
    assert status(e) == 304
    past = future - datetime.timedelta(days=1)
    assert s3.get_object(Bucket="ranges", Key="r", IfModifiedSince=past)["Body"].read() == body


def test_ranged_reads_across_block_boundaries_are_byte_exact(s3, alice_fs):
    """A GET streams only the blocks of its range, sliced at both ends: every range
    across block boundaries is exact, and concurrent ranged GETs (aws-cli's download)
    reassemble the object. Sidecars read by earlier GETs never describe a newer
    version."""
    s3.create_bucket(Bucket="blocks")
    b = 64 * 1024
    body = os.urandom(10 * b + 123)
    alice_fs.put(io.BytesIO(body), "/blocks/small", block_size=b)
    assert len(alice_fs.stat("/blocks/small")["blocks"]) == 11
    n = len(body)
    for start, end in ((0, b - 1), (b - 1, b), (b - 5, 3 * b + 4), (2 * b, 4 * b - 1),
                       (b + 7, n - 1), (n - 200, n - 1), (10 * b, n - 1), (0, n - 1)):
        got = s3.get_object(Bucket="blocks", Key="small", Range=f"bytes={start}-{end}")
        assert got["Body"].read() == body[start:end + 1], (start, end)
        assert got["ContentRange"] == f"bytes {start}-{end}/{n}"
    step = 100_000
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pieces = list(pool.map(lambda s: s3.get_object(
            Bucket="blocks", Key="small", Range=f"bytes={s}-{min(s + step, n) - 1}"
        )["Body"].read(), range(0, n, step)))
    assert b"".join(pieces) == body
    # overwritten through S3, then natively with the same size: each GET describes the
    # version it reads (the native one has no sidecar: a derived ETag, no metadata)
    for version in (b"1", b"2"):
        s3.put_object(Bucket="blocks", Key="small", Body=body[:2000] + version,
                      Metadata={"v": version.decode()})
        got = s3.get_object(Bucket="blocks", Key="small", Range="bytes=1999-")
        assert got["Body"].read() == body[1999:2000] + version
        assert got["ETag"] == f'"{hashlib.md5(body[:2000] + version).hexdigest()}"'
        assert got["Metadata"] == {"v": version.decode()}
    alice_fs.write_bytes("/blocks/small", body[5000:7001])
    got = s3.get_object(Bucket="blocks", Key="small")
    assert got["Body"].read() == body[5000:7001]
    assert got["ETag"] != f'"{hashlib.md5(body[:2000] + b"2").hexdigest()}"'
    assert got["Metadata"] == {}


def test_copy_and_delete_objects(s3):
    s3.create_bucket(Bucket="copies")
    s3.put_object(Bucket="copies", Key="src", Body=b"source bytes", Metadata={"a": "1"},
                  ContentType="text/plain")
    r = s3.copy_object(Bucket="copies", Key="dst/copy", CopySource="copies/src")
    assert r["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"source bytes").hexdigest()}"'
    got = s3.get_object(Bucket="copies", Key="dst/copy")
    assert got["Body"].read() == b"source bytes" and got["Metadata"] == {"a": "1"}
    s3.copy_object(Bucket="copies", Key="dst/replaced", CopySource="copies/src",
                   MetadataDirective="REPLACE", Metadata={"b": "2"})
    assert s3.head_object(Bucket="copies", Key="dst/replaced")["Metadata"] == {"b": "2"}
    out = s3.delete_objects(Bucket="copies", Delete={"Objects": [
        {"Key": "src"}, {"Key": "dst/copy"}, {"Key": "missing"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["dst/copy", "missing", "src"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="copies")["Contents"]] == \
        ["dst/replaced"]


@pytest.fixture(scope="module")
def alice_fs(gateway):
    """alice's own native connection: the same identity her S3 requests act with."""
    with AegisClient(gateway.cluster.broker, key=gateway.user_keys["alice"]) as c:
        yield c


def test_listing_3000_keys_paginated(s3, alice_fs):
    s3.create_bucket(Bucket="many")
    keys = [f"d{i % 7}/k{i:05d}" for i in range(2990)] + [f"top{i}" for i in range(10)]
    # written natively in batches (fast); S3 lists what the file system holds
    alice_fs.put_many([(k.encode(), f"/many/{k}") for k in keys])
    s3.put_object(Bucket="many", Key="d0/k00000", Body=b"d0/k00000")    # with a sidecar
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket="many", PaginationConfig={"PageSize": 1000}))
    listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
    assert listed == sorted(keys) and len(pages) == 3
    assert all(o["Size"] == len(o["Key"]) for p in pages for o in p["Contents"])
    v1 = list(s3.get_paginator("list_objects").paginate(Bucket="many",
                                                       PaginationConfig={"PageSize": 700}))
    assert [o["Key"] for p in v1 for o in p.get("Contents", [])] == sorted(keys)
    top = s3.list_objects_v2(Bucket="many", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == [f"d{i}/" for i in range(7)]
    assert [o["Key"] for o in top["Contents"]] == sorted(f"top{i}" for i in range(10))
    sub = s3.list_objects_v2(Bucket="many", Prefix="d3/k01", MaxKeys=5)
    assert [o["Key"] for o in sub["Contents"]] == sorted(
        k for k in keys if k.startswith("d3/k01"))[:5] and sub["IsTruncated"]
    after = s3.list_objects_v2(Bucket="many", StartAfter="top5")
    assert [o["Key"] for o in after["Contents"]] == [f"top{i}" for i in range(6, 10)]
    page = s3.list_objects_v2(Bucket="many", Delimiter="/", MaxKeys=3)
    nxt = s3.list_objects_v2(Bucket="many", Delimiter="/", MaxKeys=3,
                             ContinuationToken=page["NextContinuationToken"])
    assert [p["Prefix"] for p in page["CommonPrefixes"] + nxt["CommonPrefixes"]] == \
        [f"d{i}/" for i in range(6)]


def test_listing_order_and_url_encoding(s3):
    s3.create_bucket(Bucket="order")
    for k in ("a-c", "a/b", "a b/c", "é/x", "a+plus"):
        s3.put_object(Bucket="order", Key=k, Body=b"")
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="order")["Contents"]]
    assert listed == sorted(listed, key=lambda k: k.encode())
    assert set(listed) == {"a-c", "a/b", "a b/c", "é/x", "a+plus"}
    # asked for explicitly, boto3 leaves the encoded keys alone ("+" must not be literal)
    v1 = [o["Key"] for o in s3.list_objects(Bucket="order", EncodingType="url")["Contents"]]
    assert {urllib.parse.unquote_plus(k) for k in v1} == set(listed)
    assert "a%2Bplus" in v1 and "%C3%A9/x" in v1


def test_multipart(s3, fs):
    s3.create_bucket(Bucket="multi")
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    up = s3.create_multipart_upload(Bucket="multi", Key="big/obj", ContentType="x/y",
                                    Metadata={"m": "v"})
    uid = up["UploadId"]
    etags = [s3.upload_part(Bucket="multi", Key="big/obj", UploadId=uid, PartNumber=i + 1,
                            Body=p)["ETag"] for i, p in enumerate(parts)]
    listed = s3.list_parts(Bucket="multi", Key="big/obj", UploadId=uid)["Parts"]
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    assert [p["Size"] for p in listed] == [len(p) for p in parts]
    ups = s3.list_multipart_uploads(Bucket="multi")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in ups] == [("big/obj", uid)]
    # nothing is visible before the completion
    assert not fs.exists("/multi/big/obj")
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="multi", Key="big/obj", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 2, "ETag": etags[1]},
                                         {"PartNumber": 1, "ETag": etags[0]}]})
    assert code(e) == "InvalidPartOrder"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="multi", Key="big/obj", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}]})
    assert code(e) == "InvalidPart"
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="multi", Key="big/obj", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 3, "ETag": etags[2]},
                                         {"PartNumber": 4, "ETag": etags[2]}]})
    assert code(e) == "InvalidPart"
    done = s3.complete_multipart_upload(
        Bucket="multi", Key="big/obj", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": t}
                                   for i, t in enumerate(etags)]})
    want = hashlib.md5(b"".join(bytes.fromhex(t.strip('"')) for t in etags)).hexdigest()
    assert done["ETag"] == f'"{want}-3"'
    got = s3.get_object(Bucket="multi", Key="big/obj")
    assert got["Body"].read() == b"".join(parts)
    assert got["ContentType"] == "x/y" and got["Metadata"] == {"m": "v"}
    assert s3.list_multipart_uploads(Bucket="multi").get("Uploads", []) == []
    with pytest.raises(ClientError) as e:
        s3.list_parts(Bucket="multi", Key="big/obj", UploadId=uid)
    assert code(e) == "NoSuchUpload"


def test_multipart_too_small_abort_and_part_copy(s3, fs):
    s3.create_bucket(Bucket="multi2")
    uid = s3.create_multipart_upload(Bucket="multi2", Key="o")["UploadId"]
    t1 = s3.upload_part(Bucket="multi2", Key="o", UploadId=uid, PartNumber=1,
                        Body=b"small")["ETag"]
    t2 = s3.upload_part(Bucket="multi2", Key="o", UploadId=uid, PartNumber=2,
                        Body=b"tail")["ETag"]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket="multi2", Key="o", UploadId=uid,
                                     MultipartUpload={"Parts": [
                                         {"PartNumber": 1, "ETag": t1},
                                         {"PartNumber": 2, "ETag": t2}]})
    assert code(e) == "EntityTooSmall"
    s3.abort_multipart_upload(Bucket="multi2", Key="o", UploadId=uid)
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket="multi2", Key="o", UploadId=uid, PartNumber=3, Body=b"x")
    assert code(e) == "NoSuchUpload"
    assert not fs.exists("/multi2/o")
    src = os.urandom(6 * MiB)
    s3.put_object(Bucket="multi2", Key="src", Body=src)
    uid = s3.create_multipart_upload(Bucket="multi2", Key="copied")["UploadId"]
    c1 = s3.upload_part_copy(Bucket="multi2", Key="copied", UploadId=uid, PartNumber=1,
                             CopySource="multi2/src", CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    c2 = s3.upload_part_copy(Bucket="multi2", Key="copied", UploadId=uid, PartNumber=2,
                             CopySource="multi2/src", CopySourceRange=f"bytes={5 * MiB}-")
    s3.complete_multipart_upload(Bucket="multi2", Key="copied", UploadId=uid,
                                 MultipartUpload={"Parts": [
                                     {"PartNumber": 1, "ETag": c1["CopyPartResult"]["ETag"]},
                                     {"PartNumber": 2, "ETag": c2["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket="multi2", Key="copied")["Body"].read() == src


def test_100_mib_streams_both_ways(s3):
    s3.create_bucket(Bucket="large")
    block = os.urandom(MiB)
    body = block * 100
    # put_object with a single body (no multipart): the gateway streams it into the file
    r = s3.put_object(Bucket="large", Key="hundred", Body=body)
    assert r["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    h = hashlib.md5()
    stream = s3.get_object(Bucket="large", Key="hundred")["Body"]
    n = 0
    while chunk := stream.read(4 * MiB):
        h.update(chunk)
        n += len(chunk)
    assert n == len(body) and h.hexdigest() == hashlib.md5(body).hexdigest()


def test_presigned_urls(s3, gateway):
    s3.create_bucket(Bucket="presign")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "presign",
                                                              "Key": "p/q"}, ExpiresIn=60)
    req = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    assert urllib.request.urlopen(req).status == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": "presign",
                                                              "Key": "p/q"}, ExpiresIn=60)
    assert urllib.request.urlopen(get_url).read() == b"presigned body"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(get_url.replace("p/q", "p/z"))
    assert e.value.code == 403 and b"SignatureDoesNotMatch" in e.value.read()


def test_unsupported_is_501_xml(s3):
    s3.create_bucket(Bucket="unsupported")
    with pytest.raises(ClientError) as e:
        s3.get_bucket_acl(Bucket="unsupported")
    assert code(e) == "NotImplemented" and status(e) == 501


def test_parallel_requests(s3):
    s3.create_bucket(Bucket="parallel")
    bodies = {f"k{i}": os.urandom(200_000 + i) for i in range(32)}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: s3.put_object(Bucket="parallel", Key=kv[0], Body=kv[1]),
                      bodies.items()))
        got = dict(pool.map(lambda k: (k, s3.get_object(Bucket="parallel", Key=k)
                                       ["Body"].read()), bodies))
    assert got == bodies


def _dn_traffic(gateway, fs) -> tuple[int, int]:
    """(block bytes written, read) over every DataNode since it started."""
    io = fs._io()
    infos = [io.call(f"dn.{n}", {"op": "info"}).result for n in gateway.cluster.node_ids]
    return sum(i["bytes_written"] for i in infos), sum(i["bytes_read"] for i in infos)


def test_copy_and_multipart_complete_move_no_block_bytes(s3, fs, gateway):
    """CopyObject of a multi-block object and CompleteMultipartUpload of 5 MiB parts share
    blocks: the DataNodes' byte counters move only by the small JSON records the gateway
    keeps (sidecars, the upload record), never by the objects' blocks."""
    records = 64 * 1024
    s3.create_bucket(Bucket="shared")
    body = os.urandom(13 * MiB)                      # four blocks of the 4 MiB default
    s3.put_object(Bucket="shared", Key="src", Body=body)
    before = _dn_traffic(gateway, fs)
    r = s3.copy_object(Bucket="shared", Key="dst/copy", CopySource="shared/src")
    after = _dn_traffic(gateway, fs)
    assert after[0] - before[0] < records and after[1] - before[1] < records
    assert r["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert fs.stat("/shared/dst/copy")["blocks"] == fs.stat("/shared/src")["blocks"]
    s3.delete_object(Bucket="shared", Key="src")
    assert s3.get_object(Bucket="shared", Key="dst/copy")["Body"].read() == body

    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(777)]
    uid = s3.create_multipart_upload(Bucket="shared", Key="multi")["UploadId"]
    tags = [s3.upload_part(Bucket="shared", Key="multi", UploadId=uid, PartNumber=i + 1,
                           Body=p)["ETag"] for i, p in enumerate(parts)]
    before = _dn_traffic(gateway, fs)
    s3.complete_multipart_upload(Bucket="shared", Key="multi", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": t}
                                                            for i, t in enumerate(tags)]})
    after = _dn_traffic(gateway, fs)
    assert after[0] - before[0] < records and after[1] - before[1] < records
    assert [b["size"] for b in fs.stat("/shared/multi")["blocks"]] == \
        [4 * MiB, MiB, 4 * MiB, MiB, 777]
    assert s3.get_object(Bucket="shared", Key="multi")["Body"].read() == b"".join(parts)
    rng = s3.get_object(Bucket="shared", Key="multi", Range=f"bytes={5 * MiB - 3}-{5 * MiB + 2}")
    assert rng["Body"].read() == (parts[0] + parts[1])[5 * MiB - 3:5 * MiB + 3]


def test_requests_act_with_the_users_own_permissions(gateway, s3, fs, alice_fs):
    """Each S3 user acts with its own AegisFS identity: the MDS's POSIX checks decide."""
    bob = gateway.client("bob")
    s3.create_bucket(Bucket="perm-a")
    s3.put_object(Bucket="perm-a", Key="d/doc", Body=b"alice's")
    assert fs.stat("/perm-a/d/doc")["owner"] == "alice"
    bucket = fs.stat("/perm-a")
    assert (bucket["owner"], bucket["mode"] & 0o777) == ("alice", 0o700)   # private
    denied = [lambda: bob.get_object(Bucket="perm-a", Key="d/doc"),
              lambda: bob.delete_object(Bucket="perm-a", Key="d/doc"),
              lambda: bob.list_objects_v2(Bucket="perm-a"),
              lambda: bob.head_bucket(Bucket="perm-a")]
    for call in denied:
        with pytest.raises(ClientError) as e:
            call()
        assert status(e) == 403
    # alice opens her bucket to others' reading: now each file's own mode decides
    alice_fs.chmod("/perm-a", 0o755)
    alice_fs.chmod("/perm-a/d", 0o755)
    assert bob.get_object(Bucket="perm-a", Key="d/doc")["Body"].read() == b"alice's"
    with pytest.raises(ClientError) as e:          # no write permission on alice's dir
        bob.delete_object(Bucket="perm-a", Key="d/doc")
    assert code(e) == "AccessDenied"
    with pytest.raises(ClientError) as e:
        bob.put_object(Bucket="perm-a", Key="d/bobs", Body=b"b")
    assert code(e) == "AccessDenied"
    alice_fs.chmod("/perm-a/d/doc", 0o600)
    with pytest.raises(ClientError) as e:
        bob.get_object(Bucket="perm-a", Key="d/doc")
    assert code(e) == "AccessDenied"
    assert s3.get_object(Bucket="perm-a", Key="d/doc")["Body"].read() == b"alice's"
    assert fs.read_bytes("/perm-a/d/doc") == b"alice's"      # nothing was changed
    # a file bob wrote natively with mode 0600 is not alice's to read through S3
    fs.mkdir("/perm-shared", mode=0o777)
    fs.chmod("/perm-shared", 0o777)
    with AegisClient(gateway.cluster.broker, key=gateway.user_keys["bob"]) as bob_fs:
        bob_fs.write_bytes("/perm-shared/secret", b"bob's")
        bob_fs.chmod("/perm-shared/secret", 0o600)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="perm-shared", Key="secret")
    assert code(e) == "AccessDenied"
    assert bob.get_object(Bucket="perm-shared", Key="secret")["Body"].read() == b"bob's"
    # another user's multipart upload is not bob's to add to or abort, even in a bucket
    # he may write to
    up = s3.create_multipart_upload(Bucket="perm-shared", Key="big")["UploadId"]
    for call in (lambda: bob.upload_part(Bucket="perm-shared", Key="big", UploadId=up,
                                         PartNumber=1, Body=b"x"),
                 lambda: bob.abort_multipart_upload(Bucket="perm-shared", Key="big",
                                                    UploadId=up)):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == "AccessDenied"
    s3.abort_multipart_upload(Bucket="perm-shared", Key="big", UploadId=up)
    # alice's own objects: delete works, and the emptied bucket goes
    s3.delete_object(Bucket="perm-a", Key="d/doc")
    assert not fs.exists("/perm-a/d")
    s3.delete_bucket(Bucket="perm-a")


def test_s3meta_is_private_to_the_gateway(gateway, s3, fs, alice_fs):
    """Sidecars and records under /.s3meta tell ETags, content types, user metadata and
    key names: no native user may list or read them (through the real CLI and the API);
    through S3 a user gets an object's metadata only with read permission on it."""
    s3.create_bucket(Bucket="meta-private")
    s3.put_object(Bucket="meta-private", Key="d/secret", Body=b"x", ContentType="text/x-plan",
                  Metadata={"plan": "merger"})
    up = s3.create_multipart_upload(Bucket="meta-private", Key="big")["UploadId"]
    fs.mkdir("/meta-native", mode=0o777)       # a native top-level directory: a bucket too
    fs.chmod("/meta-native", 0o777)
    s3.put_object(Bucket="meta-native", Key="k", Body=b"y", Metadata={"m": "1"})
    assert fs.stat("/.s3meta")["mode"] & 0o7777 == 0o711
    for tree in ("/.s3meta/meta-private", "/.s3meta/meta-native", "/.s3meta/.buckets"):
        assert fs.stat(tree)["mode"] & 0o7777 == 0o700, tree
    assert fs.stat(f"/.s3meta/.uploads/{up}")["owner"] == "alice"
    cli = [sys.executable, "-m", "client.cli", "--broker", gateway.cluster.broker,
           "--key", str(gateway.user_keys["bob"])]
    sidecars = ["/.s3meta/meta-private/d/secret", "/.s3meta/meta-native/k",
                "/.s3meta/.buckets/meta-private.json", f"/.s3meta/.uploads/{up}/upload.json"]
    for path in sidecars:
        out = subprocess.run(cli + ["read", path], capture_output=True, text=True)
        assert out.returncode != 0 and "merger" not in out.stdout, (path, out)
        assert "ermission denied" in out.stderr, (path, out.stderr)
    with AegisClient(gateway.cluster.broker, key=gateway.user_keys["bob"]) as bob_fs:
        for path in ("/.s3meta", "/.s3meta/meta-private", "/.s3meta/meta-native",
                     "/.s3meta/.buckets", "/.s3meta/.uploads", f"/.s3meta/.uploads/{up}"):
            with pytest.raises(PermissionError):
                bob_fs.ls(path)
        for path in sidecars:
            with pytest.raises(PermissionError):
                bob_fs.read_bytes(path)
    # alice's own upload still works through the directory she may pass through
    part = s3.upload_part(Bucket="meta-private", Key="big", UploadId=up, PartNumber=1,
                          Body=b"p" * 10)["ETag"]
    s3.complete_multipart_upload(Bucket="meta-private", Key="big", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part}]})
    assert alice_fs.read_bytes("/meta-private/big") == b"p" * 10
    # through S3: bob sees the metadata once alice lets him read the object, not before
    bob = gateway.client("bob")
    with pytest.raises(ClientError) as e:
        bob.head_object(Bucket="meta-private", Key="d/secret")
    assert status(e) == 403
    alice_fs.chmod("/meta-private", 0o755)
    alice_fs.chmod("/meta-private/d", 0o755)
    got = bob.head_object(Bucket="meta-private", Key="d/secret")
    assert (got["ContentType"], got["Metadata"]) == ("text/x-plan", {"plan": "merger"})
    alice_fs.chmod("/meta-private/d/secret", 0o600)
    with pytest.raises(ClientError) as e:
        bob.get_object(Bucket="meta-private", Key="d/secret")
    assert status(e) == 403


def test_an_older_open_s3meta_is_made_private(gateway, s3, fs):
    """A /.s3meta that an earlier gateway left 0755 is narrowed (at start, idempotent)."""
    from client.s3.store import Store
    s3.create_bucket(Bucket="meta-old")
    s3.put_object(Bucket="meta-old", Key="a/b", Body=b"z")
    for path in ("/.s3meta", "/.s3meta/meta-old", "/.s3meta/.buckets", "/.s3meta/.uploads"):
        fs.chmod(path, 0o755)
    Store(fs).secure_meta()
    Store(fs).secure_meta()
    modes = {p: fs.stat(p)["mode"] & 0o7777 for p in
             ("/.s3meta", "/.s3meta/meta-old", "/.s3meta/.buckets", "/.s3meta/.uploads")}
    assert modes == {"/.s3meta": 0o711, "/.s3meta/meta-old": 0o700,
                     "/.s3meta/.buckets": 0o700, "/.s3meta/.uploads": 0o711}
    assert s3.head_object(Bucket="meta-old", Key="a/b")["ETag"] == \
        f'"{hashlib.md5(b"z").hexdigest()}"'


def test_a_user_without_an_aegisfs_key_is_refused(gateway):
    access, secret = gateway.creds.create("carol")       # an S3 key, no AegisFS user
    import boto3
    from botocore.config import Config
    carol = boto3.client("s3", endpoint_url=gateway.endpoint, aws_access_key_id=access,
                         aws_secret_access_key=secret, region_name="us-east-1",
                         config=Config(s3={"addressing_style": "path"},
                                       retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        carol.list_buckets()
    assert code(e) == "AccessDenied"
    assert "aegisfs user add carol" in e.value.response["Error"]["Message"]


def test_a_tree_quota_is_quota_exceeded_and_loses_nothing(s3, fs):
    """A bucket under a tree quota (`aegisfs quota set`): a put past the limit is refused
    with 403 QuotaExceeded (not a 500 to retry), and what was there stays."""
    s3.create_bucket(Bucket="quota-1")
    fs.quota_set("/quota-1", max_bytes=4096)
    try:
        s3.put_object(Bucket="quota-1", Key="fits", Body=b"a" * 1000)
        with pytest.raises(ClientError) as e:
            s3.put_object(Bucket="quota-1", Key="too-big", Body=b"b" * 5000)
        assert (code(e), status(e)) == ("QuotaExceeded", 403), e.value.response
        assert "quota" in e.value.response["Error"]["Message"].lower()
        assert s3.get_object(Bucket="quota-1", Key="fits")["Body"].read() == b"a" * 1000
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="quota-1").get("Contents", [])]
        assert keys == ["fits"]
    finally:
        fs.quota_clear("/quota-1")
