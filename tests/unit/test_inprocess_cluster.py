"""Client logic, handlers and caller checks together, without sockets, on the in-process
cluster (tests/support/inprocess.py): who may call what, round trips at the block and
pack edges, 500 small files each way, ESTALE under an open reader once the delete grace
has passed, re-replication after a node dies, and the transport's own fidelity."""
from __future__ import annotations

import errno
import io
import random

import pytest

from broker import protocol as P
from tests.support.inprocess import InProcessCluster

BS = 256 * 1024
SMALL_MAX = 128 * 1024          # blocks up to this size go to a DataNode's pack files


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=3, block_size=BS, small_max=SMALL_MAX) as c:
        yield c


@pytest.fixture
def fs(cluster):
    with cluster.client() as client:
        yield client


# -- callers ------------------------------------------------------------------------------

def test_a_client_cannot_send_what_only_datanodes_and_the_mds_may(cluster, fs):
    fs.write_bytes("/f", b"data")
    (block,) = fs.stat("/f")["blocks"]
    bid, holder = bytes.fromhex(block["id"]), block["replicas"][0]
    conn = cluster.connect()
    heartbeat = {"op": "dn_heartbeat", "node": "dn1", "capacity": 1, "used": 0, "blocks": 0}
    with pytest.raises(PermissionError, match="not allowed for a client caller"):
        conn.call("mds", heartbeat)
    with pytest.raises(PermissionError):
        conn.call(f"dn.{holder}", {"op": "delete_block", "id": bid})
    with pytest.raises(PermissionError):
        conn.call("mds", {"op": "block_corrupt", "node": holder, "block": bid})
    assert cluster.datanodes[holder].store.get(bid) == b"data"     # nothing was done
    assert fs.read_bytes("/f") == b"data" and fs.stat("/f")["blocks"] == [block]
    assert cluster.view.nodes()["dn1"]["capacity"] == 1 << 40      # no heartbeat taken


def test_a_datanode_speaks_only_for_itself_and_only_as_a_datanode(cluster, fs):
    dn2 = cluster.connect((P.CALLER_DATANODE, "dn2"))
    with pytest.raises(PermissionError, match="cannot speak for node 'dn1'"):
        dn2.call("mds", {"op": "dn_heartbeat", "node": "dn1", "capacity": 1, "used": 0,
                         "blocks": 0})
    with pytest.raises(PermissionError):
        dn2.call("mds", {"op": "create", "path": "/x"})
    mds = cluster.connect((P.CALLER_MDS, "mds"))
    fs.write_bytes("/f", b"x" * 10)
    (block,) = fs.stat("/f")["blocks"]
    node = block["replicas"][0]
    assert mds.call(f"dn.{node}", {"op": "delete_block", "id": bytes.fromhex(block["id"])}
                    ).result == {"deleted": True}                  # the MDS may
    with pytest.raises(FileNotFoundError):
        cluster.datanodes[node].store.stat(bytes.fromhex(block["id"]))


def test_requests_cross_the_wire_encodings(cluster):
    conn = cluster.connect()
    # a tuple travels as a msgpack array, as over a socket: the schema sees a list
    conn.call("mds", {"op": "mkdir", "path": "/d"})
    assert conn.call("mds", {"op": "batch", "ops": ({"op": "stat", "path": "/d"},)}
                     ).result["results"][0]["ok"]["type"] == "dir"
    with pytest.raises(P.ProtocolError):
        conn.call("mds", {"op": "mkdir", "path": object()})       # cannot be encoded
    with pytest.raises(OSError) as info:
        conn.call("mds", {"op": "no_such_op"})
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(ConnectionRefusedError, match="no live worker"):
        conn.call("dn.dn9", {"op": "info"})


# -- round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, SMALL_MAX, SMALL_MAX + 1, BS - 1, BS, BS + 1,
                                  3 * BS + 7])
def test_put_and_get_round_trip_at_the_edges(cluster, fs, tmp_path, size):
    data = random.Random(size).randbytes(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    assert fs.put(src, "/dir/f") == {"path": "/dir/f", "size": size}
    assert fs.get("/dir/f", tmp_path / "out") == size
    assert (tmp_path / "out").read_bytes() == data
    st = fs.stat("/dir/f")
    assert st["size"] == size and [b["size"] for b in st["blocks"]] == \
        [min(BS, size - off) for off in range(0, size, BS)]
    for b in st["blocks"]:
        assert sorted(b["replicas"]) == sorted(set(b["replicas"])) and len(b["replicas"]) == 2
    assert fs.read_bytes("/dir/f", max(0, size - 5), 3) == data[max(0, size - 5):][:3]


def test_put_many_and_get_many_of_500_small_files(cluster, fs):
    rng = random.Random(7)
    items = {f"/many/d{i % 7}/f{i}": rng.randbytes(rng.randrange(0, 3000)) for i in range(500)}
    out = fs.put_many([(data, path) for path, data in items.items()])
    assert out == [{"path": p, "size": len(d)} for p, d in items.items()]
    # lock step: one batch of creates and one of commits per 64 files
    ops = cluster.ops()
    assert ops.count("batch:create") == 8 and ops.count("batch:commit") == 8
    assert fs.du("/many")["files"] == 500
    cluster.calls.clear()
    # file objects as destinations: local paths would time the local disk's syncs
    local = {p: io.BytesIO() for p in items}
    got = fs.get_many(list(local.items()))
    assert [g["size"] for g in got] == [len(d) for d in items.values()]
    assert all(local[p].getvalue() == d for p, d in items.items())
    assert cluster.ops() == ["batch:stat", "batch:stat"]           # 256 stats a batch
    assert len([c for c in cluster.calls if c.op == "get_block"]) == \
        sum(1 for d in items.values() if d)                         # one fetch per block


# -- time: the delete grace, dead nodes ----------------------------------------------------

def test_an_overwrite_under_an_open_reader_is_estale_after_the_delete_grace(cluster, fs):
    old = random.Random(1).randbytes(4 * BS)
    fs.write_bytes("/open.bin", old)
    old_blocks = fs.stat("/open.bin")["blocks"]
    with fs.open("/open.bin") as f:
        assert f.read(10) == old[:10]
        fs.write_bytes("/open.bin", b"the new version")
        cluster.run(2.0)                   # within the grace the old blocks stay
        f.seek(BS)
        assert f.read(BS) == old[BS:2 * BS]
        cluster.run(6.0)                   # past the grace: heartbeats carry the deletes
        for b in old_blocks:
            for node in b["replicas"]:
                with pytest.raises(FileNotFoundError):
                    cluster.datanodes[node].store.stat(bytes.fromhex(b["id"]))
        f.seek(3 * BS)
        with pytest.raises(OSError) as info:
            f.read()
        assert info.value.errno == errno.ESTALE and "/open.bin" in str(info.value)
    assert fs.read_bytes("/open.bin") == b"the new version"


def test_a_dead_nodes_replicas_are_copied_elsewhere(cluster, fs):
    data = random.Random(2).randbytes(3 * BS)
    fs.write_bytes("/f", data)
    victim = fs.stat("/f")["blocks"][0]["replicas"][0]
    cluster.stop(victim)
    cluster.run(10.0)                      # dead after 5 s; copies go out with heartbeats
    assert ("mds", "node.down") in [(s, t) for s, t, f in cluster.events
                                    if f.get("node") == victim]
    health = fs.fsck()
    assert health["healthy"], health
    for b in fs.stat("/f")["blocks"]:
        assert victim not in b["replicas"] and len(set(b["replicas"])) == 2
        for node in b["replicas"]:
            assert cluster.datanodes[node].store.stat(bytes.fromhex(b["id"])).size == b["size"]
    assert fs.read_bytes("/f") == data


def test_a_draft_whose_lease_runs_out_is_dropped_with_its_blocks(cluster, fs):
    w = fs.open("/slow", "wb")
    w.write(b"x" * (BS + 1))               # one block sent, the draft stays open
    assert cluster.store.ns.counts()["drafts"] == 1
    cluster.run(61.0)                      # the lease (60 s) was never renewed
    assert cluster.store.ns.counts()["drafts"] == 0
    with pytest.raises(OSError):
        w.close()                          # the commit finds no draft
    with pytest.raises(FileNotFoundError):
        fs.stat("/slow")


def test_a_fault_hook_catches_exactly_what_it_names():
    with InProcessCluster(datanodes=3, block_size=BS, capabilities=False) as cluster:
        _fault_hook_catches_exactly_what_it_names(cluster)


def _fault_hook_catches_exactly_what_it_names(cluster):
    conn = cluster.connect()
    put = {"op": "put_block", "id": b"\1" * 16}
    fault = cluster.fail("dn2", "put_block", times=2)
    conn.call("dn.dn1", put, [b"a"])                      # another node: delivered
    for _ in range(2):
        with pytest.raises(ConnectionResetError, match="worker lost"):
            conn.call("dn.dn2", put, [b"b"])
    assert conn.call("dn.dn2", put, [b"b"]).result["size"] == 1    # the third gets through
    assert fault.hits == [b"\1" * 16] * 2 and fault.times == 0
    assert cluster.datanodes["dn2"].store.get(b"\1" * 16) == b"b"
