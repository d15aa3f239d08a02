"""client/batch.SmallFiles against a fake MDS and fake DataNodes (no sockets): batching,
replica replacement rounds, per-file failures, aborts, and request splitting."""
from __future__ import annotations

import errno
import itertools
from collections import deque

import crc32c
import pytest

from broker import protocol as P
from broker.client import Reply
from client import batch as B
from client.batch import SmallFiles
from client.blocks import Suspects


class FakeCluster:
    """Answers the Mux calls SmallFiles makes. `nodes` maps node -> behaviour:
    "ok", "down" (the broker answers ECONNREFUSED), "timeout", or a set of block ids that
    node refuses (per-item EIO)."""

    def __init__(self, nodes: dict, replication: int = 2, block_size: int = 1 << 20,
                 fail_create: set[str] = frozenset(), mds_down_at: str | None = None):
        self.nodes = nodes
        self.replication = replication
        self.block_size = block_size
        self.fail_create = fail_create
        self.mds_down_at = mds_down_at
        self.rids = itertools.count(1)
        self.replies: deque[Reply] = deque()
        self.drafts: dict[str, dict] = {}
        self.committed: dict[str, list] = {}
        self.aborted: list[str] = []
        self.stored: dict[str, dict[bytes, bytes]] = {n: {} for n in nodes}
        self.put_requests: list[tuple[str, int]] = []
        self.mds_calls: list[str] = []
        self.bad_reports: list[tuple[str, bytes]] = []
        self.files: dict[str, dict] = {}      # path -> stat result, for reads
        self._ids = itertools.count(1)
        self._place = itertools.cycle(sorted(nodes))

    # -- the Mux interface -------------------------------------------------------------

    def call(self, service, header, payload=(), timeout=None) -> Reply:
        if header["op"] == "bad_replica":
            self.bad_reports.append((header["node"], header["block"]))
            return Reply(0, "mds", {})
        assert service == "mds" and header["op"] == "batch"
        kinds = {op["op"] for op in header["ops"]}
        self.mds_calls.append("/".join(sorted(kinds)))
        if self.mds_down_at in kinds:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "no worker for service mds")
        results = []
        for op in header["ops"]:
            try:
                results.append(P.item_ok(getattr(self, "op_" + op["op"])(op)))
            except OSError as exc:
                results.append(P.item_error(exc))
        return Reply(0, "mds", {"results": results})

    def send(self, owner, service, header, payload=(), timeout=None) -> int:
        rid = next(self.rids)
        node = service.removeprefix("dn.")
        if header["op"] == "get_block":
            data = self.stored[node].get(header["id"])
            if data is None:
                self.replies.append(Reply(rid, service, error=FileNotFoundError(
                    errno.ENOENT, "block not found")))
            else:
                self.replies.append(Reply(rid, service, {"size": len(data)},
                                          payload=[memoryview(data)]))
            return rid
        assert header["op"] == "put_blocks" and len(header["blocks"]) == len(payload)
        assert len(payload) <= B.MAX_PUT_MANY
        self.put_requests.append((node, len(payload)))
        behaviour = self.nodes[node]
        if behaviour == "down":
            self.replies.append(Reply(rid, service, error=ConnectionRefusedError(
                errno.ECONNREFUSED, f"no worker for service {service}")))
        elif behaviour == "timeout":
            self.replies.append(Reply(rid, service, error=TimeoutError("no reply")))
        else:
            results = []
            for spec, data in zip(header["blocks"], payload):
                data = bytes(data)
                if isinstance(behaviour, set) and spec["id"] in behaviour:
                    results.append(P.item_error(OSError(errno.EIO, "disk error")))
                elif crc32c.crc32c(data) != spec["checksum"]:
                    results.append(P.item_error(OSError(errno.EBADMSG, "checksum")))
                else:
                    self.stored[node][spec["id"]] = data
                    results.append(P.item_ok({"size": len(data), "checksum": spec["checksum"]}))
            self.replies.append(Reply(rid, service, {"results": results}))
        return rid

    def next(self, owner, timeout):
        return self.replies.popleft() if self.replies else None

    def cancel(self, owner, rids):
        rids = set(rids)
        self.replies = deque(r for r in self.replies if r.rid not in rids)

    # -- the MDS -----------------------------------------------------------------------

    def op_create(self, op):
        if op["path"] in self.fail_create:
            raise NotADirectoryError(errno.ENOTDIR, "a parent is a file")
        handle = f"h{next(self._ids)}"
        self.drafts[handle] = {"path": op["path"]}
        out = {"handle": handle, "path": op["path"], "replication": self.replication,
               "block_size": self.block_size, "lease": 60}
        if op.get("size"):
            count = -(-op["size"] // self.block_size)
            out["blocks"] = [{"id": next(self._ids).to_bytes(16, "big"),
                              "nodes": [next(self._place) for _ in range(self.replication)]}
                             for _ in range(min(count, 16))]
            if len(set(out["blocks"][0]["nodes"])) < self.replication:   # a cycle wrapped
                out["blocks"][0]["nodes"] = sorted(self.nodes)[:self.replication]
        return out

    def op_stat(self, op):
        if op["path"] not in self.files:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory")
        return self.files[op["path"]]

    def op_replace_target(self, op):
        for node in sorted(self.nodes):
            if node not in op["exclude"] and self.nodes[node] == "ok":
                return {"node": node}
        raise OSError(errno.ENOSPC, "no other live DataNode")

    def op_commit(self, op):
        draft = self.drafts.pop(op["handle"])
        self.committed[draft["path"]] = op["blocks"]
        return {"path": draft["path"], "size": sum(b["size"] for b in op["blocks"])}

    def op_abort(self, op):
        self.aborted.append(self.drafts.pop(op["handle"])["path"])
        return {}


def files(n: int, size: int = 4096) -> list[tuple[str, bytes]]:
    return [(f"/d/f{i}", bytes([i % 251]) * size) for i in range(n)]


def write(cluster: FakeCluster, items, **kw):
    return SmallFiles(cluster, **kw).write(items)   # FakeCluster stands in for the Mux


def test_a_batch_costs_two_mds_calls_and_one_request_per_node():
    c = FakeCluster({"dn1": "ok", "dn2": "ok", "dn3": "ok"})
    out = write(c, files(30))
    assert out == [{"path": f"/d/f{i}", "size": 4096} for i in range(30)]
    assert c.mds_calls == ["create", "commit"]
    assert sorted(n for n, _ in c.put_requests) == ["dn1", "dn2", "dn3"]
    for path, data in files(30):
        (block,) = c.committed[path]
        assert block["size"] == 4096 and block["checksum"] == crc32c.crc32c(data)
        assert len(block["replicas"]) == 2
        assert all(c.stored[n][block["id"]] == data for n in block["replicas"])


def test_a_down_node_is_replaced_in_one_more_round():
    c = FakeCluster({"dn1": "ok", "dn2": "down", "dn3": "ok"})
    out = write(c, files(12))
    assert all(isinstance(o, dict) for o in out)
    assert c.mds_calls == ["create", "replace_target", "commit"]
    for blocks in c.committed.values():
        assert sorted(blocks[0]["replicas"]) == ["dn1", "dn3"]


def test_a_block_refused_by_one_node_is_replaced_alone():
    c = FakeCluster({"dn1": "ok", "dn2": "ok", "dn3": "ok", "dn4": "ok"})
    first = c.op_create
    refused: set = set()    # f0's block, refused by the first node it is sent to

    def create(op):
        out = first(op)
        if op["path"] == "/d/f0":
            refused.add(out["blocks"][0]["id"])
            c.nodes[out["blocks"][0]["nodes"][0]] = refused
        return out

    c.op_create = create
    out = write(c, files(8))
    assert all(isinstance(o, dict) for o in out)
    assert len(c.committed["/d/f0"][0]["replicas"]) == 2
    assert c.mds_calls == ["create", "replace_target", "commit"]


def test_a_file_no_node_can_store_fails_alone_and_its_draft_is_aborted():
    c = FakeCluster({"dn1": "timeout", "dn2": "down"}, replication=2)
    out = write(c, files(3) + [("/d/empty", b"")])
    for o in out[:3]:
        assert isinstance(o, OSError) and o.errno == errno.EIO
        assert "could not be stored on any DataNode" in str(o) and "/d/f" in str(o)
    assert out[3] == {"path": "/d/empty", "size": 0}
    assert sorted(c.aborted) == ["/d/f0", "/d/f1", "/d/f2"]
    assert c.committed == {"/d/empty": []}


def test_create_errors_and_zero_byte_files():
    c = FakeCluster({"dn1": "ok", "dn2": "ok"}, fail_create={"/d/f1"})
    out = write(c, files(3) + [("/d/zero", b"")])
    assert isinstance(out[1], NotADirectoryError) and "/d/f1" in str(out[1])
    assert out[0]["size"] == 4096 and out[2]["size"] == 4096
    assert out[3] == {"path": "/d/zero", "size": 0} and c.committed["/d/zero"] == []
    assert "/d/f1" not in c.committed


def test_an_mds_failure_at_commit_fails_every_unsettled_file():
    c = FakeCluster({"dn1": "ok", "dn2": "ok"}, fail_create={"/d/f0"}, mds_down_at="commit")
    out = write(c, files(4))
    assert isinstance(out[0], NotADirectoryError)        # settled before the failure
    for o in out[1:]:
        assert isinstance(o, ConnectionRefusedError) and "/d/f" in str(o)


def test_requests_are_split_at_the_datanode_limits(monkeypatch):
    monkeypatch.setattr(B, "MAX_PUT_MANY", 10)
    c = FakeCluster({"dn1": "ok", "dn2": "ok"})
    out = write(c, files(25, size=100))
    assert all(isinstance(o, dict) for o in out)
    assert sorted(c.put_requests) == [("dn1", 5), ("dn1", 10), ("dn1", 10),
                                      ("dn2", 5), ("dn2", 10), ("dn2", 10)]
    monkeypatch.setattr(B, "BATCH_BYTES", 250)
    c = FakeCluster({"dn1": "ok", "dn2": "ok"})
    write(c, files(5, size=100))
    assert sorted(c.put_requests) == [("dn1", 1), ("dn1", 2), ("dn1", 2),
                                      ("dn2", 1), ("dn2", 2), ("dn2", 2)]


def test_done_callback_sees_every_outcome_in_order():
    c = FakeCluster({"dn1": "ok", "dn2": "ok"}, fail_create={"/d/f2"})
    seen = []
    SmallFiles(c).write(files(4), done=lambda i, o: seen.append((i, type(o).__name__)))
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

def stored_cluster() -> tuple[FakeCluster, dict[str, bytes]]:
    c = FakeCluster({"dn1": "ok", "dn2": "ok", "dn3": "ok"})
    data = {f"/r/f{i}": bytes([i]) * (100 + i) for i in range(10)}
    write(c, list(data.items()))
    for path, blocks in c.committed.items():
        c.files[path] = {"type": "file", "size": sum(b["size"] for b in blocks),
                         "blocks": blocks}
    c.files["/r/empty"] = {"type": "file", "size": 0, "blocks": []}
    c.files["/r"] = {"type": "dir", "size": 0, "blocks": []}
    c.files["/r/two"] = {"type": "file", "size": 2 << 20, "blocks": [{}, {}]}
    return c, data


def test_small_reads_one_stat_batch_and_verified_blocks():
    c, data = stored_cluster()
    c.mds_calls.clear()
    paths = list(data) + ["/r/empty", "/r", "/r/two", "/r/missing"]
    out = B.SmallReads(c).read(paths)
    assert out[:10] == list(data.values())
    assert out[10] == b"" and isinstance(out[11], IsADirectoryError)
    assert out[12] is B.BIG
    assert isinstance(out[13], FileNotFoundError) and "/r/missing" in str(out[13])
    assert c.mds_calls == ["stat"]


def test_small_reads_fail_over_report_bad_replicas_and_fail_alone():
    c, data = stored_cluster()
    f2 = c.committed["/r/f2"][0]
    bad_node = f2["replicas"][0]
    c.stored[bad_node][f2["id"]] = b"rotten" * 20               # wrong size and checksum
    f5 = c.committed["/r/f5"][0]
    for node in f5["replicas"]:
        del c.stored[node][f5["id"]]                            # gone everywhere
    suspects = Suspects()                 # recently failed nodes are tried last: so the
    suspects.mark(f2["replicas"][1])      # rotten replica of f2 is the one tried first
    out = B.SmallReads(c, window=3, suspects=suspects).read(list(data))
    assert out[2] == data["/r/f2"]
    assert (bad_node, f2["id"]) in c.bad_reports
    assert isinstance(out[5], OSError) and out[5].errno == errno.EIO
    assert out[5].strerror.startswith("/r/f5: block ") and "(batch)" not in str(out[5])
    assert "missing" in out[5].strerror
    assert [o for i, o in enumerate(out) if i != 5] == [d for p, d in data.items() if p != "/r/f5"]
