"""The client's small-file path (client/smallfiles.py put_small, BlockPool) against the
in-process cluster: one MDS request per file after its puts, fallback to the streaming
writer when a replica fails or the pool is gone, and pools given back after their time."""
from __future__ import annotations

import errno
import os

import pytest

from client.smallfiles import POOL_FIRST, POOL_LIFE
from tests.support.inprocess import InProcessCluster


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=3) as c:
        yield c


def mds_ops(cluster: InProcessCluster) -> list[str]:
    return [c.header["op"] for c in cluster.calls
            if c.caller[0] == "client" and c.service == "mds"]


def test_small_files_are_one_mds_request_each(cluster):
    fs = cluster.client()
    files = {f"/s/f{i}": os.urandom(n) for i, n in enumerate((0, 1, 4096, 100_000))}
    for path, data in files.items():
        fs.write_bytes(path, data)
    # the empty file takes no block; the third block is the pool's first refill
    assert mds_ops(cluster) == ["pool"] + ["put_small"] * 3 + ["allocate", "put_small"]
    assert fs.small_puts == 4
    for path, data in files.items():
        assert fs.read_bytes(path) == data
        blocks = fs.stat(path)["blocks"]
        assert all(len(b["replicas"]) == 2 for b in blocks)
    assert cluster.store.ns.draft_handles() == []


def test_the_pool_is_refilled_and_replaced_after_its_time(cluster):
    fs = cluster.client()
    for i in range(20):                       # 2, then refills of 4, 8, 16 blocks
        fs.write_bytes(f"/r{i}", b"x" * 10)
    assert mds_ops(cluster).count("allocate") == 3
    (pool,) = cluster.store.ns.pool_handles()
    assert len(cluster.store.ns.drafts.by_handle[pool].bids) == 30 - 20   # spares held
    (old,) = cluster.store.ns.pool_handles()
    cluster.run(POOL_LIFE + 1)                  # DataNodes heartbeat meanwhile
    fs.write_bytes("/later", b"y")
    ops = mds_ops(cluster)
    assert ops[-3:] == ["abort", "pool", "put_small"]
    assert old not in cluster.store.ns.pool_handles()      # given back, not left to expire
    assert fs.read_bytes("/later") == b"y"


def test_one_write_holds_one_spare_block(cluster):
    """A process that writes one file (a CLI call) leaves one spare block in its pool
    until the lease ends, so a loop of CLI puts does not eat the user's allocation limit."""
    fs = cluster.client()
    fs.write_bytes("/one", b"1")
    (pool,) = cluster.store.ns.pool_handles()
    assert len(cluster.store.ns.drafts.by_handle[pool].bids) == POOL_FIRST - 1


def test_a_failed_replica_falls_back_to_the_streaming_writer(cluster):
    fs = cluster.client()
    fs.write_bytes("/warm", b"w")                          # the pool is open
    cluster.fail(None, "put_block", error=OSError(errno.EIO, "disk error"))
    data = os.urandom(5000)
    fs.write_bytes("/f", data)
    assert mds_ops(cluster)[-2:] == ["create", "commit"]
    assert fs.read_bytes("/f") == data
    assert all(len(b["replicas"]) == 2 for b in fs.stat("/f")["blocks"])
    assert cluster.store.ns.draft_handles() == []


def test_a_pool_the_mds_lost_is_replaced(cluster):
    fs = cluster.client()
    fs.write_bytes("/a", b"a")
    (pool,) = cluster.store.ns.pool_handles()
    cluster.connect().call("mds", {"op": "abort", "handle": pool})    # gone under us
    fs.write_bytes("/b", b"b" * 100)
    assert fs.read_bytes("/b") == b"b" * 100
    assert pool not in cluster.store.ns.pool_handles()
    fs.write_bytes("/c", b"c")               # a new pool from here on
    assert mds_ops(cluster)[-2:] == ["pool", "put_small"]


def test_errors_about_the_file_are_raised_and_leave_nothing(cluster):
    fs = cluster.client()
    fs.write_bytes("/x", b"1")
    with pytest.raises(FileExistsError):
        fs.write_bytes("/x", b"2", exclusive=True)
    with pytest.raises(FileNotFoundError):
        fs.write_bytes("/no/such/dir/f", b"3", parents=False)
    assert fs.read_bytes("/x") == b"1"
    assert cluster.store.ns.draft_handles() == []


def test_a_source_that_grows_after_its_size_was_read_is_written_whole(cluster, tmp_path):
    src = tmp_path / "grows"
    src.write_bytes(b"a" * 10)

    class Growing:
        def __init__(self) -> None:
            self.f = open(src, "rb")
            self.extra = True

        def fileno(self) -> int:
            return self.f.fileno()

        def tell(self) -> int:
            return self.f.tell()

        def readinto(self, b) -> int:
            n = self.f.readinto(b)
            if not n and self.extra:          # more arrived after fstat
                self.extra = False
                with open(src, "ab") as w:
                    w.write(b"b" * 20)
                n = self.f.readinto(b)
            return n

    fs = cluster.client()
    g = Growing()
    fs.put(g, "/g")
    g.f.close()
    assert fs.read_bytes("/g") == b"a" * 10 + b"b" * 20
