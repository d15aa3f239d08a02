"""Tests for datanode/scrub.py: finds damaged blocks, keeps to its byte rate (fake clock)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from datanode.blockid import new_block_id
from datanode.scrub import PER_BLOCK_COST, Scrubber, TokenBucket
from datanode.blocks import BlockCorrupt, BlockInfo
from datanode.store import BlockStore
from tests.support.clock import FakeClock

SIZE = 100_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    with BlockStore(tmp_path / "dn", chunk_size=4096, fsync=False, small_max=0) as s:
        yield s


def fill(store: BlockStore, n: int) -> list[bytes]:
    ids = [new_block_id() for _ in range(n)]
    for i, bid in enumerate(ids):
        store.put(bid, [bytes([i % 256]) * SIZE])
    return ids


def flip(store: BlockStore, bid: bytes, offset: int) -> None:
    path = store.root / "blocks" / bid.hex()[:2] / f"{bid.hex()}.blk"
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))


def test_finds_flipped_block(store: BlockStore) -> None:
    ids = fill(store, 10)
    flip(store, ids[3], 54_321)
    found: list[tuple[bytes, BlockCorrupt]] = []
    fake = FakeClock()
    scrub = Scrubber(store, rate_bytes_per_s=10**9, clock=fake, sleep=fake.sleep,
                     on_corrupt=lambda bid, err: found.append((bid, err)))
    stats = scrub.run_once()
    assert [bid for bid, _ in found] == [ids[3]]
    assert isinstance(found[0][1], BlockCorrupt) and found[0][1].block_id == ids[3]
    assert (stats.blocks, stats.corrupt, stats.pass_done) == (10, 1, True)
    assert stats.bytes == 9 * SIZE and scrub.passes == 1


def test_respects_rate_with_fake_clock(store: BlockStore) -> None:
    fill(store, 20)
    fake = FakeClock()
    rate, burst = 200_000, 50_000
    cost = SIZE + PER_BLOCK_COST  # what each block is charged
    done = 0
    real_check = store.check

    def check(bid: bytes) -> BlockInfo:
        nonlocal done
        # Whenever a block starts, what was read before fits in burst + rate * elapsed.
        assert done * cost <= burst + rate * (fake.now - start) + 1e-6
        done += 1
        return real_check(bid)

    store.check = check  # type: ignore[method-assign]
    scrub = Scrubber(store, rate_bytes_per_s=rate, burst_bytes=burst,
                     clock=fake, sleep=fake.sleep)
    start = fake.now
    stats = scrub.run_once()
    assert done == stats.blocks == 20 and stats.bytes == 20 * SIZE
    # And no needless waiting: the pass takes exactly what the rate demands.
    assert fake.now - start == pytest.approx((20 * cost - burst) / rate)
    assert len(fake.slept) == 20 and all(s > 0 for s in fake.slept)


def test_rate_is_real_time_free_in_tests(store: BlockStore) -> None:
    fill(store, 5)
    fake = FakeClock()
    t0 = time.monotonic()
    Scrubber(store, rate_bytes_per_s=1, clock=fake, sleep=fake.sleep).run_once()
    assert time.monotonic() - t0 < 2.0
    assert fake.now - 1000.0 > 5 * SIZE - 1  # at 1 B/s the pass "took" ~half a million seconds


def test_token_bucket_accrues_and_caps() -> None:
    fake = FakeClock()
    bucket = TokenBucket(rate=100, burst=50, clock=fake, sleep=fake.sleep)
    bucket.spend(50)  # the burst is free
    assert fake.slept == []
    bucket.spend(100)  # debt of 100 bytes at 100 B/s
    assert fake.slept == [pytest.approx(1.0)]
    fake.now += 10  # idle for long: only `burst` accrues
    bucket.spend(60)
    assert fake.slept[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, clock=fake, sleep=fake.sleep)


def test_step_resumes_and_wraps(store: BlockStore) -> None:
    ids = fill(store, 7)
    flip(store, ids[0], 10)
    found: list[bytes] = []
    scrub = Scrubber(store, rate_bytes_per_s=1, on_corrupt=lambda b, e: found.append(b))
    seen = 0
    results = []
    while True:
        stats = scrub.step(budget=1)  # below one block: exactly one block per step
        results.append(stats)
        seen += stats.blocks
        if stats.pass_done:
            break
    assert seen == 7 and found == [ids[0]] and scrub.passes == 1
    assert all(r.blocks == 1 for r in results[:7])
    big = scrub.step(budget=10 * SIZE)  # a new pass starts; the budget covers all 7
    assert big.blocks == 7 and big.pass_done and found == [ids[0], ids[0]]
    store.delete(ids[0])  # a corrupt block is charged only PER_BLOCK_COST
    assert scrub.step(budget=2 * SIZE).blocks == 2  # 2 blocks + per-block cost > budget


def test_blocks_deleted_mid_pass_and_failing_callback(store: BlockStore) -> None:
    ids = fill(store, 4)
    flip(store, ids[1], 0)
    flip(store, ids[2], 0)
    calls: list[bytes] = []

    def on_corrupt(bid: bytes, err: BlockCorrupt) -> None:
        calls.append(bid)
        store.delete(ids[3])  # vanishes after the listing: skipped, not reported
        raise RuntimeError("reporter down")  # must not end the pass

    class FixedOrder:
        def ids(self) -> list[bytes]:
            return [ids[1], ids[3], ids[2], ids[0]]

        check = staticmethod(store.check)

    fake = FakeClock()
    scrub = Scrubber(FixedOrder(), rate_bytes_per_s=10**9, on_corrupt=on_corrupt,
                     clock=fake, sleep=fake.sleep)
    stats = scrub.run_once()
    assert stats.pass_done and calls == [ids[1], ids[2]]
    assert (stats.blocks, stats.corrupt, stats.bytes) == (3, 2, SIZE)


def test_stop_ends_pass_and_thread(store: BlockStore) -> None:
    fill(store, 10)
    fake = FakeClock()
    scrub: Scrubber

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        scrub.stop()

    scrub = Scrubber(store, rate_bytes_per_s=1000, burst_bytes=0, clock=fake, sleep=sleep)
    stats = scrub.run_once()
    assert stats.blocks == 1 and not stats.pass_done

    # Real clock, default (interruptible) sleep: stop() ends run() promptly.
    live = Scrubber(store, rate_bytes_per_s=1000)
    thread = threading.Thread(target=live.run, kwargs={"pause": 3600})
    thread.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    live.stop()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0
