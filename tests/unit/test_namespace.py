from __future__ import annotations

import copy
import errno
import random
from typing import Callable, Sequence

import pytest

from mds.inode import DIR_IDS
from mds.namespace import BIG_FILE_BLOCKS, Inode, Namespace, NamespaceConfig
from tests.support.clock import FakeClock

BS = 1024


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ns(clock: FakeClock) -> Namespace:
    return Namespace(NamespaceConfig(replication=2, block_size=BS, lease=60.0), clock=clock,
                     random_bytes=random.Random(7).randbytes)


def run(ns: Namespace, rec: dict) -> dict:
    """Apply a prepared record, checking that it also re-validates unchanged."""
    ns.validate(rec)
    return ns.apply(rec)


def put(ns: Namespace, path: str, sizes: Sequence[int] = (BS, 10),
        nodes: Sequence[str] = ("n1", "n2"), **create: object) -> dict:
    h = run(ns, ns.prepare_create(path, **create))["handle"]
    blocks = []
    if sizes:
        alloc = run(ns, ns.prepare_allocate(h, [list(nodes)] * len(sizes)))
        blocks = [{"id": b["id"], "size": s, "checksum": 7, "replicas": b["targets"]}
                  for b, s in zip(alloc["blocks"], sizes)]
    return run(ns, ns.prepare_commit(h, blocks))


def draft(ns: Namespace, path: str, nblocks: int = 1, **create: object) -> tuple[str, list]:
    h = run(ns, ns.prepare_create(path, **create))["handle"]
    ids = [b["id"] for b in
           run(ns, ns.prepare_allocate(h, [["n1", "n2"]] * nblocks))["blocks"]] if nblocks else []
    return h, ids


def fails(exc: type, code: int, fn: Callable, *args: object, name: object = None,
          **kwargs: object) -> OSError:
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code
    if name is not None:
        assert info.value.filename == name
    return info.value


def unchanged(ns: Namespace, fn: Callable, *args: object, **kwargs: object) -> None:
    """prepare_* must not mutate, whether it succeeds or fails."""
    before = copy.deepcopy(ns.dump())
    try:
        fn(*args, **kwargs)
    except OSError:
        pass
    assert ns.dump() == before


# ---------------------------------------------------------------- mkdir / stat / ls


def test_mkdir_and_stat(ns: Namespace, clock: FakeClock) -> None:
    clock.now = 1234.5
    assert run(ns, ns.prepare_mkdir("/a")) == {"path": "/a", "created": 1}
    st = ns.stat("/a")
    assert st == {"path": "/a", "type": "dir", "inode": DIR_IDS + 1, "size": 0,
                  "mtime": 1234.5, "entries": 0,
                  "nlink": 2, "mode": 0o755, "owner": "admin", "group": "admin", "ctime": 1234.5,
                  "atime": 1234.5}
    assert ns.stat("/")["entries"] == 1
    assert ns.stat("/")["mtime"] == 1234.5  # parent mtime follows its entries
    assert run(ns, ns.prepare_mkdir("/x/y/z", parents=True))["created"] == 3
    assert ns.stat("//x/./y/z/")["path"] == "/x/y/z"
    assert run(ns, ns.prepare_mkdir("/x/y", parents=True))["created"] == 0
    assert ns.counts()["dirs"] == 4


def test_mkdir_errors(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/a"))
    put(ns, "/a/f")
    fails(FileExistsError, errno.EEXIST, ns.prepare_mkdir, "/a", name="/a")
    fails(FileExistsError, errno.EEXIST, ns.prepare_mkdir, "/", name="/")
    fails(FileExistsError, errno.EEXIST, ns.prepare_mkdir, "/a/f", name="/a/f")
    fails(FileExistsError, errno.EEXIST, ns.prepare_mkdir, "/a/f", parents=True)
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_mkdir, "/b/c", name="/b/c")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_mkdir, "/a/f/g", name="/a/f/g")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_mkdir, "/a/f/g/h", parents=True)
    fails(OSError, errno.EINVAL, ns.prepare_mkdir, "/a/../b")
    unchanged(ns, ns.prepare_mkdir, "/a/f/g")
    unchanged(ns, ns.prepare_mkdir, "/new/deep", parents=True)


def test_stat_errors(ns: Namespace) -> None:
    put(ns, "/f")
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/nope", name="/nope")
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/nope/deeper")
    fails(NotADirectoryError, errno.ENOTDIR, ns.stat, "/f/x", name="/f/x")
    fails(OSError, errno.EINVAL, ns.stat, "relative")


def test_ls_sorted_with_types_and_paging(ns: Namespace, clock: FakeClock) -> None:
    run(ns, ns.prepare_mkdir("/d"))
    for name in ("c", "a", "b"):
        put(ns, f"/d/{name}", sizes=(BS, 5))
    run(ns, ns.prepare_mkdir("/d/sub"))
    draft(ns, "/d/zz-draft")
    entries = ns.ls("/d")
    assert [e["name"] for e in entries] == ["a", "b", "c", "sub"]  # the draft is invisible
    assert entries[0] == {"name": "a", "type": "file", "inode": ns.stat("/d/a")["inode"],
                          "size": BS + 5, "mtime": clock.now,
                          "mode": 0o644, "owner": "admin", "group": "admin",
                          "ctime": clock.now, "atime": clock.now}
    assert entries[3]["type"] == "dir"
    assert [e["name"] for e in ns.ls("/d", start_after="a", limit=2)] == ["b", "c"]
    assert [e["name"] for e in ns.ls("/d", start_after="c")] == ["sub"]
    assert ns.ls("/d/a") == [entries[0]]  # ls of a file lists the file
    fails(FileNotFoundError, errno.ENOENT, ns.ls, "/missing")
    fails(NotADirectoryError, errno.ENOTDIR, ns.ls, "/d/a/x")


# ---------------------------------------------------------------- create / allocate


def test_create_makes_an_invisible_draft(ns: Namespace) -> None:
    rec = ns.prepare_create("/f", handle="h1")
    assert rec["op"] == "create" and rec["handle"] == "h1"
    assert rec["lease"] == rec["mtime"] + 60.0
    assert rec["replication"] == 2 and rec["block_size"] == BS
    res = run(ns, rec)
    assert res["handle"] == "h1" and res["path"] == "/f" and res["inode"] == 1
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/f")
    assert ns.ls("/") == []
    info = ns.draft_info("h1")
    assert info["path"] == "/f" and info["blocks"] == []
    assert ns.counts()["drafts"] == 1 and ns.counts()["files"] == 0


def test_create_errors(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/d"))
    put(ns, "/file")
    run(ns, ns.prepare_create("/x", handle="taken"))
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_create, "/d", name="/d")
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_create, "/")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_create, "/file/x", name="/file/x")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_create, "/file/x/y", parents=True)
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_create, "/no/x", name="/no/x")
    fails(FileExistsError, errno.EEXIST, ns.prepare_create, "/y", handle="taken", name="taken")
    fails(OSError, errno.EINVAL, ns.prepare_create, "/y", replication=0)
    fails(OSError, errno.EINVAL, ns.prepare_create, "/y", replication=256)
    fails(OSError, errno.EINVAL, ns.prepare_create, "/y", block_size=0)
    fails(OSError, errno.EINVAL, ns.prepare_create, "/y", handle="")
    unchanged(ns, ns.prepare_create, "/p/q/r", parents=True)


def test_create_with_parents_and_over_an_existing_file(ns: Namespace) -> None:
    run(ns, ns.prepare_create("/p/q/r", parents=True))
    assert ns.stat("/p/q")["type"] == "dir"
    put(ns, "/file")
    run(ns, ns.prepare_create("/file"))  # a new version may be written over a file
    assert ns.stat("/file")["type"] == "file"


def test_generated_ids_come_from_the_injected_randomness(clock: FakeClock) -> None:
    def make() -> Namespace:
        return Namespace(clock=clock, random_bytes=random.Random(3).randbytes)
    a, b = make(), make()
    ra, rb = a.prepare_create("/f"), b.prepare_create("/f")
    assert ra == rb
    a.apply(ra), b.apply(rb)
    xa = a.prepare_allocate(ra["handle"], [["n1"], ["n2"]])
    assert xa == b.prepare_allocate(rb["handle"], [["n1"], ["n2"]])
    assert [len(bid) for bid, _ in xa["blocks"]] == [16, 16]
    assert xa["blocks"][0][0] != xa["blocks"][1][0]


def test_allocate(ns: Namespace, clock: FakeClock) -> None:
    h = run(ns, ns.prepare_create("/f"))["handle"]
    clock.advance(30)
    res = run(ns, ns.prepare_allocate(h, [["n1", "n2"], ["n3"]]))
    assert [b["targets"] for b in res["blocks"]] == [["n1", "n2"], ["n3"]]
    assert res["lease"] == clock.now + 60.0  # allocation renews the lease
    info = ns.draft_info(h)
    assert [b["id"] for b in info["blocks"]] == [b["id"] for b in res["blocks"]]
    assert ns.block_info(res["blocks"][1]["id"])["draft"] == h
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_allocate, "nope", [["n1"]], name="nope")
    fails(OSError, errno.EINVAL, ns.prepare_allocate, h, [])
    fails(OSError, errno.EINVAL, ns.prepare_allocate, h, [["n1", "n1"]])
    fails(OSError, errno.EINVAL, ns.prepare_allocate, h, [[]])
    fails(OSError, errno.EINVAL, ns.prepare_allocate, h, [5])
    fails(OSError, errno.EINVAL, ns.prepare_allocate, h, ["n1"])  # a string is not a list
    used = res["blocks"][0]["id"]
    fails(OSError, errno.EINVAL, ns.validate,
          {"op": "allocate", "handle": h, "blocks": [[used, ["n1"]]], "lease": 1.0})


def test_allocate_never_reuses_a_live_block_id(clock: FakeClock) -> None:
    # a random source that repeats itself must not produce a duplicate id
    seq = iter([b"A" * 16, b"A" * 16, b"B" * 16, b"B" * 16, b"C" * 16] + [b"D" * 16] * 10)
    ns = Namespace(clock=clock, random_bytes=lambda n: next(seq) if n == 16 else b"h" * n)
    h = ns.apply(ns.prepare_create("/f"))["handle"]
    ns.apply(ns.prepare_allocate(h, [["n1"], ["n1"]]))
    rec = ns.prepare_allocate(h, [["n1"], ["n1"]])
    assert [bid for bid, _ in rec["blocks"]] == [b"C" * 16, b"D" * 16]


# ---------------------------------------------------------------- commit


def test_commit_makes_the_file_appear(ns: Namespace, clock: FakeClock) -> None:
    h, ids = draft(ns, "/f", 2)
    clock.now = 2000.0
    res = run(ns, ns.prepare_commit(h, [
        {"id": ids[0], "size": BS, "checksum": 11, "replicas": ["n1", "n2"]},
        {"id": ids[1], "size": 3, "checksum": 12, "replicas": ["n2"]}]))
    assert res == {"path": "/f", "inode": 1, "size": BS + 3, "blocks": 2, "replaced": False}
    info = ns.file_info("/f")
    assert info["size"] == BS + 3 and info["mtime"] == 2000.0 and info["inode"] == 1
    assert info["replication"] == 2 and info["block_size"] == BS
    assert info["blocks"] == [
        {"id": ids[0], "size": BS, "checksum": 11, "replicas": ["n1", "n2"]},
        {"id": ids[1], "size": 3, "checksum": 12, "replicas": ["n2"]}]
    # n1 was a target of block 1 but did not store it: its partial copy is garbage
    assert ns.deletes_for("n1") == [ids[1]]
    fails(FileNotFoundError, errno.ENOENT, ns.draft_info, h)
    assert ns.counts() == {"files": 1, "dirs": 0, "blocks": 2, "bytes": BS + 3, "drafts": 0,
                           "pending_deletes": 1}
    assert ns.block_info(ids[1]) == {"id": ids[1], "inode": 1, "index": 1, "size": 3,
                                     "checksum": 12, "replicas": ["n2"], "replication": 2}


def test_commit_replaces_an_older_version(ns: Namespace) -> None:
    put(ns, "/f", sizes=(BS, 1), nodes=("n1", "n2"))
    old = [b["id"] for b in ns.file_info("/f")["blocks"]]
    res = put(ns, "/f", sizes=(7,), nodes=("n3",))
    assert res["replaced"] is True
    # a new version keeps the file's inode number (st_ino), as a write in place does
    assert ns.stat("/f")["size"] == 7 and ns.stat("/f")["inode"] == 1 == res["inode"]
    assert sorted(ns.deletes_for("n1")) == sorted(old)
    assert sorted(ns.deletes_for("n2")) == sorted(old)
    assert all(ns.block_info(b) is None for b in old)
    assert ns.counts()["files"] == 1 and ns.counts()["blocks"] == 1


def test_commit_of_an_empty_file_and_unused_blocks(ns: Namespace) -> None:
    h, ids = draft(ns, "/empty", 2)
    res = run(ns, ns.prepare_commit(h, []))
    assert res["size"] == 0 and ns.file_info("/empty")["blocks"] == []
    # allocated but never committed: both targets must delete them
    assert sorted(ns.deletes_for("n1")) == sorted(ids) == sorted(ns.deletes_for("n2"))
    assert all(ns.block_info(b) is None for b in ids)


def test_commit_errors(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/d"))
    h, ids = draft(ns, "/d/f", 2)
    h2, other = draft(ns, "/g", 1)

    def blk(bid: bytes, size: int = BS, crc: int = 1, reps: list | None = None) -> dict:
        return {"id": bid, "size": size, "checksum": crc,
                "replicas": ["n1"] if reps is None else reps}
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_commit, "nope", [], name="nope")
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(other[0], 5)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0]), blk(ids[0], 5)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], 5), blk(ids[1], 5)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], BS + 1)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], 0)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], 5, crc=1 << 32)])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], 5, reps=[])])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], 5, reps=["a", "a"])])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [{"id": ids[0]}])
    fails(OSError, errno.EINVAL, ns.prepare_commit, h, [blk(ids[0], 5, reps="n12")])
    unchanged(ns, ns.prepare_commit, h, [blk(ids[0], 5)])
    # a directory now sits where the file should appear
    run(ns, ns.prepare_mkdir("/g"))
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_commit, h2, [blk(other[0], 5)], name="/g")
    # the parent went away while the file was being written
    run(ns, ns.prepare_rm("/d", recursive=True))
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_commit, h, [blk(ids[0], 5)], name="/d/f")


# ---------------------------------------------------------------- abort / leases


def test_abort_drops_the_draft_and_queues_its_blocks(ns: Namespace) -> None:
    h, ids = draft(ns, "/f", 2)
    assert run(ns, ns.prepare_abort(h)) == {"handle": h, "path": "/f", "blocks": 2}
    assert sorted(ns.deletes_for("n1")) == sorted(ids)
    assert all(ns.block_info(b) is None for b in ids)
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_abort, h, name=h)
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/f")


def test_a_replacement_target_is_cleaned_up_when_the_draft_ends(ns: Namespace) -> None:
    # replace_target sends a block to a node that is not among the allocated targets;
    # recorded with add_target, an abort (or a commit without it) queues its copy there
    h, (b0, b1) = draft(ns, "/f", 2)
    unchanged(ns, ns.prepare_add_target, h, b0, "n3")
    fails(OSError, errno.EINVAL, ns.prepare_add_target, h, b"x" * 16, "n3")
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_add_target, "nope", b0, "n3")
    assert run(ns, ns.prepare_add_target(h, b0, "n3"))["targets"] == ["n1", "n2", "n3"]
    run(ns, ns.prepare_abort(h))
    assert ns.deletes_for("n3") == [b0]
    h, (b2,) = draft(ns, "/g", 1)
    run(ns, ns.prepare_add_target(h, b2, "n3"))
    run(ns, ns.prepare_commit(h, [{"id": b2, "size": 10, "checksum": 7,
                                   "replicas": ["n1", "n3"]}]))
    assert b2 in ns.deletes_for("n2") and b2 not in ns.deletes_for("n3")
    assert ns.block_info(b2)["replicas"] == ["n1", "n3"]


def test_deletes_are_handed_out_oldest_first_and_cut_by_queue_number(ns: Namespace) -> None:
    h, ids = draft(ns, "/f", 3)
    run(ns, ns.prepare_abort(h))
    first = ns.delete_seq
    h, more = draft(ns, "/g", 2)
    run(ns, ns.prepare_abort(h))
    assert ns.deletes_for("n1") == ids + more
    assert ns.deletes_for("n1", limit=2) == ids[:2]
    assert ns.deletes_for("n1", max_seq=first) == ids
    assert ns.deletes_for("n1", max_seq=0) == []
    run(ns, ns.prepare_queue_delete("n1", [ids[0]]))   # queued again: keeps its place
    assert ns.deletes_for("n1") == ids + more


def test_expire_drafts(ns: Namespace, clock: FakeClock) -> None:
    h1, _ = draft(ns, "/a", 1)
    clock.advance(30)
    h2, _ = draft(ns, "/b", 0)
    clock.advance(29)
    assert ns.expire_drafts(clock.now) == []
    clock.advance(1)  # h1's lease (created at t0, +60) has now passed
    recs = ns.expire_drafts(clock.now)
    assert recs == [{"op": "abort", "handle": h1, "reason": "expired"}]
    run(ns, ns.prepare_renew(h2))
    clock.advance(59)
    assert [r["handle"] for r in ns.expire_drafts(clock.now)] == [h1]
    for r in recs:
        run(ns, r)
    assert ns.counts()["drafts"] == 1
    clock.advance(1)
    assert [r["handle"] for r in ns.expire_drafts(clock.now)] == [h2]
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_renew, h1)
    # a stale expiry record (the draft was committed meanwhile) is refused, not applied
    put(ns, "/c")
    fails(FileNotFoundError, errno.ENOENT, ns.validate, recs[0])


# ---------------------------------------------------------------- rm / du


def test_rm_file_and_dirs(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/d/e", parents=True))
    put(ns, "/d/e/f", sizes=(BS, 1))
    put(ns, "/d/g", sizes=(4,))
    run(ns, ns.prepare_mkdir("/empty"))
    fails(OSError, errno.ENOTEMPTY, ns.prepare_rm, "/d", name="/d")
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_rm, "/nope", name="/nope")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_rm, "/d/g/x")
    fails(OSError, errno.EINVAL, ns.prepare_rm, "/", recursive=True)
    unchanged(ns, ns.prepare_rm, "/d", recursive=True)
    assert run(ns, ns.prepare_rm("/empty"))["dirs"] == 1
    assert run(ns, ns.prepare_rm("/d/g")) == {"path": "/d/g", "files": 1, "dirs": 0,
                                              "bytes": 4}
    assert ns.du("/") == {"bytes": BS + 1, "files": 1, "dirs": 3}
    ids = [b["id"] for b in ns.file_info("/d/e/f")["blocks"]]
    assert run(ns, ns.prepare_rm("/d", recursive=True)) == {
        "path": "/d", "files": 1, "dirs": 2, "bytes": BS + 1}
    assert ns.counts() == {"files": 0, "dirs": 0, "blocks": 0, "bytes": 0, "drafts": 0,
                           "pending_deletes": 6}
    assert set(ids) <= set(ns.deletes_for("n2"))
    assert ns.ls("/") == []


def test_du(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/a/b", parents=True))
    put(ns, "/a/x", sizes=(BS, 10))
    put(ns, "/a/b/y", sizes=(20,))
    draft(ns, "/a/b/z", 1)
    assert ns.du("/a") == {"bytes": BS + 30, "files": 2, "dirs": 2}
    assert ns.du("/a/x") == {"bytes": BS + 10, "files": 1, "dirs": 0}
    fails(FileNotFoundError, errno.ENOENT, ns.du, "/zz")


# ---------------------------------------------------------------- rename


def test_rename_file_and_directory(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/a/b", parents=True))
    put(ns, "/a/b/f", sizes=(5,))
    ino = ns.stat("/a/b/f")["inode"]
    assert run(ns, ns.prepare_rename("/a/b/f", "/g")) == {"src": "/a/b/f", "dst": "/g",
                                                         "replaced": False}
    assert ns.stat("/g")["inode"] == ino  # a rename keeps the inode
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/a/b/f")
    run(ns, ns.prepare_rename("/g", "/a/b/f"))
    run(ns, ns.prepare_rename("/a", "/z"))
    assert ns.stat("/z/b/f")["size"] == 5
    bid = ns.file_info("/z/b/f")["blocks"][0]["id"]
    assert ns.block_info(bid)["inode"] == ino  # the block index does not care about paths
    assert run(ns, ns.prepare_rename("/z", "/z"))["replaced"] is False  # same path: no-op
    assert ns.counts()["dirs"] == 2


def test_rename_over_existing_targets(ns: Namespace) -> None:
    put(ns, "/f1", sizes=(1,), nodes=("n1",))
    put(ns, "/f2", sizes=(2,), nodes=("n2",))
    old = ns.file_info("/f2")["blocks"][0]["id"]
    assert run(ns, ns.prepare_rename("/f1", "/f2"))["replaced"] is True
    assert ns.stat("/f2")["size"] == 1
    assert ns.deletes_for("n2") == [old]  # the replaced file's blocks become garbage
    assert ns.counts()["files"] == 1
    run(ns, ns.prepare_mkdir("/d1/sub", parents=True))
    run(ns, ns.prepare_mkdir("/empty"))
    run(ns, ns.prepare_mkdir("/full/x", parents=True))
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_rename, "/f2", "/empty", name="/empty")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_rename, "/d1", "/f2", name="/f2")
    fails(OSError, errno.ENOTEMPTY, ns.prepare_rename, "/d1", "/full", name="/full")
    unchanged(ns, ns.prepare_rename, "/d1", "/empty")
    assert run(ns, ns.prepare_rename("/d1", "/empty"))["replaced"] is True
    assert ns.stat("/empty/sub")["type"] == "dir"
    assert ns.counts()["dirs"] == 4  # /empty (was /d1), /empty/sub, /full, /full/x


def test_rename_errors(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/a/b/c", parents=True))
    put(ns, "/f")
    fails(OSError, errno.EINVAL, ns.prepare_rename, "/a", "/a/b/c/a", name="/a/b/c/a")
    fails(OSError, errno.EINVAL, ns.prepare_rename, "/a", "/a/x")
    fails(OSError, errno.EINVAL, ns.prepare_rename, "/", "/x")
    fails(OSError, errno.EINVAL, ns.prepare_rename, "/a", "/")
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_rename, "/nope", "/x", name="/nope")
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_rename, "/f", "/no/x", name="/no/x")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_rename, "/a", "/f/x")
    # a sibling whose name starts like the source is not inside it
    run(ns, ns.prepare_rename("/a", "/ab"))
    assert ns.stat("/ab/b/c")["type"] == "dir"


def test_resolve_move(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/dir"))
    put(ns, "/f")
    assert ns.resolve_move("/f", "/dir") == "/dir/f"
    assert ns.resolve_move("/f", "/dir/") == "/dir/f"
    assert ns.resolve_move("/f", "/g") == "/g"
    assert ns.resolve_move("/dir", "/f") == "/f"
    assert ns.resolve_move("/f", "/") == "/f"
    run(ns, ns.prepare_rename("/f", ns.resolve_move("/f", "/dir")))
    assert ns.stat("/dir/f")["type"] == "file"


# ---------------------------------------------------------------- blocks and deletion queue


def test_set_replicas(ns: Namespace) -> None:
    put(ns, "/f", sizes=(BS, 1), nodes=("n1", "n2"))
    bid = ns.file_info("/f")["blocks"][1]["id"]
    run(ns, ns.prepare_queue_delete("n3", [bid]))  # n3 had a stray copy
    assert ns.deletes_for("n3") == [bid]
    assert run(ns, ns.prepare_set_replicas(bid, ["n2", "n3"])) == {"block": bid,
                                                                  "replicas": ["n2", "n3"]}
    assert ns.file_info("/f")["blocks"][1]["replicas"] == ["n2", "n3"]
    assert ns.file_info("/f")["blocks"][0]["replicas"] == ["n1", "n2"]
    assert ns.deletes_for("n1") == [bid]   # n1 is no longer a replica
    assert ns.deletes_for("n3") == []      # n3 is one again: its delete is cancelled
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_set_replicas, b"x" * 16, ["n1"])
    _, ids = draft(ns, "/d", 1)
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_set_replicas, ids[0], ["n1"])
    fails(OSError, errno.EINVAL, ns.prepare_set_replicas, bid, [])
    fails(OSError, errno.EINVAL, ns.prepare_set_replicas, bid, "n12")
    fails(OSError, errno.EINVAL, ns.prepare_set_replicas, b"short", ["n1"])


def test_big_files_keep_constant_time_block_lookup(ns: Namespace) -> None:
    n = BIG_FILE_BLOCKS * 3
    put(ns, "/big", sizes=[BS] * n)
    blocks = ns.file_info("/big")["blocks"]
    for i in (0, 1, n // 2, n - 1):
        assert ns.block_info(blocks[i]["id"])["index"] == i
    run(ns, ns.prepare_set_replicas(blocks[n - 1]["id"], ["n9"]))
    assert ns.file_info("/big")["blocks"][n - 1]["replicas"] == ["n9"]
    assert ns.file_info("/big")["blocks"][n - 2]["replicas"] == ["n1", "n2"]
    assert sorted(b for b, _, _ in ns.iter_blocks()) == sorted(b["id"] for b in blocks)
    run(ns, ns.prepare_rm("/big"))
    assert ns.block_info(blocks[5]["id"]) is None
    assert ns.blockmap.positions == {}


def test_queue_and_ack_delete(ns: Namespace) -> None:
    put(ns, "/f", sizes=(3,), nodes=("n1",))
    live = ns.file_info("/f")["blocks"][0]["id"]
    _, drafted = draft(ns, "/d", 1)
    orphan = b"o" * 16
    rec = ns.prepare_queue_delete("n1", [live, orphan, drafted[0], orphan])
    assert rec["blocks"] == [orphan]   # live and in-flight blocks are never queued
    run(ns, rec)
    rec = ns.prepare_queue_delete("n2", [live])  # n2 holds a copy it should not have
    run(ns, rec)
    assert ns.deletes_for("n2") == [live]
    fails(OSError, errno.EINVAL, ns.validate, {"op": "queue_delete", "node": "n1",
                                              "blocks": [live]})
    run(ns, ns.prepare_queue_delete("n1", [b"p" * 16, b"q" * 16]))
    assert len(ns.deletes_for("n1", limit=2)) == 2
    assert run(ns, ns.prepare_ack_delete("n1", [orphan, b"z" * 16])) == {"node": "n1",
                                                                        "acked": 1}
    assert sorted(ns.deletes_for("n1")) == [b"p" * 16, b"q" * 16]
    run(ns, ns.prepare_ack_delete("n1", [b"p" * 16, b"q" * 16]))
    assert "n1" not in ns.pending_deletes
    assert ns.deletes_for("n1") == []
    fails(OSError, errno.EINVAL, ns.prepare_ack_delete, "", [orphan])
    fails(OSError, errno.EINVAL, ns.prepare_ack_delete, "n1", [b"short"])


# ---------------------------------------------------------------- records and reads


def test_validate_refuses_unknown_and_malformed_records(ns: Namespace) -> None:
    fails(OSError, errno.EINVAL, ns.validate, {"op": "format_disk"})
    fails(OSError, errno.EINVAL, ns.validate, {"path": "/x"})
    fails(OSError, errno.EINVAL, ns.validate, {"op": "mkdir", "path": "/x"})  # no mtime key
    fails(OSError, errno.EINVAL, ns.validate, {"op": "mkdir", "path": "/x/../y",
                                               "parents": False, "mtime": 1.0})
    fails(OSError, errno.EINVAL, ns.validate, {"op": "mkdir", "path": "/x//y",
                                               "parents": True, "mtime": 1.0})
    fails(OSError, errno.EINVAL, ns.validate, {"op": "mkdir", "path": "/x",
                                               "parents": True, "mtime": "noon"})
    fails(OSError, errno.EINVAL, ns.validate, ["op", "mkdir"])


def test_records_replay_to_identical_state(ns: Namespace, clock: FakeClock) -> None:
    records = []

    def rec(r: dict) -> dict:
        records.append(copy.deepcopy(r))
        return run(ns, r)
    rec(ns.prepare_mkdir("/a/b", parents=True))
    h = rec(ns.prepare_create("/a/b/f"))["handle"]
    ids = [b["id"] for b in rec(ns.prepare_allocate(h, [["n1", "n2"]] * 2))["blocks"]]
    clock.advance(5)
    rec(ns.prepare_commit(h, [{"id": ids[0], "size": BS, "checksum": 1, "replicas": ["n1"]},
                              {"id": ids[1], "size": 9, "checksum": 2,
                               "replicas": ["n1", "n2"]}]))
    rec(ns.prepare_rename("/a", "/c"))
    rec(ns.prepare_set_replicas(ids[1], ["n3"]))
    h2 = rec(ns.prepare_create("/c/g"))["handle"]
    rec(ns.prepare_allocate(h2, [["n4"]]))
    rec(ns.prepare_rm("/c/b/f"))
    # a namespace with a different clock and randomness: apply must use neither
    other = Namespace(ns.config, clock=FakeClock(0), random_bytes=lambda n: b"\0" * n)
    for r in records:
        other.validate(r)
        other.apply(r)
    assert other.dump() == ns.dump()
    assert other.dump()["pending_deletes"] and other.dump()["drafts"]


def test_iter_files_and_counts(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/a"))
    put(ns, "/a/x", sizes=(1,))
    put(ns, "/y", sizes=(BS, 2))
    files = dict(ns.iter_files())
    assert set(files) == {"/a/x", "/y"}
    assert files["/y"]["size"] == BS + 2 and files["/y"]["blocks"] == 2
    assert dict(ns.iter_files("/a")).keys() == {"/a/x"}
    assert ns.counts()["blocks"] == 3


def test_inodes_are_memory_lean() -> None:
    assert not hasattr(Inode(b"", ()), "__dict__")


def test_an_exclusive_commit_refuses_an_existing_path_and_keeps_the_draft(ns: Namespace) -> None:
    put(ns, "/f", sizes=(10,))
    h, (bid,) = draft(ns, "/f", 1)
    blocks = [{"id": bid, "size": 3, "checksum": 7, "replicas": ["n1", "n2"]}]
    fails(FileExistsError, errno.EEXIST, ns.prepare_commit, h, blocks, exclusive=True,
          name="/f")
    unchanged(ns, ns.prepare_commit, h, blocks, exclusive=True)
    assert ns.stat("/f")["size"] == 10 and h in ns.draft_handles()
    h2, (bid2,) = draft(ns, "/g", 1)
    rec = ns.prepare_commit(h2, [{"id": bid2, "size": 3, "checksum": 7,
                                  "replicas": ["n1"]}], exclusive=True)
    assert rec["exclusive"] is True
    run(ns, rec)
    assert ns.stat("/g")["size"] == 3
    assert "exclusive" not in ns.prepare_commit(h, blocks)    # old records stay as they were
