"""The POSIX metadata the mount needs from the namespace: utimes records, files of other
kinds (symlinks, FIFOs, ...) in the S_IFMT bits of the mode, exact renames, paged ls."""
from __future__ import annotations

import copy
import errno
import stat

from pathlib import Path

from mds.namespace import Namespace
from mds.snapshot import load_snapshot, snapshot_name, write_snapshot
from mds.perms import ROOT_CRED
from tests.support.clock import FakeClock
from tests.unit.test_namespace import fails, put, run, unchanged
from tests.unit.test_namespace_perms import alice, bob, clock, ns  # noqa: F401  (fixtures)
from tests.unit.test_namespace_perms import put_as


def test_utimes_sets_mtime_and_ctime_of_files_and_dirs(ns: Namespace,
                                                       clock: FakeClock) -> None:
    put_as(ns, alice, "/home/alice/f")
    size = ns.stat("/home/alice/f")["size"]
    clock.advance(10)
    run(ns, ns.prepare_utimes("/home/alice/f", 1_000_000.5, cred=alice))
    st = ns.stat("/home/alice/f")
    assert st["mtime"] == 1_000_000.5
    assert st["ctime"] == clock.now and st["ctime"] != st["mtime"]
    assert st["size"] == size and st["mode"] == 0o644       # the rest untouched
    run(ns, ns.prepare_utimes("/home/alice", 5.0, cred=alice))
    assert ns.stat("/home/alice")["mtime"] == 5.0
    clock.advance(3)
    run(ns, ns.prepare_utimes("/home/alice/f", None, cred=alice))   # "now"
    assert ns.stat("/home/alice/f")["mtime"] == clock.now


def test_a_files_atime_is_kept_apart_until_touched_or_removed(
        ns: Namespace, clock: FakeClock, tmp_path: Path) -> None:
    put_as(ns, alice, "/home/alice/f")
    put_as(ns, alice, "/home/alice/g")
    assert ns.stat("/home/alice/f")["atime"] == ns.stat("/home/alice/f")["mtime"]
    run(ns, ns.prepare_utimes("/home/alice/f", 1000.0, atime=500.0, cred=alice))
    assert (ns.stat("/home/alice/f")["atime"], ns.stat("/home/alice/f")["mtime"]) == \
        (500.0, 1000.0)
    assert ns.ls("/home/alice")[0]["atime"] == 500.0          # ls -l says the same
    run(ns, ns.prepare_utimes("/home/alice/f", 2000.0, cred=alice))   # the mtime only
    assert ns.stat("/home/alice/f")["atime"] == 500.0
    # UTIME_OMIT for the mtime (touch -a): the mtime stays, the ctime moves
    clock.advance(5)
    run(ns, ns.prepare_utimes("/home/alice/f", None, atime=700.0, keep_mtime=True,
                              cred=alice))
    st = ns.stat("/home/alice/f")
    assert (st["atime"], st["mtime"], st["ctime"]) == (700.0, 2000.0, clock.now)
    # an explicit atime is the owner's to set (as an explicit mtime)
    fails(PermissionError, errno.EPERM, ns.prepare_utimes, "/home/alice/f", None,
          atime=1.0, keep_mtime=True, cred=bob)
    # it survives a snapshot
    run(ns, ns.prepare_utimes("/home/alice/g", 3000.0, atime=-1.5, cred=alice))
    path = write_snapshot(tmp_path, ns, 7)
    other = Namespace(ns.config)
    assert load_snapshot(path, other)["version"] == 5
    assert other.dump() == ns.dump()
    assert other.stat("/home/alice/g")["atime"] == -1.5
    # utimensat(NULL) (touch): both now
    clock.advance(5)
    run(ns, ns.prepare_utimes("/home/alice/f", None, cred=alice))
    st = ns.stat("/home/alice/f")
    assert st["atime"] == st["mtime"] == clock.now
    run(ns, ns.prepare_rm("/home/alice/f", cred=alice))
    run(ns, ns.prepare_rm("/home/alice/g", cred=alice))
    assert ns.tree.atimes == {}                     # removed files leave no entry
    # directories too, through a snapshot, until removed
    run(ns, ns.prepare_mkdir("/home/alice/d/e", parents=True, cred=alice))
    run(ns, ns.prepare_utimes("/home/alice/d/e", 5.0, atime=3.0, cred=alice))
    assert (ns.stat("/home/alice/d/e")["atime"], ns.stat("/home/alice/d/e")["mtime"]) == \
        (3.0, 5.0)
    other = Namespace(ns.config)
    load_snapshot(write_snapshot(tmp_path, ns, 9), other)
    assert other.stat("/home/alice/d/e")["atime"] == 3.0 and other.dump() == ns.dump()
    run(ns, ns.prepare_rm("/home/alice/d", recursive=True, cred=alice))
    assert ns.tree.dir_atimes == {}


def test_utimes_permissions(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f", mode=0o644)
    before = copy.deepcopy(ns.dump())
    # an explicit time: the owner or the superuser only
    fails(PermissionError, errno.EPERM, ns.prepare_utimes, "/home/alice/f", 1.0, cred=bob)
    # now: also whoever may write the file
    fails(PermissionError, errno.EACCES, ns.prepare_utimes, "/home/alice/f", None, cred=bob)
    assert ns.dump() == before
    run(ns, ns.prepare_chmod("/home/alice/f", 0o666, cred=alice))
    run(ns, ns.prepare_utimes("/home/alice/f", None, cred=bob))
    run(ns, ns.prepare_utimes("/home/alice/f", 2.0, cred=ROOT_CRED))
    assert ns.stat("/home/alice/f")["mtime"] == 2.0
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_utimes, "/home/alice/nope", 1.0)


def _copy(ns: Namespace, tmp: Path) -> Namespace:
    write_snapshot(tmp, ns, 1)
    replica = Namespace(ns.config, clock=ns._clock)
    load_snapshot(tmp / snapshot_name(1), replica)
    return replica


def test_utimes_record_is_checked_and_replays(ns: Namespace, tmp_path: Path) -> None:
    put(ns, "/f")
    rec = ns.prepare_utimes("/f", 7.0)
    fails(OSError, errno.EINVAL, ns.validate, {**rec, "mtime": "soon"})
    fails(FileNotFoundError, errno.ENOENT, ns.validate, {**rec, "path": "/g"})
    replica = _copy(ns, tmp_path)
    run(ns, rec)
    run(replica, copy.deepcopy(rec))
    assert replica.dump() == ns.dump()


def test_files_of_other_kinds_keep_their_kind(ns: Namespace) -> None:
    put(ns, "/link", sizes=(4,), kind="symlink", mode=0o777)
    st = ns.stat("/link")
    assert st["kind"] == "symlink" and st["type"] == "file" and st["mode"] == 0o755
    assert [e.get("kind") for e in ns.ls("/")] == [None, "symlink"]     # home, link
    # chmod changes the permission bits only
    assert run(ns, ns.prepare_chmod("/link", 0o700))["mode"] == 0o700
    assert ns.stat("/link")["kind"] == "symlink"
    # a new version of another kind takes the new kind (and keeps owner and mode)
    put(ns, "/link", sizes=(1,))
    st = ns.stat("/link")
    assert "kind" not in st and st["mode"] == 0o700
    put(ns, "/fifo", sizes=(), kind="fifo")
    assert ns.stat("/fifo")["kind"] == "fifo"
    assert "kind" not in ns.stat("/")
    fails(OSError, errno.EINVAL, ns.prepare_create, "/x", kind="directory")


def test_kind_bits_in_records_are_checked(ns: Namespace) -> None:
    rec = ns.prepare_create("/s", kind="socket")
    assert stat.S_IFMT(rec["mode"]) == stat.S_IFSOCK
    fails(OSError, errno.EINVAL, ns.validate, {**rec, "mode": 0o170644})
    fails(OSError, errno.EINVAL, ns.validate, {**rec, "mode": 0o1000000})
    mk = ns.prepare_mkdir("/d")
    fails(OSError, errno.EINVAL, ns.validate, {**mk, "mode": stat.S_IFLNK | 0o755})


def test_kinds_survive_a_snapshot(ns: Namespace, tmp_path: Path) -> None:
    put(ns, "/l", sizes=(3,), kind="symlink")
    put(ns, "/c", sizes=(), kind="chardev")
    replica = _copy(ns, tmp_path)
    assert replica.stat("/l")["kind"] == "symlink"
    assert replica.stat("/c")["kind"] == "chardev"
    assert replica.dump() == ns.dump()


def test_ls_pages(ns: Namespace) -> None:
    for i in range(7):
        put(ns, f"/p/f{i}", sizes=(), parents=True)
    names = [e["name"] for e in ns.ls("/p", limit=3)]
    assert names == ["f0", "f1", "f2"]
    assert [e["name"] for e in ns.ls("/p", start_after="f2", limit=3)] == ["f3", "f4", "f5"]
    assert [e["name"] for e in ns.ls("/p", start_after="f5", limit=3)] == ["f6"]
    assert ns.ls("/p", start_after="f6") == []


def test_rename_replace_rules(ns: Namespace) -> None:
    put(ns, "/a")
    put(ns, "/b")
    run(ns, ns.prepare_mkdir("/d"))
    run(ns, ns.prepare_mkdir("/e"))
    put(ns, "/full/x", parents=True)
    fails(IsADirectoryError, errno.EISDIR, ns.prepare_rename, "/a", "/d")
    fails(NotADirectoryError, errno.ENOTDIR, ns.prepare_rename, "/d", "/a")
    fails(OSError, errno.ENOTEMPTY, ns.prepare_rename, "/d", "/full")
    assert run(ns, ns.prepare_rename("/a", "/b"))["replaced"] is True     # file over file
    assert run(ns, ns.prepare_rename("/d", "/e"))["replaced"] is True     # dir over empty dir
    assert sorted(e["name"] for e in ns.ls("/")) == ["b", "e", "full", "home"]


def test_directory_nlink_counts_subdirectories(ns: Namespace, tmp_path: Path) -> None:
    base = ns.stat("/")["nlink"]                   # / holds /home
    run(ns, ns.prepare_mkdir("/a/b/c", parents=True))
    run(ns, ns.prepare_mkdir("/a/d"))
    put(ns, "/a/f")
    assert ns.stat("/a")["nlink"] == 4 and ns.stat("/a/b/c")["nlink"] == 2
    assert ns.stat("/")["nlink"] == base + 1
    assert {e["name"]: e.get("nlink") for e in ns.ls("/a")} == {"b": 3, "d": 2, "f": None}
    run(ns, ns.prepare_rename("/a/d", "/d"))       # moves between parents
    assert ns.stat("/a")["nlink"] == 3 and ns.stat("/")["nlink"] == base + 2
    run(ns, ns.prepare_mkdir("/e"))
    run(ns, ns.prepare_rename("/d", "/e"))         # over an empty directory
    assert ns.stat("/")["nlink"] == base + 2
    run(ns, ns.prepare_rm("/a", recursive=True))
    assert ns.stat("/")["nlink"] == base + 1
    assert _copy(ns, tmp_path).stat("/")["nlink"] == base + 1   # recounted on restore


def test_exchange_swaps_two_entries_of_any_kind(ns: Namespace, clock: FakeClock,
                                                tmp_path: Path) -> None:
    """renameat2(RENAME_EXCHANGE): both exist, they trade places atomically."""
    run(ns, ns.prepare_mkdir("/home/alice/d/sub", parents=True, cred=alice))
    put_as(ns, alice, "/home/alice/f")
    f, d = ns.stat("/home/alice/f"), ns.stat("/home/alice/d")
    clock.advance(7)
    run(ns, ns.prepare_exchange("/home/alice/f", "/home/alice/d", cred=alice))
    assert ns.stat("/home/alice/d")["inode"] == f["inode"]       # the file is at d now
    assert ns.stat("/home/alice/f")["type"] == "dir"
    assert ns.stat("/home/alice/f/sub")["type"] == "dir"
    assert ns.stat("/home/alice/f")["ctime"] == ns.stat("/home/alice")["mtime"] == clock.now
    assert ns.stat("/home/alice")["nlink"] == 2 + 1            # still one subdirectory
    # across directories, then back: as it was (but the times)
    run(ns, ns.prepare_exchange("/home/alice/d", "/home/bob", cred=ROOT_CRED))
    assert ns.stat("/home/bob")["inode"] == f["inode"]
    assert ns.stat("/home/alice/d")["type"] == "dir" and ns.stat("/home")["nlink"] == 3
    run(ns, ns.prepare_exchange("/home/bob", "/home/alice/d"))
    run(ns, ns.prepare_exchange("/home/alice/d", "/home/alice/f"))
    assert ns.stat("/home/alice/f")["inode"] == f["inode"]
    assert ns.stat("/home/alice/d")["inode"] == d["inode"]
    other = Namespace(ns.config)                          # and the log replays it
    load_snapshot(write_snapshot(tmp_path, ns, 3), other)
    assert other.dump() == ns.dump()


def test_exchange_refusals_change_nothing(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/home/alice/d/sub", parents=True, cred=alice))
    put_as(ns, alice, "/home/alice/f")
    for args, kw, exc, code in [
            (("/home/alice/f", "/home/alice/none"), {}, FileNotFoundError, errno.ENOENT),
            (("/home/alice/d", "/home/alice/d/sub"), {}, OSError, errno.EINVAL),
            (("/home/alice/d/sub", "/home/alice/d"), {}, OSError, errno.EINVAL),
            (("/", "/home/alice/f"), {}, OSError, errno.EINVAL),
            # bob may not take alice's entries out of her directory
            (("/home/alice/f", "/home/bob"), {"cred": bob}, PermissionError, errno.EACCES)]:
        unchanged(ns, ns.prepare_exchange, *args, **kw)
        fails(exc, code, ns.prepare_exchange, *args, **kw)
    before = ns.dump()
    run(ns, ns.prepare_exchange("/home/alice/f", "/home/alice/f"))   # itself: nothing
    assert ns.dump()["files"] == before["files"]


def test_exchange_moves_usage_between_quota_trees(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/q"))
    run(ns, ns.prepare_mkdir("/r"))
    run(ns, ns.prepare_quota("/q", 15, None))
    put(ns, "/q/small", sizes=(10,))
    put(ns, "/r/big", sizes=(20,))
    fails(OSError, errno.EDQUOT, ns.prepare_exchange, "/q/small", "/r/big")
    run(ns, ns.prepare_quota("/q", 25, None))
    run(ns, ns.prepare_exchange("/q/small", "/r/big"))
    assert ns.quota_get("/q")[-1]["bytes"] == 20 and ns.stat("/q/small")["size"] == 20
