"""Background scrubber: re-verifies every stored block at a bounded byte rate.

Owns the pass over the store, the token-bucket throttle and the reporting of corrupt
blocks. Clock and sleep are injected, so it runs in tests without waiting.

API: Scrubber(store, *, rate_bytes_per_s, on_corrupt=None, burst_bytes=None,
              clock=time.monotonic, sleep=None)
  run_once() -> ScrubStats     one full, throttled pass (stops early after stop())
  step(budget) -> ScrubStats   verify blocks until `budget` bytes are spent, no sleeping;
                               resumes where the last step stopped, new pass when done
  run(pause=60.0)              passes until stop(), pausing between them (thread target)
  stop()
on_corrupt(block_id, error) (block_id: 16 bytes) is called for each block that fails verification; what to do
with it (report, quarantine) is the caller's decision.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from datanode.blocks import BlockCorrupt, BlockInfo

log = logging.getLogger(__name__)

# Charged per block on top of its size: opening a file and reading its footer is not free,
# and without it a store of empty blocks would be scrubbed at an unbounded rate.
PER_BLOCK_COST = 4096


class _Store(Protocol):
    def ids(self) -> Iterator[bytes]: ...
    def check(self, block_id: bytes) -> BlockInfo: ...


@dataclass
class ScrubStats:
    blocks: int = 0
    bytes: int = 0
    corrupt: int = 0
    pass_done: bool = False


class TokenBucket:
    """Bytes may be spent at `rate` per second, in bursts of up to `burst`.

    Spending more than is available is allowed (a block is verified whole) and is paid back
    by sleeping, so the long-run rate holds whatever the block sizes.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float],
                 sleep: Callable[[float], object]) -> None:
        if rate <= 0 or burst < 0:
            raise ValueError(f"rate must be > 0 and burst >= 0, got {rate}, {burst}")
        self.rate, self.burst = float(rate), float(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()

    def spend(self, n: int) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


class Scrubber:
    """Walks the store verifying blocks; see the module docstring."""

    def __init__(self, store: _Store, *, rate_bytes_per_s: float,
                 on_corrupt: Callable[[bytes, BlockCorrupt], None] | None = None,
                 burst_bytes: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        self._store = store
        self._on_corrupt = on_corrupt
        self._stop = threading.Event()
        # The default sleep is a wait on the stop event, so stop() interrupts a pause at once.
        self._sleep = sleep if sleep is not None else self._stop.wait
        # One second of rate by default: smooth, yet one 4 MiB block fits at 16 MiB/s.
        burst = rate_bytes_per_s if burst_bytes is None else burst_bytes
        self._bucket = TokenBucket(rate_bytes_per_s, burst, clock, self._sleep)
        self._cursor: Iterator[bytes] | None = None
        self.totals = ScrubStats()  # since creation; pass_done unused here
        self.passes = 0

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _verify_one(self, block_id: bytes, stats: ScrubStats) -> int:
        """Verify one block, report it if bad; return the bytes to charge for it."""
        try:
            size = self._store.check(block_id).size
        except FileNotFoundError:
            return PER_BLOCK_COST  # deleted since the listing
        except BlockCorrupt as exc:
            stats.corrupt += 1
            self.totals.corrupt += 1
            log.error("scrub: %s", exc)
            if self._on_corrupt is not None:
                try:
                    self._on_corrupt(block_id, exc)
                except Exception:  # a failing reporter must not end the scrubbing
                    log.exception("scrub: on_corrupt callback failed for %s", block_id.hex())
            size = 0  # how much was read before the error is unknown; charge the minimum
        except OSError as exc:  # e.g. EMFILE: not the block's fault, try it next pass
            log.warning("scrub: cannot check %s: %s", block_id.hex(), exc)
            size = 0
        stats.blocks += 1
        stats.bytes += size
        self.totals.blocks += 1
        self.totals.bytes += size
        return size + PER_BLOCK_COST

    def step(self, budget: int) -> ScrubStats:
        """Verify blocks until `budget` bytes are charged (at least one block), unthrottled."""
        stats = ScrubStats()
        if self._cursor is None:
            self._cursor = iter(self._store.ids())
        spent = 0
        while spent < budget or stats.blocks == 0:
            block_id = next(self._cursor, None)
            if block_id is None:
                self._cursor = None
                self.passes += 1
                stats.pass_done = True
                break
            spent += self._verify_one(block_id, stats)
        return stats

    def run_once(self) -> ScrubStats:
        """One full pass over the blocks listed now, throttled; returns early after stop()."""
        stats = ScrubStats()
        for block_id in self._store.ids():
            if self._stop.is_set():
                return stats
            self._bucket.spend(self._verify_one(block_id, stats))
        stats.pass_done = True
        self.passes += 1
        log.info("scrub pass done: %d blocks, %d bytes, %d corrupt",
                 stats.blocks, stats.bytes, stats.corrupt)
        return stats

    def run(self, pause: float = 60.0) -> None:
        """Scrub pass after pass until stop(); a thread target."""
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep the thread alive: a broken pass is retried after the pause
                log.exception("scrub pass failed")
            if not self._stop.is_set():
                self._sleep(pause)
