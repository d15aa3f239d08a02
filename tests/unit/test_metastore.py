from __future__ import annotations

import copy
import errno
import logging
import os
import random
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mds import store_checkpoint
from mds.metastore import MetaStore
from mds.store_files import RecoveryError
from mds.namespace import NamespaceConfig
from mds.perms import Cred
from mds.snapshot import list_snapshots
from mds.wal import WalCorruption, frame_at, list_segments
from tests.support.clock import FakeClock

BS = 64
CONFIG = NamespaceConfig(replication=2, block_size=BS, lease=30.0)
NODES = ["n1", "n2", "n3", "n4"]


def open_store(path: Path, clock: FakeClock | None = None, seed: int = 1,
               **kwargs: object) -> MetaStore:
    return MetaStore(path, config=CONFIG, clock=clock or FakeClock(),
                     random_bytes=random.Random(seed).randbytes, **kwargs)


def put(store: MetaStore, path: str, nblocks: int = 1) -> dict:
    h = store.submit(lambda ns: ns.prepare_create(path, parents=True))["handle"]
    blocks = []
    if nblocks:
        alloc = store.submit(lambda ns: ns.prepare_allocate(h, [["n1", "n2"]] * nblocks))
        blocks = [{"id": b["id"], "size": BS if i < nblocks - 1 else 5, "checksum": i,
                   "replicas": b["targets"]} for i, b in enumerate(alloc["blocks"])]
    return store.submit(lambda ns: ns.prepare_commit(h, blocks))


def crash(store: MetaStore) -> None:
    """What dying does to a store: buffered records vanish, the lock is released."""
    store.wal.close(sync=False)
    store._lock.close()


def names(directory: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


# ---------------------------------------------------------------- submit / flush


def test_submit_flush_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.submit(lambda ns: ns.prepare_mkdir("/a"))["created"] == 1
    res = put(store, "/a/f", 3)
    assert res["size"] == 2 * BS + 5
    assert store.wal.pending == 4 and store.last_seq == 4  # mkdir, create, allocate, commit
    assert store.flush() > 0 and store.wal.pending == 0
    expected = store.ns.dump()
    store.close()
    again = open_store(tmp_path)
    assert again.ns.dump() == expected and again.last_seq == 4
    put(again, "/a/g")  # sequence numbers continue
    assert again.last_seq == 7
    again.close()
    assert open_store(tmp_path).ns.stat("/a/g")["size"] == 5


def test_unflushed_records_are_not_durable(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.submit(lambda ns: ns.prepare_mkdir("/kept"))
    store.flush()
    store.submit(lambda ns: ns.prepare_mkdir("/lost"))
    crash(store)  # the process dies before its flush
    again = open_store(tmp_path)
    assert [e["name"] for e in again.ns.ls("/")] == ["kept"]
    again.close()


def test_a_fenced_store_makes_nothing_more_durable(tmp_path: Path) -> None:
    """What the MDS does when its leadership lease ended during a batch (mds/server.py):
    the batch's records are in memory but must never reach the log, even on close."""
    store = open_store(tmp_path)
    store.submit(lambda ns: ns.prepare_mkdir("/kept"))
    store.flush()
    store.submit(lambda ns: ns.prepare_mkdir("/fenced"))
    store.fence("the lease ended")
    with pytest.raises(OSError) as info:
        store.flush()
    assert info.value.errno == errno.EIO and "lease ended" in str(info.value)
    with pytest.raises(OSError):
        store.submit(lambda ns: ns.prepare_mkdir("/later"))
    store.close()
    again = open_store(tmp_path)
    assert [e["name"] for e in again.ns.ls("/")] == ["kept"]
    again.close()


def test_the_epoch_is_logged_once_per_term_and_recovered(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.epoch == 0
    store.begin_term(5)
    store.submit(lambda ns: ns.prepare_mkdir("/a"))
    store.begin_term(5)          # the same term goes on: nothing logged
    store.flush()
    assert store.last_seq == 2
    store.close()
    again = open_store(tmp_path)
    assert again.epoch == 5 and again.last_seq == 2 and again.ns.stat("/a")
    again.close()


def test_a_lower_epoch_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    from mds.store_ha import StaleEpoch
    store = open_store(tmp_path)
    store.begin_term(9)
    seq = store.last_seq
    with pytest.raises(StaleEpoch) as info:
        store.begin_term(8)
    assert info.value.errno == errno.ESTALE and (info.value.epoch, info.value.known) == (8, 9)
    assert store.epoch == 9 and store.last_seq == seq and store.wal.pending == 0
    store.begin_term(12)
    assert store.epoch == 12
    store.close()


def test_a_lower_epoch_record_in_the_log_stops_recovery(tmp_path: Path) -> None:
    """A deposed leader's records after a newer leader's must never be replayed."""
    store = open_store(tmp_path)
    store.begin_term(7)
    store.wal.append({"op": "epoch", "epoch": 3})     # as if an older term wrote after it
    store.flush()
    store.close()
    with pytest.raises(RecoveryError) as info:
        open_store(tmp_path)
    assert "epoch 3 is lower than epoch 7" in str(info.value)


def test_the_epoch_survives_checkpoints_that_prune_the_log(tmp_path: Path) -> None:
    store = open_store(tmp_path, keep_snapshots=1)
    store.begin_term(4)
    for i in range(3):
        store.submit(lambda ns, i=i: ns.prepare_mkdir(f"/d{i}"))
        assert store.checkpoint_now(wait=True)
    store.close()
    first_seqs = [first for first, _ in list_segments(tmp_path)]
    assert 1 not in first_seqs      # the segment with the first epoch record is gone
    again = open_store(tmp_path)
    assert again.epoch == 4
    with pytest.raises(OSError):
        again.begin_term(3)
    again.close()


def test_one_store_per_directory(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(OSError) as info:
        open_store(tmp_path)
    assert info.value.errno == errno.EBUSY and str(tmp_path) in str(info.value)
    store.close()
    open_store(tmp_path).close()  # released by close()


def test_plain_records_are_validated(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    rec = store.ns.prepare_mkdir("/a")
    store.submit(rec)
    with pytest.raises(FileExistsError):
        store.submit(rec)  # stale now
    with pytest.raises(OSError) as info:
        store.submit({"op": "drop_table"})
    assert info.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        store.submit(lambda ns: ns.prepare_rm("/nope"))
    assert store.wal.pending == 1 and store.last_seq == 1  # refused records left no trace
    store.close()


def test_failed_fsync_stops_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path)
    store.submit(lambda ns: ns.prepare_mkdir("/a"))
    store.flush()
    store.submit(lambda ns: ns.prepare_mkdir("/b"))

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError):
        store.flush()
    monkeypatch.undo()
    with pytest.raises(OSError, match="fatal"):
        store.submit(lambda ns: ns.prepare_mkdir("/c"))
    with pytest.raises(OSError, match="fatal"):
        store.flush()
    store.close()
    # /a was acknowledged; /b reached the page cache before the failed fsync, so it may
    # survive (it was never acknowledged, so either outcome is correct)
    assert [e["name"] for e in open_store(tmp_path).ns.ls("/")] in (["a"], ["a", "b"])


def test_apply_failure_is_fatal_and_never_reaches_disk(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.submit(lambda ns: ns.prepare_mkdir("/a"))

    def boom(rec: dict) -> dict:
        raise RuntimeError("bug")
    store.ns._ops["mkdir"] = (store.ns._ops["mkdir"][0], boom)
    with pytest.raises(RuntimeError):
        store.submit(lambda ns: ns.prepare_mkdir("/b"))
    with pytest.raises(OSError, match="fatal"):
        store.flush()
    store.close()
    assert open_store(tmp_path).ns.ls("/") == []  # /a was never flushed either


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_by_fork_then_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(20):
        put(store, f"/d{i % 3}/f{i}", nblocks=i % 3)
    assert store.checkpoint_now() is True
    assert store.snapshot_seq == store.last_seq
    assert names(tmp_path, "snapshot") == [f"snapshot-{store.last_seq:020d}.msgpack"]
    assert store.checkpoint_now() is False  # nothing new since
    put(store, "/after")
    store.flush()
    expected = store.ns.dump()
    store.close()
    again = open_store(tmp_path)
    assert again.ns.dump() == expected
    assert again.snapshot_seq < again.last_seq
    again.close()


def test_segments_go_only_after_the_snapshot_is_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path, keep_snapshots=2)
    put(store, "/a")
    store.checkpoint_now()
    first = store.snapshot_seq
    # one snapshot: the WAL from seq 1 stays, the fallback for a damaged snapshot
    assert names(tmp_path, "wal")[0] == "wal-00000000000000000001.log"
    put(store, "/b")
    real = store_checkpoint.write_snapshot

    def slow(*args: object, **kwargs: object) -> Path:
        time.sleep(0.4)
        return real(*args, **kwargs)
    monkeypatch.setattr(store_checkpoint, "write_snapshot", slow)
    store.checkpoint_now(wait=False)
    assert store.checkpointing
    store.poll()
    assert store.checkpointing
    assert names(tmp_path, "wal")[0] == "wal-00000000000000000001.log"  # still there
    assert len(names(tmp_path, "snapshot")) == 1
    deadline = time.monotonic() + 10
    while store.checkpointing and time.monotonic() < deadline:
        time.sleep(0.02)
        store.poll()
    assert not store.checkpointing
    # two snapshots now: segments the older one covers are gone, the rest stay
    assert [int(n[9:29]) for n in names(tmp_path, "snapshot")] == [first, store.snapshot_seq]
    assert [int(n[4:24]) for n in names(tmp_path, "wal")] == [first + 1,
                                                              store.snapshot_seq + 1]
    store.close()


def test_failed_checkpoint_keeps_the_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = open_store(tmp_path, clock=clock, checkpoint_records=3)
    put(store, "/a")

    def broken(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "disk full")
    monkeypatch.setattr(store_checkpoint, "write_snapshot", broken)
    store.flush()
    with caplog.at_level(logging.ERROR, logger="mds.metastore"):
        with pytest.raises(OSError, match="checkpoint failed"):
            store.checkpoint_now()
    assert "checkpoint at seq 3 failed" in caplog.text
    assert names(tmp_path, "snapshot") == [] and store.snapshot_seq == 0
    store.poll()
    assert not store.checkpointing  # no retry before the back-off passes
    monkeypatch.undo()
    clock.advance(60)
    store.poll()
    assert store.checkpointing
    while store.checkpointing:
        time.sleep(0.01)
        store.poll()
    assert store.snapshot_seq == 3
    store.close()
    assert open_store(tmp_path).ns.stat("/a")["size"] == 5


def test_checkpoint_now_when_fork_fails_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fork is reported like a failed child (it was a TypeError from reaping the
    child that never was); the store keeps working and checkpoints once fork works."""
    clock = FakeClock()
    store = open_store(tmp_path, clock=clock)
    put(store, "/a")

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    monkeypatch.setattr(store_checkpoint.os, "fork", no_fork)
    with pytest.raises(OSError, match="checkpoint failed") as err:
        store.checkpoint_now()
    assert err.value.errno == errno.EIO
    assert not store.checkpointing and store.snapshot_seq == 0
    monkeypatch.undo()
    put(store, "/b")
    assert store.checkpoint_now() is True
    assert store.snapshot_seq == store.last_seq
    store.close()
    assert open_store(tmp_path).ns.stat("/b")["size"] == 5


def test_poll_checkpoints_when_records_or_bytes_pile_up(tmp_path: Path) -> None:
    store = open_store(tmp_path / "r", checkpoint_records=10, checkpoint_bytes=1 << 30)
    for i in range(3):
        put(store, f"/f{i}")  # 9 records
    store.flush()
    store.poll()
    assert not store.checkpointing
    store.submit(lambda ns: ns.prepare_mkdir("/x"))
    store.poll()
    assert not store.checkpointing  # never with unflushed records
    store.flush()
    store.poll()
    assert store.checkpointing
    store.close()
    assert store.snapshot_seq == 10
    store = open_store(tmp_path / "b", checkpoint_records=10 ** 9, checkpoint_bytes=2000)
    while True:
        put(store, f"/f{store.last_seq}")
        store.flush()
        crossed = store.stats()["wal_bytes_since_snapshot"] >= 2000
        store.poll()
        assert store.checkpointing == crossed
        if crossed:
            break
    store.close()
    assert store.snapshot_seq == store.last_seq


def test_damaged_newest_snapshot_falls_back_to_the_older_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(tmp_path, keep_snapshots=2)
    for round_ in range(3):
        put(store, f"/f{round_}", 2)
        store.checkpoint_now()
    put(store, "/tail")
    store.flush()
    expected = store.ns.dump()
    store.close()
    newest = list_snapshots(tmp_path)[-1][1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="mds.metastore"):
        again = open_store(tmp_path)
    assert again.ns.dump() == expected
    assert "falling back" in caplog.text
    assert (newest.parent / (newest.name + ".corrupt")).exists()
    again.close()


def test_damaged_snapshot_without_its_wal_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store(tmp_path, keep_snapshots=1)
    for round_ in range(2):
        put(store, f"/f{round_}")
        store.checkpoint_now()
    store.close()
    snap = list_snapshots(tmp_path)[-1][1]
    snap.write_bytes(snap.read_bytes()[:-10])
    with pytest.raises(RecoveryError) as info:
        open_store(tmp_path)
    assert str(snap) in str(info.value) and "backup" in str(info.value)
    assert snap.exists()  # left in place for the operator


def test_wal_without_its_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    store = open_store(tmp_path, keep_snapshots=1)
    for round_ in range(2):
        put(store, f"/f{round_}")
        store.checkpoint_now()
    store.close()
    for _, snap in list_snapshots(tmp_path):
        snap.unlink()
    with pytest.raises(RecoveryError, match="no snapshot covers"):
        open_store(tmp_path)


def frame_offsets(path: Path) -> list[int]:
    data, offsets, pos = path.read_bytes(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos = frame_at(data, pos)[1]
    return offsets


def mkdirs(path: Path, n: int) -> Path:
    store = open_store(path)
    for i in range(n):
        store.submit(lambda ns: ns.prepare_mkdir(f"/d{i:02d}"))
    store.close()
    return list_segments(path)[-1][1]


def test_torn_tail_at_open_holds_exactly_the_records_before_it(tmp_path: Path) -> None:
    seg = mkdirs(tmp_path / "src", 8)
    data = seg.read_bytes()
    start = frame_offsets(seg)[-1]
    rng = random.Random(99)
    for n in range(200):
        work = tmp_path / f"c{n}"
        work.mkdir()
        if n % 2:
            damaged = data[:rng.randrange(start + 1, len(data))]
        else:
            flipped = bytearray(data)
            flipped[rng.randrange(start, len(data))] ^= 1 << rng.randrange(8)
            damaged = bytes(flipped)
        (work / seg.name).write_bytes(damaged)
        store = open_store(work)
        assert [e["name"] for e in store.ns.ls("/")] == [f"d{i:02d}" for i in range(7)]
        assert store.last_seq == 7
        store.submit(lambda ns: ns.prepare_mkdir("/new"))  # and it keeps going
        store.close()
        assert open_store(work).ns.stat("/new")["type"] == "dir"


def test_damage_in_a_middle_record_stops_startup_unless_salvaging(tmp_path: Path) -> None:
    seg = mkdirs(tmp_path, 5)
    offsets = frame_offsets(seg)
    bad = bytearray(seg.read_bytes())
    bad[offsets[2] + 12] ^= 0x10  # inside record 3 of 5
    seg.write_bytes(bytes(bad))
    with pytest.raises(WalCorruption) as info:
        open_store(tmp_path)
    assert info.value.offset == offsets[2] and str(seg) in str(info.value)
    assert f"byte {offsets[2]}" in str(info.value)
    salvaged = open_store(tmp_path, salvage=True)
    assert [e["name"] for e in salvaged.ns.ls("/")] == ["d00", "d01"]
    assert salvaged.last_seq == 2
    salvaged.submit(lambda ns: ns.prepare_mkdir("/d02"))
    salvaged.close()
    assert len(open_store(tmp_path).ns.ls("/")) == 3


# ---------------------------------------------------------------- property tests

NAME = st.sampled_from(["a", "b", "c"])
USER = st.sampled_from([None, "alice", "bob"])     # None: the superuser
PATH = st.lists(NAME, min_size=1, max_size=3).map(lambda xs: "/" + "/".join(xs))
OPS = st.one_of(
    st.tuples(st.just("put"), PATH, st.integers(0, 3)),  # create + allocate + commit
    st.tuples(st.just("mkdir"), PATH, st.booleans()),
    st.tuples(st.just("create"), PATH, st.booleans()),
    st.tuples(st.just("allocate"), st.integers(0, 9), st.integers(1, 3)),
    st.tuples(st.just("commit"), st.integers(0, 9), st.integers(0, 4)),
    st.tuples(st.just("abort"), st.integers(0, 9)),
    st.tuples(st.just("rm"), PATH, st.booleans()),
    st.tuples(st.just("rename"), PATH, PATH),
    st.tuples(st.just("move"), PATH, PATH),
    st.tuples(st.just("link"), PATH, PATH),      # hard links (mds/ns_link.py)
    st.tuples(st.just("replicas"), st.integers(0, 99),
              st.lists(st.sampled_from(NODES), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("tick"), st.floats(0, 40)),
    st.tuples(st.just("ack"), st.sampled_from(NODES), st.integers(0, 4)),
    st.tuples(st.just("orphans"), st.sampled_from(NODES), st.binary(min_size=16, max_size=16)),
    st.tuples(st.just("checkpoint")),
    # owners and modes: permission checks refuse some of these, which must change nothing
    st.tuples(st.just("chmod"), PATH, st.integers(0, 0o7777), USER),
    st.tuples(st.just("chown"), PATH, st.sampled_from([None, "alice", "bob"]),
              st.sampled_from([None, "alice", "staff"]), USER),
    st.tuples(st.just("mkdir_as"), PATH, USER, st.integers(0, 0o777)),
    # shared blocks: server-side copies, and commits that take blocks of existing files
    st.tuples(st.just("copy"), st.integers(0, 99), PATH, USER),     # of an existing file
    st.tuples(st.just("compose"), st.integers(0, 9), st.lists(st.integers(0, 99), max_size=4)),
)


def as_cred(user: str | None) -> Cred | None:
    return None if user is None else Cred(user)


def drive(store: MetaStore, clock: FakeClock, ops: list[tuple], rng: random.Random,
          checkpoints: bool) -> int:
    """Run abstract operations through the store; returns how many were applied."""
    ns, applied = store.ns, 0
    for op in ops:
        clock.advance(0.25)
        kind, args = op[0], op[1:]
        handles = ns.draft_handles()
        if kind == "checkpoint":
            if checkpoints:
                store.checkpoint_now()
            continue
        if kind == "tick":
            clock.advance(args[0])
            for rec in ns.expire_drafts(clock.now):
                store.submit(rec)
                applied += 1
            continue
        if kind in ("allocate", "commit", "abort") and not handles:
            continue
        if kind == "put":
            try:
                h = store.submit(lambda ns: ns.prepare_create(args[0], parents=True))["handle"]
                applied += 1
            except OSError:
                continue
            if args[1]:
                store.submit(lambda ns: ns.prepare_allocate(
                    h, [rng.sample(NODES, 2) for _ in range(args[1])]))
                applied += 1
            handles, kind, args = [h], "commit", (0, rng.randint(0, args[1]))
        if kind == "mkdir":
            prep = lambda ns: ns.prepare_mkdir(args[0], parents=args[1])  # noqa: E731
        elif kind == "create":
            prep = lambda ns: ns.prepare_create(args[0], parents=args[1])  # noqa: E731
        elif kind == "allocate":
            h = handles[args[0] % len(handles)]
            targets = [rng.sample(NODES, 2) for _ in range(args[1])]
            prep = lambda ns: ns.prepare_allocate(h, targets)  # noqa: E731
        elif kind == "commit":
            h = handles[args[0] % len(handles)]
            mine = ns.draft_info(h)["blocks"]
            chosen = mine[:min(args[1], len(mine))]
            blocks = [{"id": b["id"], "size": BS if i < len(chosen) - 1 else rng.randint(1, BS),
                       "checksum": rng.getrandbits(32),
                       "replicas": b["targets"][:rng.randint(1, len(b["targets"]))]}
                      for i, b in enumerate(chosen)]
            prep = lambda ns: ns.prepare_commit(h, blocks)  # noqa: E731
        elif kind == "abort":
            h = handles[args[0] % len(handles)]
            prep = lambda ns: ns.prepare_abort(h)  # noqa: E731
        elif kind == "rm":
            prep = lambda ns: ns.prepare_rm(args[0], recursive=args[1])  # noqa: E731
        elif kind == "rename":
            prep = lambda ns: ns.prepare_rename(args[0], args[1])  # noqa: E731
        elif kind == "link":
            prep = lambda ns: ns.prepare_link(args[0], args[1])  # noqa: E731
        elif kind == "move":
            prep = lambda ns: ns.prepare_rename(  # noqa: E731
                args[0], ns.resolve_move(args[0], args[1]))
        elif kind == "replicas":
            ids = sorted(b for b, _, _ in ns.iter_blocks())
            if not ids:
                continue
            bid = ids[args[0] % len(ids)]
            prep = lambda ns: ns.prepare_set_replicas(bid, args[1])  # noqa: E731
        elif kind == "chmod":
            prep = lambda ns: ns.prepare_chmod(args[0], args[1], cred=as_cred(args[2]))  # noqa: E731
        elif kind == "chown":
            prep = lambda ns: ns.prepare_chown(args[0], args[1], args[2],  # noqa: E731
                                               cred=as_cred(args[3]))
        elif kind == "mkdir_as":
            prep = lambda ns: ns.prepare_mkdir(args[0], parents=True,  # noqa: E731
                                               cred=as_cred(args[1]), mode=args[2])
        elif kind == "copy":
            paths_ = [p for p, _ in ns.iter_files()]
            if not paths_:
                continue
            src = paths_[args[0] % len(paths_)]
            prep = lambda ns: ns.prepare_clone(  # noqa: E731
                src, ns.resolve_move(src, args[1]), cred=as_cred(args[2]))
        elif kind == "compose":
            if not handles:
                continue
            h = handles[args[0] % len(handles)]
            files = [(p, info["blocks"]) for p, _ in ns.iter_files()
                     for info in [ns.file_info(p)] if info["blocks"]]
            if not files:
                continue
            picks = [files[k % len(files)] for k in args[1]]
            blocks = [{"id": b["id"], "size": b["size"], "checksum": b["checksum"], "from": p}
                      for p, bl in picks for b in bl[:2]]
            prep = lambda ns: ns.prepare_commit(h, blocks)  # noqa: E731
        elif kind == "ack":
            ids = sorted(ns.deletes_for(args[0]))[:args[1]]
            prep = lambda ns: ns.prepare_ack_delete(args[0], ids)  # noqa: E731
        else:  # orphans reported by a block report
            prep = lambda ns: ns.prepare_queue_delete(args[0], [args[1]])  # noqa: E731
        before = ns.dump()
        try:
            store.submit(prep)
            applied += 1
        except OSError:
            assert ns.dump() == before  # a refused operation changes nothing
        if rng.random() < 0.3:  # group commit: a few records per flush, as the server does
            store.flush()
            store.poll()
    store.flush()
    return applied


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(OPS, min_size=10, max_size=40), seed=st.integers(0, 2 ** 16))
def test_replay_from_the_wal_rebuilds_the_same_namespace(ops: list, seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        clock = FakeClock()
        store = open_store(Path(d), clock=clock, seed=seed)
        drive(store, clock, ops, random.Random(seed), checkpoints=False)
        expected = copy.deepcopy(store.ns.dump())
        store.close()
        # another clock and randomness: replay must use only what the records carry
        again = open_store(Path(d), clock=FakeClock(0), seed=seed + 1)
        assert again.ns.dump() == expected
        again.close()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(OPS, min_size=10, max_size=40), seed=st.integers(0, 2 ** 16))
def test_snapshot_plus_wal_rebuilds_the_same_namespace(ops: list, seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        clock = FakeClock()
        # tiny thresholds so poll() also starts background checkpoints mid-sequence
        store = open_store(Path(d), clock=clock, seed=seed, checkpoint_records=7)
        drive(store, clock, ops, random.Random(seed), checkpoints=True)
        expected = copy.deepcopy(store.ns.dump())
        store.close()
        again = open_store(Path(d), clock=FakeClock(0), seed=seed + 1)
        assert again.ns.dump() == expected
        again.close()


# sharing on its own: enough copies and composed commits that most runs end with shared
# blocks (in OPS they are two choices of twenty-odd)
SHARE_OPS = st.one_of(
    st.tuples(st.just("put"), PATH, st.integers(1, 3)),
    st.tuples(st.just("create"), PATH, st.just(True)),
    st.tuples(st.just("copy"), st.integers(0, 99), PATH, st.just(None)),
    st.tuples(st.just("compose"), st.integers(0, 9), st.lists(st.integers(0, 99), min_size=1,
                                                              max_size=4)),
    st.tuples(st.just("rm"), PATH, st.booleans()),
    st.tuples(st.just("move"), PATH, PATH),
    st.tuples(st.just("replicas"), st.integers(0, 99),
              st.lists(st.sampled_from(NODES), min_size=1, max_size=3, unique=True)),
    st.tuples(st.just("checkpoint")),
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(SHARE_OPS, min_size=10, max_size=40), seed=st.integers(0, 2 ** 16))
def test_shared_blocks_replay_and_checkpoint_to_the_same_refcounts(ops: list, seed: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        clock = FakeClock()
        store = open_store(Path(d), clock=clock, seed=seed, checkpoint_records=7)
        drive(store, clock, ops, random.Random(seed), checkpoints=True)
        expected = copy.deepcopy(store.ns.dump())    # "shared": bid -> references
        # no replica a file still references is queued for deletion on its node
        assert not [(n, b) for n, q in store.ns.pending_deletes.items() for b in q
                    if store.ns.blockmap.live_on(b, n)]
        store.close()
        again = open_store(Path(d), clock=FakeClock(0), seed=seed + 1)
        assert again.ns.dump() == expected
        again.close()
