from __future__ import annotations

import os

import random
from pathlib import Path

import pytest

from mds import snapshot
from mds.namespace import BIG_FILE_BLOCKS, Namespace, NamespaceConfig
from mds.perms import Cred
from mds.snapshot import SnapshotCorrupt, list_snapshots, load_snapshot, write_snapshot

BS = 256
CONFIG = NamespaceConfig(replication=2, block_size=BS, lease=30.0)


def fresh() -> Namespace:
    return Namespace(CONFIG)


def populated(files: int = 40) -> Namespace:
    """Dirs, files of several sizes, a big file, drafts and a deletion queue."""
    t = [100.0]

    def clock() -> float:
        t[0] += 0.5
        return t[0]
    ns = Namespace(CONFIG, clock=clock, random_bytes=random.Random(1).randbytes)
    rng = random.Random(2)
    nodes = ["n1", "n2", "n3", "n4"]
    ns.apply(ns.prepare_mkdir("/d/e/f", parents=True))
    ns.apply(ns.prepare_mkdir("/empty"))
    for i in range(files):
        path = f"/d/{'e/' if i % 3 else ''}file{i}"
        nblocks = BIG_FILE_BLOCKS + 2 if i == 7 else i % 4
        h = ns.apply(ns.prepare_create(path, replication=1 + i % 3))["handle"]
        blocks = []
        if nblocks:
            alloc = ns.apply(ns.prepare_allocate(h, [rng.sample(nodes, 2)
                                                     for _ in range(nblocks)]))
            blocks = [{"id": b["id"], "size": BS if k < nblocks - 1 else 1 + i,
                       "checksum": rng.getrandbits(32), "replicas": b["targets"][:1 + k % 2]}
                      for k, b in enumerate(alloc["blocks"])]
        ns.apply(ns.prepare_commit(h, blocks))
    ns.apply(ns.prepare_rm("/d/file0"))  # fills the deletion queue
    # owners, groups and modes: of directories, files and drafts
    alice = Cred("alice")
    ns.apply(ns.prepare_chown("/d/e", "alice"))
    ns.apply(ns.prepare_mkdir("/d/e/mine", cred=alice, mode=0o750))
    ns.apply(ns.prepare_chmod("/d/e/file1", 0o4600))
    ns.apply(ns.prepare_chown("/d/e/file2", "bob", "staff"))
    ns.apply(ns.prepare_chmod("/", 0o1777))
    ns.apply(ns.prepare_create("/d/e/mine/draft", cred=alice, mode=0o600,
                                       handle="zz-alice"))
    h = ns.apply(ns.prepare_create("/d/open"))["handle"]
    ns.apply(ns.prepare_allocate(h, [["n1", "n2"], ["n3"]]))
    ns.apply(ns.prepare_create("/d/e/other", handle="client-chosen"))
    ns.apply(ns.prepare_utimes("/d/e/file2", 50.0, atime=40.0))     # an atime of its own
    return ns


def test_roundtrip_preserves_everything(tmp_path: Path) -> None:
    ns = populated()
    path = write_snapshot(tmp_path, ns, 123, clock=lambda: 5.0)
    assert path.name == "snapshot-00000000000000000123.msgpack"
    assert list_snapshots(tmp_path) == [(123, path)]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no tmp left behind
    other = fresh()
    header = load_snapshot(path, other)
    assert header["seq"] == 123 and header["created"] == 5.0 and header["version"] == snapshot.VERSION
    assert other.dump() == ns.dump()
    assert other.counts()["pending_deletes"] > 0 and other.counts()["drafts"] == 3
    assert (other.stat("/d/e/mine")["owner"], other.stat("/d/e/mine")["mode"]) == ("alice",
                                                                                  0o750)
    assert other.stat("/d/e/file1")["mode"] == 0o4600 and other.stat("/")["mode"] == 0o1777
    assert other.stat("/d/e/file2")["atime"] == 40.0
    assert other.dump()["drafts"]["zz-alice"][-3:] == ["alice", "alice", 0o600]
    # the block index is rebuilt, including the position map of big files
    big = other.file_info("/d/e/file7")["blocks"]
    assert len(big) == BIG_FILE_BLOCKS + 2
    assert other.block_info(big[-1]["id"])["index"] == len(big) - 1
    h = other.draft_handles()[0]
    assert other.block_info(other.draft_info(h)["blocks"][0]["id"])["draft"] == h
    # the restored namespace keeps working: same next ids, same results
    for n in (ns, other):
        n.apply({"op": "mkdir", "path": "/later", "parents": False, "mtime": 1.0})
        n.apply({"op": "create", "path": "/later/x", "handle": "hx", "replication": 2,
                 "block_size": BS, "parents": False, "lease": 9.0, "mtime": 1.0})
    assert other.dump() == ns.dump()


def test_many_entries_span_several_frames(tmp_path: Path) -> None:
    ns = Namespace(CONFIG, random_bytes=random.Random(3).randbytes)
    for d in range(30):
        ns.apply(ns.prepare_mkdir(f"/dir{d}"))
        for f in range(200):
            h = ns.apply(ns.prepare_create(f"/dir{d}/f{f}"))["handle"]
            b = ns.apply(ns.prepare_allocate(h, [["n1"]]))["blocks"][0]
            ns.apply(ns.prepare_commit(h, [{"id": b["id"], "size": 1, "checksum": f,
                                            "replicas": ["n1"]}]))
    path = write_snapshot(tmp_path, ns, 1)
    frames = list(snapshot._frames(open(path, "rb"), path))
    assert sum(1 for _, f in frames if f.get("k") == "tree") >= 2
    other = fresh()
    load_snapshot(path, other)
    assert other.dump() == ns.dump() and other.counts()["files"] == 6000


def test_empty_namespace(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, fresh(), 0)
    other = fresh()
    assert load_snapshot(path, other)["seq"] == 0
    assert other.dump() == fresh().dump()


def test_any_damage_is_detected(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, populated(), 9)
    data = path.read_bytes()
    rng = random.Random(11)
    for n in range(120):
        if n % 2:
            bad = bytearray(data)
            bad[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(bad))
        else:
            path.write_bytes(data[:rng.randrange(len(data))])
        with pytest.raises(SnapshotCorrupt) as info:
            load_snapshot(path, fresh())
        assert str(path) in str(info.value) and info.value.filename == str(path)
    path.write_bytes(data + b"x")
    with pytest.raises(SnapshotCorrupt, match="after the trailer"):
        load_snapshot(path, fresh())
    path.write_bytes(data)
    load_snapshot(path, fresh())


def test_a_snapshot_must_carry_the_seq_its_name_says(tmp_path: Path) -> None:
    path = write_snapshot(tmp_path, populated(), 9)
    path.rename(tmp_path / snapshot.snapshot_name(10))
    with pytest.raises(SnapshotCorrupt, match="file name"):
        load_snapshot(tmp_path / snapshot.snapshot_name(10), fresh())


def test_write_order_is_tmp_fsync_rename_fsync_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_rename, real_fsync_dir = snapshot.os.fsync, snapshot.os.rename, \
        snapshot.fsync_dir
    monkeypatch.setattr(snapshot.os, "fsync",
                        lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(snapshot.os, "rename",
                        lambda a, b: (events.append(f"rename {Path(a).name}"),
                                      real_rename(a, b))[1])
    monkeypatch.setattr(snapshot, "fsync_dir",
                        lambda d: (events.append("fsync_dir"), real_fsync_dir(d))[1])
    write_snapshot(tmp_path, populated(5), 3)
    # the last fsync is the directory's, made inside fsync_dir
    assert events == ["fsync", f"rename snapshot-00000000000000000003.msgpack.{os.getpid()}.tmp",
                      "fsync_dir", "fsync"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(snapshot.os, "fsync", broken)
    with pytest.raises(OSError):
        write_snapshot(tmp_path, populated(5), 3)
    assert list(tmp_path.iterdir()) == []
