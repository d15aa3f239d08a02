"""The S3 gateway's storage layer on the in-process cluster: CopyObject, UploadPartCopy of
whole blocks and CompleteMultipartUpload share blocks (no DataNode request at all);
an unaligned part copy streams that range only."""
from __future__ import annotations

import hashlib
import random

import pytest

from client.s3 import naming
from client.s3.store import Store
from tests.support.inprocess import InProcessCluster

BS = 256 * 1024


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=3, block_size=BS) as c:
        yield c


@pytest.fixture
def store(cluster):
    with cluster.client() as fs:
        s = Store(fs)
        s.create_bucket("bkt", "admin")
        yield s


def dn_calls(cluster: InProcessCluster, since: int) -> list[str]:
    return [c.op for c in cluster.calls[since:] if c.service.startswith("dn.")]


def touched(cluster: InProcessCluster, since: int, store: Store, *paths: str) -> list:
    """DataNode requests after `since` that name a block of one of the files at `paths`
    (the small JSON records the gateway reads and writes are not these)."""
    ids = {bytes.fromhex(b["id"]) for p in paths for b in store.fs.stat(p)["blocks"]}
    return [c.op for c in cluster.calls[since:]
            if c.service.startswith("dn.") and c.header.get("id") in ids]


def stored(cluster: InProcessCluster) -> int:
    return sum(dn.store.usage().bytes_used for dn in cluster.datanodes.values())


SIDECAR = 4096      # what the JSON sidecar of an object may add, on every replica


def put(store: Store, key: str, data: bytes) -> None:
    store.put("bkt", key, [data], lambda: None, "x/y", {"k": "v"})


def test_copy_object_shares_blocks_and_keeps_the_etag(cluster, store):
    data = random.Random(1).randbytes(3 * BS + 5)
    put(store, "src", data)
    src = store.head("bkt", "src")
    mark, before = len(cluster.calls), stored(cluster)
    new = store.copy("bkt", "src", "bkt", "deep/er/dst", src, src.content_type, src.meta)
    assert touched(cluster, mark, store, "/bkt/src") == []
    assert stored(cluster) - before < SIDECAR
    assert new.etag == hashlib.md5(data).hexdigest() and new.size == len(data)
    assert store.head("bkt", "deep/er/dst").meta == {"k": "v"}
    store.delete("bkt", "src")
    assert b"".join(store.chunks("bkt", "deep/er/dst")) == data


def test_multipart_complete_composes_parts_without_moving_bytes(cluster, store):
    rng = random.Random(2)
    parts = [rng.randbytes(2 * BS + 100), rng.randbytes(BS), rng.randbytes(10)]
    uid = store.create_upload("bkt", "obj", "admin", "a/b", {})
    tags = [store.put_part(uid, i + 1, [p], lambda: None) for i, p in enumerate(parts)]
    part_paths = [f"{naming.upload_dir(uid)}/{p['name']}" for p in store.parts(uid)]
    part_ids = {bytes.fromhex(b["id"]) for p in part_paths for b in store.fs.stat(p)["blocks"]}
    mark, before = len(cluster.calls), stored(cluster)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("client.s3.multipart.MIN_PART", 1)          # small parts for the test
        info = store.complete(uid, "bkt", "obj", list(enumerate(tags, 1)))
    assert [c for c in cluster.calls[mark:] if c.header.get("id") in part_ids] == []
    assert stored(cluster) - before < SIDECAR
    assert {bytes.fromhex(b["id"]) for b in store.fs.stat("/bkt/obj")["blocks"]} == part_ids
    digest = hashlib.md5(b"".join(bytes.fromhex(t) for t in tags)).hexdigest()
    assert info.etag == f"{digest}-3" and info.size == sum(map(len, parts))
    assert b"".join(store.chunks("bkt", "obj")) == b"".join(parts)
    assert store.head("bkt", "obj").content_type == "a/b"


def test_part_copy_shares_aligned_ranges_and_streams_the_others(cluster, store):
    data = random.Random(3).randbytes(4 * BS)
    put(store, "src", data)
    uid = store.create_upload("bkt", "copied", "admin", None, {})
    mark, before = len(cluster.calls), stored(cluster)
    t1 = store.put_part_copy(uid, 1, "bkt", "src", BS, 2 * BS)         # blocks 1 and 2
    assert dn_calls(cluster, mark) == [] and stored(cluster) == before
    mark = len(cluster.calls)
    t2 = store.put_part_copy(uid, 2, "bkt", "src", 10, 100)            # not aligned
    stats = [c for c in cluster.calls[mark:] if c.op == "stat"]
    assert len(stats) == 1, "the range is read from the stat that found it unaligned"
    assert touched(cluster, mark, store, "/bkt/src") == ["get_block"]
    t3 = store.put_part_copy(uid, 3, "bkt", "src", 3 * BS, BS)         # the last block
    assert t2 == hashlib.md5(data[10:110]).hexdigest()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("client.s3.multipart.MIN_PART", 1)
        store.complete(uid, "bkt", "copied", [(1, t1), (2, t2), (3, t3)])
    want = data[BS:3 * BS] + data[10:110] + data[3 * BS:]
    assert b"".join(store.chunks("bkt", "copied")) == want


def test_a_head_signs_no_capability_and_a_get_reads_from_its_own_stat(cluster, store,
                                                                      monkeypatch):
    data = random.Random(5).randbytes(3 * BS + 5)
    put(store, "obj", data)
    minted: list[bytes] = []
    mint = cluster.mds.grants.mint_read
    monkeypatch.setattr(cluster.mds.grants, "mint_read",
                        lambda bid, wall: minted.append(bid) or mint(bid, wall))
    head = store.head("bkt", "obj")             # HEAD, or a copy's source
    assert head.size == len(data) and head.source is None and minted == []
    got = store.head("bkt", "obj", reading=True)      # a GET: its stat is what it reads
    assert len(minted) == 4 and got.etag == head.etag
    out = bytearray()
    mark = len(cluster.calls)
    store.read("bkt", "obj", 0, len(data), lambda v: out.extend(v), source=got.source)
    assert bytes(out) == data
    assert not [c for c in cluster.calls[mark:] if c.op == "stat"], "the GET stat'ed again"
