"""POSIX permission decisions (mds/perms.py), checked against what Linux itself decides:
the same mode/owner/group situations are tried on real files in a temp dir as other uids."""
from __future__ import annotations

import errno
import os
import shutil
import stat as st
import tempfile

import pytest
from hypothesis import given, settings, strategies as s

from mds import perms
from mds.perms import R, W, X, Cred

alice = Cred("alice", frozenset({"staff"}))
bob = Cred("bob", frozenset({"staff"}))
carol = Cred("carol")
root = perms.ROOT_CRED


def test_exactly_one_class_applies():
    # owner denied by owner bits stays denied although other bits allow
    assert not perms.allows(alice, "alice", "staff", 0o077, R)
    assert perms.allows(bob, "alice", "staff", 0o070, R | W | X)
    assert not perms.allows(bob, "alice", "staff", 0o707, R)    # group class applies
    assert perms.allows(carol, "alice", "staff", 0o004, R)
    assert not perms.allows(carol, "alice", "staff", 0o004, W)


def test_a_users_own_name_is_its_group():
    assert perms.allows(alice, "bob", "alice", 0o040, R)


def test_superuser_bypasses_read_write_and_search_on_directories():
    assert perms.allows(root, "alice", "alice", 0o000, R | W)
    assert perms.allows(root, "alice", "alice", 0o000, X, is_dir=True)
    assert not perms.allows(root, "alice", "alice", 0o644, X)      # a file with no x bit
    assert perms.allows(root, "alice", "alice", 0o100, X)


def test_check_raises_eacces_naming_the_path():
    with pytest.raises(PermissionError) as info:
        perms.check(carol, "alice", "alice", 0o640, R, "/home/alice/f")
    assert info.value.errno == errno.EACCES and info.value.filename == "/home/alice/f"


def test_sticky_directories():
    with pytest.raises(PermissionError):
        perms.check_sticky(carol, "admin", 0o1777, "alice", "/tmp/x")
    perms.check_sticky(alice, "admin", 0o1777, "alice", "/tmp/x")    # its own entry
    perms.check_sticky(bob, "bob", 0o1777, "alice", "/tmp/x")        # the dir's owner
    perms.check_sticky(root, "admin", 0o1777, "alice", "/tmp/x")
    perms.check_sticky(carol, "admin", 0o0777, "alice", "/tmp/x")    # not sticky


def test_chmod_chown_chgrp_rules():
    assert perms.check_chmod(alice, "alice", 0o600, "/f") == 0o600
    with pytest.raises(PermissionError) as info:
        perms.check_chmod(bob, "alice", 0o777, "/f")
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        perms.check_chmod(alice, "alice", 0o17777, "/f")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(PermissionError):
        perms.check_chown(alice, "alice", "alice", "bob", None, "/f")
    assert perms.check_chown(root, "alice", "alice", "bob", None, "/f") == ("bob", "alice")
    assert perms.check_chown(alice, "alice", "alice", None, "staff", "/f") == ("alice", "staff")
    with pytest.raises(PermissionError):
        perms.check_chown(alice, "alice", "alice", None, "wheel", "/f")   # not a member
    with pytest.raises(PermissionError):
        perms.check_chown(bob, "alice", "alice", None, "staff", "/f")     # not the owner
    assert perms.check_chown(alice, "alice", "staff", "alice", "staff", "/f") == (
        "alice", "staff")                                                   # no change


def test_new_modes_follow_the_umask():
    assert perms.new_mode(None, is_dir=False) == 0o644
    assert perms.new_mode(None, is_dir=True) == 0o755
    assert perms.new_mode(0o777, is_dir=False, umask=0o027) == 0o750
    assert perms.new_mode(0o1777, is_dir=True, umask=0) == 0o1777


@pytest.mark.parametrize("mode,is_dir,want", [
    (0o755, True, "drwxr-xr-x"), (0o644, False, "-rw-r--r--"), (0o1777, True, "drwxrwxrwt"),
    (0o4755, False, "-rwsr-xr-x"), (0o2640, False, "-rw-r-S---"), (0o1776, True, "drwxrwxrwT"),
])
def test_format_mode_matches_stat_filemode(mode, is_dir, want):
    assert perms.format_mode(mode, is_dir=is_dir) == want
    kind = st.S_IFDIR if is_dir else st.S_IFREG
    assert st.filemode(kind | mode) == want


# -- against the kernel's own decisions -------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other uids")
OWNER_UID, GROUP_UID, OTHER_UID, GID = 40001, 40002, 40003, 40100


def _kernel_allows(path: str, uid: int, gids: list[int], want: int) -> bool:
    """Fork, drop to uid/gids, and ask the kernel with access(2)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups(gids)
            os.setgid(gids[0] if gids else 65534)
            os.setuid(uid)
            ok = os.access(path, want, effective_ids=False)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    return answer == b"1"


@pytest.fixture(scope="module")
def searchable_dir():
    """A directory every uid can search (pytest's tmp dirs are 0700 up the tree)."""
    d = tempfile.mkdtemp(prefix="aegisfs-perms-")
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@needs_root
@settings(deadline=None, max_examples=150)
@given(mode=s.integers(0, 0o777), want=s.sampled_from([R, W, X, R | W, R | X, R | W | X]),
       who=s.sampled_from(["owner", "group", "other"]))
def test_allows_agrees_with_linux(searchable_dir, mode, want, who):
    path = os.path.join(searchable_dir, "f")
    with open(path, "w"):
        pass
    os.chown(path, OWNER_UID, GID)
    os.chmod(path, mode)
    uid, gids = {"owner": (OWNER_UID, [40999]), "group": (GROUP_UID, [GID]),
                 "other": (OTHER_UID, [40998])}[who]
    cred = Cred({"owner": "o", "group": "g", "other": "x"}[who],
                frozenset({"grp"}) if who == "group" else frozenset())
    mine = perms.allows(cred, "o", "grp", mode, want)
    assert mine == _kernel_allows(path, uid, gids, want), (oct(mode), want, who)
