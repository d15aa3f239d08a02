"""The MDS behind a real broker with real DataNodes: concurrent creates, typed errors over
the wire, drafts, overwrite, deletes reaching DataNodes, leases, mv, clean restart."""
from __future__ import annotations

import errno
import threading
import time

import crc32c
import msgpack
import pytest
import zmq

from broker import protocol as P
from broker import wire
from broker.client import Client, MemberClient
from tests.support.caps import cap_for
from tests.support.cluster import start_cluster, wait_mds
from tests.support.wait import wait_for

HB = 0.3
WRITERS = 8
FILES_PER_WRITER = 1000
KIB = 1024


# -- helpers -----------------------------------------------------------------------------

class Mds:
    """`mds(op, **fields)` -> result map; errors raise their OSError subclass."""

    def __init__(self, endpoint: str, timeout: float = 20.0, data_dir=None, curve=None) -> None:
        self.client = Client(endpoint, timeout=timeout, connect_timeout=5, max_in_flight=16,
                             curve=curve)
        self.data_dir = data_dir      # the cluster's, for read capabilities minted here

    def __call__(self, op: str, **fields) -> dict:
        return self.client.call("mds", {"op": op, **fields}).result

    def dn(self, node: str, op: str, payload=(), **fields) -> dict:
        if op == "stat_block" and "cap" not in fields and self.data_dir is not None:
            fields["cap"] = cap_for(self.data_dir, fields["id"])
        return self.client.call(f"dn.{node}", {"op": op, **fields}, payload).result

    def put(self, blk: dict, data: bytes) -> list[bytes]:
        """Store `data` as allocated block `blk` on each of its nodes; their receipts."""
        crc = crc32c.crc32c(data)
        return [self.dn(node, "put_block", [data], id=blk["id"], checksum=crc, cap=cap)["receipt"]
                for node, cap in zip(blk["nodes"], blk["caps"])]

    def write(self, path: str, data: bytes = b"", *, block_size: int = KIB,
              replication: int | None = None, parents: bool = False) -> dict:
        """create -> allocate -> put_block to every target -> commit; returns file_info."""
        fields = {"path": path, "block_size": block_size, "parents": parents}
        if replication:
            fields["replication"] = replication
        handle = self("create", **fields)["handle"]
        return self.commit_data(handle, data, block_size)

    def commit_data(self, handle: str, data: bytes, block_size: int = KIB) -> dict:
        chunks = [data[i:i + block_size] for i in range(0, len(data), block_size)]
        blocks = []
        if chunks:
            for blk, chunk in zip(self("allocate", handle=handle, count=len(chunks))["blocks"],
                                  chunks):
                crc = crc32c.crc32c(chunk)
                receipts = [self.dn(node, "put_block", [chunk], id=blk["id"], checksum=crc,
                                    cap=cap)["receipt"]
                            for node, cap in zip(blk["nodes"], blk["caps"])]
                blocks.append({"id": blk["id"], "size": len(chunk), "checksum": crc,
                               "replicas": blk["nodes"], "receipts": receipts})
        path = self("commit", handle=handle, blocks=blocks)["path"]
        return self("stat", path=path)

    def tree(self, path: str = "/") -> dict[str, tuple[str, int]]:
        """Every entry below `path`: {path: (type, size)} from recursive ls."""
        out, stack = {}, [path]
        while stack:
            d = stack.pop()
            for e in self("ls", path=d)["entries"]:
                p = (d.rstrip("/") + "/" + e["name"])
                out[p] = (e["type"], e["size"])
                if e["type"] == "dir":
                    stack.append(p)
        return out

    def node_blocks(self) -> dict[str, int]:
        return {n["id"]: n["blocks"] for n in self("status")["nodes"]}

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("mds-cluster"), heartbeat=HB)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def mds(cluster):
    m = Mds(cluster.broker, data_dir=cluster.data_dir, curve=cluster.curve)
    try:
        yield m
    finally:
        m.close()


# -- 8 concurrent writers x 1,000 creates --------------------------------------------------

def test_8_writers_x_1000_creates_none_lost(cluster, mds):
    mds("mkdir", path="/load")
    failures: list[tuple[int, int, BaseException]] = []
    expected: dict[str, int] = {}
    lock = threading.Lock()

    def writer(w: int) -> None:
        m = Mds(cluster.broker, data_dir=cluster.data_dir, curve=cluster.curve)
        mine = {}
        try:
            m("mkdir", path=f"/load/w{w}")
            for i in range(FILES_PER_WRITER):
                path = f"/load/w{w}/f{i:04d}"
                # one file in ten carries a real 1 KiB block, stored on DataNodes
                data = bytes([w, i % 256]) * (KIB // 2) if i % 10 == 0 else b""
                try:
                    info = m.write(path, data)
                    assert info["size"] == len(data), info
                    mine[path] = len(data)
                except BaseException as exc:  # counted, not raised: every failure is reported
                    with lock:
                        failures.append((w, i, exc))
        finally:
            m.close()
            with lock:
                expected.update(mine)

    started = time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - started
    total = WRITERS * FILES_PER_WRITER
    print(f"\n{total} creates by {WRITERS} writers in {elapsed:.1f}s "
          f"({total / elapsed:.0f} files/s), {len(failures)} failed")
    assert not any(t.is_alive() for t in threads)
    assert failures == [], failures[:5]
    assert len(expected) == total

    seen = {p: size for p, (kind, size) in mds.tree("/load").items() if kind == "file"}
    assert len(seen) == total, f"{total - len(seen)} files lost"
    assert seen == expected
    assert mds("du", path="/load") == {"bytes": sum(expected.values()), "files": total,
                                       "dirs": WRITERS + 1}
    # stat agrees with ls, and block files carry their one block
    for w in range(WRITERS):
        for i in (0, 1, 10, FILES_PER_WRITER - 1):
            info = mds("stat", path=f"/load/w{w}/f{i:04d}")
            assert info["size"] == expected[info["path"]]
            assert len(info["blocks"]) == (1 if i % 10 == 0 else 0)
            if info["blocks"]:
                b = info["blocks"][0]
                got = mds.dn(b["replicas"][0], "stat_block", id=b["id"])
                assert (got["size"], got["checksum"]) == (b["size"], b["checksum"])


# -- typed errors over the wire --------------------------------------------------------------

@pytest.fixture
def errtree(mds):
    """/e/dir (with child), /e/empty, /e/file (1 block), /e/into/dir/sub, /e/into/file (dir)"""
    if "e" not in {e["name"] for e in mds("ls", path="/")["entries"]}:
        mds("mkdir", path="/e/dir/child", parents=True)
        mds("mkdir", path="/e/empty")
        mds("mkdir", path="/e/into/dir/sub", parents=True)
        mds("mkdir", path="/e/into/file")
        mds.write("/e/file", b"x" * 100)
    return mds


ENOENT_CASES = [
    ("stat", {"path": "/e/missing"}),
    ("ls", {"path": "/e/missing"}),
    ("du", {"path": "/e/missing"}),
    ("rm", {"path": "/e/missing"}),
    ("rm", {"path": "/e/missing/deeper", "recursive": True}),
    ("mv", {"src": "/e/missing", "dst": "/e/x"}),
    ("mv", {"src": "/e/file", "dst": "/e/missing/x"}),
    ("mkdir", {"path": "/e/missing/x"}),
    ("create", {"path": "/e/missing/x"}),
    ("allocate", {"handle": "no-such-handle", "count": 1}),
    ("commit", {"handle": "no-such-handle", "blocks": []}),
    ("abort", {"handle": "no-such-handle"}),
    ("renew", {"handle": "no-such-handle"}),
]


@pytest.mark.parametrize("op,fields", ENOENT_CASES, ids=lambda v: str(v))
def test_enoent(errtree, op, fields):
    with pytest.raises(FileNotFoundError):
        errtree(op, **fields)


@pytest.mark.parametrize("op,fields,exc", [
    ("mkdir", {"path": "/e/dir"}, FileExistsError),
    ("mkdir", {"path": "/e/file"}, FileExistsError),
    ("mkdir", {"path": "/e/file", "parents": True}, FileExistsError),
    ("mkdir", {"path": "/e/file/x"}, NotADirectoryError),
    ("mkdir", {"path": "/e/file/x", "parents": True}, NotADirectoryError),
    ("stat", {"path": "/e/file/x"}, NotADirectoryError),
    ("ls", {"path": "/e/file/x"}, NotADirectoryError),
    ("du", {"path": "/e/file/x"}, NotADirectoryError),
    ("rm", {"path": "/e/file/x"}, NotADirectoryError),
    ("create", {"path": "/e/file/x"}, NotADirectoryError),
    ("create", {"path": "/e/file/x", "parents": True}, NotADirectoryError),
    ("mv", {"src": "/e/empty", "dst": "/e/file"}, NotADirectoryError),
    ("mv", {"src": "/e/file/x", "dst": "/e/y"}, NotADirectoryError),
    ("create", {"path": "/e/dir"}, IsADirectoryError),
    ("create", {"path": "/"}, IsADirectoryError),
    # /e/into/file is a directory: moving the file "file" into /e/into would replace it
    ("mv", {"src": "/e/file", "dst": "/e/into"}, IsADirectoryError),
], ids=lambda v: str(v))
def test_typed_errors(errtree, op, fields, exc):
    with pytest.raises(exc):
        errtree(op, **fields)


def _errno_of(call) -> int:
    with pytest.raises(OSError) as info:
        call()
    return info.value.errno


def test_enotempty(errtree):
    assert _errno_of(lambda: errtree("rm", path="/e/dir")) == errno.ENOTEMPTY
    # /e/into/dir exists and is not empty: moving another "dir" into /e/into cannot replace it
    assert _errno_of(lambda: errtree("mv", src="/e/dir", dst="/e/into")) == errno.ENOTEMPTY
    assert errtree("stat", path="/e/dir/child")["type"] == "dir"


BAD_PATHS = ["/a/../b", "relative", "/a\0b", ""]
# a name over 255 bytes, a path over the MDS's 16 KiB (PATH_MAX below a mounted directory)
LONG_PATHS = ["/" + "n" * 256, "/x" * 8200]


def _every_op(bad: str) -> list[tuple[str, dict]]:
    return [("stat", {"path": bad}), ("ls", {"path": bad}), ("du", {"path": bad}),
            ("mkdir", {"path": bad}), ("mkdir", {"path": bad, "parents": True}),
            ("create", {"path": bad}), ("create", {"path": bad, "parents": True}),
            ("rm", {"path": bad}), ("rm", {"path": bad, "recursive": True}),
            ("mv", {"src": bad, "dst": "/e/x"}), ("mv", {"src": "/e/empty", "dst": bad})]


@pytest.mark.parametrize("bad", BAD_PATHS, ids=repr)
def test_bad_paths_are_einval_for_every_op(errtree, bad):
    for op, fields in _every_op(bad):
        assert _errno_of(lambda: errtree(op, **fields)) == errno.EINVAL, (op, fields)
    assert errtree("stat", path="/e/empty")["type"] == "dir"


@pytest.mark.parametrize("bad", LONG_PATHS, ids=lambda p: f"{len(p)} bytes")
def test_too_long_names_and_paths_are_enametoolong_for_every_op(errtree, bad):
    for op, fields in _every_op(bad):
        assert _errno_of(lambda: errtree(op, **fields)) == errno.ENAMETOOLONG, (op, fields)
    assert errtree("stat", path="/e/empty")["type"] == "dir"


def test_einval_for_bad_values(errtree):
    m = errtree
    cases = [
        ("rm", {"path": "/"}), ("rm", {"path": "/", "recursive": True}),
        ("mv", {"src": "/", "dst": "/e/root"}),
        ("mv", {"src": "/e/dir", "dst": "/e/dir/child"}),      # into its own subtree
        ("mv", {"src": "/e/dir", "dst": "/e/dir"}),
        ("create", {"path": "/e/new", "replication": 0}),
        ("create", {"path": "/e/new", "replication": 256}),
        ("create", {"path": "/e/new", "block_size": 0}),
        ("create", {"path": "/e/new", "block_size": -1}),
        ("create", {"path": "/e/new", "block_size": 1 << 40}),
    ]
    for op, fields in cases:
        assert _errno_of(lambda: m(op, **fields)) == errno.EINVAL, (op, fields)
    handle = m("create", path="/e/new", block_size=KIB)["handle"]
    for count in (0, -1, 100_000):
        assert _errno_of(lambda: m("allocate", handle=handle, count=count)) == errno.EINVAL
    blocks = m("allocate", handle=handle, count=2)["blocks"]
    good = [{"id": b["id"], "size": KIB, "checksum": 1, "replicas": b["nodes"]} for b in blocks]
    bad_commits = [
        [dict(good[0], size=KIB - 1), good[1]],                 # short non-last block
        [good[0], dict(good[1], size=KIB + 1)],                 # last block over block size
        [good[0], dict(good[1], size=0)],
        [good[0], good[0]],                                     # listed twice
        [dict(good[0], id=b"\x01" * 16)],                       # not allocated to this draft
        [dict(good[0], id="00" * 16)],
        [dict(good[0], checksum=1 << 32)], [dict(good[0], checksum=-1)],
        [dict(good[0], replicas=[])], [dict(good[0], replicas=["dn1", "dn1"])],
        [dict(good[0], replicas="dn1")],
        [{"id": good[0]["id"]}], [1], ["x"], [None], [[1, 2, 3, 4]],
    ]
    for blocks_field in bad_commits:
        assert _errno_of(lambda: m("commit", handle=handle, blocks=blocks_field)) \
            == errno.EINVAL, blocks_field
    with pytest.raises(FileNotFoundError):
        m("stat", path="/e/new")      # no bad commit made the draft visible
    for b, blk in zip(good, blocks):   # store the data, so the DataNodes hold what we commit
        data = b"v" * KIB
        b["checksum"] = crc32c.crc32c(data)
        b["receipts"] = m.put(blk, data)
    assert m("commit", handle=handle, blocks=good)["size"] == 2 * KIB
    assert m("stat", path="/e/new")["size"] == 2 * KIB
    m("rm", path="/e/new")


def test_unknown_op_is_eopnotsupp(mds):
    for header in ({"op": "format_disk"}, {"op": ""}, {"op": 7}, {"op": None},
                   {"op": ["stat"]}, {"path": "/"}):
        assert _errno_of(lambda: mds.client.call("mds", header)) == errno.EOPNOTSUPP, header
    assert mds("ping")["pong"] is True


WRONG_TYPES = [
    ("stat", {"path": 5}), ("stat", {"path": b"/e"}), ("stat", {"path": None}), ("stat", {}),
    ("ls", {"path": ["/"]}), ("du", {"path": {"a": 1}}),
    ("mkdir", {"path": "/e/t", "parents": "yes"}), ("mkdir", {"path": "/e/t", "parents": 1}),
    ("create", {"path": "/e/t", "replication": "2"}),
    ("create", {"path": "/e/t", "block_size": 1.5}),
    ("create", {"path": "/e/t", "replication": True}),
    ("allocate", {"handle": "h", "count": "1"}), ("allocate", {"handle": "h", "count": True}),
    ("allocate", {"handle": 1, "count": 1}), ("allocate", {"handle": "h"}),
    ("allocate", {"handle": "h", "count": 1, "exclude": "dn1"}),
    ("commit", {"handle": "h", "blocks": "x"}), ("commit", {"handle": "h", "blocks": {}}),
    ("commit", {"blocks": []}), ("abort", {"handle": b"h"}), ("renew", {}),
    ("rm", {"path": "/e/t", "recursive": "no"}), ("mv", {"src": "/e/t"}),
    ("mv", {"src": 1, "dst": 2}), ("replace_target", {"handle": "h", "block": "b", "exclude": []}),
    ("bad_replica", {"block": 5, "node": "dn1"}), ("fsck", {"repair": "yes"}),
    ("dn_heartbeat", {"node": "dn9", "capacity": "1", "used": 0, "blocks": 0}),
    ("block_report", {"node": 3}),
    ("replica_added", {"node": "dn1", "block": b"x" * 16, "size": "1", "checksum": 1}),
]


@pytest.mark.parametrize("op,fields", WRONG_TYPES, ids=lambda v: str(v))
def test_wrong_field_types_are_eproto(mds, op, fields):
    with pytest.raises(P.ProtocolError):
        mds(op, **fields)
    assert mds("ping")["pong"] is True


def test_malformed_values_are_einval_and_mds_answers(cluster, errtree):
    m = errtree
    handle = m("create", path="/e/mal", block_size=KIB)["handle"]
    # odd exclude entries are taken as (unknown) node names: placement still works
    assert len(m("allocate", handle=handle, count=1, exclude=[1, None])["blocks"]) == 1
    m("abort", handle=handle)
    for fields in ({"handle": "x" * 1000, "count": 1}, {"handle": "", "count": 1}):
        assert _errno_of(lambda: m("allocate", **fields)) in (errno.ENOENT, errno.EINVAL)
    # the block_report payload must be one msgpack list frame (sent as DataNode dnx: only
    # a DataNode may report its blocks)
    with MemberClient(cluster.endpoints["worker"], "dn.dnx", timeout=20,
                      curve=cluster.member_curve("dn.dnx")) as dn:
        for payload in ([], [b"\xc1\xc1"], [msgpack.packb({"a": 1})], [b"1", b"2"]):
            assert _errno_of(lambda: dn.call(
                "mds", {"op": "block_report", "node": "dnx"}, payload)) == errno.EINVAL
    assert m("ping")["pong"] is True


def test_undecodable_header_is_eproto_and_mds_answers(cluster, mds):
    """A header that is not a msgpack map never reaches a handler, and never hurts."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    wire.configure(sock)
    cluster.curve.apply(sock)
    sock.connect(cluster.broker)
    try:
        for i, header in enumerate([b"\xc1\xc1\xc1", msgpack.packb([1, 2]), msgpack.packb("op"),
                                    msgpack.packb({1: "int key"}), b""]):
            rid = i.to_bytes(8, "big")
            wire.send(sock, [P.pack(P.REQUEST, b"mds", rid, header)])
            assert sock.poll(10_000), "no reply to a malformed header"
            _, env, _ = wire.recv(sock)
            cmd, _, got_rid, reply = P.unpack(env)
            assert (cmd, got_rid) == (P.REPLY, rid)
            with pytest.raises(OSError) as info:
                P.parse_reply(reply)
            assert info.value.errno in (errno.EPROTO, errno.EOPNOTSUPP), header
    finally:
        sock.close(linger=0)
    assert mds("ping")["pong"] is True


# -- drafts, overwrite, deletes ---------------------------------------------------------------

def test_draft_is_invisible_until_commit(mds):
    mds("mkdir", path="/draft")
    handle = mds("create", path="/draft/f", block_size=KIB)["handle"]
    blk = mds("allocate", handle=handle, count=1)["blocks"][0]
    data = b"d" * 500
    receipts = mds.put(blk, data)
    with pytest.raises(FileNotFoundError):
        mds("stat", path="/draft/f")
    assert mds("ls", path="/draft")["entries"] == []
    assert mds("du", path="/draft") == {"bytes": 0, "files": 0, "dirs": 1}
    assert mds("renew", handle=handle)["lease"] > 0
    mds("commit", handle=handle, blocks=[{"id": blk["id"], "size": 500,
                                          "checksum": crc32c.crc32c(data),
                                          "replicas": blk["nodes"], "receipts": receipts}])
    assert [e["name"] for e in mds("ls", path="/draft")["entries"]] == ["f"]
    assert mds("stat", path="/draft/f")["size"] == 500
    # a second commit of the same handle is refused: the draft is gone
    with pytest.raises(FileNotFoundError):
        mds("commit", handle=handle, blocks=[])
    # an aborted draft never appears and frees nothing visible
    handle = mds("create", path="/draft/g")["handle"]
    mds("abort", handle=handle)
    with pytest.raises(FileNotFoundError):
        mds("commit", handle=handle, blocks=[])
    with pytest.raises(FileNotFoundError):
        mds("stat", path="/draft/g")
    # a zero-byte file: create then commit with no blocks
    handle = mds("create", path="/draft/empty")["handle"]
    assert mds("commit", handle=handle, blocks=[]) == {"path": "/draft/empty", "size": 0}
    assert mds("stat", path="/draft/empty")["blocks"] == []


def _uncapped(info: dict) -> list[dict]:
    """A stat's blocks without their read capabilities (minted anew by every stat)."""
    return [{k: v for k, v in b.items() if k != "cap"} for b in info["blocks"]]


def _block_gone(mds: Mds, node: str, bid: bytes) -> bool:
    try:
        mds.dn(node, "stat_block", id=bid)
        return False
    except FileNotFoundError:
        return True


def _settled_counts(mds: Mds) -> dict[str, int]:
    """Node block counts once two heartbeats in a row agree."""
    prev = None
    while True:
        now = mds.node_blocks()
        if now == prev:
            return now
        prev = now
        time.sleep(3 * HB)


def test_overwrite_replaces_atomically_and_old_blocks_are_deleted(cluster, mds):
    mds("mkdir", path="/ow")
    old = mds.write("/ow/f", b"a" * (2 * KIB + 10), replication=3)
    old_ids = [b["id"] for b in old["blocks"]]
    assert len(old_ids) == 3
    wait_for(lambda: all(c >= 3 for c in mds.node_blocks().values()), what="heartbeat counts")
    # deletes of earlier tests land after the MDS's delete grace: let them finish first
    wait_for(lambda: mds("status")["pending_deletes"] == 0, what="earlier deletes")
    before = _settled_counts(mds)

    # readers polling during overwrites see the old or the new version, never nothing
    stop = threading.Event()
    seen: list = []

    def reader():
        m = Mds(cluster.broker, data_dir=cluster.data_dir, curve=cluster.curve)
        try:
            while not stop.is_set():
                try:
                    seen.append(m("stat", path="/ow/f")["size"])
                except OSError as exc:
                    seen.append(exc)
        finally:
            m.close()

    t = threading.Thread(target=reader)
    t.start()
    handle = mds("create", path="/ow/f", block_size=KIB, replication=3)["handle"]
    time.sleep(0.2)
    assert mds("stat", path="/ow/f")["size"] == 2 * KIB + 10   # draft does not shadow it
    new = mds.commit_data(handle, b"b" * 700)
    sizes = [100 * i + 1 for i in range(1, 20)]
    for size in sizes:
        mds.write("/ow/f", b"c" * size, replication=3)
    final = mds.write("/ow/f", b"z" * KIB, replication=3)
    stop.set()
    t.join(10)
    assert new["size"] == 700 and final["size"] == KIB
    assert all(isinstance(s, int) for s in seen), [s for s in seen if not isinstance(s, int)][:3]
    assert set(seen) <= {2 * KIB + 10, 700, KIB, *sizes}
    assert mds("ls", path="/ow")["entries"][0]["size"] == KIB
    # the replaced versions' blocks leave the DataNodes; the current one stays
    for bid in old_ids:
        for node in cluster.node_ids:
            wait_for(lambda: _block_gone(mds, node, bid), what=f"old block deleted on {node}")
    cur = final["blocks"][0]
    for node in cur["replicas"]:
        assert mds.dn(node, "stat_block", id=cur["id"])["size"] == KIB
    wait_for(lambda: _settled_counts(mds) == {n: c - 2 for n, c in before.items()},
             what="DataNode block counts to fall by the overwritten blocks")
    assert mds("status")["pending_deletes"] == 0


def test_rm_queues_deletes_that_reach_datanodes(cluster, mds):
    mds("mkdir", path="/rmt/sub", parents=True)
    infos = [mds.write(f"/rmt/sub/f{i}", bytes([i]) * (KIB + 1), replication=3)
             for i in range(4)]
    infos.append(mds.write("/rmt/top", b"t" * 10, replication=3))
    ids = [b["id"] for info in infos for b in info["blocks"]]
    assert len(ids) == 9
    wait_for(lambda: all(c >= 9 for c in mds.node_blocks().values()), what="counts")
    before = _settled_counts(mds)
    mds("rm", path="/rmt/top")
    with pytest.raises(OSError) as info:
        mds("rm", path="/rmt")
    assert info.value.errno == errno.ENOTEMPTY
    mds("rm", path="/rmt", recursive=True)
    with pytest.raises(FileNotFoundError):
        mds("stat", path="/rmt/sub/f0")
    with pytest.raises(FileNotFoundError):
        mds("ls", path="/rmt")
    for bid in ids:
        for node in cluster.node_ids:
            wait_for(lambda: _block_gone(mds, node, bid), what="block deleted")
    wait_for(lambda: _settled_counts(mds) == {n: c - 9 for n, c in before.items()},
             what="status block counts to fall by 9 on every node")
    assert mds("status")["pending_deletes"] == 0


# -- mv ---------------------------------------------------------------------------------------

def test_mv_files_and_directories(mds):
    mds("mkdir", path="/mv/a/b", parents=True)
    mds("mkdir", path="/mv/target")
    f1 = mds.write("/mv/a/b/f1", b"1" * 1500)
    mds.write("/mv/a/f2", b"2" * 20)
    mds.write("/mv/loose", b"L" * 5)
    mds.write("/mv/victim", b"V" * 3000, replication=3)

    assert mds("mv", src="/mv/loose", dst="/mv/renamed") == {"path": "/mv/renamed"}
    assert mds("stat", path="/mv/renamed")["size"] == 5
    with pytest.raises(FileNotFoundError):
        mds("stat", path="/mv/loose")
    # into an existing directory
    assert mds("mv", src="/mv/renamed", dst="/mv/target") == {"path": "/mv/target/renamed"}
    assert mds("stat", path="/mv/target/renamed")["size"] == 5
    # onto an existing file: replaced, its blocks queued for deletion
    assert mds("mv", src="/mv/target/renamed", dst="/mv/victim")["path"] == "/mv/victim"
    assert mds("stat", path="/mv/victim")["size"] == 5
    # a directory with its subtree; blocks travel with the inode
    assert mds("mv", src="/mv/a", dst="/mv/moved")["path"] == "/mv/moved"
    moved = mds("stat", path="/mv/moved/b/f1")
    assert moved["size"] == 1500 and _uncapped(moved) == _uncapped(f1)
    assert mds("stat", path="/mv/moved/f2")["size"] == 20
    with pytest.raises(FileNotFoundError):
        mds("ls", path="/mv/a")
    # a directory into another one, and to the same place (no-op)
    assert mds("mv", src="/mv/moved", dst="/mv/target")["path"] == "/mv/target/moved"
    assert mds("mv", src="/mv/target/moved/f2", dst="/mv/target/moved/f2")["path"] \
        == "/mv/target/moved/f2"
    assert mds.tree("/mv") == {
        "/mv/victim": ("file", 5), "/mv/target": ("dir", 0),
        "/mv/target/moved": ("dir", 0), "/mv/target/moved/b": ("dir", 0),
        "/mv/target/moved/b/f1": ("file", 1500), "/mv/target/moved/f2": ("file", 20)}
    # a directory moved onto an existing directory lands inside it
    mds("mkdir", path="/mv/empty")
    assert mds("mv", src="/mv/target/moved/b", dst="/mv/empty")["path"] == "/mv/empty/b"
    mds("mkdir", path="/mv/e2")
    mds("mkdir", path="/mv/e3")
    assert mds("mv", src="/mv/e2", dst="/mv/e3/x")["path"] == "/mv/e3/x"
    assert mds("du", path="/mv") == {"bytes": 1525, "files": 3, "dirs": 7}


# -- leases --------------------------------------------------------------------------------

def test_expired_lease_drops_the_draft_and_its_blocks(tmp_path):
    cluster = start_cluster(tmp_path, heartbeat=HB, extra={"mds": ["--lease", "1"]})
    m = Mds(cluster.broker, data_dir=cluster.data_dir, curve=cluster.curve)
    try:
        m("mkdir", path="/l")
        handle = m("create", path="/l/f", block_size=KIB, replication=3)["handle"]
        assert m("create", path="/l/f", block_size=KIB)["lease"] == 1
        blk = m("allocate", handle=handle, count=1)["blocks"][0]
        data = b"q" * 100
        m.put(blk, data)
        # renewing keeps it alive past one lease period
        for _ in range(3):
            time.sleep(0.5)
            m("renew", handle=handle)
        # then let it lapse
        wait_for(lambda: m("status")["drafts"] == 0, timeout=10, what="drafts to expire")
        with pytest.raises(FileNotFoundError):
            m("commit", handle=handle, blocks=[{"id": blk["id"], "size": 100,
                                                "checksum": crc32c.crc32c(data),
                                                "replicas": blk["nodes"]}])
        with pytest.raises(FileNotFoundError):
            m("stat", path="/l/f")
        assert m("ls", path="/l")["entries"] == []
        for node in blk["nodes"]:
            wait_for(lambda: _block_gone(m, node, blk["id"]), what="expired draft's block deleted")
        # a committed file is not subject to leases
        m.write("/l/kept", b"k" * 10)
        time.sleep(2)
        assert m("stat", path="/l/kept")["size"] == 10
    finally:
        m.close()
        cluster.stop()


# -- restart ---------------------------------------------------------------------------------

def test_sigterm_restart_keeps_everything(cluster, mds):
    mds("mkdir", path="/rs/d", parents=True)
    mds.write("/rs/d/f", b"r" * 3000)
    mds.write("/rs/empty")
    pending = mds("create", path="/rs/draft")["handle"]
    before_tree = mds.tree("/")
    before_stats = {p: {**mds("stat", path=p), "blocks": _uncapped(mds("stat", path=p))}
                    for p, (k, _) in before_tree.items() if k == "file" and p.startswith("/rs")}
    before_counts = {k: v for k, v in mds("status").items()
                     if k in ("files", "dirs", "blocks", "bytes", "drafts")}
    old_caps = {b["id"]: b["cap"] for p in before_stats
                for b in mds("stat", path=p)["blocks"]}
    code = cluster.stop_role("mds")
    assert code == 0, f"MDS exited with {code} on SIGTERM"
    cluster.start_role("mds")
    wait_mds(cluster, nodes=3)
    assert mds.tree("/") == before_tree
    after_stats = {p: mds("stat", path=p) for p in before_stats}
    assert {p: {**st, "blocks": _uncapped(st)} for p, st in after_stats.items()} == before_stats
    # the ring was saved: capabilities from before the restart still open the blocks
    for p, st in after_stats.items():
        for b in st["blocks"]:
            assert mds.dn(b["replicas"][0], "stat_block", id=b["id"],
                          cap=old_caps[b["id"]])["size"] == b["size"]
    after_counts = {k: v for k, v in mds("status").items() if k in before_counts}
    assert after_counts == before_counts
    # the draft survived too and can still be committed
    assert mds("commit", handle=pending, blocks=[])["path"] == "/rs/draft"
    assert mds("stat", path="/rs/draft")["size"] == 0


# -- batch ------------------------------------------------------------------------------------

def _item(result: dict):
    """A batched entry as its result map or its OSError (not raised)."""
    try:
        return P.item_result(result)
    except OSError as exc:
        return exc


def test_batch_creates_and_commits_many_files_with_per_item_errors(mds):
    mds("mkdir", path="/batch")
    mds.write("/batch/plain", b"x")            # a file, to be a bad parent below
    data = {f"/batch/d{i % 3}/f{i}": bytes([i]) * (i + 1) for i in range(40)}
    ops = [{"op": "create", "path": p, "parents": True, "size": len(d), "block_size": KIB,
            "replication": 2} for p, d in data.items()]
    ops += [{"op": "create", "path": "/batch/plain/under", "size": 1},   # parent is a file
            {"op": "create", "path": "no/../bad", "size": 1},
            {"op": "dn_heartbeat", "node": "dnx", "capacity": 1, "used": 0, "blocks": 0},
            {"op": "batch", "ops": []}, "not a map", {"op": "stat"}]
    results = [_item(r) for r in mds("batch", ops=ops)["results"]]
    assert len(results) == len(ops)
    created, bad = results[:40], results[40:]
    assert isinstance(bad[0], NotADirectoryError)
    assert bad[1].errno == errno.EINVAL
    assert bad[2].errno == errno.EOPNOTSUPP and bad[3].errno == errno.EOPNOTSUPP
    assert bad[4].errno == errno.EOPNOTSUPP
    assert isinstance(bad[5], P.ProtocolError)          # stat without its path
    commits = []
    for (path, d), res in zip(data.items(), created):
        assert not isinstance(res, OSError), (path, res)
        (blk,) = res["blocks"]                            # allocated with the create
        assert len(blk["nodes"]) == 2
        crc = crc32c.crc32c(d)
        receipts = mds.put(blk, d)
        commits.append({"op": "commit", "handle": res["handle"], "blocks": [
            {"id": blk["id"], "size": len(d), "checksum": crc, "replicas": blk["nodes"],
             "receipts": receipts}]})
    with pytest.raises(FileNotFoundError):              # drafts stay invisible until commit
        mds("stat", path="/batch/d0/f0")
    commits.append({"op": "commit", "handle": "no-such-draft", "blocks": []})
    results = [_item(r) for r in mds("batch", ops=commits)["results"]]
    assert isinstance(results[-1], FileNotFoundError)
    for (path, d), res in zip(data.items(), results):
        assert res == {"path": path, "size": len(d)}
        info = mds("stat", path=path)
        assert info["size"] == len(d) and info["blocks"][0]["checksum"] == crc32c.crc32c(d)


def test_batch_limits_and_types(mds):
    with pytest.raises(P.ProtocolError):
        mds("batch", ops="create")
    for ops in ([], [{"op": "ping"}] * 257):
        assert _errno_of(lambda: mds("batch", ops=ops)) == errno.EINVAL
    reads = mds("batch", ops=[{"op": "stat", "path": "/"}, {"op": "ls", "path": "/missing"}])
    assert _item(reads["results"][0])["type"] == "dir"
    assert isinstance(_item(reads["results"][1]), FileNotFoundError)
    assert mds("ping")["pong"] is True


def test_thousands_of_blocks_and_entries_fit_one_reply(mds):
    """A commit, stat and ls carry their lists in the header: a 2,048-block file (8 GiB
    at 4 MiB blocks) and a 6,000-entry directory must go through, both ways."""
    handle = mds("create", path="/huge", block_size=KIB, replication=1)["handle"]
    ids = [b for _ in range(2) for b in mds("allocate", handle=handle, count=1024)["blocks"]]
    # every replica needs its DataNode's receipt: store the blocks, 256 per put_blocks
    datas = [i.to_bytes(4, "little") * (KIB // 4) for i in range(len(ids))]
    receipts: dict[int, bytes] = {}
    by_node: dict[str, list[int]] = {}
    for i, b in enumerate(ids):
        by_node.setdefault(b["nodes"][0], []).append(i)
    for node, idx in by_node.items():
        for start in range(0, len(idx), 256):
            part = idx[start:start + 256]
            got = mds.dn(node, "put_blocks", [datas[i] for i in part], blocks=[
                {"id": ids[i]["id"], "cap": ids[i]["caps"][0]} for i in part])["results"]
            receipts.update((i, P.item_result(r)["receipt"]) for i, r in zip(part, got))
    blocks = [{"id": b["id"], "size": KIB, "checksum": crc32c.crc32c(datas[i]),
               "replicas": b["nodes"], "receipts": [receipts[i]]} for i, b in enumerate(ids)]
    assert mds("commit", handle=handle, blocks=blocks)["size"] == 2048 * KIB
    info = mds("stat", path="/huge")
    assert [b["checksum"] for b in info["blocks"]] == [crc32c.crc32c(d) for d in datas]
    assert sum("cap" in b for b in info["blocks"]) == 4096 // 2 and info["cap_ttl"] > 0
    for start in range(0, 6000, 256):
        ops = [{"op": "create", "path": f"/wide/f{i:05d}", "parents": True}
               for i in range(start, min(6000, start + 256))]
        handles = [P.item_result(r)["handle"] for r in mds("batch", ops=ops)["results"]]
        results = mds("batch", ops=[{"op": "commit", "handle": h, "blocks": []}
                                    for h in handles])["results"]
        assert all("ok" in r for r in results)
    names = [e["name"] for e in mds("ls", path="/wide")["entries"]]
    assert sorted(names) == [f"f{i:05d}" for i in range(6000)]
    mds("rm", path="/wide", recursive=True)
    mds("rm", path="/huge")


# -- callers ---------------------------------------------------------------------------------

def test_a_client_cannot_speak_for_a_datanode(cluster, mds):
    """The broker stamps requests from the client endpoint as class client: DataNode traffic
    from there is refused, and the real DataNodes (members) keep heartbeating."""
    before = mds("status")
    refused = [
        ("mds", {"op": "dn_heartbeat", "node": "dn1", "capacity": 1, "used": 0, "blocks": 0,
                 "deleted": [b"\x01" * 16]}, []),
        ("mds", {"op": "block_report", "node": "dn1", "count": 0}, [msgpack.packb([])]),
        ("mds", {"op": "replica_added", "node": "dn2", "block": b"\x01" * 16, "size": 1,
                 "checksum": 1}, []),
        ("mds", {"op": "block_corrupt", "node": "dn1", "block": b"\x01" * 16}, []),
        ("mds", {"op": "bad_replica", "node": "dn1", "block": b"\x01" * 16}, []),
        ("dn.dn1", {"op": "delete_block", "id": b"\x01" * 16}, []),
        ("dn.dn1", {"op": "copy_block", "id": b"\x01" * 16, "target": "dn2"}, []),
        ("dn.dn1", {"op": "block_report"}, []),
    ]
    for service, header, payload in refused:
        with pytest.raises(PermissionError):
            mds.client.call(service, header, payload)
    time.sleep(4 * HB)
    after = mds("status")
    assert [(n["id"], n["state"]) for n in after["nodes"]] == \
        [(n["id"], "up") for n in before["nodes"]]
    assert all(n["last_seen"] < 3 * HB for n in after["nodes"])
    assert after["files"] == before["files"]


def test_a_member_connection_is_stamped_with_its_member(cluster):
    with MemberClient(cluster.endpoints["worker"], "dn.dn1", timeout=10,
                      curve=cluster.member_curve("dn.dn1")) as dn1:
        # DataNode dn1 may speak for itself (an unknown block: nothing to drop) ...
        assert dn1.call("mds", {"op": "block_corrupt", "node": "dn1",
                                "block": b"\x01" * 16}).result == {"dropped": False}
        with pytest.raises(PermissionError):   # ... but not for dn2
            dn1.call("mds", {"op": "dn_heartbeat", "node": "dn2", "capacity": 1, "used": 0,
                             "blocks": 0})
        # and a DataNode may not delete on another: that is the MDS's word
        with pytest.raises(PermissionError):
            dn1.call("dn.dn2", {"op": "delete_block", "id": b"\x01" * 16})
        assert dn1.call("broker", {"op": "ping"}).result == {"pong": True}
    with MemberClient(cluster.endpoints["worker"], "mds", timeout=10,
                      curve=cluster.member_curve("mds")) as m:
        assert m.call("dn.dn2", {"op": "delete_block", "id": b"\x01" * 16}).result == \
            {"deleted": False}
