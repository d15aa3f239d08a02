"""The MDS operations the mount uses, through the in-process cluster: rename (exact,
noreplace, exchange), link, utimens, create/mkdir with a umask and a kind, paged ls, nlink."""
from __future__ import annotations

import errno

import pytest

from tests.support.inprocess import InProcessCluster


@pytest.fixture
def fs():  # type: ignore[no-untyped-def]
    with InProcessCluster() as c:
        client = c.client()
        yield client
        client.close()


def test_rename_is_exact_and_noreplace_refuses(fs) -> None:  # type: ignore[no-untyped-def]
    fs.write_bytes("/a", b"A")
    fs.mkdir("/d")
    # mv would move into /d; rename(2) replaces or refuses
    with pytest.raises(IsADirectoryError):
        fs._mds("/a", "rename", src="/a", dst="/d")
    fs.write_bytes("/b", b"B")
    with pytest.raises(FileExistsError):
        fs._mds("/a", "rename", src="/a", dst="/b", noreplace=True)
    assert fs.read_bytes("/b") == b"B"
    assert fs._mds("/a", "rename", src="/a", dst="/b") == {"path": "/b"}
    assert fs.read_bytes("/b") == b"A" and not fs.exists("/a")


def test_rename_exchange_and_link_through_the_service(fs) -> None:  # type: ignore[no-untyped-def]
    fs.write_bytes("/a", b"A")
    fs.write_bytes("/b", b"BB")
    assert fs._mds("/a", "rename", src="/a", dst="/b", exchange=True) == {"path": "/b"}
    assert (fs.read_bytes("/a"), fs.read_bytes("/b")) == (b"BB", b"A")
    with pytest.raises(OSError) as info:
        fs._mds("/a", "rename", src="/a", dst="/b", exchange=True, noreplace=True)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        fs._mds("/a", "rename", src="/a", dst="/c", exchange=True)
    assert fs.link("/a", "/c") == 2
    got = fs._mds("/c", "link", src="/c", dst="/e")
    assert got["nlink"] == 3 and got["inode"] == fs.stat("/a")["inode"]
    fs.write_bytes("/c", b"CCC")                    # a new version through one name
    assert fs.read_bytes("/e") == b"CCC" and fs.stat("/a")["nlink"] == 3
    with pytest.raises(PermissionError):
        fs.link("/", "/x")


def test_utimens_and_umask_and_kind(fs) -> None:  # type: ignore[no-untyped-def]
    fs._mds("/d", "mkdir", path="/d", mode=0o777, umask=0)
    assert fs.stat("/d")["mode"] == 0o777
    fs.write_bytes("/d/f", b"x")
    fs._mds("/d/f", "utimens", path="/d/f", mtime=1e9)
    assert fs.stat("/d/f")["mtime"] == 1e9
    with pytest.raises(OSError) as info:
        fs._mds("/d/f", "utimens", path="/d/f", mtime="now")
    assert info.value.errno == errno.EPROTO
    created = fs._mds("/d/l", "create", path="/d/l", kind="symlink", mode=0o777, umask=0)
    fs._mds("/d/l", "commit", handle=created["handle"], blocks=[])
    st = fs.stat("/d/l")
    assert st["kind"] == "symlink" and st["mode"] == 0o777
    with pytest.raises(OSError) as info:
        fs._mds("/d/x", "create", path="/d/x", kind="door")
    assert info.value.errno == errno.EINVAL


def test_ls_pages_and_nlink(fs) -> None:  # type: ignore[no-untyped-def]
    for i in range(5):
        fs.mkdir(f"/p/d{i}", parents=True)
    page = fs._mds("/p", "ls", path="/p", limit=2, start_after="d1")["entries"]
    assert [e["name"] for e in page] == ["d2", "d3"]
    assert fs.stat("/p")["nlink"] == 7
