"""Tree quotas (mds/treequota.py) through the namespace: limits refused with EDQUOT and
nothing changed, usage kept incrementally (checked against a fresh count of each tree),
nesting, renames between trees, copies, and the limits surviving replay and snapshots."""
from __future__ import annotations

import errno
import random

import pytest

from mds.namespace import Namespace, NamespaceConfig
from mds.perms import Cred
from mds.snapshot import load_snapshot, write_snapshot
from mds.treequota import usage_of
from tests.support.clock import FakeClock
from tests.unit.test_namespace import BS, fails, put, run, unchanged


@pytest.fixture
def ns() -> Namespace:
    return Namespace(NamespaceConfig(replication=2, block_size=BS, lease=60.0),
                     clock=FakeClock(), random_bytes=random.Random(7).randbytes)


def counted(ns: Namespace) -> dict[str, tuple[int, int]]:
    """Each quota's usage as the namespace keeps it, after checking it against a walk."""
    out = {}
    for d, q in ns.quotas.by_dir.items():
        assert usage_of(d, include_self=False) == (q.bytes, q.files), q.path
        assert ns.tree.node(q.path)[1] is d
        out[q.path] = (q.bytes, q.files)
    return out


def quota(ns: Namespace, path: str, max_bytes: int | None = None,
          max_files: int | None = None) -> None:
    run(ns, ns.prepare_quota(path, max_bytes, max_files))


def test_usage_follows_mkdir_commit_replace_rm(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/p/old", parents=True))
    put(ns, "/p/old/f", [BS, 10])
    quota(ns, "/p", max_bytes=10 * BS)
    assert counted(ns) == {"/p": (BS + 10, 2)}       # an existing tree counted once
    run(ns, ns.prepare_mkdir("/p/a/b", parents=True))
    put(ns, "/p/a/b/g", [5], parents=True)
    assert counted(ns) == {"/p": (BS + 15, 5)}
    put(ns, "/p/old/f", [3])                           # a replaced file: its new size only
    assert counted(ns) == {"/p": (8, 5)}
    run(ns, ns.prepare_rm("/p/a", recursive=True))
    assert counted(ns) == {"/p": (3, 2)}
    put(ns, "/outside", [BS])                          # outside the tree: not counted
    assert counted(ns) == {"/p": (3, 2)}
    assert ns.quota_get("/p/old") == [{"path": "/p", "max_bytes": 10 * BS,
                                       "max_files": None, "bytes": 3, "files": 2}]


def test_commit_past_the_limit_is_edquot_naming_the_tree_and_changes_nothing(
        ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/p"))
    quota(ns, "/p", max_bytes=2 * BS)
    put(ns, "/p/a", [BS])
    h = run(ns, ns.prepare_create("/p/b"))["handle"]
    alloc = run(ns, ns.prepare_allocate(h, [["n1", "n2"]] * 2))
    blocks = [{"id": b["id"], "size": BS, "checksum": 7, "replicas": b["targets"]}
              for b in alloc["blocks"]]
    err = fails(OSError, errno.EDQUOT, ns.prepare_commit, h, blocks, name="/p/b")
    assert "/p" in str(err) and str(2 * BS) in str(err)
    unchanged(ns, ns.prepare_commit, h, blocks)
    assert counted(ns) == {"/p": (BS, 1)}
    # shrinking is always allowed, even over the limit
    quota(ns, "/p", max_bytes=10)
    put(ns, "/p/a", [5])
    assert counted(ns) == {"/p": (5, 1)}


def test_files_limit_refuses_create_mkdir_and_parents(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/p"))
    quota(ns, "/p", max_files=2)
    put(ns, "/p/a", [1])
    fails(OSError, errno.EDQUOT, ns.prepare_mkdir, "/p/x/y", parents=True, name="/p/x/y")
    fails(OSError, errno.EDQUOT, ns.prepare_create, "/p/x/f", parents=True)
    put(ns, "/p/a", [2])                               # replacing adds no entry
    run(ns, ns.prepare_mkdir("/p/d"))
    fails(OSError, errno.EDQUOT, ns.prepare_create, "/p/b")
    assert counted(ns) == {"/p": (2, 2)}


def test_nested_quotas_all_apply(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/o/i", parents=True))
    quota(ns, "/o", max_bytes=3 * BS)
    quota(ns, "/o/i", max_bytes=10 * BS, max_files=100)
    put(ns, "/o/f", [BS, BS])
    err = fails(OSError, errno.EDQUOT, put, ns, "/o/i/g", [BS, BS])
    assert "quota of /o exceeded" in str(err)          # the outer tree is the tighter
    put(ns, "/o/i/g", [BS])
    assert counted(ns) == {"/o": (3 * BS, 3), "/o/i": (BS, 1)}
    assert [q["path"] for q in ns.quota_get("/o/i")] == ["/o", "/o/i"]


def test_rename_moves_usage_between_trees_or_is_refused(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/a/sub", parents=True))
    run(ns, ns.prepare_mkdir("/b"))
    put(ns, "/a/sub/f", [BS])
    put(ns, "/a/sub/g", [10])
    quota(ns, "/a", max_files=10)
    quota(ns, "/b", max_bytes=BS + 10)
    quota(ns, "/a/sub", max_bytes=BS * 4)              # moves with its directory
    run(ns, ns.prepare_rename("/a/sub", "/b/sub"))
    assert counted(ns) == {"/a": (0, 0), "/b": (BS + 10, 3), "/b/sub": (BS + 10, 2)}
    put(ns, "/a/h", [5])
    fails(OSError, errno.EDQUOT, ns.prepare_rename, "/a/h", "/b/sub/h", name="/b/sub/h")
    unchanged(ns, ns.prepare_rename, "/a/h", "/b/sub/h")
    # replacing a file of the same size in the tree frees what it brings
    run(ns, ns.prepare_rename("/a/h", "/b/sub/g"))
    assert counted(ns) == {"/a": (0, 0), "/b": (BS + 5, 3), "/b/sub": (BS + 5, 2)}
    run(ns, ns.prepare_rm("/b/sub", recursive=True))   # its quota goes with it
    assert counted(ns) == {"/a": (0, 0), "/b": (0, 0)}


def test_a_copy_counts_shared_blocks_in_full(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/p"))
    put(ns, "/p/a", [BS, BS])
    quota(ns, "/p", max_bytes=5 * BS)
    run(ns, ns.prepare_clone("/p/a", "/p/b"))
    assert counted(ns) == {"/p": (4 * BS, 2)}
    fails(OSError, errno.EDQUOT, ns.prepare_clone, "/p/a", "/p/c", name="/p/c")


def test_only_the_superuser_sets_and_readers_see(ns: Namespace) -> None:
    bob = Cred("bob")
    run(ns, ns.prepare_mkdir("/p", mode=0o700))
    fails(PermissionError, errno.EPERM, ns.prepare_quota, "/p", 1, None, cred=bob)
    quota(ns, "/p", max_bytes=1)
    fails(PermissionError, errno.EACCES, ns.quota_get, "/p", cred=bob)
    assert ns.quota_ls(cred=bob) == [] and len(ns.quota_ls()) == 1
    fails(OSError, errno.EINVAL, ns.prepare_quota, "/p", -1, None)
    put(ns, "/f", [1])
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_quota, "/f", 1, None)
    quota(ns, "/p")                                     # both None: cleared
    assert counted(ns) == {}


def test_limits_and_usage_survive_replay_and_snapshot(ns: Namespace, tmp_path) -> None:
    log: list[dict] = []
    orig = ns.apply

    def logged(rec: dict) -> dict:
        log.append(rec)
        return orig(rec)
    ns.apply = logged                                   # type: ignore[method-assign]
    run(ns, ns.prepare_mkdir("/p/q", parents=True))
    quota(ns, "/p", max_bytes=100 * BS, max_files=50)
    put(ns, "/p/q/f", [BS, 7])
    quota(ns, "/p/q", max_files=9)
    run(ns, ns.prepare_rename("/p/q", "/p/r"))
    expected = ns.dump()
    assert expected["quotas"] and counted(ns)

    replayed = Namespace(ns.config)
    for rec in log:
        run(replayed, rec)
    assert replayed.dump() == expected

    write_snapshot(tmp_path, ns, 9)
    loaded = Namespace(ns.config)
    load_snapshot(next(tmp_path.iterdir()), loaded)
    assert loaded.dump() == expected and counted(loaded) == counted(ns)
    fails(OSError, errno.EDQUOT, put, loaded, "/p/r/x", [BS] * 100)


# ---------------------------------------------------------------- through the MDS operations


def test_quota_operations_on_an_inprocess_cluster() -> None:
    from tests.support.inprocess import InProcessCluster
    with InProcessCluster() as cluster:
        fs = cluster.client()
        fs.mkdir("/p")
        fs.write_bytes("/p/a", b"x" * 1000)
        fs.quota_set("/p", max_bytes=1500, max_files=10)
        with pytest.raises(OSError) as info:
            fs.write_bytes("/p/b", b"y" * 1000)
        assert info.value.errno == errno.EDQUOT and "quota of /p" in str(info.value)
        with pytest.raises(OSError) as info:
            fs.copy("/p/a", "/p/c")
        assert info.value.errno == errno.EDQUOT
        assert fs.ls("/p") == ["a"]
        bob = cluster.client(("client", "bob"))
        with pytest.raises(PermissionError) as perm:
            bob.quota_set("/p", max_bytes=1 << 40)
        assert perm.value.errno == errno.EPERM
        assert bob.quota_get("/p") == [{"path": "/p", "max_bytes": 1500, "max_files": 10,
                                        "bytes": 1000, "files": 1}]
        for checkpoint in (False, True):       # rebuilt from the WAL, then from a snapshot
            cluster.restart_mds(checkpoint=checkpoint)
            cluster.run(1.0)                   # the DataNodes report: out of safe mode
            fs = cluster.client()
            assert fs.quota_ls() == [{"path": "/p", "max_bytes": 1500, "max_files": 10,
                                      "bytes": 1000, "files": 1}]
        with pytest.raises(OSError):
            fs.write_bytes("/p/b", b"y" * 1000)
        fs.quota_clear("/p")
        fs.write_bytes("/p/b", b"y" * 1000)
        assert fs.quota_ls() == []


def test_a_snapshot_naming_a_quota_on_a_missing_directory_is_corrupt(ns: Namespace,
                                                                      tmp_path) -> None:
    from mds.snapshot import SnapshotCorrupt
    run(ns, ns.prepare_mkdir("/p"))
    quota(ns, "/p", max_files=3)
    real = ns.quotas.export
    ns.quotas.export = lambda: [["/gone", None, 3]] + real()   # type: ignore[method-assign]
    write_snapshot(tmp_path, ns, 1)
    with pytest.raises(SnapshotCorrupt, match="quota"):
        load_snapshot(next(tmp_path.iterdir()), Namespace(ns.config))
