"""client.mount.daemon.fill_stat, the mount's faster filling of a getattr reply, sets a
struct stat exactly as mfusepy's own set_st_attrs does (use_ns: times in nanoseconds)."""
from __future__ import annotations

import ctypes
import stat as S

import pytest

from client.mount.daemon import fill_stat, fuse_available

if fuse_available():
    pytest.skip(f"mfusepy needs libfuse: {fuse_available()}", allow_module_level=True)

import mfusepy  # noqa: E402  (loads libfuse)

CASES = [
    # what ops_attrs._attrs gives for a file
    {"st_mode": S.S_IFREG | 0o644, "st_ino": 1 << 62, "st_nlink": 1, "st_uid": 1000,
     "st_gid": 100, "st_size": 4096, "st_blocks": 8, "st_blksize": 131072,
     "st_mtime": 1_700_000_000_123_456_789, "st_ctime": 1_700_000_001_000_000_000,
     "st_atime": 1_700_000_000_123_456_789},
    # before 1970: a negative time keeps tv_nsec in [0, 1e9)
    {"st_mode": S.S_IFDIR | 0o755, "st_nlink": 3, "st_mtime": -1_500_000_000,
     "st_ctime": 0, "st_atime": -1},
    # a device node's number and fields left out
    {"st_mode": S.S_IFCHR | 0o600, "st_rdev": 0x0103, "st_size": 0},
    {},
]


def _bytes(st: mfusepy.c_stat) -> bytes:
    return ctypes.string_at(ctypes.addressof(st), ctypes.sizeof(st))


@pytest.mark.parametrize("attrs", CASES)
def test_fill_stat_sets_what_set_st_attrs_sets(attrs):
    ours, theirs = mfusepy.c_stat(), mfusepy.c_stat()
    fill_stat(ours, attrs)
    mfusepy.set_st_attrs(theirs, attrs, use_ns=True)
    assert _bytes(ours) == _bytes(theirs)
    if "st_mtime" in attrs:
        sec, nsec = divmod(attrs["st_mtime"], 10**9)
        assert (ours.st_mtimespec.tv_sec, ours.st_mtimespec.tv_nsec) == (sec, nsec)
        assert 0 <= ours.st_mtimespec.tv_nsec < 10**9
    if "st_rdev" in attrs:
        assert ours.st_rdev == attrs["st_rdev"]
