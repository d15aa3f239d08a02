"""Operation ids (mds/opids.py, MetaStore.once, the service layer's `opid` field): the same
id twice is applied once and answered the same, also after a WAL replay and after a
snapshot restore; the window is bounded by count and by age."""
from __future__ import annotations

import errno
import os

import pytest

from broker import protocol as P
from mds.opids import OpResults, answer_of, result_of
from tests.support.inprocess import InProcessCluster


def opid() -> bytes:
    return os.urandom(16)


def call(conn, header: dict) -> dict:
    return conn.call("mds", header).result


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=2) as c:
        yield c


def mutations(cluster) -> int:
    """Records in the log so far: a retry that was applied again would add some."""
    return cluster.store.last_seq


def test_same_opid_twice_is_applied_once_with_the_same_answer(cluster):
    conn = cluster.connect()
    ids = {name: opid() for name in ("mkdir", "mkdir2", "create", "rm", "mv", "chmod")}
    assert call(conn, {"op": "mkdir", "path": "/d", "opid": ids["mkdir"]}) == {}
    seq = mutations(cluster)
    # a plain retry of mkdir would fail EEXIST; with the same id it is the first answer
    assert call(conn, {"op": "mkdir", "path": "/d", "opid": ids["mkdir"]}) == {}
    assert mutations(cluster) == seq
    with pytest.raises(FileExistsError):     # a new id is a new operation
        call(conn, {"op": "mkdir", "path": "/d", "opid": ids["mkdir2"]})

    create = {"op": "create", "path": "/d/f", "exclusive": True, "opid": ids["create"]}
    first, again = call(conn, create), call(conn, create)
    assert again == first and len(cluster.store.ns.draft_handles()) == 1

    chmod = {"op": "chmod", "path": "/d", "mode": 0o700, "opid": ids["chmod"]}
    assert call(conn, chmod)["mode"] == 0o700
    call(conn, {"op": "chmod", "path": "/d", "mode": 0o755})
    # the retried chmod answers its first answer and does not set 0o700 again
    assert call(conn, chmod)["mode"] == 0o700
    assert cluster.store.ns.stat("/d")["mode"] == 0o755

    call(conn, {"op": "mkdir", "path": "/e"})
    assert call(conn, {"op": "mv", "src": "/e", "dst": "/e2", "opid": ids["mv"]}) == {"path": "/e2"}
    assert call(conn, {"op": "mv", "src": "/e", "dst": "/e2", "opid": ids["mv"]}) == {"path": "/e2"}
    assert call(conn, {"op": "rm", "path": "/e2", "opid": ids["rm"]}) == {}
    seq = mutations(cluster)
    assert call(conn, {"op": "rm", "path": "/e2", "opid": ids["rm"]}) == {}   # not ENOENT
    assert mutations(cluster) == seq


def test_a_refused_operation_is_not_remembered(cluster):
    conn = cluster.connect()
    op = {"op": "rm", "path": "/later", "opid": opid()}
    with pytest.raises(FileNotFoundError):
        call(conn, op)
    assert len(cluster.store.ns.opids) == 0
    call(conn, {"op": "mkdir", "path": "/later"})
    assert call(conn, op) == {}          # nothing was applied the first time: runs now


def test_batch_items_carry_their_own_ids(cluster):
    conn = cluster.connect()
    items = [{"op": "mkdir", "path": f"/b{i}", "opid": opid()} for i in range(3)]
    first = call(conn, {"op": "batch", "ops": items})["results"]
    again = call(conn, {"op": "batch", "ops": items})["results"]
    assert first == again == [{"ok": {}}] * 3


def test_a_bad_opid_is_refused(cluster):
    conn = cluster.connect()
    with pytest.raises(OSError) as info:
        call(conn, {"op": "mkdir", "path": "/x", "opid": b"short"})
    assert info.value.errno == errno.EINVAL and "opid" in str(info.value)
    with pytest.raises(OSError) as info:      # reads take no op id
        call(conn, {"op": "stat", "path": "/", "opid": opid()})
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("checkpoint", [False, True], ids=["wal-replay", "snapshot"])
def test_answers_survive_a_restart(cluster, checkpoint):
    fs = cluster.client()
    conn = cluster.connect()
    fs.write_bytes("/f", b"x" * 1000)
    created = call(conn, {"op": "create", "path": "/g", "exclusive": True, "size": 10,
                          "opid": (cid := opid())})
    rm_id, mk_id = opid(), opid()
    call(conn, {"op": "rm", "path": "/f", "opid": rm_id})
    call(conn, {"op": "mkdir", "path": "/m", "opid": mk_id})
    before = cluster.store.ns.dump()
    cluster.restart_mds(checkpoint=checkpoint)
    cluster.beat()
    assert cluster.store.ns.dump() == before
    assert len(cluster.store.ns.opids) >= 3
    seq = cluster.store.last_seq
    conn = cluster.connect()
    assert call(conn, {"op": "rm", "path": "/f", "opid": rm_id}) == {}
    assert call(conn, {"op": "mkdir", "path": "/m", "opid": mk_id}) == {}
    again = call(conn, {"op": "create", "path": "/g", "exclusive": True, "size": 10,
                        "opid": cid})
    assert again == created
    assert cluster.store.last_seq == seq


def test_client_retries_a_lost_reply_without_applying_twice(cluster):
    fs = cluster.client()
    fs.mkdir("/d")
    fs.write_bytes("/d/a", b"a" * 5000)
    # the MDS applies each of these, then its reply is lost (killed after the fsync)
    for op in ("rm", "mkdir", "mv", "commit", "create", "pool", "put_small"):
        cluster.fail("mds", op, after=True)
    fs.rm("/d/a")                        # retried: the first answer, not ENOENT
    fs.mkdir("/d/new")                   # retried: not EEXIST
    assert fs.mv("/d/new", "/d/moved") == "/d/moved"
    # several blocks: the streaming path, where create and commit each lose a reply
    fs.write_bytes("/d/b", b"b" * 5000, block_size=1024)
    assert fs.read_bytes("/d/b") == b"b" * 5000
    # one block through a block pool: pool and put_small each lose a reply
    fs.write_bytes("/d/c", b"c" * 5000, block_size=8192)
    assert fs.read_bytes("/d/c") == b"c" * 5000
    assert sorted(fs.ls("/d")) == ["b", "c", "moved"]
    assert cluster.store.ns.draft_handles() == []      # no second draft left over
    assert len(cluster.store.ns.pool_handles()) == 2   # (None, None) and (None, 8192)
    assert fs.retrier.retries >= 7


def test_a_retried_exclusive_copy_answers_its_first_answer(cluster):
    fs = cluster.client()
    fs.write_bytes("/src", b"s" * 5000)
    cluster.fail("mds", "copy", after=True)     # applied, then the reply is lost
    assert fs.copy("/src", "/dst", exclusive=True) == "/dst"     # retried: not EEXIST
    assert fs.read_bytes("/dst") == b"s" * 5000
    assert fs.retrier.retries >= 1
    with pytest.raises(FileExistsError):        # a new copy is a new operation
        fs.copy("/src", "/dst", exclusive=True)


def test_window_is_bounded_by_count_and_age():
    ops = OpResults(max_count=3, max_age=10.0)
    for i in range(5):
        ops.add(bytes([i]) * 16, 100.0 + i, answer_of({"i": i}, None))
    assert len(ops) == 3 and ops.get(bytes([0]) * 16) is None
    assert result_of(ops.get(bytes([4]) * 16)) == {"i": 4}
    ops.add(b"\x09" * 16, 113.5, answer_of(None, FileNotFoundError(errno.ENOENT, "gone")))
    assert len(ops) == 2          # 102 by count, 103 by age (older than 113.5 - 10)
    with pytest.raises(FileNotFoundError):
        result_of(ops.get(b"\x09" * 16))
    restored = OpResults()
    restored.restore(ops.export())
    assert restored.export() == ops.export()


def test_answer_encoding_is_the_protocol_mapping():
    assert P.item_result({"ok": {"a": 1}}) == result_of(answer_of({"a": 1}, None))


def test_the_client_stamps_exactly_the_mutating_ops(cluster):
    from client.retry import MUTATING
    declared = {name for name, op in cluster.mds.service.ops.items() if op.mutating}
    assert declared == MUTATING


def test_an_opid_is_per_user(cluster):
    admin, alice = cluster.connect(), cluster.connect(("client", "alice"))
    call(admin, {"op": "mkdir", "path": "/home"})
    call(admin, {"op": "chmod", "path": "/home", "mode": 0o777})
    shared = opid()
    assert call(admin, {"op": "mkdir", "path": "/home/a", "opid": shared}) == {}
    # alice reusing admin's id gets no answer of admin's: hers is a new operation
    with pytest.raises(FileExistsError):
        call(alice, {"op": "mkdir", "path": "/home/a", "opid": shared})
    assert call(alice, {"op": "mkdir", "path": "/home/b", "opid": shared}) == {}
