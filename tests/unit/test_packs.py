"""Tests for datanode/packs.py and the pack side of BlockStore: group commit, crash recovery,
damage, tombstones, compaction, quarantine, scrubbing, and a model-based random test."""
from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import crc32c
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from datanode.blockid import new_block_id
from datanode.blocks import BlockCorrupt
from datanode.packformat import HEADER_SIZE
from datanode.packs import PackLog
from datanode.scrub import Scrubber
from datanode.store import BlockInfo, BlockStore

KiB = 1024
SMALL = 128 * KiB


def put(log: PackLog, bid: bytes, data: bytes) -> None:
    out = log.put_many([(bid, [memoryview(data)], len(data), crc32c.crc32c(data))])[0]
    if out is not None:
        raise out


def block_file(root: Path, bid: bytes) -> Path:
    return root / "blocks" / bid.hex()[:2] / f"{bid.hex()}.blk"


def pack_files(root: Path) -> list[Path]:
    return sorted(root.glob("pack-*.pack"))


def record_bounds(log: PackLog, bids: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) offset of each block's record in its pack."""
    out = []
    for bid in bids:
        loc, size, _ = log.locate(bid)
        out.append((loc & 0xFFFFFFFF, (loc & 0xFFFFFFFF) + HEADER_SIZE + size))
    return out


class SyncCounter:
    """Counts os.fdatasync calls (optionally slowed down or failing) made by any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail: int | None = None  # errno to raise instead of syncing
        self.gate: threading.Event | None = None  # block each sync until set
        self.entered = threading.Event()
        self._real = os.fdatasync
        self._lock = threading.Lock()
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        self._real(fd)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    with BlockStore(tmp_path / "dn") as s:
        yield s


# ---- round trips and routing ----------------------------------------------------------------


def test_round_trip_and_routing(tmp_path: Path) -> None:
    rng = random.Random(1)
    sizes = [0, 1, 4095, 4096, 4097, 65536, SMALL - 1, SMALL, SMALL + 1, 3 * SMALL]
    blocks = {new_block_id(): rng.randbytes(n) for n in sizes}
    with BlockStore(tmp_path / "dn") as s:
        for bid, data in blocks.items():
            info = s.put(bid, [data], expected_crc=crc32c.crc32c(data))
            assert info == BlockInfo(bid, len(data), crc32c.crc32c(data))
        for bid, data in blocks.items():
            got = s.get(bid)
            assert got.readonly and got == data
            assert s.stat(bid) == s.check(bid) == BlockInfo(bid, len(data), crc32c.crc32c(data))
            for off, length in [(0, 1), (1, 10), (len(data) // 2, None), (len(data), 5)]:
                off = min(off, len(data))
                end = len(data) if length is None else min(len(data), off + length)
                assert s.get(bid, off, length) == data[off:end]
            in_file = block_file(s.root, bid).exists()
            assert in_file == (len(data) > SMALL), len(data)  # routing: <= small_max -> packs
        small = [d for d in blocks.values() if len(d) <= SMALL]
        stats = s.pack_stats()
        assert stats.blocks == len(small) and stats.data_bytes == sum(map(len, small))
        assert stats.disk_bytes == sum(map(len, small)) + HEADER_SIZE * len(small)
        assert sorted(s.ids()) == sorted(blocks)
        assert {i.id: i.size for i in s.infos()} == {b: len(d) for b, d in blocks.items()}
        files = sum(p.stat().st_size for p in (s.root / "blocks").rglob("*.blk"))
        assert s.usage() == (len(blocks), files + stats.disk_bytes)
        used = s.usage()
    with BlockStore(tmp_path / "dn") as s:
        assert s.usage() == used
        for bid, data in blocks.items():
            assert s.get(bid) == data
        for bid in blocks:
            with pytest.raises(OSError) as info:
                s.get(bid, -1)
            assert info.value.errno == errno.EINVAL


def test_put_semantics_on_pack_blocks(store: BlockStore) -> None:
    bid = new_block_id()
    first = store.put(bid, [b"one"])
    assert store.put(bid, [memoryview(b"o"), b"ne"]) == first  # same content: no-op
    assert store.pack_stats().disk_bytes == HEADER_SIZE + 3  # nothing appended
    with pytest.raises(FileExistsError):
        store.put(bid, [b"two"])
    with pytest.raises(FileExistsError):
        store.put(bid, [b"x" * (SMALL + 1)])  # other content in the other location, too
    with pytest.raises(OSError) as info:
        store.put(new_block_id(), [b"abc"], expected_crc=crc32c.crc32c(b"abd"))
    assert info.value.errno == errno.EBADMSG
    assert store.get(bid) == b"one" and store.usage().blocks == 1
    with pytest.raises(FileNotFoundError):
        store.get(new_block_id())


def test_put_many_results_per_item(store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = SyncCounter(monkeypatch)
    writes = []
    real_pwritev = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, iov, off: (writes.append(len(iov)),
                                                              real_pwritev(fd, iov, off))[1])
    existing = new_block_id()
    store.put(existing, [b"old"])
    writes.clear()
    syncs.calls = 0
    good = [(new_block_id(), os.urandom(4096)) for _ in range(64)]
    dup = new_block_id()
    items = [(bid, [data], crc32c.crc32c(data)) for bid, data in good] + [
        (new_block_id(), [b"bad crc"], 12345),       # EBADMSG, alone
        ("not-an-id", [b"x"], None),                 # EINVAL, alone
        (existing, [b"other"], None),                # FileExistsError, alone
        (existing, [b"old"], None),                  # already there: no-op
        (dup, [b"same"], None), (dup, [b"same"], None),  # twice in one call: one record
        (new_block_id(), [b"y" * (SMALL + 5)], None),  # big: the file path
    ]
    out = store.put_many(items)
    assert all(isinstance(r, BlockInfo) for r in out[:64])
    assert [type(r) for r in out[64:]] == [OSError, OSError, FileExistsError, BlockInfo,
                                            BlockInfo, BlockInfo, BlockInfo]
    assert out[64].errno == errno.EBADMSG and out[65].errno == errno.EINVAL
    assert syncs.calls == 1 and len(writes) == 1  # 65 small records: one pwritev, one sync
    for bid, data in good:
        assert store.get(bid) == data
    assert store.pack_stats().blocks == 64 + 2 and store.usage().blocks == 64 + 3


# ---- group commit and durability -----------------------------------------------------------


def test_concurrent_puts_share_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with BlockStore(tmp_path / "dn") as s:
        syncs = SyncCounter(monkeypatch, delay=0.005)  # a slow disk: writers pile up
        threads, per = 16, 10
        blocks = {new_block_id(): os.urandom(4096) for _ in range(threads * per)}
        todo = list(blocks.items())
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads)

        def writer(part: list[tuple[str, bytes]]) -> None:
            try:
                barrier.wait()
                for bid, data in part:
                    s.put(bid, [data])
            except BaseException as exc:
                errors.append(exc)

        ts = [threading.Thread(target=writer, args=(todo[i::threads],)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        assert 0 < syncs.calls < len(blocks) // 2, syncs.calls
        for bid, data in blocks.items():
            assert s.get(bid) == data
    with BlockStore(tmp_path / "dn") as s:
        assert sorted(s.ids()) == sorted(blocks)


def test_nothing_acknowledged_or_read_before_sync(store: BlockStore,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = SyncCounter(monkeypatch)
    syncs.gate = threading.Event()
    bid = new_block_id()
    done: dict[str, object] = {}
    writer = threading.Thread(target=lambda: done.setdefault("put", store.put(bid, [b"v"])))
    writer.start()
    assert syncs.entered.wait(5)
    # The record is written and indexed, but not synced: neither put nor get may return.
    reader = threading.Thread(target=lambda: done.setdefault("get", bytes(store.get(bid))))
    reader.start()
    time.sleep(0.2)
    assert writer.is_alive() and reader.is_alive() and done == {}
    syncs.gate.set()
    writer.join(5)
    reader.join(5)
    assert done == {"put": BlockInfo(bid, 1, crc32c.crc32c(b"v")), "get": b"v"}


def test_failed_sync_fails_every_waiter_and_breaks_the_log(
        store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    before = new_block_id()
    store.put(before, [b"durable"])
    syncs = SyncCounter(monkeypatch)
    syncs.gate = threading.Event()
    syncs.fail = errno.EIO
    results: dict[str, object] = {}
    ids = [new_block_id() for _ in range(6)]

    def writer(bid: bytes) -> None:
        try:
            results[bid] = store.put(bid, [bid.hex().encode()])
        except OSError as exc:
            results[bid] = exc

    ts = [threading.Thread(target=writer, args=(bid,)) for bid in ids]
    for t in ts:
        t.start()
    assert syncs.entered.wait(5)
    time.sleep(0.1)
    syncs.gate.set()
    for t in ts:
        t.join(5)
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results.values()), results
    assert syncs.calls == 1  # never retried as if the pages were still there (fsyncgate)
    syncs.fail = None
    with pytest.raises(OSError) as info:  # the log stays broken, saying why
        store.put(new_block_id(), [b"later"])
    assert info.value.errno == errno.EIO and "broken" in str(info.value)
    with pytest.raises(OSError):
        store.delete(before)
    with pytest.raises(OSError):
        store.get(ids[0])  # written but never durable: not served
    assert store.get(before) == b"durable"  # synced before the failure: still served
    big = new_block_id()
    store.put(big, [b"z" * (SMALL + 1)])  # the block-file path does not depend on the log
    assert store.get(big) == b"z" * (SMALL + 1) and store.delete(big)


def test_failed_write_is_cut_off_and_the_log_goes_on(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "dn"
    with BlockStore(root) as s:
        first, b, c = new_block_id(), new_block_id(), new_block_id()
        s.put(first, [b"first"])
        (pack,) = pack_files(root / "packs")
        size = pack.stat().st_size
        real = os.pwritev

        def disk_full(fd: int, iov: list, off: int) -> int:
            real(fd, [memoryview(iov[0])[:10]], off)  # a partial record reaches the file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "pwritev", disk_full)
        out = s.put_many([(b, [b"b" * 100], None), (c, [b"c" * 100], None)])
        assert [(type(r), r.errno) for r in out] == [(OSError, errno.ENOSPC)] * 2
        assert b.hex() in str(out[0]) and c.hex() in str(out[1])
        assert pack.stat().st_size == size  # the partial record is cut off again
        monkeypatch.setattr(os, "pwritev", real)
        assert sorted(s.ids()) == [first] and s.usage().bytes_used == size
        s.put(b, [b"b" * 100])  # not broken: ENOSPC is not a lost sync
        assert s.get(b) == b"b" * 100
    with BlockStore(root) as s:
        assert sorted(s.ids()) == sorted([first, b])


def test_fsync_false_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs = SyncCounter(monkeypatch)
    with BlockStore(tmp_path / "dn", fsync=False, pack_size=4096) as s:
        for _ in range(20):
            s.put(new_block_id(), [os.urandom(1000)])
        s.delete_many(list(s.ids())[:10])
        s.compact(0)
    assert syncs.calls == 0


def test_sealing_and_deletes_take_one_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with BlockStore(tmp_path / "dn", pack_size=10 * KiB) as s:
        blocks = {new_block_id(): os.urandom(1000) for _ in range(40)}
        for bid, data in blocks.items():
            s.put(bid, [data])
        packs = pack_files(tmp_path / "dn" / "packs")
        assert len(packs) == 5 and all(p.stat().st_size <= 10 * KiB for p in packs)
        syncs = SyncCounter(monkeypatch)
        victims = list(blocks)[:30]
        assert s.delete_many(victims + [new_block_id(), victims[0]]) == [True] * 30 + [False] * 2
        assert syncs.calls == 1
        assert s.delete(victims[0]) is False
        assert sorted(s.ids()) == sorted(list(blocks)[30:])
    with BlockStore(tmp_path / "dn", pack_size=10 * KiB) as s:  # tombstones replay
        assert sorted(s.ids()) == sorted(list(blocks)[30:])
        for bid in victims:
            with pytest.raises(FileNotFoundError):
                s.get(bid)


# ---- crash recovery and damage -----------------------------------------------------------------


def _tail_fixture(tmp_path: Path) -> tuple[Path, bytes, dict[str, bytes], list[tuple[int, int]]]:
    d = tmp_path / "packs"
    rng = random.Random(4)
    blocks = {new_block_id(): rng.randbytes(n) for n in (50, 0, 120, 7, 90, 33)}
    log = PackLog(d, fsync=False)
    for bid, data in blocks.items():
        put(log, bid, data)
    bounds = record_bounds(log, list(blocks))
    log.close()
    (path,) = pack_files(d)
    return path, path.read_bytes(), blocks, bounds


def _reopen_expect(path: Path, content: bytes, blocks: dict[str, bytes],
                   want: list[bytes], prefix_end: int | None) -> None:
    path.write_bytes(content)
    log = PackLog(path.parent, fsync=False)
    try:
        assert sorted(log.ids()) == sorted(want)
        for bid in want:
            assert log.get(bid) == blocks[bid]
        if prefix_end is not None:  # a torn tail is cut off exactly after the last record
            assert path.stat().st_size == prefix_end
        extra = new_block_id()
        put(log, extra, b"after recovery")
    finally:
        log.close()
    log = PackLog(path.parent, fsync=False)
    try:
        assert log.get(extra) == b"after recovery"
        assert sorted(log.ids()) == sorted(want + [extra])
    finally:
        log.close()


def test_torn_tail_at_every_offset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, original, blocks, bounds = _tail_fixture(tmp_path)
    bids = list(blocks)
    caplog.set_level(logging.WARNING, logger="datanode.packs")
    for cut in range(bounds[-3][0], len(original)):
        whole = [b for b, (_, end) in zip(bids, bounds) if end <= cut]
        end = max(e for _, e in bounds if e <= cut)
        _reopen_expect(path, original[:cut], blocks, whole, end)
    assert "torn tail" in caplog.text and path.name in caplog.text


def test_flipped_bytes_in_the_last_pack(tmp_path: Path) -> None:
    path, original, blocks, bounds = _tail_fixture(tmp_path)
    bids = list(blocks)
    for pos in range(bounds[-3][0], len(original)):
        hit = next(i for i, (a, b) in enumerate(bounds) if a <= pos < b)
        flipped = bytearray(original)
        flipped[pos] ^= 1 << (pos % 8)
        survivors = [b for i, b in enumerate(bids) if i != hit]
        # the damaged record is dropped, everything after it is found again
        _reopen_expect(path, bytes(flipped), blocks, survivors,
                       bounds[hit][0] if hit == len(bids) - 1 else None)


def test_damage_in_a_sealed_pack(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "packs"
    rng = random.Random(9)
    blocks = {new_block_id(): rng.randbytes(rng.randint(1, 300)) for _ in range(40)}
    log = PackLog(d, pack_size=2000, fsync=False)
    for bid, data in blocks.items():
        put(log, bid, data)
    where = {bid: log.locate(bid)[0] for bid in blocks}
    bounds = dict(zip(blocks, record_bounds(log, list(blocks))))
    log.close()
    first = pack_files(d)[0]
    in_first = [b for b in blocks if where[b] >> 32 == 1]
    assert len(pack_files(d)) > 2 and len(in_first) >= 6
    original = first.read_bytes()
    caplog.set_level(logging.ERROR, logger="datanode.packs")
    for case in ("header", "data", "span"):
        damaged = bytearray(original)
        if case == "header":  # a record's header: it is lost, the ones after it are found
            missing, corrupt = {in_first[2]}, set()
            damaged[bounds[in_first[2]][0] + 20] ^= 0xFF
        elif case == "data":  # a sealed record's data: still listed, but reads say corrupt
            missing, corrupt = set(), {in_first[3]}
            a, b = bounds[in_first[3]]
            damaged[a + HEADER_SIZE:b] = bytes(b - a - HEADER_SIZE)
        else:  # garbage over the end of one record's data and the header of the next
            missing, corrupt = {in_first[2]}, {in_first[1]}
            a, b = bounds[in_first[1]][1] - 5, bounds[in_first[2]][0] + 10
            damaged[a:b] = b"\xAB" * (b - a)
        first.write_bytes(damaged)
        caplog.clear()
        log = PackLog(d, pack_size=2000, fsync=False)
        try:
            for bid, data in blocks.items():
                if bid in corrupt:
                    for op in (log.get, log.check, lambda b: log.get(b, 1, 1)):
                        with pytest.raises(BlockCorrupt) as info:
                            op(bid)
                        assert info.value.block_id == bid
                elif bid in missing:
                    assert log.get(bid) is None and bid not in log.ids()
                else:
                    assert log.get(bid) == data and log.check(bid) == (len(data),
                                                                      crc32c.crc32c(data))
            if case != "data":  # found at open: logged with file and offset
                assert first.name in caplog.text and "damaged bytes" in caplog.text
        finally:
            log.close()
        assert first.stat().st_size == len(original)  # a sealed pack is never truncated


def test_garbage_files_never_crash(tmp_path: Path) -> None:
    d = tmp_path / "packs"
    d.mkdir()
    rng = random.Random(3)
    for seq in (1, 2):
        (d / f"pack-{seq:08d}.pack").write_bytes(rng.randbytes(5000) + b"AGPK" + rng.randbytes(60))
    (d / "notes.txt").write_text("not a pack")
    log = PackLog(d, fsync=False)
    try:
        assert log.ids() == []
        bid = new_block_id()
        put(log, bid, b"works")
        assert log.get(bid) == b"works"
    finally:
        log.close()
    assert (d / "pack-00000001.pack").stat().st_size == 5064  # sealed: left alone


# ---- tombstones and compaction ---------------------------------------------------------------


def records(path: Path) -> list[tuple[int, bytes, int, int]]:
    """(kind, id, size, ref) of each record of an undamaged pack, parsed per the docstring."""
    raw, out, pos = path.read_bytes(), [], 0
    while pos < len(raw):
        magic, kind, version, _, rid, size, crc, ref, hcrc = struct.unpack_from(
            "<4sBBH16sIIQI", raw, pos)
        assert magic == b"AGPK" and version == 1 and hcrc == crc32c.crc32c(raw[pos:pos + 40])
        assert crc == crc32c.crc32c(raw[pos + 44:pos + 44 + size])
        out.append((kind, rid, size, ref))
        pos += 44 + size
    return out


def test_delete_then_put_again_survives_compaction_and_reopen(tmp_path: Path) -> None:
    d = tmp_path / "packs"
    x = new_block_id()
    keep = {new_block_id(): os.urandom(350) for _ in range(6)}
    log = PackLog(d, pack_size=1000, fsync=False)
    put(log, x, b"x" * 100)                    # pack 1: X and two blocks that stay
    for bid, data in list(keep.items())[:2]:
        put(log, bid, data)
    filler = new_block_id()
    put(log, filler, os.urandom(900))          # pack 2: a block that dies ...
    assert log.delete_many([x]) == [True]      # ... and the tombstone of X
    assert log.delete_many([filler]) == [True]
    put(log, x, b"x" * 100)                    # X again, in pack 3
    for bid, data in list(keep.items())[2:]:
        put(log, bid, data)
    x_loc = log.locate(x)[0]
    assert [r[0] for r in records(d / "pack-00000002.pack")] == [1, 2]
    # Pack 1 is mostly live and stays; pack 2 is mostly dead and goes. Its tombstone still
    # has its target (X's first record in pack 1), so it is carried forward: it now comes
    # AFTER the second X in the log and must not kill it on replay.
    stats = log.compact(0.5)
    names = {p.name for p in pack_files(d)}
    assert "pack-00000001.pack" in names and "pack-00000002.pack" not in names
    assert stats.packs_removed >= 1
    newest = pack_files(d)[-1]
    assert (2, x, 0, 1 << 32) in records(newest)  # the carried tombstone (ref: pack 1, off 0)
    assert log.get(x) == b"x" * 100
    log.close()
    log = PackLog(d, pack_size=1000, fsync=False)
    assert log.get(x) == b"x" * 100 and log.locate(x)[0] == x_loc
    assert log.get(filler) is None
    for bid, data in keep.items():
        assert log.get(bid) == data
    log.compact(0)  # every sealed pack rewritten: X moves, pack 1 and the tombstone go
    assert "pack-00000001.pack" not in {p.name for p in pack_files(d)}
    log.close()
    log = PackLog(d, pack_size=1000, fsync=False)
    try:
        assert log.get(x) == b"x" * 100 and log.get(filler) is None
        assert sorted(log.ids()) == sorted([x, *keep])
        assert log.delete_many([x]) == [True]
    finally:
        log.close()
    log = PackLog(d, pack_size=1000, fsync=False)
    try:
        assert log.get(x) is None and sorted(log.ids()) == sorted(keep)
    finally:
        log.close()


def test_compaction_reclaims_space_while_readers_run(tmp_path: Path) -> None:
    with BlockStore(tmp_path / "dn", pack_size=64 * KiB) as s:
        rng = random.Random(5)
        blocks = {new_block_id(): rng.randbytes(rng.randint(0, 3000)) for _ in range(400)}
        items = list(blocks.items())
        for i in range(0, len(items), 50):
            s.put_many([(bid, [data], None) for bid, data in items[i:i + 50]])
        dead = [bid for i, (bid, _) in enumerate(items) if i % 4]
        assert all(s.delete_many(dead))
        live = {bid: data for bid, data in items if bid not in dead}
        before = s.pack_stats()
        assert before.garbage_bytes > before.disk_bytes // 2
        stop = threading.Event()
        errors: list[BaseException] = []
        reads = [0]

        def reader(seed: int) -> None:
            r = random.Random(seed)
            keys = list(live)
            try:
                while not stop.is_set():
                    bid = r.choice(keys)
                    assert s.get(bid) == live[bid]
                    assert s.check(bid).size == len(live[bid])
                    reads[0] += 1
            except BaseException as exc:
                errors.append(exc)

        ts = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
        for t in ts:
            t.start()
        try:
            stats = s.compact()
        finally:
            stop.set()
            for t in ts:
                t.join()
        assert not errors and reads[0] > 0
        after = s.pack_stats()
        assert stats.packs_removed > 0 and stats.bytes_reclaimed > 0
        assert after.disk_bytes == before.disk_bytes - stats.bytes_reclaimed
        assert after.disk_bytes < before.disk_bytes // 2
        disk = sum(p.stat().st_size for p in pack_files(s.root / "packs"))
        assert disk == after.disk_bytes == s.usage().bytes_used
        assert s.compact() == (0, 0, 0)  # nothing left worth doing
        for bid, data in live.items():
            assert s.get(bid) == data
    with BlockStore(tmp_path / "dn", pack_size=64 * KiB) as s:
        assert sorted(s.ids()) == sorted(live)
        assert s.pack_stats().disk_bytes == after.disk_bytes
        for bid in dead[:20]:
            with pytest.raises(FileNotFoundError):
                s.get(bid)


def test_delete_racing_compaction_is_not_undone(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    log = PackLog(tmp_path / "packs", pack_size=1000, fsync=False)
    ids = [new_block_id() for _ in range(8)]
    for bid in ids:
        put(log, bid, bid.hex().encode() * 8)  # 256 bytes: three records per pack
    victim, survivor = ids[0], ids[1]
    log.delete_many([ids[2]])  # pack 1 now has garbage, and two live blocks to move
    real_move = PackLog.move

    def move_after_a_delete(self: PackLog, pack: object, batch: list) -> object:
        # The compaction has picked the live records; a client deletes one just now.
        if victim in self:
            assert self.delete_many([victim]) == [True]
        return real_move(self, pack, batch)

    monkeypatch.setattr(PackLog, "move", move_after_a_delete)
    assert log.compact(0.3).packs_removed >= 1
    assert log.get(victim) is None and log.get(survivor) == survivor.hex().encode() * 8
    log.close()
    log = PackLog(tmp_path / "packs", pack_size=1000, fsync=False)
    try:
        assert log.get(victim) is None and sorted(log.ids()) == sorted(ids[1:2] + ids[3:])
    finally:
        log.close()


def test_read_pinned_across_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that started on a pack compaction then removes finishes from the same fd."""
    log = PackLog(tmp_path / "packs", pack_size=1000, fsync=False)
    target = new_block_id()
    put(log, target, b"t" * 300)
    others = [new_block_id() for _ in range(6)]
    for bid in others:
        put(log, bid, os.urandom(300))
    log.delete_many(others)
    in_read, release = threading.Event(), threading.Event()
    real = os.preadv

    def slow_preadv(fd: int, bufs: list, off: int) -> int:
        if threading.current_thread().name == "slow-reader" and not release.is_set():
            in_read.set()
            release.wait(5)
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", slow_preadv)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(log.get(target)), name="slow-reader")
    t.start()
    assert in_read.wait(5)
    first = tmp_path / "packs" / "pack-00000001.pack"
    assert log.compact().packs_removed >= 1 and not first.exists()
    release.set()
    t.join(5)
    assert got == [b"t" * 300]
    fds = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{n}")]
    assert not any(str(first) in f for f in fds)  # closed once the reader let go
    assert log.get(target) == b"t" * 300
    log.close()


# ---- repair, quarantine, scrubbing -------------------------------------------------------------


def flip_pack_data(s: BlockStore, bid: bytes, at: int = 0) -> None:
    loc = s._packs.locate(bid)[0]  # test-only peek at where the record is
    path = s.root / "packs" / f"pack-{loc >> 32:08d}.pack"
    with open(path, "r+b") as f:
        f.seek((loc & 0xFFFFFFFF) + HEADER_SIZE + at)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x20]))


def test_put_replaces_a_corrupt_pack_copy(tmp_path: Path) -> None:
    with BlockStore(tmp_path / "dn") as s:
        bid = new_block_id()
        s.put(bid, [b"x" * 1000])
        flip_pack_data(s, bid, 500)
        with pytest.raises(BlockCorrupt):
            s.get(bid)
        assert not s.verify(bid)
        s.put(bid, [b"x" * 1000])  # re-replication repairs the replica
        assert s.get(bid) == b"x" * 1000 and s.usage().blocks == 1
        assert s.pack_stats().garbage_bytes == HEADER_SIZE + 1000
    with BlockStore(tmp_path / "dn") as s:
        assert s.get(bid) == b"x" * 1000 and list(s.ids()) == [bid]


def test_small_block_files_from_before_packs(tmp_path: Path) -> None:
    """Blocks written as files (small_max=0, or before packs existed) keep their contract."""
    root = tmp_path / "dn"
    old, bad = new_block_id(), new_block_id()
    with BlockStore(root, small_max=0) as s:
        s.put(old, [b"old file"])
        s.put(bad, [b"bad file"])
    with open(block_file(root, bad), "r+b") as f:
        f.write(b"B")
    with BlockStore(root) as s:
        assert s.get(old) == b"old file" and sorted(s.ids()) == sorted([old, bad])
        assert s.put(old, [b"old file"]).size == 8 and s.pack_stats().blocks == 0  # no-op
        with pytest.raises(FileExistsError):
            s.put(old, [b"other"])
        s.put(bad, [b"bad file"])  # the corrupt file is replaced by a pack copy
        assert s.get(bad) == b"bad file" and s.pack_stats().blocks == 1
        assert not block_file(root, bad).exists()
        assert s.usage().blocks == 2
        assert s.delete(old) and s.delete(bad) and list(s.ids()) == []


def test_quarantine_a_pack_block(tmp_path: Path) -> None:
    root = tmp_path / "dn"
    with BlockStore(root) as s:
        bid, other = new_block_id(), new_block_id()
        s.put(bid, [b"q" * 200])
        s.put(other, [b"fine"])
        flip_pack_data(s, bid, 7)
        with pytest.raises(BlockCorrupt) as info:
            s.get(bid)
        assert info.value.errno == errno.EIO and info.value.block_id == bid
        assert s.quarantine(bid) is True
        (aside,) = (root / "corrupt").iterdir()
        raw = aside.read_bytes()
        assert aside.name.startswith(bid.hex()) and aside.suffix == ".rec"
        assert len(raw) == HEADER_SIZE + 200 and bid in raw[:HEADER_SIZE]
        assert raw[HEADER_SIZE + 7] == ord("q") ^ 0x20  # the bytes as they were stored
        with pytest.raises(FileNotFoundError):
            s.get(bid)
        assert list(s.ids()) == [other] and s.quarantine(bid) is False
    with BlockStore(root) as s:
        assert list(s.ids()) == [other] and s.get(other) == b"fine"


def test_scrubber_finds_a_flipped_pack_block(tmp_path: Path) -> None:
    with BlockStore(tmp_path / "dn", fsync=False) as s:
        ids = [new_block_id() for _ in range(20)]
        for i, bid in enumerate(ids):
            s.put(bid, [bytes([i]) * 4096])
        flip_pack_data(s, ids[7], 4000)
        found: list[bytes] = []
        now = [0.0]
        scrub = Scrubber(s, rate_bytes_per_s=10**9, clock=lambda: now[0],
                         sleep=lambda t: now.__setitem__(0, now[0] + t),
                         on_corrupt=lambda bid, exc: found.append(bid))
        stats = scrub.run_once()
        assert found == [ids[7]] and (stats.blocks, stats.corrupt) == (20, 1)
        assert stats.bytes == 19 * 4096


def test_duplicate_copy_after_a_crash_is_resolved(tmp_path: Path) -> None:
    """A crash between storing a replacement and removing the old copy leaves both."""
    root = tmp_path / "dn"
    bid = new_block_id()
    with BlockStore(root, small_max=0) as s:
        s.put(bid, [b"dup"])
    saved = block_file(root, bid).read_bytes()
    with BlockStore(root) as s:
        s.delete(bid)
        s.put(bid, [b"dup"])  # now a pack copy
    block_file(root, bid).write_bytes(saved)  # and the file is back
    with BlockStore(root) as s:
        assert list(s.ids()) == [bid] and s.usage().blocks == 1 and s.get(bid) == b"dup"
        assert not block_file(root, bid).exists()


# ---- model-based random test ------------------------------------------------------------------

POOL = [bytes.fromhex(f"{i:032x}") for i in range(1, 9)]


def content(i: int, version: int) -> bytes:
    size = [0, 17, 90, 250, 401, 700][(i * 3 + version) % 6]  # small_max 300: both paths
    return random.Random(i * 10 + version).randbytes(size)


class StoreModel(RuleBasedStateMachine):
    """BlockStore against a dict, across put/put_many/delete/compact/reopen."""

    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="packmodel-")
        self.store = self._open()
        self.model: dict[bytes, bytes] = {}

    def _open(self) -> BlockStore:
        return BlockStore(self.dir, fsync=False, small_max=300, pack_size=1500)

    def _expect_put(self, bid: bytes, data: bytes, out: object) -> None:
        if bid in self.model and self.model[bid] != data:
            assert isinstance(out, FileExistsError), out
        else:
            assert out == BlockInfo(bid, len(data), crc32c.crc32c(data)), out
            self.model[bid] = data

    @rule(i=st.integers(0, 7), version=st.integers(0, 1))
    def put(self, i: int, version: int) -> None:
        data = content(i, version)
        try:
            out: object = self.store.put(POOL[i], [data])
        except OSError as exc:
            out = exc
        self._expect_put(POOL[i], data, out)

    @rule(picks=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 1)), max_size=6))
    def put_many(self, picks: list[tuple[int, int]]) -> None:
        items = [(POOL[i], [content(i, v)], None) for i, v in picks]
        results = self.store.put_many(items)
        for bid in {bid for bid, _, _ in items}:
            mine = [(data, out) for (b, (data,), _), out in zip(items, results) if b == bid]
            if bid not in self.model:
                # Two contents for one new id in one call: one is stored (which one is not
                # specified: small ones are batched before big ones), the other fails.
                stored = {data for data, out in mine if isinstance(out, BlockInfo)}
                assert len(stored) == 1, mine
                self.model[bid] = stored.pop()
            for data, out in mine:
                self._expect_put(bid, data, out)

    @rule(picks=st.lists(st.integers(0, 7), max_size=4))
    def delete_many(self, picks: list[int]) -> None:
        ids = [POOL[i] for i in picks]
        out = self.store.delete_many(ids)
        seen: set[bytes] = set()
        for bid, deleted in zip(ids, out):
            assert deleted == (bid in self.model and bid not in seen)
            seen.add(bid)
        for bid in ids:
            self.model.pop(bid, None)

    @rule(min_garbage=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    def compact(self, min_garbage: float) -> None:
        self.store.compact(min_garbage)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = self._open()

    @precondition(lambda self: hasattr(self, "store"))
    @invariant()
    def agrees(self) -> None:
        assert sorted(self.store.ids()) == sorted(self.model)
        assert self.store.usage().blocks == len(self.model)
        for bid, data in self.model.items():
            assert self.store.get(bid) == data
        stats = self.store.pack_stats()
        disk = sum(p.stat().st_size for p in pack_files(Path(self.dir) / "packs"))
        assert stats.disk_bytes == disk and 0 <= stats.garbage_bytes <= disk

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


StoreModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_store_matches_model = StoreModel.TestCase
