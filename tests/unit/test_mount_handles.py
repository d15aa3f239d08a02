"""The mount's open files over the in-process cluster: streamed writes commit whole on
flush and never before, rewrites merge random writes into a new version, truncation, the
error for a write behind blocks already sent; the id map and the attribute cache."""
from __future__ import annotations

import errno
import os
import time

import pytest

from client.mount.cache import AttrCache
from client.mount.conn import MountClient
from client.mount.handles import SMALL, FileHandle
from client.mount.ids import NOBODY, IdMap
from tests.support.inprocess import ADMIN, InProcessCluster

BS = 64 * 1024


@pytest.fixture
def cluster():  # type: ignore[no-untyped-def]
    with InProcessCluster(block_size=BS) as c:
        yield c


@pytest.fixture
def fs(cluster: InProcessCluster) -> MountClient:
    m = MountClient("inprocess", transport=lambda: cluster.connect(ADMIN), config={})
    yield m
    m.close()


def opened(fs: MountClient, path: str, flags: int) -> FileHandle:
    size = int(fs.stat(path)["size"]) if fs.exists(path) else 0
    return FileHandle(fs, path, flags, size, None)


def test_stream_commits_on_flush_only(fs: MountClient) -> None:
    fs.write_bytes("/f", b"")
    h = opened(fs, "/f", os.O_WRONLY)
    data = os.urandom(SMALL + 3 * BS + 123)
    for off in range(0, len(data), 4096):
        h.write(data[off:off + 4096], off)
    # past the first MiB, full blocks leave as they fill
    assert h.stream is not None and h.stream.sent == SMALL + 3 * BS
    assert fs.read_bytes("/f") == b""                           # nothing visible yet
    assert h.size == len(data)
    h.flush()
    assert fs.read_bytes("/f") == data
    h.release()


def test_release_without_flush_leaves_the_old_version(fs: MountClient,
                                                      cluster: InProcessCluster) -> None:
    fs.write_bytes("/f", b"")
    h = opened(fs, "/f", os.O_WRONLY)
    h.write(os.urandom(SMALL + 2 * BS), 0)
    h.release()                                    # the daemon going away: no commit
    assert fs.read_bytes("/f") == b""
    assert "abort" in cluster.ops()


def test_write_behind_sent_blocks_is_eio(fs: MountClient) -> None:
    fs.write_bytes("/f", b"")
    h = opened(fs, "/f", os.O_WRONLY)
    h.write(b"a" * (BS - 10), 0)
    h.write(b"B", 3)                               # in the first MiB: anywhere
    h.write(b"a" * (SMALL + 20), BS - 10)          # SMALL + BS sent, 10 bytes not
    h.write(b"C", SMALL + BS + 2)                  # inside the block being filled
    with pytest.raises(OSError) as info:
        h.write(b"x", 5)
    assert info.value.errno == errno.EIO and "O_RDWR" in str(info.value)
    h.flush()
    got = fs.read_bytes("/f")
    assert got == b"aaaB" + b"a" * (SMALL + BS - 2) + b"C" + b"a" * 7
    h.release()


def test_a_fresh_file_exists_only_after_its_first_flush(fs: MountClient,
                                                         cluster: InProcessCluster) -> None:
    h = FileHandle(fs, "/new", os.O_WRONLY, 0, None, fresh=True,
                   new={"mode": 0o600, "exclusive": True})
    h.write(b"hello", 0)
    assert not fs.exists("/new")
    before = len(cluster.ops())
    h.flush()
    # a small file: one sized create (with its block), one put, one commit
    assert cluster.ops()[before:] == ["create", "commit"]
    assert fs.read_bytes("/new") == b"hello"
    assert fs.stat("/new")["mode"] == 0o600
    h.write(b"HELLO!", 0)                          # later versions keep the attributes
    h.flush()
    h.release()
    assert fs.read_bytes("/new") == b"HELLO!"
    # exclusive: a name taken meanwhile is EEXIST at the commit
    fs.write_bytes("/taken", b"theirs")
    h = FileHandle(fs, "/taken", os.O_WRONLY, 0, None, fresh=True, new={"exclusive": True})
    with pytest.raises(FileExistsError):
        h.flush()
    h.release()
    assert fs.read_bytes("/taken") == b"theirs"
    # closed without a write: an empty file
    h = FileHandle(fs, "/empty", os.O_WRONLY, 0, None, fresh=True, new={})
    h.flush()
    h.release()
    assert fs.read_bytes("/empty") == b""


def test_holes_are_zeros(fs: MountClient) -> None:
    fs.write_bytes("/f", b"")
    h = opened(fs, "/f", os.O_WRONLY)
    h.write(b"x", 0)
    h.write(b"y", 2 * BS + 1)
    h.flush()
    h.release()
    assert fs.read_bytes("/f") == b"x" + bytes(2 * BS) + b"y"


def test_random_writes_rewrite_the_file(fs: MountClient) -> None:
    base = os.urandom(3 * BS)
    fs.write_bytes("/f", base)
    h = opened(fs, "/f", os.O_RDWR)
    assert h.read(10, BS) == base[BS:BS + 10]     # reads the committed version
    h.write(b"Z" * 100, BS - 50)
    h.write(b"end", len(base))                     # an append
    assert h.read(200, BS - 100) == base[BS - 100:BS - 50] + b"Z" * 100 + base[BS + 50:BS + 100]
    assert fs.read_bytes("/f") == base             # not before the flush
    h.flush()
    want = base[:BS - 50] + b"Z" * 100 + base[BS + 50:] + b"end"
    assert fs.read_bytes("/f") == want
    h.write(b"again", 0)                           # after a flush, still writable
    h.flush()
    h.release()
    assert fs.read_bytes("/f") == b"again" + want[5:]
    assert fs.stat("/f")["mode"] == 0o644          # a new version keeps the attributes


def test_truncate(fs: MountClient) -> None:
    fs.write_bytes("/f", b"0123456789" * 1000)
    h = opened(fs, "/f", os.O_RDWR)
    h.truncate(5)
    assert h.size == 5
    h.flush()
    assert fs.read_bytes("/f") == b"01234"
    h.truncate(8)                                  # growing: zeros
    h.flush()
    h.release()
    assert fs.read_bytes("/f") == b"01234\0\0\0"
    h = opened(fs, "/f", os.O_WRONLY)
    h.truncate(0)                # to zero: the new version starts empty, commits at flush
    assert fs.read_bytes("/f") == b"01234\0\0\0" and h.size == 0
    h.write(b"new", 0)
    assert h.stream is not None                    # and streams
    h.flush()
    h.release()
    assert fs.read_bytes("/f") == b"new"


def test_o_trunc_replaces_the_file_whole_at_flush(fs: MountClient) -> None:
    fs.write_bytes("/f", b"old content")
    h = opened(fs, "/f", os.O_WRONLY | os.O_TRUNC)
    h.replace_all()
    assert h.read(100, 0) == b"" and h.size == 0
    assert fs.read_bytes("/f") == b"old content"   # readers keep the old version
    h.flush()                                      # closed without a write: empty
    h.release()
    assert fs.read_bytes("/f") == b""


def test_rdwr_on_a_new_file_spools(fs: MountClient) -> None:
    fs.write_bytes("/db", b"")
    h = opened(fs, "/db", os.O_RDWR)
    h.write(b"page2" * 10, 4096)
    h.write(b"header", 0)                          # a database's header, written last
    h.flush()
    h.release()
    got = fs.read_bytes("/db")
    assert got[:6] == b"header" and got[4096:4101] == b"page2" and len(got) == 4096 + 50


def test_idmap_both_ways() -> None:
    ids = IdMap("alice", uid=1000, gid=1000)
    assert ids.uid_of("alice") == 1000 and ids.user_name(1000) == "alice"
    assert ids.gid_of("alice") == 1000 and ids.group_name(1000) == "alice"
    assert ids.uid_of("root") == 0 and ids.user_name(0) == "root"
    assert ids.uid_of("4321") == 4321 and ids.user_name(4321) == "4321"
    assert ids.uid_of("no-such-user-here") == NOBODY
    # a local account named like the mount's user is not confused with it
    assert IdMap("root", uid=1000, gid=1000).user_name(0) == "0"


def test_attr_cache_expires_and_drops() -> None:
    c = AttrCache(0.2)
    c.put("/a/b", {"x": 1})
    c.put("/a", {"x": 2})
    c.put("/a/b/c", {"x": 3})
    assert c.get("/a/b") == {"x": 1}
    c.drop("/a/b")                                 # the entry and its parent
    assert c.get("/a/b") is None and c.get("/a") is None and c.get("/a/b/c") == {"x": 3}
    c.put("/a/b", {"x": 1})
    c.drop_tree("/a/b")
    assert c.get("/a/b/c") is None
    c.put("/z", {"x": 4})
    time.sleep(0.25)
    assert c.get("/z") is None
    assert AttrCache(0).get("/z") is None


def test_events_name_the_paths_to_drop() -> None:
    from client.mount.events import events_endpoint, paths_of
    assert events_endpoint("tcp://127.0.0.1:5550") == "tcp://127.0.0.1:5553"
    assert events_endpoint("ipc:///x") is None
    assert events_endpoint("tcp://127.0.0.1:5550,tcp://127.0.0.1:5554") == \
        "tcp://127.0.0.1:5553,tcp://127.0.0.1:5557"          # several brokers: each one's
    assert paths_of({"src": "mds", "path": "/a/b"}) == ["/a/b"]
    assert paths_of({"src": "/a", "dst": "/b", "seq": 3}) == ["/a", "/b"]


def test_attributes_travel_in_the_commits_batch(fs: MountClient,
                                                cluster: InProcessCluster) -> None:
    h = FileHandle(fs, "/t", os.O_WRONLY, 0, None, fresh=True, new={"mode": 0o640})
    h.write(b"data", 0)
    before = len(cluster.ops())
    after = h.flush([{"op": "utimens", "path": "/t", "mtime": 1e9},
                     {"op": "chmod", "path": "/nope", "mode": 0o600}])
    h.release()
    # the commit and the rest: one round trip
    assert cluster.ops()[before:] == ["create", "batch:chmod/commit/utimens"]
    assert isinstance(after[0], dict) and isinstance(after[1], FileNotFoundError)
    st = fs.stat("/t")
    assert st["mtime"] == 1e9 and st["mode"] == 0o640 and fs.read_bytes("/t") == b"data"


def test_a_directorys_times_set_after_a_close_are_not_undone_by_its_commit(
        fs: MountClient) -> None:
    """rsync -a and tar -x set a directory's mtime after writing its files. A small file
    closed there is committed later, in the background, and that commit changes the
    directory's mtime: utimens of the directory must wait for it, or the times it set
    are lost (seen in CI: rsync's directory mtimes 3 s off)."""
    import threading
    from types import SimpleNamespace

    from client.mount.ops import AegisOperations
    ops = AegisOperations(fs, IdMap("admin", 0, 0), background=True)
    gate = threading.Event()
    commit = ops.pending._commit
    ops.pending._commit = lambda batch: (gate.wait(10), commit(batch))[1]
    try:
        ops.mkdir("/d", 0o755)
        fh = ops.create("/d/f", 0o644, os.O_WRONLY | os.O_CREAT)
        ops.write("/d/f", b"abc", 0, fh)
        ops.flush("/d/f", fh)
        ops.release("/d/f", fh)
        assert ops.pending.get("/d/f") is not None          # queued, held by the gate
        when = SimpleNamespace(tv_sec=1_600_000_000, tv_nsec=0)
        setter = threading.Thread(target=ops.utimens, args=("/d", (when, when)))
        setter.start()
        setter.join(0.5)
        assert setter.is_alive()                            # waits for the commit
        gate.set()
        setter.join(10)
        assert not setter.is_alive()
        assert fs.read_bytes("/d/f") == b"abc"
        assert int(fs.stat("/d")["mtime"]) == 1_600_000_000
    finally:
        gate.set()
        ops.pending.stop()


def test_atimes_set_on_new_queued_and_committed_files_reach_the_mds(
        fs: MountClient) -> None:
    """utimensat's atime is kept (the MDS's Tree.atimes): set on a file not committed
    yet it travels with the commit; UTIME_OMIT for the mtime (touch -a) leaves the
    mtime as it was."""
    from types import SimpleNamespace

    from client.mount.ops import AegisOperations
    from client.mount.ops_names import UTIME_OMIT

    def ts(sec: float) -> SimpleNamespace:
        return SimpleNamespace(tv_sec=int(sec), tv_nsec=0)
    omit = SimpleNamespace(tv_sec=0, tv_nsec=UTIME_OMIT)
    ops = AegisOperations(fs, IdMap("admin", 0, 0), background=True)
    try:
        fh = ops.create("/fresh", 0o644, os.O_WRONLY | os.O_CREAT)
        ops.write("/fresh", b"abc", 0, fh)
        ops.utimens("/fresh", (ts(1_000_000), ts(2_000_000)))     # open, not committed
        assert ops.getattr("/fresh", fh)["st_atime"] == 1_000_000 * 10**9
        ops.flush("/fresh", fh)
        ops.release("/fresh", fh)
        fh = ops.create("/queued", 0o644, os.O_WRONLY | os.O_CREAT)
        ops.write("/queued", b"xyz", 0, fh)
        ops.flush("/queued", fh)
        ops.release("/queued", fh)
        queued = ops.pending.get("/queued") is not None
        ops.utimens("/queued", (ts(3_000_000), omit))            # touch -a
        assert ops.getattr("/queued")["st_atime"] == 3_000_000 * 10**9
        ops.pending.settle("/", raise_errors=True)
        st = fs.stat("/fresh")
        assert (st["atime"], st["mtime"]) == (1_000_000, 2_000_000)
        st = fs.stat("/queued")
        assert st["atime"] == 3_000_000 and st["mtime"] > 3_000_000, (queued, st)
        ops.utimens("/fresh", (ts(4_000_000), omit))             # committed: touch -a
        st = fs.stat("/fresh")
        assert (st["atime"], st["mtime"]) == (4_000_000, 2_000_000)
        ops.utimens("/fresh", (omit, omit))                      # nothing changes
        assert fs.stat("/fresh")["ctime"] == st["ctime"]
    finally:
        ops.pending.stop()
