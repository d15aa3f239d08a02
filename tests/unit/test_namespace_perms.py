"""Owners, groups, modes and the POSIX permission checks of the namespace (mds/namespace.py
with mds/tree.py and mds/perms.py): who owns what is made, which class applies, the
superuser, search on ancestors, write on the parent, the sticky bit, rm/mv/commit rules,
chmod/chown EPERM rules, ctime and mtime bookkeeping. Every refusal is checked to change
nothing (the namespace dump)."""
from __future__ import annotations

import errno
import random

import pytest

from mds.namespace import Namespace, NamespaceConfig
from mds.perms import ROOT_CRED, Cred
from tests.support.clock import FakeClock
from tests.unit.test_namespace import BS, fails, put, run, unchanged

alice, bob = Cred("alice"), Cred("bob")
carol = Cred("carol", frozenset({"alice"}))      # in alice's group


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ns(clock: FakeClock) -> Namespace:
    """/ (admin 0755) with /home/alice (alice 0755) and /home/bob (bob 0755)."""
    ns = Namespace(NamespaceConfig(replication=2, block_size=BS, lease=60.0), clock=clock,
                   random_bytes=random.Random(7).randbytes)
    run(ns, ns.prepare_mkdir("/home"))
    for user in ("alice", "bob"):
        run(ns, ns.prepare_mkdir(f"/home/{user}"))
        run(ns, ns.prepare_chown(f"/home/{user}", user, user))
    return ns


def denied(ns: Namespace, fn, *args, code: int = errno.EACCES, name: object = None,
           **kwargs) -> OSError:
    """Refused with `code` (naming `name` when given) and nothing changed."""
    unchanged(ns, fn, *args, **kwargs)
    return fails(PermissionError, code, fn, *args, name=name, **kwargs)


def put_as(ns: Namespace, cred: Cred, path: str, mode: int | None = None) -> dict:
    """create + allocate + commit of a 10-byte file, each step as `cred`."""
    h = run(ns, ns.prepare_create(path, cred=cred, mode=mode))["handle"]
    (b,) = run(ns, ns.prepare_allocate(h, [["n1", "n2"]]))["blocks"]
    return run(ns, ns.prepare_commit(h, [{"id": b["id"], "size": 10, "checksum": 7,
                                          "replicas": b["targets"]}], cred=cred))


# ---------------------------------------------------------------- what new entries get


def test_new_entries_belong_to_their_creator_with_mode_less_umask(ns: Namespace,
                                                                  clock: FakeClock) -> None:
    run(ns, ns.prepare_mkdir("/home/alice/d", cred=alice))
    put_as(ns, alice, "/home/alice/f")
    run(ns, ns.prepare_mkdir("/home/alice/private", cred=alice, mode=0o777 | 0o1000))
    put_as(ns, alice, "/home/alice/g", mode=0o666)
    st = {p: ns.stat(p) for p in ("/home/alice/d", "/home/alice/f", "/home/alice/private",
                                  "/home/alice/g")}
    assert {p: (s["owner"], s["group"], s["mode"]) for p, s in st.items()} == {
        "/home/alice/d": ("alice", "alice", 0o755),
        "/home/alice/f": ("alice", "alice", 0o644),
        "/home/alice/private": ("alice", "alice", 0o1755),
        "/home/alice/g": ("alice", "alice", 0o644),
    }
    # without a cred (the MDS itself, tests) entries are the superuser's
    run(ns, ns.prepare_mkdir("/srv"))
    assert (ns.stat("/srv")["owner"], ns.stat("/srv")["mode"]) == ("admin", 0o755)
    # parents made on the way are the creator's, 0o755
    run(ns, ns.prepare_mkdir("/home/alice/x/y/z", parents=True, cred=alice, mode=0o700))
    assert [(ns.stat(p)["owner"], ns.stat(p)["mode"]) for p in
            ("/home/alice/x", "/home/alice/x/y", "/home/alice/x/y/z")] == [
        ("alice", 0o755), ("alice", 0o755), ("alice", 0o700)]
    put(ns, "/home/alice/p/q/file", sizes=(1,), parents=True, cred=alice)
    assert ns.stat("/home/alice/p/q")["owner"] == "alice"
    fails(OSError, errno.EINVAL, ns.prepare_mkdir, "/home/alice/bad", cred=alice, mode=0o10000)


def test_ctime_and_parent_times(ns: Namespace, clock: FakeClock) -> None:
    clock.now = 2100.0
    put_as(ns, alice, "/home/alice/f")
    clock.now = 2200.0
    run(ns, ns.prepare_chmod("/home/alice/f", 0o600, cred=alice))
    f = ns.stat("/home/alice/f")
    assert (f["mtime"], f["ctime"], f["atime"]) == (2100.0, 2200.0, 2100.0)
    assert ns.stat("/home/alice")["mtime"] == 2100.0       # chmod is not an entry change
    clock.now = 2300.0
    run(ns, ns.prepare_rename("/home/alice/f", "/home/alice/g", cred=alice))
    g, home = ns.stat("/home/alice/g"), ns.stat("/home/alice")
    assert (g["mtime"], g["ctime"], g["mode"], g["owner"]) == (2100.0, 2300.0, 0o600, "alice")
    assert (home["mtime"], home["ctime"]) == (2300.0, 2300.0)
    clock.now = 2400.0
    run(ns, ns.prepare_rm("/home/alice/g", cred=alice))
    assert (ns.stat("/home/alice")["mtime"], ns.stat("/home/alice")["ctime"]) == (2400.0, 2400.0)
    clock.now = 2500.0
    run(ns, ns.prepare_chown("/home/alice", group="bob"))
    assert ns.stat("/home/alice")["ctime"] == 2500.0 and ns.stat("/home")["mtime"] < 2500.0


# ---------------------------------------------------------------- the classes


def test_owner_group_other_classes_on_read(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f")
    for mode, readers in [(0o640, {"alice", "carol", "admin"}), (0o604, {"alice", "bob", "admin"}),
                          (0o044, {"carol", "bob", "admin"}), (0o000, {"admin"})]:
        run(ns, ns.prepare_chmod("/home/alice/f", mode, cred=alice))
        got = set()
        for cred in (alice, bob, carol, ROOT_CRED):
            try:
                ns.file_info("/home/alice/f", cred=cred)
                got.add(cred.user)
            except PermissionError as exc:
                assert exc.errno == errno.EACCES and exc.filename == "/home/alice/f"
            # stat needs no read permission on the file itself
            assert ns.stat("/home/alice/f", cred=cred)["mode"] == mode
            assert ns.may_read("/home/alice/f", cred) == (cred.user in got)
        assert got == readers, oct(mode)


def test_search_on_every_ancestor(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/home/alice/a/b", parents=True, cred=alice))
    put_as(ns, alice, "/home/alice/a/b/f")
    run(ns, ns.prepare_chmod("/home/alice/a", 0o744, cred=alice))   # r but no x for others
    for fn, args in [(ns.stat, ("/home/alice/a/b/f",)), (ns.stat, ("/home/alice/a/b",)),
                     (ns.ls, ("/home/alice/a/b",)), (ns.file_info, ("/home/alice/a/b/f",)),
                     (ns.du, ("/home/alice",)),
                     (ns.stat, ("/home/alice/a/nope",))]:   # EACCES before ENOENT
        err = fails(PermissionError, errno.EACCES, fn, *args, cred=bob)
        assert err.filename == args[0] and "/home/alice/a" in err.strerror, err
    # /home/alice/a itself is reachable and listable (r), just not searchable
    assert ns.stat("/home/alice/a", cred=bob)["mode"] == 0o744
    assert [e["name"] for e in ns.ls("/home/alice/a", cred=bob)] == ["b"]
    denied(ns, ns.prepare_mkdir, "/home/alice/a/b/c", cred=bob)
    denied(ns, ns.prepare_create, "/home/alice/a/b/g", cred=bob)
    denied(ns, ns.prepare_rm, "/home/alice/a/b/f", cred=bob)
    denied(ns, ns.prepare_rename, "/home/alice/a/b/f", "/home/bob/f", cred=bob)
    denied(ns, ns.prepare_chmod, "/home/alice/a/b/f", 0o777, cred=bob)
    # the owner's own class has x: fine for alice; the superuser passes anyway
    assert ns.stat("/home/alice/a/b/f", cred=alice)["owner"] == "alice"
    assert ns.file_info("/home/alice/a/b/f", cred=ROOT_CRED)["blocks"]


def test_ls_needs_read_on_the_directory(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f")
    run(ns, ns.prepare_chmod("/home/alice", 0o711, cred=alice))
    denied_ls = fails(PermissionError, errno.EACCES, ns.ls, "/home/alice", cred=bob)
    assert denied_ls.filename == "/home/alice"
    # search only: a known name still resolves, and ls of the file lists the file
    assert ns.stat("/home/alice/f", cred=bob)["size"] == 10
    assert [e["name"] for e in ns.ls("/home/alice/f", cred=bob)] == ["f"]
    assert ns.ls("/home/alice", cred=alice) and ns.ls("/home/alice", cred=ROOT_CRED)


# ---------------------------------------------------------------- write on the parent


def test_create_mkdir_commit_need_write_on_the_parent(ns: Namespace) -> None:
    for fn, args in [(ns.prepare_mkdir, ("/home/alice/x",)),
                     (ns.prepare_create, ("/home/alice/x",)),
                     (ns.prepare_mkdir, ("/x",)),
                     (ns.prepare_mkdir, ("/home/alice/deep/x",)),
                     ]:
        denied(ns, fn, *args, cred=bob, name=args[0],
               **({"parents": True} if "deep" in args[0] else {}))
    # mkdir -p of what exists needs nothing more than search
    run(ns, ns.prepare_mkdir("/home/alice", parents=True, cred=bob))
    # group write lets carol in; bob (other) stays out
    run(ns, ns.prepare_chmod("/home/alice", 0o775, cred=alice))
    put_as(ns, carol, "/home/alice/from-carol")
    assert ns.stat("/home/alice/from-carol")["owner"] == "carol"
    denied(ns, ns.prepare_create, "/home/alice/from-bob", cred=bob)
    # the superuser writes anywhere
    put_as(ns, ROOT_CRED, "/home/alice/from-admin")


def test_commit_rechecks_the_parent_and_the_draft_owner(ns: Namespace) -> None:
    run(ns, ns.prepare_chmod("/home/alice", 0o777, cred=alice))
    h = run(ns, ns.prepare_create("/home/alice/late", cred=bob))["handle"]
    run(ns, ns.prepare_chmod("/home/alice", 0o755, cred=alice))   # closed meanwhile
    err = denied(ns, ns.prepare_commit, h, [], cred=bob, name="/home/alice/late")
    assert "/home/alice" in err.strerror
    run(ns, ns.prepare_chmod("/home/alice", 0o777, cred=alice))
    # somebody else's draft: not even alice, who owns the directory
    err = denied(ns, ns.prepare_commit, h, [], cred=alice, name="/home/alice/late")
    assert "belongs to bob" in err.strerror
    run(ns, ns.prepare_commit(h, [], cred=bob))
    assert ns.stat("/home/alice/late")["owner"] == "bob"


def test_replacing_a_file_needs_write_on_it_and_keeps_its_attributes(ns: Namespace) -> None:
    run(ns, ns.prepare_chmod("/home/alice", 0o777, cred=alice))
    put_as(ns, alice, "/home/alice/f")                     # 0o644: bob cannot write it
    denied(ns, ns.prepare_create, "/home/alice/f", cred=bob)
    # a draft made while bob could write the file is re-checked at commit
    run(ns, ns.prepare_chmod("/home/alice/f", 0o646, cred=alice))
    h = run(ns, ns.prepare_create("/home/alice/f", cred=bob))["handle"]
    run(ns, ns.prepare_chmod("/home/alice/f", 0o640, cred=alice))
    denied(ns, ns.prepare_commit, h, [], cred=bob, name="/home/alice/f")
    run(ns, ns.prepare_chmod("/home/alice/f", 0o606, cred=alice))
    run(ns, ns.prepare_commit(h, [], cred=bob))
    st = ns.stat("/home/alice/f")
    assert (st["owner"], st["group"], st["mode"], st["size"]) == ("alice", "alice", 0o606, 0)


# ---------------------------------------------------------------- rm and mv


def test_rm_needs_write_on_the_parent_not_on_the_file(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f", mode=0o600)
    denied(ns, ns.prepare_rm, "/home/alice/f", cred=bob, name="/home/alice/f")
    run(ns, ns.prepare_chmod("/home/alice", 0o757, cred=alice))
    run(ns, ns.prepare_rm("/home/alice/f", cred=bob))      # 0o600 is no obstacle
    fails(FileNotFoundError, errno.ENOENT, ns.stat, "/home/alice/f")


def test_rm_recursive_needs_every_directory_it_empties(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/home/bob/tree/locked", parents=True, cred=bob))
    put_as(ns, bob, "/home/bob/tree/locked/f")
    run(ns, ns.prepare_chmod("/home/bob/tree/locked", 0o555, cred=bob))
    err = denied(ns, ns.prepare_rm, "/home/bob/tree", recursive=True, cred=bob,
                 name="/home/bob/tree")
    assert "/home/bob/tree/locked" in err.strerror
    run(ns, ns.prepare_chmod("/home/bob/tree/locked", 0o755, cred=bob))
    run(ns, ns.prepare_rm("/home/bob/tree", recursive=True, cred=bob))
    # an empty directory needs write on its parent only
    run(ns, ns.prepare_mkdir("/home/bob/empty", cred=bob, mode=0o500))
    run(ns, ns.prepare_rm("/home/bob/empty", cred=bob))


def test_sticky_directory(ns: Namespace) -> None:
    run(ns, ns.prepare_mkdir("/tmp", mode=0o1777))
    assert ns.stat("/tmp")["mode"] == 0o1755           # the umask applies to create modes
    run(ns, ns.prepare_chmod("/tmp", 0o1777))          # and not to chmod
    put_as(ns, alice, "/tmp/a")
    put_as(ns, bob, "/tmp/b")
    run(ns, ns.prepare_chmod("/tmp/a", 0o666, cred=alice))
    for fn, args in [(ns.prepare_rm, ("/tmp/a",)), (ns.prepare_rename, ("/tmp/a", "/tmp/c")),
                     (ns.prepare_rename, ("/tmp/b", "/tmp/a")),   # over alice's file
                     (ns.prepare_rename, ("/tmp/a", "/home/bob/a"))]:
        err = denied(ns, fn, *args, cred=bob)
        assert "sticky" in err.strerror
    # write on the file lets bob replace its content (O_TRUNC rule), not remove it
    put_as(ns, bob, "/tmp/a")
    assert ns.stat("/tmp/a")["owner"] == "alice"
    run(ns, ns.prepare_rename("/tmp/b", "/tmp/b2", cred=bob))     # his own: fine
    run(ns, ns.prepare_rm("/tmp/a", cred=alice))
    run(ns, ns.prepare_rm("/tmp/b2", cred=ROOT_CRED))
    # the sticky rule inside a tree removed with -r
    run(ns, ns.prepare_mkdir("/home/bob/shared", cred=bob))
    run(ns, ns.prepare_chmod("/home/bob/shared", 0o1777, cred=bob))
    put_as(ns, alice, "/home/bob/shared/hers")
    run(ns, ns.prepare_chmod("/home/bob", 0o777, cred=bob))
    run(ns, ns.prepare_mkdir("/home/bob/shared/sub", cred=alice))
    run(ns, ns.prepare_chmod("/home/bob/shared/sub", 0o777, cred=alice))
    put_as(ns, alice, "/home/bob/shared/sub/x")
    err = denied(ns, ns.prepare_rm, "/home/bob/shared/sub", recursive=True, cred=carol)
    assert "sticky" in err.strerror
    # bob owns the sticky directory: he may remove what is in it (sub is 0o777)
    run(ns, ns.prepare_rm("/home/bob/shared", recursive=True, cred=bob))


def test_mv_needs_write_on_both_parents(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f")
    denied(ns, ns.prepare_rename, "/home/alice/f", "/home/bob/f", cred=alice,
           name="/home/bob/f")                                      # no write in bob's home
    denied(ns, ns.prepare_rename, "/home/alice/f", "/home/bob/f", cred=bob,
           name="/home/alice/f")                                    # no write in alice's
    run(ns, ns.prepare_chmod("/home/bob", 0o777, cred=bob))
    run(ns, ns.prepare_rename("/home/alice/f", "/home/bob/f", cred=alice))
    assert ns.stat("/home/bob/f")["owner"] == "alice"
    # moving a directory to another parent rewrites its "..": write on it too
    run(ns, ns.prepare_mkdir("/home/alice/d", cred=alice, mode=0o555))
    run(ns, ns.prepare_chmod("/home/alice", 0o777, cred=alice))
    denied(ns, ns.prepare_rename, "/home/alice/d", "/home/bob/d", cred=alice,
           name="/home/alice/d")
    run(ns, ns.prepare_rename("/home/alice/d", "/home/alice/d2", cred=alice))  # same parent
    run(ns, ns.prepare_chmod("/home/alice/d2", 0o755, cred=alice))
    run(ns, ns.prepare_rename("/home/alice/d2", "/home/bob/d", cred=alice))


# ---------------------------------------------------------------- chmod / chown


def test_chmod_owner_or_superuser_only(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f")
    denied(ns, ns.prepare_chmod, "/home/alice/f", 0o777, cred=bob, code=errno.EPERM,
           name="/home/alice/f")
    denied(ns, ns.prepare_chmod, "/home/alice/f", 0o777, cred=carol, code=errno.EPERM)
    assert run(ns, ns.prepare_chmod("/home/alice/f", 0o2751, cred=alice)) == {
        "path": "/home/alice/f", "type": "file", "mode": 0o2751, "owner": "alice",
        "group": "alice"}
    run(ns, ns.prepare_chmod("/home/alice/f", 0o000, cred=ROOT_CRED))
    assert ns.stat("/home/alice/f")["mode"] == 0o000
    # setgid for a group the caller is not in is dropped, as Linux does
    run(ns, ns.prepare_chown("/home/alice/f", group="staff"))
    run(ns, ns.prepare_chmod("/home/alice/f", 0o2755, cred=alice))
    assert ns.stat("/home/alice/f")["mode"] == 0o755
    fails(OSError, errno.EINVAL, ns.prepare_chmod, "/home/alice/f", 0o10000, cred=alice)
    fails(FileNotFoundError, errno.ENOENT, ns.prepare_chmod, "/home/alice/nope", 0o1,
          cred=alice)


def test_chown_rules(ns: Namespace) -> None:
    put_as(ns, alice, "/home/alice/f")
    denied(ns, ns.prepare_chown, "/home/alice/f", "bob", cred=alice, code=errno.EPERM)
    denied(ns, ns.prepare_chown, "/home/alice/f", "bob", cred=bob, code=errno.EPERM)
    denied(ns, ns.prepare_chown, "/home/alice/f", None, "bob", cred=alice, code=errno.EPERM)
    denied(ns, ns.prepare_chown, "/home/alice/f", None, "carol", cred=carol,
           code=errno.EPERM)                                         # not the owner
    # unchanged values are no change: allowed to the owner
    run(ns, ns.prepare_chown("/home/alice/f", "alice", "alice", cred=alice))
    run(ns, ns.prepare_chown("/home/alice/f", "bob", "staff", cred=ROOT_CRED))
    st = ns.stat("/home/alice/f")
    assert (st["owner"], st["group"]) == ("bob", "staff")
    run(ns, ns.prepare_chown("/home/alice/f", group="bob", cred=bob))   # his own group
    assert ns.stat("/home/alice/f")["group"] == "bob"
    fails(OSError, errno.EINVAL, ns.validate, {"op": "chown", "path": "/home/alice/f",
                                               "owner": "", "group": "x", "ctime": 1.0})


def test_refused_records_for_a_user_are_fine_for_replay(ns: Namespace) -> None:
    """validate() (replay, plain records) does not check permissions: the record was
    authorised when it was prepared."""
    rec = ns.prepare_mkdir("/home/alice/by-admin")
    ns.validate(rec)
    fails(PermissionError, errno.EACCES, ns.prepare_mkdir, "/home/alice/by-bob", cred=bob)
