"""Reference-counted blocks in the namespace (mds/blockmap.py, Namespace clone and commits
that share blocks): refcounts through copy, rm, overwrite, rename-replace and abort; WAL
replay and snapshot equality; repair and orphan planning on a shared block."""
from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from mds.cluster import ClusterView
from mds.metastore import MetaStore
from mds.namespace import BIG_FILE_BLOCKS, Namespace, NamespaceConfig
from mds.perms import Cred
from mds.repair import RepairPlanner
from mds.snapshot import load_snapshot, write_snapshot
from tests.support.clock import FakeClock
from tests.unit.test_namespace import fails, put, run, unchanged

BS = 1024
CONFIG = NamespaceConfig(replication=2, block_size=BS, lease=60.0)


@pytest.fixture
def ns() -> Namespace:
    return Namespace(CONFIG, clock=FakeClock(), random_bytes=random.Random(3).randbytes)


def ids(ns: Namespace, path: str) -> list[bytes]:
    return [b["id"] for b in ns.file_info(path)["blocks"]]


def queued(ns: Namespace) -> set[bytes]:
    return {b for q in ns.pending_deletes.values() for b in q}


def refs(ns: Namespace) -> dict[bytes, int]:
    return {bid: ns.blockmap.refs(bid) for bid in ns.blockmap.owners}


def share_commit(ns: Namespace, path: str, sources: list[tuple[str, int]],
                 cred: Cred | None = None, **kw: object) -> dict:
    """A draft at `path` committed from blocks of existing files: (src path, index)."""
    h = run(ns, ns.prepare_create(path, cred=cred))["handle"]
    blocks = []
    for src, i in sources:
        b = ns.file_info(src)["blocks"][i]
        blocks.append({"id": b["id"], "size": b["size"], "checksum": b["checksum"],
                       "from": src})
    return run(ns, ns.prepare_commit(h, blocks, cred=cred, **kw))


# ---------------------------------------------------------------- clone


def test_copy_shares_every_block_and_the_last_reference_deletes(ns: Namespace) -> None:
    put(ns, "/a", (BS, BS, 10))
    res = run(ns, ns.prepare_clone("/a", "/b"))
    assert res == {"path": "/b", "inode": 2, "size": 2 * BS + 10, "blocks": 3,
                   "replaced": False}
    assert ids(ns, "/b") == ids(ns, "/a")
    assert ns.file_info("/b")["blocks"] == ns.file_info("/a")["blocks"]   # replicas too
    assert all(ns.blockmap.refs(b) == 2 for b in ids(ns, "/a"))
    assert ns.blockmap.shared == 3 and ns.counts()["bytes"] == 2 * (2 * BS + 10)
    blocks = ids(ns, "/a")
    run(ns, ns.prepare_rm("/a"))                 # the source goes: nothing is deleted
    assert queued(ns) == set() and all(ns.blockmap.refs(b) == 1 for b in blocks)
    assert ns.block_info(blocks[0])["inode"] == 2 and ns.blockmap.shared == 0
    run(ns, ns.prepare_rm("/b"))                 # the last reference: every replica
    assert queued(ns) == set(blocks) and ns.blockmap.owners == {}
    assert set(ns.pending_deletes) == {"n1", "n2"}


def test_rm_of_the_copy_keeps_the_source(ns: Namespace) -> None:
    put(ns, "/a", (BS, 10))
    run(ns, ns.prepare_clone("/a", "/b"))
    run(ns, ns.prepare_rm("/b"))
    assert queued(ns) == set() and refs(ns) == {b: 1 for b in ids(ns, "/a")}
    assert ns.block_info(ids(ns, "/a")[0])["inode"] == 1


def test_overwrite_and_rename_replace_drop_one_reference(ns: Namespace) -> None:
    put(ns, "/a", (BS, 10))
    shared = ids(ns, "/a")
    run(ns, ns.prepare_clone("/a", "/b"))
    run(ns, ns.prepare_clone("/a", "/c"))
    assert all(ns.blockmap.refs(b) == 3 for b in shared)
    put(ns, "/a", (5,))                          # overwrite the source
    assert all(ns.blockmap.refs(b) == 2 for b in shared) and queued(ns) == set()
    run(ns, ns.prepare_rename("/b", "/c"))       # rename over another holder
    assert all(ns.blockmap.refs(b) == 1 for b in shared) and queued(ns) == set()
    run(ns, ns.prepare_rm("/c"))
    assert queued(ns) == set(shared)


def test_copy_over_a_file_keeps_its_attributes_and_releases_it(ns: Namespace) -> None:
    put(ns, "/a", (10,))
    put(ns, "/b", (20,))
    old = ids(ns, "/b")
    run(ns, ns.prepare_chmod("/b", 0o600))
    run(ns, ns.prepare_chmod("/a", 0o640))
    assert run(ns, ns.prepare_clone("/a", "/b"))["replaced"] is True
    assert ns.stat("/b")["mode"] == 0o600 and ns.stat("/b")["size"] == 10
    assert queued(ns) == set(old)
    run(ns, ns.prepare_clone("/a", "/new"))      # a new file: src's bits less the umask
    assert ns.stat("/new")["mode"] == 0o640


def test_copy_refusals_change_nothing(ns: Namespace) -> None:
    put(ns, "/a", (10,))
    ns.apply(ns.prepare_mkdir("/d"))
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_clone, "/d", "/x", name="/d")
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_clone, "/a", "/d", name="/d")
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_clone, "/nope", "/x", name="/nope")
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_clone, "/a", "/no/x", name="/no/x")
    fails(OSError, errno.EINVAL, ns.prepare_clone, "/a", "/a", name="/a")
    put(ns, "/b", (10,))
    fails(FileExistsError, errno.EEXIST, ns.prepare_clone, "/a", "/b", exclusive=True,
          name="/b")
    for args, kw in ((("/a", "/b"), {"exclusive": True}), (("/d", "/x"), {})):
        unchanged(ns, ns.prepare_clone, *args, **kw)


def test_a_stale_clone_record_is_refused(ns: Namespace) -> None:
    put(ns, "/a", (10,))
    rec = ns.prepare_clone("/a", "/b")
    put(ns, "/a", (20,))                          # a new version at the source path
    fails(OSError, errno.EINVAL, ns.validate, rec, name="/a")


def test_copy_permissions(ns: Namespace) -> None:
    alice, bob = Cred("alice"), Cred("bob")
    for user in ("alice", "bob"):
        run(ns, ns.prepare_mkdir(f"/{user}"))
        run(ns, ns.prepare_chown(f"/{user}", user, user))
    put(ns, "/alice/secret", (10,))
    run(ns, ns.prepare_chmod("/alice/secret", 0o600))
    run(ns, ns.prepare_chown("/alice/secret", "alice", "alice"))
    put(ns, "/alice/open", (10,))                # 0o644, admin's
    fails(PermissionError, errno.EACCES, ns.prepare_clone, "/alice/secret", "/bob/x",
          cred=bob)                               # no read on the source
    fails(PermissionError, errno.EACCES, ns.prepare_clone, "/alice/open", "/alice/x",
          cred=bob)                               # no write on the destination's parent
    res = run(ns, ns.prepare_clone("/alice/open", "/bob/x", cred=bob))
    assert res["size"] == 10
    st = ns.stat("/bob/x")
    assert (st["owner"], st["group"], st["mode"]) == ("bob", "bob", 0o644)
    run(ns, ns.prepare_clone("/alice/secret", "/alice/copy", cred=alice))


# ---------------------------------------------------------------- commits that share


def test_compose_from_parts_then_remove_the_parts(ns: Namespace) -> None:
    put(ns, "/p1", (BS, 500))                     # S3 parts: sizes need not be uniform
    put(ns, "/p2", (BS, 7))
    parts = ids(ns, "/p1") + ids(ns, "/p2")
    res = share_commit(ns, "/obj", [("/p1", 0), ("/p1", 1), ("/p2", 0), ("/p2", 1)])
    assert res["size"] == 2 * BS + 507 and ids(ns, "/obj") == parts
    assert [b["size"] for b in ns.file_info("/obj")["blocks"]] == [BS, 500, BS, 7]
    run(ns, ns.prepare_rm("/p1"))
    run(ns, ns.prepare_rm("/p2"))
    assert queued(ns) == set() and refs(ns) == {b: 1 for b in parts}
    assert ns.block_info(parts[3])["index"] == 3


def rewrite_middle(ns: Namespace, path: str) -> tuple[dict, dict]:
    """A copy-on-write commit over a 3-block file: block 1 new (on n1, n3), blocks 0
    and 2 shared with the current version -> (the new block, the commit's result)."""
    h = run(ns, ns.prepare_create(path))["handle"]
    (new,) = run(ns, ns.prepare_allocate(h, [["n1", "n3"]]))["blocks"]
    info = ns.file_info(path)["blocks"]
    blocks = [{**{k: info[0][k] for k in ("id", "size", "checksum")}, "from": path},
              {"id": new["id"], "size": BS, "checksum": 9, "replicas": ["n1", "n3"]},
              {**{k: info[2][k] for k in ("id", "size", "checksum")}, "from": path}]
    return new, run(ns, ns.prepare_commit(h, blocks))


def test_copy_on_write_commit_over_the_file_it_shares_with(ns: Namespace) -> None:
    put(ns, "/f", (BS, BS, 10))
    old = ids(ns, "/f")
    new, _ = rewrite_middle(ns, "/f")
    assert ids(ns, "/f") == [old[0], new["id"], old[2]]
    assert queued(ns) == {old[1]}                 # only the rewritten block goes
    assert refs(ns) == {old[0]: 1, new["id"]: 1, old[2]: 1}


def test_a_block_listed_twice_counts_twice(ns: Namespace) -> None:
    put(ns, "/p", (BS,))
    (bid,) = ids(ns, "/p")
    share_commit(ns, "/x", [("/p", 0), ("/p", 0)])
    assert ns.blockmap.refs(bid) == 3 and ns.file_info("/x")["size"] == 2 * BS
    run(ns, ns.prepare_rm("/p"))
    run(ns, ns.prepare_rm("/x"))
    assert queued(ns) == {bid} and ns.blockmap.owners == {}


def test_shared_commit_refusals(ns: Namespace) -> None:
    put(ns, "/p", (BS, 10))
    b = ns.file_info("/p")["blocks"][1]
    h = run(ns, ns.prepare_create("/x"))["handle"]
    entry = {"id": b["id"], "size": b["size"], "checksum": b["checksum"], "from": "/p"}
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [dict(entry, size=11)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [dict(entry, checksum=1)])
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_commit, h,
          [dict(entry, id=b"\x05" * 16)], name="/x")       # no such committed block
    put(ns, "/q", (10,))
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_commit, h, [dict(entry, **{"from": "/q"})],
          name="/q")                                       # a block, but not /q's
    # a record naming a block that has gone since (the source was replaced)
    rec = ns.prepare_commit(h, [entry])
    put(ns, "/p", (5,))
    fails(FileNotFoundError, errno.ENOENT, ns.validate, rec, name="/x")
    # a draft's own block cannot be named as shared
    h2 = run(ns, ns.prepare_create("/y"))["handle"]
    (own,) = run(ns, ns.prepare_allocate(h2, [["n1"]]))["blocks"]
    fails(FileNotFoundError, errno.ENOENT, ns.validate,
          {"op": "commit", "handle": h, "blocks": [[own["id"], BS, 0]], "mtime": 1.0})
    unchanged(ns, ns.prepare_commit, h, [dict(entry, size=11)])


def test_shared_commit_needs_read_on_each_source(ns: Namespace) -> None:
    bob = Cred("bob")
    run(ns, ns.prepare_mkdir("/bob"))
    run(ns, ns.prepare_chown("/bob", "bob", "bob"))
    put(ns, "/secret", (10,))
    run(ns, ns.prepare_chmod("/secret", 0o600))
    fails(PermissionError, errno.EACCES, share_commit, ns, "/bob/x", [("/secret", 0)],
          cred=bob)
    run(ns, ns.prepare_chmod("/secret", 0o644))
    assert share_commit(ns, "/bob/x", [("/secret", 0)], cred=bob)["size"] == 10


def test_aborted_and_expired_drafts_free_only_their_own_blocks(ns: Namespace) -> None:
    put(ns, "/p", (BS,))
    run(ns, ns.prepare_clone("/p", "/q"))
    h = run(ns, ns.prepare_create("/x"))["handle"]
    (own,) = run(ns, ns.prepare_allocate(h, [["n3"]]))["blocks"]
    run(ns, ns.prepare_abort(h))
    assert queued(ns) == {own["id"]} and ns.blockmap.refs(ids(ns, "/p")[0]) == 2


# ---------------------------------------------------------------- replicas, repair


def test_set_replicas_on_a_shared_block_fixes_every_file(ns: Namespace) -> None:
    put(ns, "/a", [BS] * (BIG_FILE_BLOCKS + 2))    # a big file: the positions map too
    run(ns, ns.prepare_clone("/a", "/b"))
    share_commit(ns, "/c", [("/a", 5), ("/a", 5)])
    bid = ids(ns, "/a")[5]
    run(ns, ns.prepare_set_replicas(bid, ["n2", "n7"]))
    for path in ("/a", "/b"):
        assert ns.file_info(path)["blocks"][5]["replicas"] == ["n2", "n7"]
    assert [b["replicas"] for b in ns.file_info("/c")["blocks"]] == [["n2", "n7"]] * 2
    assert bid in ns.deletes_for("n1")
    assert sum(1 for b, _, _ in ns.iter_blocks() if b == bid) == 1   # one block


def test_a_shared_block_is_repaired_once_for_every_file() -> None:
    ns = Namespace(NamespaceConfig(replication=2), clock=lambda: 1_000.0,
                   random_bytes=random.Random(5).randbytes)
    cluster = ClusterView(dead_after=5.0, rng=random.Random(1))
    clock = FakeClock(100.0)
    put(ns, "/a", (10,), nodes=("dn1", "dn2"))
    run(ns, ns.prepare_clone("/a", "/b"))
    run(ns, ns.prepare_clone("/a", "/c"))
    (bid,) = ids(ns, "/a")
    p = RepairPlanner(ns, cluster, clock=clock, safemode_timeout=30.0, orphan_grace=10.0)
    for node in ("dn1", "dn2", "dn3"):
        cluster.heartbeat(node, 1 << 34, 0, 0, clock.now)
    for node in ("dn1", "dn2", "dn3"):
        p.on_report(node, [(bid, 10, 7)] if node != "dn3" else [])
    p.tick()
    assert p.summary()["under_replicated"] == 0
    clock.now += 6
    for node in ("dn1", "dn3"):
        cluster.heartbeat(node, 1 << 34, 0, 0, clock.now)
    for ev in cluster.check(clock.now):
        p.on_node_down(ev.node)
    p.tick()
    assert p.summary()["under_replicated"] == 1   # one block, however many files hold it
    (cmd,) = p.commands_for("dn1")
    assert cmd == {"op": "copy", "block": bid, "target": "dn3"}
    for rec in p.on_replica_added("dn3", bid, 10, 7):
        ns.apply(rec)
    for path in ("/a", "/b", "/c"):
        assert sorted(ns.file_info(path)["blocks"][0]["replicas"]) == ["dn1", "dn3"]
    # a report of the shared block is no orphan; once both files go it is
    run(ns, ns.prepare_rm("/a"))
    run(ns, ns.prepare_rm("/b"))
    p.on_report("dn3", [(bid, 10, 7)])
    clock.now += 20
    assert ns.block_info(bid) is not None and not ns.is_pending_delete("dn3", bid)
    assert all(rec["op"] != "queue_delete" for rec in p.tick()[0])
    run(ns, ns.prepare_rm("/c"))
    assert all(ns.is_pending_delete(n, bid) for n in ("dn1", "dn3"))


# ---------------------------------------------------------------- durability


def _shared_world(ns: Namespace) -> None:
    put(ns, "/a", [BS] * (BIG_FILE_BLOCKS + 3))
    put(ns, "/p", (BS, 3))
    run(ns, ns.prepare_clone("/a", "/b"))
    run(ns, ns.prepare_clone("/p", "/p2"))
    share_commit(ns, "/obj", [("/p", 0), ("/p", 1), ("/a", 2), ("/a", 2)])
    run(ns, ns.prepare_rm("/p"))
    run(ns, ns.prepare_set_replicas(ids(ns, "/b")[4], ["n9"]))


def test_snapshot_keeps_sharing(ns: Namespace, tmp_path: Path) -> None:
    _shared_world(ns)
    snap = write_snapshot(tmp_path, ns, seq=1)
    other = Namespace(CONFIG)
    load_snapshot(snap, other)
    assert other.dump() == ns.dump() and refs(other) == refs(ns)
    assert other.counts() == ns.counts()
    # and the restored index behaves: the last reference still deletes
    for path in ("/a", "/b", "/obj", "/p2"):
        run(other, other.prepare_rm(path))
    assert other.blockmap.owners == {} and other.blockmap.shared == 0


def test_wal_replay_and_checkpoint_keep_sharing(tmp_path: Path) -> None:
    def store() -> MetaStore:
        return MetaStore(tmp_path, config=CONFIG, clock=FakeClock(),
                         random_bytes=random.Random(9).randbytes)
    s = store()
    s.submit(lambda ns: ns.prepare_mkdir("/d"))
    ns_live = s.ns
    h = s.submit(lambda ns: ns.prepare_create("/d/a"))["handle"]
    alloc = s.submit(lambda ns: ns.prepare_allocate(h, [["n1", "n2"]] * 3))["blocks"]
    s.submit(lambda ns: ns.prepare_commit(h, [{"id": b["id"], "size": BS if i < 2 else 9,
                                              "checksum": i, "replicas": b["targets"]}
                                             for i, b in enumerate(alloc)]))
    s.submit(lambda ns: ns.prepare_clone("/d/a", "/d/b"))
    s.flush()
    expected = ns_live.dump()
    s.close()
    again = store()                                # WAL replay
    assert again.ns.dump() == expected and refs(again.ns) == refs(ns_live)
    assert again.checkpoint_now(wait=True)         # the snapshot path, then replay on it
    again.submit(lambda ns: ns.prepare_rm("/d/a"))
    again.flush()
    after = again.ns.dump()
    again.close()
    third = store()
    assert third.ns.dump() == after and queued(third.ns) == set()
    assert all(third.ns.blockmap.refs(b) == 1 for b in ids(third.ns, "/d/b"))
    third.close()
