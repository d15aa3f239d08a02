"""client/batch.SmallFiles / SmallReads against the in-process cluster (the real MDS and
DataNode services, no sockets): batching, replica replacement rounds, per-file failures,
aborts, request splitting, and batched reads with failover and bad-replica reports."""
from __future__ import annotations

import errno

import crc32c
import pytest

from client import batch as B
from client.batch import SmallFiles
from client.blocks import Suspects
from client.mux import Mux
from tests.support.inprocess import InProcessCluster

BS = 1 << 20


@pytest.fixture
def make():
    """make(nodes=3, replication=2) -> a cluster of dn1..dnN, closed after the test."""
    made = []

    def build(nodes: int = 3, replication: int = 2) -> InProcessCluster:
        c = InProcessCluster(datanodes=nodes, replication=replication,
                             block_size=BS)
        made.append(c)
        return c

    yield build
    for c in made:
        c.close()


def files(n: int, size: int = 4096) -> list[tuple[str, bytes]]:
    return [(f"/d/f{i}", bytes([i % 251]) * size) for i in range(n)]


def write(cluster: InProcessCluster, items, **kw):
    return SmallFiles(Mux(cluster.connect()), **kw).write(items)


def block_of(cluster: InProcessCluster, path: str) -> dict | None:
    """The file's only block as the MDS has it (None for an empty file)."""
    blocks = cluster.store.ns.file_info(path)["blocks"]
    assert len(blocks) <= 1
    return blocks[0] if blocks else None


def put_requests(cluster: InProcessCluster) -> list[tuple[str, int]]:
    return [(c.service.removeprefix("dn."), len(c.header["blocks"])) for c in cluster.calls
            if c.op == "put_blocks"]


def blocker(cluster: InProcessCluster) -> str:
    """A file that paths are put under: their creates fail with ENOTDIR."""
    write(cluster, [("/blocker", b"x")])
    cluster.calls.clear()
    return "/blocker"


def test_a_batch_costs_two_mds_calls_and_one_request_per_node(make):
    c = make(3)
    out = write(c, files(30))
    assert out == [{"path": f"/d/f{i}", "size": 4096} for i in range(30)]
    assert c.ops() == ["batch:create", "batch:commit"]
    assert sorted(n for n, _ in put_requests(c)) == ["dn1", "dn2", "dn3"]
    for path, data in files(30):
        block = block_of(c, path)
        assert block["size"] == 4096 and block["checksum"] == crc32c.crc32c(data)
        assert len(set(block["replicas"])) == 2
        assert all(c.datanodes[n].store.get(block["id"]) == data for n in block["replicas"])


def test_a_down_node_is_replaced_in_one_more_round(make):
    c = make(3)
    c.stop("dn2")                      # the MDS still places blocks there
    out = write(c, files(12))
    assert all(isinstance(o, dict) for o in out)
    assert c.ops() == ["batch:create", "batch:replace_target", "batch:commit"]
    for path, _ in files(12):
        assert sorted(block_of(c, path)["replicas"]) == ["dn1", "dn3"]


def test_a_block_refused_by_one_node_is_replaced_alone(make):
    c = make(4)
    refused = c.fail(None, "put_blocks", item=True, times=1)   # one block, one disk error
    out = write(c, files(8))
    assert all(isinstance(o, dict) for o in out)
    ((node, bid),) = refused.hits
    (path,) = [p for p, _ in files(8) if block_of(c, p)["id"] == bid]
    replicas = block_of(c, path)["replicas"]
    assert len(set(replicas)) == 2 and node not in replicas
    assert c.ops() == ["batch:create", "batch:replace_target", "batch:commit"]
    (replace,) = [x for x in c.calls if x.op == "batch"
                  and x.header["ops"][0]["op"] == "replace_target"]
    assert [op["block"] for op in replace.header["ops"]] == [bid]       # that block alone


def test_a_file_no_node_can_store_fails_alone_and_its_draft_is_aborted(make):
    c = make(2)
    c.fail("dn1", times=None, error=TimeoutError)
    c.stop("dn2")
    out = write(c, files(3) + [("/d/empty", b"")])
    for o in out[:3]:
        assert isinstance(o, OSError) and o.errno == errno.EIO
        assert "could not be stored on any DataNode" in str(o) and "/d/f" in str(o)
    assert out[3] == {"path": "/d/empty", "size": 0}
    (last,) = [x for x in c.calls if x.op == "batch"][-1:]
    assert sorted(op["op"] for op in last.header["ops"]) == ["abort"] * 3 + ["commit"]
    assert c.store.ns.counts()["drafts"] == 0
    assert [p for p, _ in c.store.ns.iter_files("/")] == ["/d/empty"]


def test_create_errors_and_zero_byte_files(make):
    c = make(2)
    bad = blocker(c) + "/f1"
    items = files(3)
    items[1] = (bad, items[1][1])
    out = write(c, items + [("/d/zero", b"")])
    assert isinstance(out[1], NotADirectoryError) and bad in str(out[1])
    assert out[0]["size"] == 4096 and out[2]["size"] == 4096
    assert out[3] == {"path": "/d/zero", "size": 0} and block_of(c, "/d/zero") is None
    assert c.store.ns.counts()["drafts"] == 0


def test_an_mds_failure_at_commit_fails_every_unsettled_file(make):
    c = make(2)
    bad = blocker(c) + "/f0"
    c.fail("mds", "batch", error=ConnectionRefusedError,
           match=lambda h: h["ops"][0]["op"] == "commit")
    items = files(4)
    items[0] = (bad, items[0][1])
    out = write(c, items)
    assert isinstance(out[0], NotADirectoryError)        # settled before the failure
    for o in out[1:]:
        assert isinstance(o, ConnectionRefusedError) and "/d/f" in str(o)
    assert [p for p, _ in c.store.ns.iter_files("/")] == ["/blocker"]


def test_requests_are_split_at_the_datanode_limits(make, monkeypatch):
    monkeypatch.setattr(B, "MAX_PUT_MANY", 10)
    c = make(2)
    out = write(c, files(25, size=100))
    assert all(isinstance(o, dict) for o in out)
    assert sorted(put_requests(c)) == [("dn1", 5), ("dn1", 10), ("dn1", 10),
                                       ("dn2", 5), ("dn2", 10), ("dn2", 10)]
    monkeypatch.setattr(B, "BATCH_BYTES", 250)
    c = make(2)
    write(c, files(5, size=100))
    assert sorted(put_requests(c)) == [("dn1", 1), ("dn1", 2), ("dn1", 2),
                                       ("dn2", 1), ("dn2", 2), ("dn2", 2)]


def test_done_callback_sees_every_outcome_in_order(make):
    c = make(2)
    items = files(4)
    items[2] = (blocker(c) + "/f2", items[2][1])
    seen = []
    SmallFiles(Mux(c.connect())).write(
        items, done=lambda i, o: seen.append((i, type(o).__name__)))
    assert seen == [(0, "dict"), (1, "dict"), (2, "NotADirectoryError"), (3, "dict")]


@pytest.mark.parametrize("size", [B.SMALL_FILE_MAX, B.SMALL_FILE_MAX + 1])
def test_small_source_limit(size, tmp_path):
    from client.localio import small_source

    def _small_source(src):
        return small_source(src, B.SMALL_FILE_MAX)

    data = b"x" * size
    (tmp_path / "f").write_bytes(data)
    expect = data if size <= B.SMALL_FILE_MAX else None
    got = _small_source(data)
    assert (bytes(got) if got is not None else None) == expect
    got = _small_source(tmp_path / "f")
    assert (bytes(got) if got is not None else None) == expect
    with open(tmp_path / "f", "rb") as f:
        got = _small_source(f)
        assert (bytes(got) if got is not None else None) == expect
        assert f.tell() == (size if expect is not None else 0)   # a big one is rewound


# -- reading ----------------------------------------------------------------------------

def stored_cluster(make) -> tuple[InProcessCluster, dict[str, bytes]]:
    c = make(3)
    data = {f"/r/f{i}": bytes([i]) * (100 + i) for i in range(10)}
    write(c, list(data.items()) + [("/r/empty", b"")])
    fs = c.client()
    fs.write_bytes("/r/two", b"2" * (2 * BS))           # two blocks: not a small file
    c.calls.clear()
    return c, data


def test_small_reads_one_stat_batch_and_verified_blocks(make):
    c, data = stored_cluster(make)
    paths = list(data) + ["/r/empty", "/r", "/r/two", "/r/missing"]
    out = B.SmallReads(Mux(c.connect())).read(paths)
    assert out[:10] == list(data.values())
    assert out[10] == b"" and isinstance(out[11], IsADirectoryError)
    assert out[12] is B.BIG
    assert isinstance(out[13], FileNotFoundError) and "/r/missing" in str(out[13])
    assert c.ops() == ["batch:stat"]
    assert len([x for x in c.calls if x.op == "get_block"]) == 10


def test_small_reads_fail_over_report_bad_replicas_and_fail_alone(make):
    c, data = stored_cluster(make)
    f2 = block_of(c, "/r/f2")
    bad_node, good_node = f2["replicas"]
    c.alter(bad_node, "get_block", lambda result, payload: (result, [b"rotten" * 20]),
            block=f2["id"])                                # wrong size and checksum
    f5 = block_of(c, "/r/f5")
    for node in f5["replicas"]:
        c.drop_replica(node, f5["id"])                     # gone everywhere
    suspects = Suspects()                 # recently failed nodes are tried last: so the
    suspects.mark(good_node)              # rotten replica of f2 is the one tried first
    out = B.SmallReads(Mux(c.connect()), window=3, suspects=suspects).read(list(data))
    assert out[2] == data["/r/f2"]
    reports = [(x.header["node"], x.header["block"]) for x in c.calls if x.op == "bad_replica"]
    assert (bad_node, f2["id"]) in reports
    assert isinstance(out[5], OSError) and out[5].errno == errno.EIO
    assert out[5].strerror.startswith("/r/f5: block ") and "(batch)" not in str(out[5])
    assert "missing" in out[5].strerror
    assert [o for i, o in enumerate(out) if i != 5] == \
        [d for p, d in data.items() if p != "/r/f5"]
