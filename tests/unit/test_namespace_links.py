"""Hard links in the namespace (mds/ns_link.py): names that share one file, what every
other record does to such a file, and that snapshots and replay keep them."""
from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from mds.inode import DIR_IDS
from mds.namespace import Namespace, NamespaceConfig
from mds.snapshot import load_snapshot, write_snapshot
from tests.support.clock import FakeClock
from tests.unit.test_namespace import BS, fails, put, run, unchanged
from tests.unit.test_namespace_perms import alice, bob  # noqa: F401
from tests.unit.test_shared_blocks import ids, queued, refs, rewrite_middle, share_commit

CONFIG = NamespaceConfig(replication=2, block_size=BS, lease=60.0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ns(clock: FakeClock) -> Namespace:
    ns = Namespace(CONFIG, clock=clock, random_bytes=random.Random(5).randbytes)
    run(ns, ns.prepare_mkdir("/d"))
    return ns


def nlink(ns: Namespace, path: str) -> int:
    return ns.stat(path).get("nlink", 1)


def test_a_link_is_another_name_of_the_same_file(ns: Namespace, clock: FakeClock) -> None:
    put(ns, "/d/a", (BS, 10))
    before = ns.counts()
    clock.advance(5)
    res = run(ns, ns.prepare_link("/d/a", "/d/b"))
    assert res == {"src": "/d/a", "dst": "/d/b", "nlink": 2,
                   "inode": ns.stat("/d/a")["inode"]}
    a, b = ns.stat("/d/a"), ns.stat("/d/b")
    assert a["nlink"] == b["nlink"] == 2
    assert {k: v for k, v in a.items() if k != "path"} == \
        {k: v for k, v in b.items() if k != "path"}
    assert a["ctime"] == clock.now                     # link changes the file's ctime
    d = ns.stat("/d")
    assert d["mtime"] == d["ctime"] == clock.now       # and the directory's times
    assert ids(ns, "/d/a") == ids(ns, "/d/b")
    assert all(r == 1 for r in refs(ns).values())      # one file: no block is shared
    counts = ns.counts()
    assert counts["files"] == before["files"] + 1      # names
    assert (counts["bytes"], counts["blocks"]) == (before["bytes"], before["blocks"])
    entries = {e["name"]: e for e in ns.ls("/d")}
    assert entries["a"]["nlink"] == entries["b"]["nlink"] == 2
    assert entries["a"]["inode"] == entries["b"]["inode"] == a["inode"]
    # a change through one name is seen through the other
    clock.advance(1)
    run(ns, ns.prepare_chmod("/d/b", 0o600))
    run(ns, ns.prepare_chown("/d/b", "carol", "staff"))
    run(ns, ns.prepare_utimes("/d/b", 123.0, atime=45.0))
    a = ns.stat("/d/a")
    assert (a["mode"], a["owner"], a["group"], a["mtime"], a["atime"]) == \
        (0o600, "carol", "staff", 123.0, 45.0)
    run(ns, ns.prepare_link("/d/b", "/c"))
    assert [nlink(ns, p) for p in ("/d/a", "/d/b", "/c")] == [3, 3, 3]


def test_names_go_one_by_one_and_the_last_takes_the_blocks(ns: Namespace,
                                                           clock: FakeClock) -> None:
    put(ns, "/d/a", (BS, 10))
    blocks = set(ids(ns, "/d/a"))
    run(ns, ns.prepare_link("/d/a", "/d/b"))
    run(ns, ns.prepare_link("/d/a", "/e"))
    clock.advance(3)
    res = run(ns, ns.prepare_rm("/d/a"))
    assert res["files"] == 1
    assert queued(ns) == set()                          # the file is still there
    assert nlink(ns, "/d/b") == nlink(ns, "/e") == 2
    assert ns.stat("/e")["ctime"] == clock.now          # unlink changes the ctime
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/d/a")
    # a rename over a name takes only that name
    put(ns, "/x", (10,))
    run(ns, ns.prepare_rename("/x", "/e"))
    assert nlink(ns, "/d/b") == 1 and "nlink" not in ns.stat("/d/b")
    assert queued(ns) == set() and not ns.tree.links
    run(ns, ns.prepare_rm("/d/b"))
    assert queued(ns) == blocks
    assert ns.counts()["files"] == 1 and ns.counts()["bytes"] == 10   # /e (was /x)


def test_rm_of_a_tree_holding_one_name_keeps_the_other(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/d/sub/deeper", parents=True))
    put(ns, "/d/sub/deeper/f", (10,))
    run(ns, ns.prepare_link("/d/sub/deeper/f", "/kept"))
    res = run(ns, ns.prepare_rm("/d/sub", recursive=True))
    assert (res["files"], res["dirs"]) == (1, 2)
    assert queued(ns) == set() and ns.stat("/kept")["size"] == 10
    assert "nlink" not in ns.stat("/kept")


def test_link_refusals_change_nothing(ns: Namespace) -> None:
    put(ns, "/d/a", (10,))
    put(ns, "/d/other", (10,))
    for args, exc, code in [
            (("/d", "/d2"), PermissionError, errno.EPERM),          # a directory
            (("/d/a", "/d/other"), FileExistsError, errno.EEXIST),
            (("/d/a", "/d"), FileExistsError, errno.EEXIST),
            (("/d/a", "/"), FileExistsError, errno.EEXIST),
            (("/d/missing", "/d/b"), FileNotFoundError, errno.ENOENT),
            (("/d/a", "/nowhere/b"), FileNotFoundError, errno.ENOENT),
            (("/d/a", "/d/a/b"), NotADirectoryError, errno.ENOTDIR),
            (("/d/a/x", "/d/b"), NotADirectoryError, errno.ENOTDIR)]:
        unchanged(ns, ns.prepare_link, *args)
        fails(exc, code, ns.prepare_link, *args)
    fails(OSError, errno.ENAMETOOLONG, ns.prepare_link, "/d/a", "/d/" + "n" * 256)
    rec = ns.prepare_link("/d/a", "/d/b")
    run(ns, rec)
    fails(FileExistsError, errno.EEXIST, ns.validate, rec)   # replayed twice: refused
    fails(OSError, errno.EINVAL, ns.validate, {**rec, "mtime": "soon"})
    fails(OSError, errno.EINVAL, ns.validate, {"op": "link", "src": "/d/a"})


def test_link_count_limit(ns: Namespace, monkeypatch: pytest.MonkeyPatch) -> None:
    import mds.ns_link
    monkeypatch.setattr(mds.ns_link, "MAX_LINKS", 3)
    put(ns, "/f", (10,))
    run(ns, ns.prepare_link("/f", "/g"))
    run(ns, ns.prepare_link("/f", "/h"))
    fails(OSError, errno.EMLINK, ns.prepare_link, "/g", "/i")


def test_link_permissions(ns: Namespace) -> None:
    for user in ("alice", "bob"):
        run(ns, ns.prepare_mkdir(f"/home/{user}", parents=True))
        run(ns, ns.prepare_chown(f"/home/{user}", user, user))
    h = run(ns, ns.prepare_create("/home/alice/f", cred=alice))["handle"]
    run(ns, ns.prepare_commit(h, [], cred=alice))
    # no write on bob's directory: EACCES; into her own: fine
    unchanged(ns, ns.prepare_link, "/home/alice/f", "/home/bob/f", cred=alice)
    fails(PermissionError, errno.EACCES, ns.prepare_link, "/home/alice/f",
          "/home/bob/f", cred=alice)
    run(ns, ns.prepare_link("/home/alice/f", "/home/alice/g", cred=alice))
    # no search on the source's directory: EACCES
    run(ns, ns.prepare_chmod("/home/alice", 0o700, cred=alice))
    fails(PermissionError, errno.EACCES, ns.prepare_link, "/home/alice/f",
          "/home/bob/f", cred=bob)


def test_a_write_through_one_name_is_seen_through_all(ns: Namespace) -> None:
    put(ns, "/a", (BS, BS, 10))
    run(ns, ns.prepare_link("/a", "/b"))
    old = ids(ns, "/a")
    new, res = rewrite_middle(ns, "/b")     # copy-on-write through the other name
    assert res["replaced"] is True
    assert ids(ns, "/a") == ids(ns, "/b") == [old[0], new["id"], old[2]]
    assert ns.stat("/a")["inode"] == ns.stat("/b")["inode"] == res["inode"]
    assert nlink(ns, "/a") == 2
    assert queued(ns) == {old[1]}
    assert refs(ns) == {old[0]: 1, new["id"]: 1, old[2]: 1}
    assert ns.block_info(new["id"])["index"] == 1
    assert ns.counts()["blocks"] == 3 and ns.counts()["bytes"] == 2 * BS + 10
    # a plain overwrite through /a (new blocks only), then a copy over /b
    put(ns, "/a", (5,))
    assert ns.stat("/b")["size"] == 5 and ids(ns, "/a") == ids(ns, "/b")
    put(ns, "/src", (7, ))
    run(ns, ns.prepare_clone("/src", "/b"))
    assert ns.stat("/a")["size"] == 7 and ids(ns, "/a") == ids(ns, "/src")
    assert refs(ns) == {ids(ns, "/src")[0]: 2}
    assert ns.counts() == {**ns.counts(), "files": 3, "blocks": 2, "bytes": 14}
    # and a draft from a pool or a share commit that names a linked file's blocks
    share_commit(ns, "/c", [("/a", 0)])
    assert refs(ns) == {ids(ns, "/src")[0]: 3}


def test_rename_between_two_names_of_one_file_does_nothing(ns: Namespace) -> None:
    put(ns, "/a", (10,))
    run(ns, ns.prepare_link("/a", "/b"))
    before = ns.dump()
    res = run(ns, ns.prepare_rename("/a", "/b"))
    assert res["replaced"] is False
    assert ns.dump() == before
    run(ns, ns.prepare_rename("/a", "/d/moved"))       # a name moves, the count stays
    assert nlink(ns, "/d/moved") == nlink(ns, "/b") == 2


def test_quotas_count_every_name(ns: Namespace, tmp_path: Path) -> None:
    run(ns, ns.prepare_mkdir("/q"))
    run(ns, ns.prepare_mkdir("/r"))
    run(ns, ns.prepare_quota("/q", 2 * BS + 512, 10))
    put(ns, "/q/a", (BS,))
    run(ns, ns.prepare_link("/q/a", "/q/b"))
    (row,) = ns.quota_get("/q")[-1:]
    assert (row["bytes"], row["files"]) == (2 * BS, 2)
    fails(OSError, errno.EDQUOT, ns.prepare_link, "/q/a", "/q/c")     # 3 names: 3 KiB
    # a link out of a quota's tree, or into one, is refused (EXDEV), and so is a move
    fails(OSError, errno.EXDEV, ns.prepare_link, "/q/a", "/r/a")
    put(ns, "/r/x", (10,))
    run(ns, ns.prepare_link("/r/x", "/r/y"))
    fails(OSError, errno.EXDEV, ns.prepare_link, "/r/x", "/q/x")
    fails(OSError, errno.EXDEV, ns.prepare_rename, "/q/b", "/r/b")
    # a directory holding one name of a linked file cannot cross either; one holding
    # every name may (and takes their usage along, each name counted)
    run(ns, ns.prepare_mkdir("/r/d"))
    run(ns, ns.prepare_rename("/r/y", "/r/d/y"))
    fails(OSError, errno.EXDEV, ns.prepare_rename, "/r/d", "/q/d")
    run(ns, ns.prepare_rename("/r/x", "/r/d/x"))
    run(ns, ns.prepare_rename("/r/d", "/q/d"))
    row = ns.quota_get("/q")[-1]
    assert (row["bytes"], row["files"]) == (2 * BS + 20, 5)
    run(ns, ns.prepare_rename("/q/d", "/r/d"))
    # growth through one name is charged for each; within the limit only
    h = run(ns, ns.prepare_create("/q/b"))["handle"]
    (b1, b2) = run(ns, ns.prepare_allocate(h, [["n1", "n2"]] * 2))["blocks"]
    two = [{"id": b["id"], "size": BS, "checksum": 1, "replicas": b["targets"]}
           for b in (b1, b2)]
    fails(OSError, errno.EDQUOT, ns.prepare_commit, h, two)
    run(ns, ns.prepare_commit(h, two[:1]))
    put(ns, "/q/b", (100,))
    row = ns.quota_get("/q")[-1]
    assert (row["bytes"], row["files"]) == (200, 2)
    run(ns, ns.prepare_rm("/q/a"))
    row = ns.quota_get("/q")[-1]
    assert (row["bytes"], row["files"]) == (100, 1)
    # the recount at a restore agrees
    run(ns, ns.prepare_link("/q/b", "/q/c"))
    other = Namespace(CONFIG)
    load_snapshot(write_snapshot(tmp_path, ns, 9), other)
    assert other.quota_get("/q") == ns.quota_get("/q")


def test_snapshots_and_replay_keep_the_links(ns: Namespace, tmp_path: Path) -> None:
    run(ns, ns.prepare_mkdir("/z/y", parents=True))
    put(ns, "/a", (10,))
    put(ns, "/z/y/big", (BS,) * 40 + (3,))          # positions are kept for big files
    run(ns, ns.prepare_link("/a", "/z/y/a2"))
    run(ns, ns.prepare_link("/a", "/z/a3"))
    run(ns, ns.prepare_link("/z/y/big", "/big2"))
    run(ns, ns.prepare_rm("/z/a3"))
    path = write_snapshot(tmp_path, ns, 11)
    other = Namespace(CONFIG)
    assert load_snapshot(path, other)["version"] == 5
    assert other.dump() == ns.dump()
    assert other.stat("/a")["nlink"] == 2 and other.stat("/big2")["nlink"] == 2
    # restored as one file: a change through one name shows through the other
    run(other, other.prepare_chmod("/z/y/a2", 0o600))
    assert other.stat("/a")["mode"] == 0o600
    bid = ids(other, "/big2")[33]
    assert other.block_info(bid)["index"] == 33


def test_replaying_the_records_gives_the_same_state(clock: FakeClock) -> None:
    """What the WAL does at a restart: the same records through apply, in order."""
    records: list[dict] = []
    live = Namespace(CONFIG, clock=clock, random_bytes=random.Random(9).randbytes)
    real_apply = live.apply

    def logged(rec: dict) -> dict:
        records.append(rec)
        return real_apply(rec)
    live.apply = logged                      # type: ignore[method-assign]
    put(live, "/a", (BS, 10))
    run(live, live.prepare_link("/a", "/b"))
    put(live, "/b", (7,))
    run(live, live.prepare_link("/b", "/c"))
    run(live, live.prepare_rm("/a"))
    run(live, live.prepare_rename("/b", "/c"))
    replayed = Namespace(CONFIG)
    for rec in records:
        replayed.validate(rec)
        replayed.apply(rec)
    assert replayed.dump() == live.dump()
    assert replayed.stat("/c")["size"] == 7 and replayed.stat("/c")["nlink"] == 2


def test_directories_have_numbers_that_snapshots_keep(ns: Namespace, tmp_path: Path) -> None:
    """Inode numbers of directories (st_ino): given at mkdir, never a file's, kept by a
    snapshot; a snapshot from before them (version 4 and older) numbers its directories
    in order at the load."""
    run(ns, ns.prepare_mkdir("/x/y", parents=True))
    put(ns, "/x/f", (10,))
    numbers = {p: ns.stat(p)["inode"] for p in ("/", "/d", "/x", "/x/y", "/x/f")}
    assert numbers["/"] == DIR_IDS and numbers["/x/f"] < DIR_IDS
    assert len(set(numbers.values())) == 5
    assert {e["name"]: e["inode"] for e in ns.ls("/x")} == {"f": numbers["/x/f"],
                                                           "y": numbers["/x/y"]}
    other = Namespace(CONFIG)
    load_snapshot(write_snapshot(tmp_path, ns, 3), other)
    assert {p: other.stat(p)["inode"] for p in numbers} == numbers
    run(other, other.prepare_mkdir("/z"))                 # the sequence goes on
    assert other.stat("/z")["inode"] == max(numbers.values()) + 1
    # directories of an older snapshot (seven fields each): numbered in order
    old = Namespace(CONFIG)
    old.tree.start_restore([1.0, 1.0, 0o755, 0, 0], ["admin"])
    old.restore_dirs([0, "a", 1.0, 1.0, 0o755, 0, 0, 1, "b", 1.0, 1.0, 0o755, 0, 0],
                     ids=False)
    old.finish_restore()
    assert (old.stat("/a")["inode"], old.stat("/a/b")["inode"]) == (DIR_IDS + 1,
                                                                  DIR_IDS + 2)
    with pytest.raises(ValueError):        # a number the sequence never gave
        Namespace(CONFIG).restore_dirs([0, "a", 1.0, 1.0, 0o755, 0, 0, DIR_IDS + 9])
