"""Tests for datanode/store.py and its block files (datanode/blockfiles.py): round trips,
durability on crash, corruption, faults, threads."""
from __future__ import annotations

import array
import errno
import logging
import os
import random
import threading
from pathlib import Path
from typing import Iterator

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datanode.blockid import new_block_id
from datanode.blockfiles import BlockFiles
from datanode.blocks import BlockCorrupt, BlockInfo
from datanode.fileformat import checksums
from datanode.store import FOOTER_SIZE, BlockStore

CS = 64 * 1024
MiB = 1024 * 1024


@pytest.fixture(params=["packs", "files"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BlockStore]:
    """The contract holds wherever blocks live: default routing, and every block a file."""
    with BlockStore(tmp_path / "dn", small_max=0 if request.param == "files" else 128 * 1024) as s:
        yield s


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[BlockStore]:
    """Every block in a file of its own (small_max=0): for tests of the block file format."""
    with BlockStore(tmp_path / "dn", small_max=0) as s:
        yield s


def split(data: bytes, rng: random.Random, parts: int = 4) -> list[memoryview]:
    """data as several memoryviews cut at arbitrary points, like received zmq frames."""
    mv = memoryview(data)
    cuts = sorted(rng.randint(0, len(data)) for _ in range(parts - 1))
    return [mv[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def block_path(s: BlockStore, bid: bytes) -> Path:
    return s.root / "blocks" / bid.hex()[:2] / f"{bid.hex()}.blk"


def tmp_files(s: BlockStore) -> list[str]:
    return os.listdir(s.root / "tmp")


# ---- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 4 * MiB, 8 * MiB])
def test_round_trip(file_store: BlockStore, size: int) -> None:
    store = file_store
    rng = random.Random(size)
    data = rng.randbytes(size)
    bid = new_block_id()
    info = store.put(bid, split(data, rng), expected_crc=crc32c.crc32c(data))
    assert info == BlockInfo(bid, size, crc32c.crc32c(data))
    got = store.get(bid)
    assert isinstance(got, memoryview) and got.readonly
    assert got == data
    assert store.stat(bid) == info
    assert store.check(bid) == info and store.verify(bid)
    assert list(store.ids()) == [bid] and list(store.infos()) == [info]
    tail = FOOTER_SIZE + 4 * -(-size // CS)
    assert block_path(store, bid).stat().st_size == size + tail
    assert store.usage() == (1, size + tail)
    assert tmp_files(store) == []


def test_buffer_types(store: BlockStore) -> None:
    words = array.array("I", range(1000))  # a non-byte format is read as its raw bytes
    for buf in (b"abc", bytearray(b"abc"), memoryview(b"abc"), words):
        bid = new_block_id()
        store.put(bid, [buf])
        assert store.get(bid) == memoryview(buf).cast("B")
    bid = new_block_id()
    store.put(bid, [])
    assert store.get(bid) == b""


def test_range_reads_at_edges(store: BlockStore) -> None:
    size = 3 * CS + 17
    data = random.Random(1).randbytes(size)
    bid = new_block_id()
    store.put(bid, [data])
    offsets = [0, 1, CS - 1, CS, CS + 1, 2 * CS, size - 1, size]
    lengths = [0, 1, 2, CS - 1, CS, CS + 1, 2 * CS + 5, size, size + 100, None]
    for off in offsets:
        for length in lengths:
            end = size if length is None else min(size, off + length)
            assert store.get(bid, off, length) == data[off:end], (off, length)
    for off, length in [(-1, None), (size + 1, 0), (0, -1)]:
        with pytest.raises(OSError) as info:
            store.get(bid, off, length)
        assert info.value.errno == errno.EINVAL


@pytest.fixture(scope="module")
def stores_by_chunk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, BlockStore]]:
    # Hypothesis reruns the body many times: one store per chunk size, without fsync.
    base = tmp_path_factory.mktemp("hyp")
    stores = {c: BlockStore(base / str(c), chunk_size=c, fsync=False, small_max=0)
              for c in (1, 7, 512, CS)}
    yield stores
    for s in stores.values():
        s.close()


@settings(max_examples=60, deadline=None)
@given(chunk=st.sampled_from([1, 7, 512, CS]), size=st.integers(0, 200_000),
       seed=st.integers(0, 2**32),
       ranges=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 300_000)), max_size=5))
def test_random_sizes_and_ranges(stores_by_chunk: dict[int, BlockStore], chunk: int, size: int,
                                 seed: int, ranges: list[tuple[float, int]]) -> None:
    if chunk == 1:
        size = min(size, 3000)  # one CRC per byte: keep it quick
    s = stores_by_chunk[chunk]
    rng = random.Random(seed)
    data = rng.randbytes(size)
    bid = new_block_id()
    assert s.put(bid, split(data, rng, rng.randint(1, 6))).crc == crc32c.crc32c(data)
    assert s.get(bid) == data
    for frac, length in ranges:
        off = int(frac * size)
        assert s.get(bid, off, length) == data[off:off + length]
    assert s.verify(bid)
    assert s.delete(bid)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), chunk=st.integers(1, 300),
       cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_checksums_match_plain_crc32c(data: bytes, chunk: int, cuts: list[int]) -> None:
    """The one-pass CRCs (chunk table + whole CRC derived by shifting) equal the naive ones."""
    mv = memoryview(data)
    edges = sorted(min(c, len(data)) for c in cuts)
    views = [mv[a:b] for a, b in zip([0, *edges], [*edges, len(data)])]
    whole, table = checksums(views, chunk)
    assert whole == crc32c.crc32c(data)
    assert table == [crc32c.crc32c(data[i:i + chunk]) for i in range(0, len(data), chunk)]


# ---- put semantics ------------------------------------------------------------------------


def test_durability_order(file_store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync file -> DONTNEED -> rename -> fsync fan-out dir, all before put returns."""
    store = file_store
    events: list[tuple[str, str]] = []
    real = {name: getattr(os, name) for name in ("fsync", "posix_fadvise", "rename")}

    def fd_path(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", fd_path(fd))),
                                                 real["fsync"](fd))[1])
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, o, n, a: (
        events.append(("fadvise", fd_path(fd))), real["posix_fadvise"](fd, o, n, a))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", b)),
                                                   real["rename"](a, b))[1])
    for bid in (first := new_block_id(), first[:1] + new_block_id()[1:]):  # same fan-out
        events.clear()
        store.put(bid, [b"durable"])
        final = str(block_path(store, bid))
        fan = os.path.dirname(final)
        tmp = events[0][1]
        assert os.path.dirname(tmp) == str(store.root / "tmp")
        new_fan = [("fsync", str(store.root / "blocks"))] if bid == first else []
        assert events == [("fsync", tmp), ("fadvise", tmp), *new_fan, ("rename", final),
                          ("fsync", fan)]




def test_checksum_mismatch_rejected(store: BlockStore) -> None:
    bid = new_block_id()
    with pytest.raises(OSError) as info:
        store.put(bid, [b"hello"], expected_crc=crc32c.crc32c(b"hellO"))
    assert info.value.errno == errno.EBADMSG and bid.hex() in str(info.value)
    assert tmp_files(store) == [] and list(store.ids()) == []
    with pytest.raises(FileNotFoundError):
        store.get(bid)


def test_put_is_idempotent_but_never_overwrites(store: BlockStore) -> None:
    bid = new_block_id()
    first = store.put(bid, [b"one"])
    assert store.put(bid, [memoryview(b"o"), b"ne"]) == first
    with pytest.raises(FileExistsError):
        store.put(bid, [b"two"])
    assert store.get(bid) == b"one"
    assert store.usage().blocks == 1 and tmp_files(store) == []


def test_put_replaces_a_corrupt_copy(file_store: BlockStore) -> None:
    store = file_store
    bid = new_block_id()
    store.put(bid, [b"x" * 1000])
    with open(block_path(store, bid), "r+b") as f:
        f.write(b"y")
    assert not store.verify(bid)
    store.put(bid, [b"x" * 1000])  # re-replication repairs the replica
    assert store.get(bid) == b"x" * 1000 and store.usage().blocks == 1


def test_missing_block(store: BlockStore) -> None:
    bid = new_block_id()
    for op in (store.get, store.stat, store.check, store.verify):
        with pytest.raises(FileNotFoundError) as info:
            op(bid)
        assert info.value.errno == errno.ENOENT and bid.hex() in str(info.value)
    assert store.delete(bid) is False and store.quarantine(bid) is False


def test_delete_quarantine_and_usage(tmp_path: Path) -> None:
    root = tmp_path / "dn"
    with BlockStore(root) as s:
        ids = [new_block_id() for _ in range(5)]
        for i, bid in enumerate(ids):
            s.put(bid, [bytes(1000 * i)])
        assert s.delete(ids[0]) and not s.delete(ids[0])
        assert s.quarantine(ids[1])
        assert sorted(s.ids()) == sorted(ids[2:])
        assert len(os.listdir(root / "corrupt")) == 1
        used = s.usage()
        assert used.blocks == 3
    with BlockStore(root) as s:  # the counters kept incrementally match a fresh scan
        assert s.usage() == used
        total, free = s.capacity()
        assert 0 < free <= total


def test_deleting_many_block_files_syncs_each_fanout_directory_once(
        file_store: BlockStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A directory sync can wait seconds behind a busy journal: one per fan-out directory
    # a delete touched, not one per block (the MDS sends deletes by the hundred).
    ids = [bytes([fan]) + os.urandom(15) for fan in (1, 1, 1, 2, 2, 9)]
    for bid in ids:
        file_store.put(bid, [b"data"])
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.fstat(fd).st_ino))
    assert file_store.delete_many(ids + [new_block_id()]) == [True] * 6 + [False]
    fans = {(file_store.root / "blocks" / f"{f:02x}").stat().st_ino for f in (1, 2, 9)}
    assert sorted(synced) == sorted(fans)
    assert list(file_store.ids()) == [] and file_store.usage().blocks == 0


def test_junk_in_blocks_dir_is_ignored(file_store: BlockStore) -> None:
    store = file_store
    bid = new_block_id()
    store.put(bid, [b"data"])
    fan = block_path(store, bid).parent
    (fan / "README").write_text("x")
    (fan / f"{new_block_id().hex()}.blk").write_text("wrong fan-out dir")
    (store.root / "blocks" / "zz").mkdir()
    assert list(store.ids()) == [bid]


def test_second_open_of_same_root_refused(tmp_path: Path) -> None:
    with BlockStore(tmp_path / "dn"):
        with pytest.raises(OSError) as info:
            BlockStore(tmp_path / "dn")
        assert info.value.errno == errno.EBUSY
    BlockStore(tmp_path / "dn").close()


# ---- corruption ----------------------------------------------------------------------------


def test_every_bit_flip_and_truncation_detected(tmp_path: Path) -> None:
    chunk = 64
    size = 3 * chunk + 5
    data = random.Random(7).randbytes(size)
    with BlockStore(tmp_path / "dn", chunk_size=chunk, fsync=False, small_max=0) as s:
        bid = new_block_id()
        s.put(bid, [data])
        path = block_path(s, bid)
        original = path.read_bytes()
        for pos in range(len(original)):
            flipped = bytearray(original)
            flipped[pos] ^= 1 << (pos % 8)
            path.write_bytes(flipped)
            with pytest.raises(BlockCorrupt) as info:
                s.get(bid)
            assert info.value.errno == errno.EIO and info.value.block_id == bid
            assert s.verify(bid) is False
            for c in range(4):  # one range read inside each chunk
                lo, hi = c * chunk + 1, min(size, c * chunk + 3)
                if pos < size and pos // chunk != c:
                    assert s.get(bid, lo, hi - lo) == data[lo:hi]  # untouched chunk: served
                else:
                    with pytest.raises(BlockCorrupt):
                        s.get(bid, lo, hi - lo)
            if pos >= len(original) - FOOTER_SIZE:
                with pytest.raises(BlockCorrupt):
                    s.stat(bid)
        for cut in [*range(len(original)), len(original) + 1]:
            path.write_bytes(original[:cut] if cut < len(original) else original + b"\0")
            assert s.verify(bid) is False
            for op in (s.get, s.stat, lambda b: s.get(b, 0, 1)):
                with pytest.raises(BlockCorrupt):
                    op(bid)
        path.write_bytes(original)
        assert s.get(bid) == data


def test_flip_in_big_block(store: BlockStore) -> None:
    data = random.Random(3).randbytes(4 * MiB)
    bid = new_block_id()
    store.put(bid, [data])
    with open(block_path(store, bid), "r+b") as f:
        f.seek(2 * MiB + 12345)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(BlockCorrupt):
        store.get(bid)
    with pytest.raises(BlockCorrupt):
        store.get(bid, 2 * MiB, 100_000)
    assert store.get(bid, 0, MiB) == data[:MiB]
    assert not store.verify(bid)
    reported: list[bytes] = []
    assert list(store.infos(on_corrupt=lambda b, e: reported.append(b))) == [store.stat(bid)]
    assert reported == []  # infos() reads footers only; the scrubber finds data damage


def test_infos_skips_bad_footer(file_store: BlockStore) -> None:
    store = file_store
    good, bad = new_block_id(), new_block_id()
    store.put(good, [b"a" * 100])
    store.put(bad, [b"b" * 100])
    with open(block_path(store, bad), "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\xff")
    reported: list[bytes] = []
    assert [i.id for i in store.infos(on_corrupt=lambda b, e: reported.append(b))] == [good]
    assert reported == [bad]


# ---- hostile ids ----------------------------------------------------------------------------

HOSTILE = ["../x", "/abs", "a/b", "\x00", "a" * 31 + "\x00", "a" * 33, "a" * 100_000, "", "..",
           ".", "é" * 32, "../" + "a" * 29, "aa/../../../../../../../../../tmp", "/" + "a" * 31,
           b"../x", b"\x00" * 17, None, 5,
           # a str is never an id, not even valid hex; nor 15 bytes or a bytearray of 17
           "0123456789abcdef0123456789abcdef", "../" + "0" * 29, b"\x00" * 15, bytearray(17),
           memoryview(b"../" * 5)]


def _walk(top: Path, skip: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        found.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return found


def test_traversal_ids_rejected_and_nothing_escapes(tmp_path: Path) -> None:
    root = tmp_path / "dn"
    with BlockStore(root) as s:
        outside_before = _walk(tmp_path.parent, skip=root)
        inside_before = _walk(root, skip=root / "nothing")
        for bad in HOSTILE:
            for op in (lambda b: s.put(b, [b"payload"]), s.get, s.stat, s.check, s.verify,
                       s.delete, s.quarantine, lambda b: s.get(b, 1, 2)):
                with pytest.raises(OSError) as info:
                    op(bad)
                assert info.value.errno == errno.EINVAL, (bad, info.value)
        assert _walk(tmp_path.parent, skip=root) == outside_before
        assert _walk(root, skip=root / "nothing") == inside_before
        assert list(s.ids()) == [] and s.usage() == (0, 0)


# ---- crashes and injected faults -------------------------------------------------------------


def _crash_in_child(root: Path, bid: bytes, data: bytes, point: str) -> None:
    """Fork a process that puts `bid` and dies abruptly (os._exit) at `point`."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            def die() -> None:
                os._exit(42)

            class CrashingFiles(BlockFiles):
                def _write(self, fd: int, iov: list[memoryview]) -> None:
                    if point == "mid-write":
                        os.write(fd, iov[0][: len(iov[0]) // 2])
                        die()
                    super()._write(fd, iov)
                    if point == "after-write":
                        die()

                def _write_tmp(self, tmp: str, iov: list[memoryview]) -> None:
                    super()._write_tmp(tmp, iov)
                    if point == "after-fsync":
                        die()

            real_rename = os.rename

            def rename_then_die(src: str, dst: str) -> None:
                real_rename(src, dst)
                die()

            if point == "after-rename":
                os.rename = rename_then_die  # type: ignore[assignment]
            class Crashing(BlockStore):
                files_class = CrashingFiles

            Crashing(root).put(bid, [data])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 42, "child did not reach the crash point"


@pytest.mark.parametrize("point", ["mid-write", "after-write", "after-fsync", "after-rename"])
def test_crash_leaves_no_partial_block(tmp_path: Path, point: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "dn"
    survivor, victim = new_block_id(), new_block_id()
    data = random.Random(5).randbytes(3 * CS + 11)
    with BlockStore(root) as s:
        s.put(survivor, [b"still here"])
    _crash_in_child(root, victim, data, point)
    residue = os.listdir(root / "tmp")
    caplog.set_level(logging.WARNING, logger="datanode.blockfiles")
    with BlockStore(root) as s:
        assert tmp_files(s) == []
        assert s.get(survivor) == b"still here"
        if point == "after-rename":  # renamed = complete: all or nothing, here all
            assert residue == [] and s.get(victim) == data and s.usage().blocks == 2
        else:
            assert len(residue) == 1 and residue[0].startswith(victim.hex())
            assert "leftover tmp" in caplog.text
            assert sorted(s.ids()) == [survivor] and s.usage().blocks == 1
            with pytest.raises(FileNotFoundError):
                s.get(victim)
            s.put(victim, [data])  # and the id can be written again
            assert s.get(victim) == data


def test_exception_mid_write_cleans_tmp(file_store: BlockStore,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = file_store
    def boom(fd: int, iov: list[memoryview]) -> None:
        os.write(fd, b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store._files, "_write", boom)  # test-only peek at the backend
    with pytest.raises(KeyboardInterrupt):
        store.put(new_block_id(), [b"x" * 100])
    assert tmp_files(store) == [] and list(store.ids()) == []


class FaultyFiles(BlockFiles):
    """Writes for real until `fail_after` bytes, then fails as a full or failing disk does."""

    fail_after: int | None = None
    write_errno = errno.ENOSPC
    fsync_errno: int | None = None

    def _write(self, fd: int, iov: list[memoryview]) -> None:
        if self.fail_after is None:
            return super()._write(fd, iov)
        budget = self.fail_after
        for view in iov:
            take = min(budget, view.nbytes)
            super()._write(fd, [view[:take]])
            budget -= take
            if take < view.nbytes:
                raise OSError(self.write_errno, os.strerror(self.write_errno))

    def _fsync(self, fd: int) -> None:
        if self.fsync_errno is not None:
            raise OSError(self.fsync_errno, os.strerror(self.fsync_errno))
        super()._fsync(fd)


class FaultyStore(BlockStore):
    files_class = FaultyFiles


@pytest.mark.parametrize("fault", [("write", errno.ENOSPC, 0), ("write", errno.ENOSPC, 100_000),
                                   ("write", errno.EIO, 3 * CS), ("write", errno.EDQUOT, 5),
                                   ("fsync", errno.EIO, None), ("fsync", errno.ENOSPC, None)])
def test_injected_disk_faults(tmp_path: Path, fault: tuple[str, int, int | None]) -> None:
    kind, err, after = fault
    with FaultyStore(tmp_path / "dn") as s:
        disk = s._files  # test-only peek: the faults are injected into the file backend
        assert isinstance(disk, FaultyFiles)
        old = new_block_id()
        s.put(old, [b"old" * 1000])
        usage = s.usage()
        if kind == "write":
            disk.fail_after, disk.write_errno = after, err
        else:
            disk.fsync_errno = err
        new = new_block_id()
        data = random.Random(2).randbytes(4 * CS)
        with pytest.raises(OSError) as info:
            s.put(new, split(data, random.Random(3)))
        assert info.value.errno == err
        assert new.hex() in str(info.value) and os.strerror(err) in str(info.value)
        assert tmp_files(s) == [] and s.usage() == usage
        with pytest.raises(FileNotFoundError):
            s.get(new)
        assert s.get(old) == b"old" * 1000 and s.verify(old)
        disk.fail_after = disk.fsync_errno = None  # the disk recovers: the store keeps working
        s.put(new, [data])
        assert s.get(new) == data


# ---- threads ---------------------------------------------------------------------------------


def test_concurrent_puts_gets_deletes(tmp_path: Path) -> None:
    root = tmp_path / "dn"
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(15):
                bid, data = new_block_id(), rng.randbytes(rng.randint(0, 3 * CS))
                s.put(bid, split(data, rng))
                assert s.get(bid) == data
                if i % 3 == 0:
                    assert s.delete(bid)
        except BaseException as exc:  # surfaced by the main thread below
            errors.append(exc)

    with BlockStore(root) as s:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        used = s.usage()
        assert used.blocks == 4 * 10 == len(list(s.ids()))
    with BlockStore(root) as s:
        assert s.usage() == used


def test_same_id_raced_by_threads(store: BlockStore) -> None:
    for _ in range(5):
        bid = new_block_id()
        contents = [bytes([n]) * (CS + n) for n in range(4)]
        barrier = threading.Barrier(4)
        outcome: dict[int, object] = {}

        def put(n: int) -> None:
            barrier.wait()
            try:
                outcome[n] = store.put(bid, [contents[n]])
            except OSError as exc:
                outcome[n] = exc

        threads = [threading.Thread(target=put, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [n for n, r in outcome.items() if isinstance(r, BlockInfo)]
        assert len(winners) == 1
        assert all(isinstance(r, FileExistsError) for n, r in outcome.items() if n not in winners)
        assert store.get(bid) == contents[winners[0]]
    assert tmp_files(store) == []
