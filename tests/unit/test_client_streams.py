"""BlockWriter / BlockReader against an in-memory stand-in for the broker (no sockets):
failover to replacement nodes, commits with fewer replicas, the window bound, fallback
to other replicas on corrupt or missing blocks."""
from __future__ import annotations

import errno
import itertools
import os
from collections import deque

import crc32c
import pytest

from broker.client import Reply
from client.blocks import Piece, Suspects, block_ranges
from client.files import ReadFile, WriteFile
from client.streams import BlockReader, BlockWriter, BufferPool

BS = 1024


class FakeCluster:
    """Plays the MDS and the DataNodes behind the Mux interface streams.py uses.

    Replies are queued per sender and handed out one per `next()`, so requests really
    are in flight between send() and next()."""

    def __init__(self, nodes=("dn1", "dn2", "dn3"), placement=None) -> None:
        self.store = {n: {} for n in nodes}
        self.down: set[str] = set()
        self.placement = placement or (lambda i: ["dn1", "dn2"])
        self.buffers = BufferPool(8)
        self.rids = itertools.count(1)
        self.queue: deque[tuple[object, Reply]] = deque()
        self.calls: list[dict] = []
        self.committed: dict | None = None
        self.outstanding: dict[int, bytes] = {}      # rid -> block id (put_block only)
        self.max_blocks_in_flight = 0
        self.alloc_count = 0

    # -- the Mux interface --------------------------------------------------------------
    def call(self, service, header, payload=(), timeout=None) -> Reply:
        assert service == "mds"
        self.calls.append(dict(header))
        op = header["op"]
        if op == "create":
            return Reply(0, service, {"handle": "h1", "replication": header.get("replication", 2),
                                      "block_size": header.get("block_size", BS), "lease": 60.0})
        if op == "allocate":
            blocks = []
            for _ in range(header["count"]):
                bid = os.urandom(16)
                nodes = [n for n in self.placement(self.alloc_count)
                         if n not in header.get("exclude", [])]
                self.alloc_count += 1
                blocks.append({"id": bid, "nodes": nodes})
            return Reply(0, service, {"blocks": blocks})
        if op == "replace_target":
            for node in self.store:
                if node not in header["exclude"] and node not in self.down:
                    return Reply(0, service, {"node": node})
            raise OSError(errno.ENOSPC, "no live DataNode left")
        if op == "commit":
            self.committed = header
            return Reply(0, service, {"path": "/f", "size": sum(b["size"] for b in header["blocks"])})
        return Reply(0, service, {})

    def send(self, owner, service, header, payload=(), timeout=None) -> int:
        rid = next(self.rids)
        node = service.removeprefix("dn.")
        if node in self.down:
            reply = Reply(rid, service, error=ConnectionRefusedError(
                errno.ECONNREFUSED, f"no live worker for {service}"))
        elif header["op"] == "put_block":
            data = bytes(payload[0])
            assert crc32c.crc32c(data) == header["checksum"]
            self.store[node][header["id"]] = data
            self.outstanding[rid] = header["id"]
            self.max_blocks_in_flight = max(self.max_blocks_in_flight,
                                            len(set(self.outstanding.values())))
            reply = Reply(rid, service, {"id": header["id"], "size": len(data),
                                         "checksum": crc32c.crc32c(data)})
        else:   # get_block
            data = self.store[node].get(header["id"])
            if data is None:
                reply = Reply(rid, service, error=FileNotFoundError(errno.ENOENT, "no such block"))
            elif "offset" not in header and "length" not in header:
                reply = Reply(rid, service, {"size": len(data), "checksum": crc32c.crc32c(data)},
                              payload=[memoryview(data)])
            else:   # a range: the whole block as one chunk, as a DataNode does for a pack block
                reply = Reply(rid, service, {"size": len(data), "checksum": crc32c.crc32c(data),
                                             "offset": 0, "chunk_size": len(data),
                                             "chunks": [crc32c.crc32c(data)]},
                              payload=[memoryview(data)])
        self.queue.append((owner, reply))
        return rid

    def next(self, owner, timeout):
        for i, (who, reply) in enumerate(self.queue):
            if who is owner:
                del self.queue[i]
                self.outstanding.pop(reply.rid, None)
                return reply
        return None

    def cancel(self, owner, rids):
        self.queue = deque((w, r) for w, r in self.queue if r.rid not in set(rids))


def write_all(fake: FakeCluster, data: bytes, replication: int = 2, window: int = 8) -> BlockWriter:
    w = BlockWriter.create(fake, "/f", replication=replication, block_size=BS, window=window,
                           size_hint=len(data))
    for off, n in block_ranges(len(data), BS):
        buf = w.buffer()
        buf[:n] = data[off:off + n]
        w.submit(n)
    w.commit()
    return w


def assert_stored(fake: FakeCluster, data: bytes) -> None:
    blocks = fake.committed["blocks"]
    assert b"".join(fake.store[b["replicas"][0]][b["id"]] for b in blocks) == data
    for b in blocks:
        for node in b["replicas"]:
            assert crc32c.crc32c(fake.store[node][b["id"]]) == b["checksum"]


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 3 * BS + 7])
def test_write_commits_blocks_in_order(size):
    fake = FakeCluster()
    data = os.urandom(size)
    write_all(fake, data)
    blocks = fake.committed["blocks"]
    assert [b["size"] for b in blocks] == [n for _, n in block_ranges(size, BS)]
    assert all(b["replicas"] == ["dn1", "dn2"] for b in blocks)
    assert_stored(fake, data)


def test_failed_replica_is_replaced_and_excluded_from_later_allocations():
    fake = FakeCluster()
    fake.down.add("dn2")
    data = os.urandom(5 * BS)
    write_all(fake, data)
    assert all(sorted(b["replicas"]) == ["dn1", "dn3"] for b in fake.committed["blocks"])
    replace = [c for c in fake.calls if c["op"] == "replace_target"]
    assert replace and all("dn2" in c["exclude"] and "dn1" in c["exclude"] for c in replace)
    assert_stored(fake, data)


def test_suspected_target_is_swapped_before_sending():
    fake = FakeCluster()
    suspects = Suspects()
    w = BlockWriter.create(fake, "/f", replication=2, block_size=BS, suspects=suspects,
                           size_hint=2 * BS)
    data = os.urandom(2 * BS)
    w.buffer()[:BS] = data[:BS]
    w.submit(BS)                                  # allocates both blocks on dn1 + dn2
    suspects.mark("dn2")                          # then dn2 fails another stream
    w.buffer()[:BS] = data[BS:]
    w.submit(BS)
    w.commit()
    assert [c["count"] for c in fake.calls if c["op"] == "allocate"] == [2]
    first, second = fake.committed["blocks"]
    assert first["replicas"] == ["dn1", "dn2"]
    assert second["replicas"] == ["dn1", "dn3"]   # swapped before anything was sent
    assert second["id"] not in fake.store["dn2"]
    assert_stored(fake, data)


def test_commit_with_fewer_replicas_when_no_replacement_exists():
    fake = FakeCluster(nodes=("dn1", "dn2"))
    fake.down.add("dn2")
    data = os.urandom(2 * BS + 3)
    write_all(fake, data)
    assert all(b["replicas"] == ["dn1"] for b in fake.committed["blocks"])
    assert_stored(fake, data)


def test_block_with_no_replica_fails_clearly_and_the_draft_is_aborted():
    fake = FakeCluster(nodes=("dn1", "dn2"))
    fake.down.update({"dn1", "dn2"})
    w = BlockWriter.create(fake, "/f", replication=2, block_size=BS)
    buf = w.buffer()
    buf[:10] = b"x" * 10
    with pytest.raises(OSError) as info:
        w.submit(10)
        w.commit()
    assert info.value.errno == errno.EIO
    assert "/f" in str(info.value) and "dn1 (node down)" in str(info.value)
    w.abort()
    assert fake.calls[-1] == {"op": "abort", "handle": "h1"}
    assert fake.committed is None


def test_window_bounds_blocks_in_flight_and_reuses_buffers():
    fake = FakeCluster()
    data = os.urandom(40 * BS)
    w = write_all(fake, data, window=3)
    assert fake.max_blocks_in_flight <= 3
    assert len(fake.buffers._free) <= 3 and w._buffers == [None] * 3
    assert_stored(fake, data)
    # a second write of this thread reuses the pooled buffers instead of new ones
    before = {id(b) for b in fake.buffers._free}
    w2 = BlockWriter.create(fake, "/g", replication=2, block_size=BS, window=3)
    assert id(w2.buffer().obj) in before


def test_allocation_asks_exactly_for_a_known_size():
    fake = FakeCluster()
    write_all(fake, os.urandom(3 * BS + 7))
    assert [c["count"] for c in fake.calls if c["op"] == "allocate"] == [4]
    fake = FakeCluster()
    write_all(fake, os.urandom(40 * BS), window=4)
    assert [c["count"] for c in fake.calls if c["op"] == "allocate"] == [8] * 5


def _committed_file(fake: FakeCluster) -> dict:
    blocks = fake.committed["blocks"]
    return {"path": "/f", "size": sum(b["size"] for b in blocks), "blocks": blocks}


def _whole(info: dict) -> list[Piece]:
    return [Piece(i, 0, b["size"], True) for i, b in enumerate(info["blocks"])]


def test_reader_falls_back_on_a_corrupt_replica_and_reports_it():
    fake = FakeCluster()
    data = os.urandom(3 * BS + 7)
    write_all(fake, data)
    info = _committed_file(fake)
    victim = info["blocks"][1]["id"]
    fake.store["dn1"][victim] = b"\0" + fake.store["dn1"][victim][1:]
    suspects = Suspects()
    suspects.mark("dn2")                  # so dn1, the corrupt copy, is asked first
    got = b"".join(BlockReader(fake, "/f", info["blocks"], _whole(info), window=2,
                               suspects=suspects))
    assert got == data
    reports = [c for c in fake.calls if c["op"] == "bad_replica"]
    assert reports == [{"op": "bad_replica", "block": victim, "node": "dn1",
                        "reason": "checksum mismatch"}]


def test_reader_fails_clearly_when_every_replica_is_bad():
    fake = FakeCluster()
    data = os.urandom(3 * BS + 7)
    write_all(fake, data)
    info = _committed_file(fake)
    victim = info["blocks"][2]["id"]
    fake.store["dn1"][victim] = fake.store["dn1"][victim][:-1]   # short
    del fake.store["dn2"][victim]                                # missing
    with pytest.raises(OSError) as exc:
        b"".join(BlockReader(fake, "/f", info["blocks"], _whole(info), window=8))
    assert exc.value.errno == errno.EIO
    msg = str(exc.value)
    assert "/f" in msg and victim.hex() in msg
    assert "dn2: missing" in msg and f"dn1: {BS - 1} bytes instead of {BS}" in msg
    assert not fake.queue                  # the other blocks' requests were cancelled


def test_reader_missing_replica_then_range_reads():
    fake = FakeCluster()
    data = os.urandom(3 * BS + 7)
    write_all(fake, data)
    info = _committed_file(fake)
    del fake.store["dn1"][info["blocks"][0]["id"]]
    pieces = [Piece(0, 5, 100, False), Piece(1, 0, BS, True), Piece(3, 0, 7, True)]
    got = b"".join(BlockReader(fake, "/f", info["blocks"], pieces, window=8))
    assert got == data[5:105] + data[BS:2 * BS] + data[3 * BS:]
    gets = [c for c in fake.calls if c["op"] == "bad_replica"]
    assert len(gets) <= 1 and all(g["reason"] == "missing" for g in gets)


def test_down_node_is_suspected_not_reported():
    fake = FakeCluster()
    data = os.urandom(4 * BS)
    write_all(fake, data)
    info = _committed_file(fake)
    fake.down.add("dn2")
    suspects = Suspects()
    assert b"".join(BlockReader(fake, "/f", info["blocks"], _whole(info),
                                suspects=suspects)) == data
    assert not [c for c in fake.calls if c["op"] == "bad_replica"]
    assert suspects.current() <= {"dn2"}


def test_read_file_seeks_and_write_file_streams():
    fake = FakeCluster()
    data = os.urandom(5 * BS + 11)
    f = WriteFile(BlockWriter.create(fake, "/f", replication=2, block_size=BS))
    with f:
        for i in range(0, len(data), 333):
            f.write(data[i:i + 333])
        assert fake.committed is None           # nothing visible before close
    assert f.result["size"] == len(data)
    assert_stored(fake, data)
    r = ReadFile(fake, _committed_file(fake), window=4)
    assert r.read(10) == data[:10]
    r.seek(3 * BS - 2)
    assert r.read(4) == data[3 * BS - 2:3 * BS + 2]
    r.seek(-5, os.SEEK_END)
    assert r.read() == data[-5:]
    assert r.read(1) == b""
    r.seek(0)
    assert r.read() == data
    r.close()


def test_write_file_aborts_on_exception():
    fake = FakeCluster()
    with pytest.raises(RuntimeError):
        with WriteFile(BlockWriter.create(fake, "/f", replication=2, block_size=BS)) as f:
            f.write(b"x" * (2 * BS + 5))
            raise RuntimeError("boom")
    assert fake.committed is None
    assert fake.calls[-1]["op"] == "abort"


# -- defaults and the lease come from the MDS -------------------------------------------

def test_a_writer_without_replication_or_block_size_takes_the_clusters():
    fake = FakeCluster()
    w = BlockWriter.create(fake, "/f", size_hint=10)
    create = fake.calls[0]
    assert "replication" not in create and "block_size" not in create   # the client sends none
    assert (w.replication, w.block_size) == (2, BS)                       # the reply decides
    w.abort()


@pytest.mark.parametrize("reply", [{"handle": "h"}, {"handle": "h", "replication": 2},
                                   {"handle": "h", "replication": 0, "block_size": BS}])
def test_a_create_reply_without_geometry_is_a_protocol_error(reply):
    class NoGeometry(FakeCluster):
        def call(self, service, header, payload=(), timeout=None):
            if header["op"] == "create":
                return Reply(0, service, dict(reply))
            return super().call(service, header, payload, timeout)

    with pytest.raises(OSError) as exc:
        BlockWriter.create(NoGeometry(), "/f")
    assert exc.value.errno == errno.EPROTO


def test_the_renew_period_follows_the_lease_the_mds_reports(monkeypatch):
    fake = FakeCluster()
    w = BlockWriter.create(fake, "/f")               # create says 60 s left: renew every 20
    assert w._renew_every == 20.0
    w._renewed({"lease": 6.0})                       # a renew (or allocate) reply: 6 s left
    assert w._renew_every == 2.0
    w._renewed({"blocks": []})                       # a reply without a lease keeps the period
    assert w._renew_every == 2.0
    w.abort()
