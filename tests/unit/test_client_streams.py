"""BlockWriter / BlockReader against the in-process cluster (tests/support/inprocess.py:
the real MDS and DataNode services, no sockets): failover to replacement nodes, commits
with fewer replicas, the window bound, fallback to other replicas on corrupt or missing
blocks, and the geometry and lease the MDS answers with."""
from __future__ import annotations

import errno
import os

import crc32c
import pytest

from client.blocks import Piece, Suspects, block_ranges
from client.files import ReadFile, WriteFile
from client.mux import Mux
from client.reading import BlockReader
from client.streams import BlockWriter
from tests.support.inprocess import InProcessCluster

BS = 1024


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=3, block_size=BS) as c:
        yield c


@pytest.fixture
def pair():
    """Two DataNodes only: a replica that fails has no replacement."""
    with InProcessCluster(datanodes=2, block_size=BS) as c:
        yield c


def mux_of(cluster: InProcessCluster) -> Mux:
    return Mux(cluster.connect())


def write_all(mux: Mux, data: bytes, replication: int = 2, window: int = 8,
              suspects: Suspects | None = None) -> BlockWriter:
    w = BlockWriter.create(mux, "/f", replication=replication, block_size=BS, window=window,
                           size_hint=len(data), suspects=suspects)
    for off, n in block_ranges(len(data), BS):
        buf = w.buffer()
        buf[:n] = data[off:off + n]
        w.submit(n)
    w.commit()
    return w


def stat(mux: Mux, path: str = "/f") -> dict:
    return mux.call("mds", {"op": "stat", "path": path}).result


def requests(cluster: InProcessCluster, op: str) -> list[dict]:
    """The headers of the client's requests for `op`, in order."""
    return [c.header for c in cluster.calls if c.caller[0] == "client" and c.op == op]


def assert_stored(cluster: InProcessCluster, mux: Mux, data: bytes, path: str = "/f") -> list:
    """The file's blocks, as the MDS has them: on disk on every replica, with its CRC."""
    blocks = stat(mux, path)["blocks"]
    assert b"".join(bytes(cluster.datanodes[b["replicas"][0]].store.get(b["id"]))
                    for b in blocks) == data
    for b in blocks:
        for node in b["replicas"]:
            assert crc32c.crc32c(cluster.datanodes[node].store.get(b["id"])) == b["checksum"]
    return blocks


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 3 * BS + 7])
def test_write_commits_blocks_in_order(cluster, size):
    mux = mux_of(cluster)
    data = os.urandom(size)
    write_all(mux, data)
    blocks = assert_stored(cluster, mux, data)
    assert [b["size"] for b in blocks] == [n for _, n in block_ranges(size, BS)]
    assert all(len(set(b["replicas"])) == 2 for b in blocks)
    assert stat(mux)["size"] == size


def test_failed_replica_is_replaced_and_excluded_from_later_allocations(cluster):
    cluster.stop("dn2")                  # the MDS does not know yet: it still places there
    mux = mux_of(cluster)
    data = os.urandom(5 * BS)
    write_all(mux, data)
    blocks = assert_stored(cluster, mux, data)
    assert all(sorted(b["replicas"]) == ["dn1", "dn3"] for b in blocks)
    replace = requests(cluster, "replace_target")
    assert replace and all("dn2" in c["exclude"] for c in replace)
    # after its first failure dn2 is a suspect: no later block is sent there
    assert len([c for c in cluster.calls if c.service == "dn.dn2"]) <= 1


def test_suspected_target_is_swapped_before_sending(cluster):
    mux = mux_of(cluster)
    suspects = Suspects()
    w = BlockWriter.create(mux, "/f", replication=2, block_size=BS, suspects=suspects,
                           size_hint=2 * BS)
    data = os.urandom(2 * BS)
    w.buffer()[:BS] = data[:BS]
    w.submit(BS)                                  # both blocks were placed with the create
    (_, targets, _caps), = w._alloc
    keep, victim = targets
    suspects.mark(victim)                         # then a target fails another stream
    w.buffer()[:BS] = data[BS:]
    w.submit(BS)
    w.commit()
    assert requests(cluster, "allocate") == []
    first, second = stat(mux)["blocks"]
    (third,) = {"dn1", "dn2", "dn3"} - set(targets)
    assert sorted(second["replicas"]) == sorted([keep, third])   # swapped before sending
    with pytest.raises(FileNotFoundError):
        cluster.datanodes[victim].store.stat(second["id"])   # nothing was sent there
    assert [c["exclude"] for c in requests(cluster, "replace_target")] == [sorted(targets)]
    assert_stored(cluster, mux, data)


def test_commit_with_fewer_replicas_when_no_replacement_exists(pair):
    pair.stop("dn2")
    mux = mux_of(pair)
    data = os.urandom(2 * BS + 3)
    write_all(mux, data)
    blocks = assert_stored(pair, mux, data)
    assert all(b["replicas"] == ["dn1"] for b in blocks)


def test_block_with_no_replica_fails_clearly_and_the_draft_is_aborted(pair):
    pair.stop("dn1")
    pair.stop("dn2")
    mux = mux_of(pair)
    w = BlockWriter.create(mux, "/f", replication=2, block_size=BS)
    buf = w.buffer()
    buf[:10] = b"x" * 10
    with pytest.raises(OSError) as info:
        w.submit(10)
        w.commit()
    assert info.value.errno == errno.EIO
    assert "/f" in str(info.value) and "dn1 (node down)" in str(info.value)
    w.abort()
    assert requests(pair, "abort") == [{"op": "abort", "handle": w.handle}]
    assert pair.ops()[-1] == "abort"
    assert pair.store.ns.counts()["drafts"] == 0
    with pytest.raises(FileNotFoundError):
        stat(mux)


def test_window_bounds_blocks_in_flight_and_reuses_buffers(cluster):
    conn = cluster.connect()
    mux = Mux(conn)
    peak = [0]
    send = conn.send

    def counting_send(*args, **kw):
        rid = send(*args, **kw)
        out = {h["id"] for h in conn.sent.values() if h["op"] == "put_block"}
        peak[0] = max(peak[0], len(out))
        return rid

    conn.send = counting_send
    data = os.urandom(40 * BS)
    w = write_all(mux, data, window=3)
    assert 1 <= peak[0] <= 3
    assert len(mux.buffers._free) <= 3 and w._buffers == [None] * 3
    assert_stored(cluster, mux, data)
    # a second write of this thread reuses the pooled buffers instead of new ones
    before = {id(b) for b in mux.buffers._free}
    w2 = BlockWriter.create(mux, "/g", replication=2, block_size=BS, window=3)
    assert id(w2.buffer().obj) in before
    w2.abort()


def test_allocation_asks_exactly_for_a_known_size(cluster):
    write_all(mux_of(cluster), os.urandom(3 * BS + 7))
    assert requests(cluster, "allocate") == []          # the create placed all 4 blocks
    cluster.calls.clear()
    mux = mux_of(cluster)
    write_all(mux, os.urandom(40 * BS), window=4)
    # 16 blocks come with the create, the rest in batches of twice the window
    assert [c["count"] for c in requests(cluster, "allocate")] == [8, 8, 8]
    assert len(stat(mux)["blocks"]) == 40
    assert cluster.store.ns.counts()["blocks"] == 40     # nothing allocated beyond the file


def _whole(info: dict) -> list[Piece]:
    return [Piece(i, 0, b["size"], True) for i, b in enumerate(info["blocks"])]


def test_reader_falls_back_on_a_corrupt_replica_and_reports_it(cluster):
    mux = mux_of(cluster)
    data = os.urandom(3 * BS + 7)
    write_all(mux, data)
    info = stat(mux)
    victim = info["blocks"][1]
    bad, good = victim["replicas"]
    cluster.corrupt(bad, victim["id"])
    suspects = Suspects()
    suspects.mark(good)                   # so the corrupt copy is asked first
    got = b"".join(BlockReader(mux, "/f", info["blocks"], _whole(info), window=2,
                               suspects=suspects))
    assert got == data
    assert requests(cluster, "bad_replica") == [{"op": "bad_replica", "block": victim["id"],
                                                 "node": bad, "reason": "checksum mismatch"}]
    # the MDS believed it: that replica is out of the block map (and re-replicated later)
    assert bad not in stat(mux)["blocks"][1]["replicas"]


def test_reader_fails_clearly_when_every_replica_is_bad(cluster):
    conn = cluster.connect()
    mux = Mux(conn)
    data = os.urandom(3 * BS + 7)
    write_all(mux, data)
    info = stat(mux)
    victim = info["blocks"][2]
    short, gone = victim["replicas"]
    cluster.corrupt(short, victim["id"], "truncate")
    cluster.drop_replica(gone, victim["id"])
    with pytest.raises(OSError) as exc:
        b"".join(BlockReader(mux, "/f", info["blocks"], _whole(info), window=8))
    assert exc.value.errno == errno.EIO
    msg = str(exc.value)
    assert "/f" in msg and victim["id"].hex() in msg
    assert f"{gone}: missing" in msg and f"{short}: {BS - 1} bytes instead of {BS}" in msg
    assert conn.in_flight == 0 and not conn.sent   # the other blocks' requests were cancelled


def test_reader_missing_replica_then_range_reads(cluster):
    mux = mux_of(cluster)
    data = os.urandom(3 * BS + 7)
    write_all(mux, data)
    info = stat(mux)
    first = info["blocks"][0]
    cluster.drop_replica(first["replicas"][0], first["id"])
    pieces = [Piece(0, 5, 100, False), Piece(1, 0, BS, True), Piece(3, 0, 7, True)]
    got = b"".join(BlockReader(mux, "/f", info["blocks"], pieces, window=8))
    assert got == data[5:105] + data[BS:2 * BS] + data[3 * BS:]
    reports = requests(cluster, "bad_replica")
    assert len(reports) <= 1 and all(r["reason"] == "missing" and r["block"] == first["id"]
                                     for r in reports)


def test_down_node_is_suspected_not_reported(cluster):
    mux = mux_of(cluster)
    data = os.urandom(4 * BS)
    write_all(mux, data)
    info = stat(mux)
    node = info["blocks"][0]["replicas"][0]
    cluster.stop(node)
    suspects = Suspects()
    assert b"".join(BlockReader(mux, "/f", info["blocks"], _whole(info),
                                suspects=suspects)) == data
    assert requests(cluster, "bad_replica") == []
    assert suspects.current() <= {node}


def test_read_file_seeks_and_write_file_streams(cluster):
    mux = mux_of(cluster)
    data = os.urandom(5 * BS + 11)
    f = WriteFile(BlockWriter.create(mux, "/f", replication=2, block_size=BS))
    with f:
        for i in range(0, len(data), 333):
            f.write(data[i:i + 333])
        with pytest.raises(FileNotFoundError):
            stat(mux)                            # nothing visible before close
    assert f.result["size"] == len(data)
    assert_stored(cluster, mux, data)
    r = ReadFile(mux, stat(mux), window=4)
    assert r.read(10) == data[:10]
    r.seek(3 * BS - 2)
    assert r.read(4) == data[3 * BS - 2:3 * BS + 2]
    r.seek(-5, os.SEEK_END)
    assert r.read() == data[-5:]
    assert r.read(1) == b""
    r.seek(0)
    assert r.read() == data
    r.close()


def test_write_file_aborts_on_exception(cluster):
    mux = mux_of(cluster)
    with pytest.raises(RuntimeError):
        with WriteFile(BlockWriter.create(mux, "/f", replication=2, block_size=BS)) as f:
            f.write(b"x" * (2 * BS + 5))
            raise RuntimeError("boom")
    assert cluster.ops()[-1] == "abort" and not requests(cluster, "commit")
    assert cluster.store.ns.counts()["drafts"] == 0
    with pytest.raises(FileNotFoundError):
        stat(mux)


# -- defaults and the lease come from the MDS -------------------------------------------

def test_a_writer_without_replication_or_block_size_takes_the_clusters():
    with InProcessCluster(datanodes=3, replication=3, block_size=BS) as c:
        w = BlockWriter.create(mux_of(c), "/f", size_hint=10)
        (create,) = requests(c, "create")
        assert "replication" not in create and "block_size" not in create   # sends none
        assert (w.replication, w.block_size) == (3, BS)             # the reply decides
        w.abort()


@pytest.mark.parametrize("reply", [{"handle": "h"}, {"handle": "h", "replication": 2},
                                   {"handle": "h", "replication": 0, "block_size": BS}])
def test_a_create_reply_without_geometry_is_a_protocol_error(cluster, reply):
    cluster.alter("mds", "create", lambda result, payload: (dict(reply), payload))
    with pytest.raises(OSError) as exc:
        BlockWriter.create(mux_of(cluster), "/f")
    assert exc.value.errno == errno.EPROTO


def test_the_renew_period_follows_the_lease_the_mds_reports(cluster):
    w = BlockWriter.create(mux_of(cluster), "/f")    # create: 60 s left, renew every 20
    assert w._renew_every == 20.0
    w._renewed({"lease": 6.0})                       # a renew (or allocate) reply: 6 s left
    assert w._renew_every == 2.0
    w._renewed({"blocks": []})                       # a reply without a lease keeps the period
    assert w._renew_every == 2.0
    w.abort()
