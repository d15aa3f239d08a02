"""Server-side copies and composed files on the in-process cluster: AegisClient.copy and
.compose through the real MDS handlers and DataNodes (no block byte moves), permissions
by caller, non-uniform block sizes on the read path, deletes only when the last
reference goes."""
from __future__ import annotations

import random

import pytest

from broker import protocol as P
from tests.support.inprocess import InProcessCluster

BS = 256 * 1024


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=3, block_size=BS) as c:
        yield c


@pytest.fixture
def fs(cluster):
    with cluster.client() as client:
        yield client


def block_traffic(cluster: InProcessCluster, since: int) -> list[str]:
    """The DataNode requests made after call number `since` (anything but info)."""
    return [f"{c.service}:{c.op}" for c in cluster.calls[since:]
            if c.service.startswith("dn.") and c.op != "info"]


def on_disk(cluster: InProcessCluster, block_hex: str) -> list[str]:
    bid = bytes.fromhex(block_hex)
    out = []
    for name, dn in cluster.datanodes.items():
        try:
            dn.store.stat(bid)
            out.append(name)
        except FileNotFoundError:
            pass
    return out


def test_copy_moves_no_bytes_and_outlives_its_source(cluster, fs):
    data = random.Random(1).randbytes(3 * BS + 17)
    fs.write_bytes("/src", data)
    blocks = fs.stat("/src")["blocks"]
    mark = len(cluster.calls)
    assert fs.copy("/src", "/dst") == "/dst"
    assert block_traffic(cluster, mark) == []
    assert [c.op for c in cluster.calls[mark:]] == ["copy"]       # one request
    assert fs.stat("/dst")["blocks"] == blocks
    fs.rm("/src")
    cluster.run(10.0)                       # past the delete grace: nothing went
    assert all(on_disk(cluster, b["id"]) for b in blocks)
    assert fs.read_bytes("/dst") == data
    fs.rm("/dst")
    cluster.run(10.0)
    assert [on_disk(cluster, b["id"]) for b in blocks] == [[]] * len(blocks)


def test_copy_into_a_directory_and_the_refusals(cluster, fs):
    fs.write_bytes("/a", b"abc")
    fs.mkdir("/d")
    assert fs.copy("/a", "/d") == "/d/a"
    assert fs.read_bytes("/d/a") == b"abc"
    with pytest.raises(IsADirectoryError):
        fs.copy("/d", "/e")
    with pytest.raises(FileExistsError):
        fs.copy("/a", "/d/a", exclusive=True)
    with pytest.raises(FileNotFoundError):
        fs.copy("/missing", "/x")
    fs.write_bytes("/b", b"other")
    fs.copy("/a", "/b")                     # replaces, like cp
    assert fs.read_bytes("/b") == b"abc"


def test_copy_permissions_follow_the_caller(cluster, fs):
    for user in ("alice", "bob"):
        fs.mkdir(f"/{user}")
        fs.chown(f"/{user}", user, user)
    alice = cluster.client((P.CALLER_CLIENT, "alice"))
    bob = cluster.client((P.CALLER_CLIENT, "bob"))
    alice.write_bytes("/alice/private", b"secret")
    alice.chmod("/alice/private", 0o600)
    alice.write_bytes("/alice/shared", b"hello")
    with pytest.raises(PermissionError):
        bob.copy("/alice/private", "/bob/stolen")
    with pytest.raises(PermissionError):
        bob.copy("/alice/shared", "/alice/mine")       # no write on alice's directory
    with pytest.raises(PermissionError):                # composing is no way around it
        bob.compose("/bob/stolen", ["/alice/private"])
    assert bob.copy("/alice/shared", "/bob/copy") == "/bob/copy"
    st = bob.stat("/bob/copy")
    assert (st["owner"], st["mode"]) == ("bob", 0o644) and bob.read_bytes("/bob/copy") == b"hello"
    assert not fs.exists("/bob/stolen")
    alice.close()
    bob.close()


def test_compose_parts_of_uneven_blocks_reads_back_byte_exact(cluster, fs):
    rng = random.Random(2)
    parts = [rng.randbytes(BS + 1000), rng.randbytes(2 * BS), rng.randbytes(77)]
    for i, p in enumerate(parts):
        fs.write_bytes(f"/up/{i}", p)
    mark = len(cluster.calls)
    out = fs.compose("/obj", [f"/up/{i}" for i in range(3)])
    assert out == {"path": "/obj", "size": sum(map(len, parts))}
    assert block_traffic(cluster, mark) == []
    whole = b"".join(parts)
    assert [b["size"] for b in fs.stat("/obj")["blocks"]] == [BS, 1000, BS, BS, 77]
    fs.rm("/up", recursive=True)
    cluster.run(10.0)
    assert fs.read_bytes("/obj") == whole
    # ranges across the uneven boundaries, and a file object seeking around
    for off, n in ((BS - 5, 1010), (BS + 999, 2), (BS + 1000, BS), (len(whole) - 80, 200)):
        assert fs.read_bytes("/obj", off, n) == whole[off:off + n]
    with fs.open("/obj") as f:
        f.seek(BS + 990)
        assert f.read(BS) == whole[BS + 990:2 * BS + 990]
    fs.get_many([("/obj", f"{cluster.root}/obj.local")])
    assert open(f"{cluster.root}/obj.local", "rb").read() == whole


def test_compose_block_ranges_and_a_replaced_source(cluster, fs):
    data = random.Random(3).randbytes(4 * BS)
    fs.write_bytes("/big", data)
    assert fs.compose("/mid", [("/big", 1, 2)])["size"] == 2 * BS
    assert fs.read_bytes("/mid") == data[BS:3 * BS]
    with pytest.raises(ValueError):
        fs.compose("/bad", [("/big", 3, 2)])
    # the source changes between the client's stat and its commit: refused, no file
    real_mds = fs._mds

    def racing(about, op, **fields):
        if op == "commit":
            fs.write_bytes("/big", b"replaced")
        return real_mds(about, op, **fields)
    fs._mds = racing
    with pytest.raises(FileNotFoundError):
        fs.compose("/late", ["/big"])
    fs._mds = real_mds
    assert not fs.exists("/late") and cluster.store.ns.draft_handles() == []


def test_the_last_reference_deletes_after_overwrites(cluster, fs):
    fs.write_bytes("/v1", random.Random(4).randbytes(2 * BS))
    blocks = fs.stat("/v1")["blocks"]
    fs.copy("/v1", "/v2")
    fs.write_bytes("/v1", b"new")            # overwrite the source
    fs.mv("/v2", "/v3")
    cluster.run(10.0)
    assert all(on_disk(cluster, b["id"]) for b in blocks)
    fs.write_bytes("/v3", b"newer")          # and the copy: the last reference
    cluster.run(10.0)
    assert [on_disk(cluster, b["id"]) for b in blocks] == [[]] * len(blocks)
    assert fs.fsck()["healthy"]


def test_copy_in_a_batch_and_the_shared_block_repair(cluster, fs):
    fs.write_bytes("/a", random.Random(5).randbytes(BS))
    (blk,) = fs.stat("/a")["blocks"]
    conn = cluster.connect()
    res = conn.call("mds", {"op": "batch", "ops": [
        {"op": "copy", "src": "/a", "dst": "/b"}, {"op": "copy", "src": "/a", "dst": "/c"},
        {"op": "copy", "src": "/nope", "dst": "/x"}]}).result["results"]
    assert [("ok" in r) for r in res] == [True, True, False]
    assert res[2]["err"][0] == "ENOENT"
    victim = blk["replicas"][0]
    cluster.stop(victim)
    cluster.run(10.0)                        # one block re-replicated for three files
    copies = [c for c in cluster.calls if c.op == "copy_block" or
              (c.service == "mds" and c.op == "replica_added")]
    assert len([c for c in copies if c.op == "replica_added"]) == 1
    replicas = {p: fs.stat(p)["blocks"][0]["replicas"] for p in ("/a", "/b", "/c")}
    assert len({tuple(r) for r in replicas.values()}) == 1 and victim not in replicas["/a"]
