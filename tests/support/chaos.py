"""The chaos run: writers and a reader keep a ledger of every acknowledged operation while a
killer SIGKILLs and restarts random roles; then the cluster must heal within a bound that
follows from the work left, and every path must hold what the ledger allows.
``run_chaos`` is what bench/chaos.py and tests/fault/test_chaos.py run.
"""
from __future__ import annotations

import errno
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from client import AegisClient
from tests.support.harness import BLOCK_SIZE, Harness, sha

ABSENT = None          # ledger value of a removed (or never written) path


# ---------------------------------------------------------------------------------------
# The ledger of acknowledged operations

class Ledger:
    """path -> sha256 of the last acknowledged content (ABSENT after an acknowledged rm),
    plus, per path, the outcomes of operations that failed without an answer since then:
    such an operation may or may not have happened, so the file may hold either."""

    def __init__(self) -> None:
        self.acked: dict[str, str | None] = {}
        self.maybe: dict[str, set[str | None]] = {}
        self._lock = threading.Lock()

    def ack(self, path: str, value: str | None) -> None:
        with self._lock:
            self.acked[path] = value
            self.maybe.pop(path, None)

    def unknown(self, path: str, value: str | None) -> None:
        with self._lock:
            self.maybe.setdefault(path, set()).add(value)

    def state(self, path: str) -> str | None:
        with self._lock:
            return self.acked.get(path, ABSENT)

    def allowed(self, path: str) -> set[str | None]:
        with self._lock:
            return {self.acked.get(path, ABSENT)} | self.maybe.get(path, set())

    def paths(self) -> set[str]:
        with self._lock:
            return set(self.acked) | set(self.maybe)

    def size(self) -> dict[str, int]:
        present = sum(1 for v in self.acked.values() if v is not ABSENT)
        return {"paths": len(self.acked), "files": present,
                "removed": len(self.acked) - present, "uncertain": len(self.maybe)}


TRANSIENT = (ConnectionError, TimeoutError)


class Writer(threading.Thread):
    """Puts (small and multi-block), overwrites and removes on its own set of paths, each
    operation retried until acknowledged (or `op_deadline` passes)."""

    def __init__(self, fs: AegisClient, index: int, ledger: Ledger, stop: threading.Event,
                 seed: int, *, paths: int = 80, block_size: int = BLOCK_SIZE,
                 op_deadline: float = 60.0) -> None:
        super().__init__(name=f"writer-{index}", daemon=True)
        self.fs, self.ledger, self.stop_event = fs, ledger, stop
        self.rng = random.Random(seed)
        self.paths = [f"/chaos/w{index}/f{i:03d}" for i in range(paths)]
        self.block_size = block_size
        self.op_deadline = op_deadline
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()     # errors that were retried, by kind
        self.anomalies: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            path = self.rng.choice(self.paths)
            exists = self.ledger.state(path) is not ABSENT
            roll = self.rng.random()
            if exists and roll < 0.15:
                self._op("rm", path, ABSENT, lambda attempt: self._rm(path, attempt))
                continue
            if roll < 0.65:
                size = self.rng.randrange(0, 4096)
            else:
                size = self.rng.randrange(self.block_size, 4 * self.block_size + 1)
            data = self.rng.randbytes(size)
            kind = ("overwrite" if exists else "put") + ("_multi" if size > self.block_size
                                                         else "_small")
            self._op(kind, path, sha(data), lambda attempt: self.fs.write_bytes(path, data))

    def _rm(self, path: str, attempt: int) -> None:
        try:
            self.fs.rm(path)
        except FileNotFoundError:
            if attempt == 0:     # our own file: gone only if an earlier attempt removed it
                self.anomalies.append(f"{path}: acknowledged, yet gone before rm")

    def _op(self, kind: str, path: str, value: str | None, fn: Callable[[int], Any]) -> None:
        deadline = time.monotonic() + self.op_deadline
        attempt = 0
        while True:
            # until acknowledged it may or may not happen (a reply lost with the broker)
            self.ledger.unknown(path, value)
            try:
                fn(attempt)
            except OSError as exc:
                self.errors[_kind(exc)] += 1
                if time.monotonic() > deadline:
                    self.counts["abandoned"] += 1
                    return
                attempt += 1
                time.sleep(min(1.0, 0.05 * 2 ** min(attempt, 5)))
                continue
            self.ledger.ack(path, value)
            self.counts[kind] += 1
            self.counts["acked"] += 1
            if attempt:
                self.counts["acked_after_retry"] += 1
            return


def _kind(exc: OSError) -> str:
    if isinstance(exc, TRANSIENT):
        return type(exc).__name__
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class Reader(threading.Thread):
    """Reads random ledger paths during the chaos: a read may fail (and is not retried),
    but what it returns must be a version the ledger allows at the time."""

    def __init__(self, fs: AegisClient, ledger: Ledger, stop: threading.Event,
                 seed: int) -> None:
        super().__init__(name="reader", daemon=True)
        self.fs, self.ledger, self.stop_event = fs, ledger, stop
        self.rng = random.Random(seed)
        self.counts: Counter = Counter()
        self.wrong: list[str] = []

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            paths = sorted(self.ledger.paths())
            if not paths:
                continue
            path = self.rng.choice(paths)
            before = self.ledger.allowed(path)
            try:
                actual: str | None = sha(self.fs.read_bytes(path))
            except FileNotFoundError:
                actual = ABSENT
            except OSError:
                self.counts["read_failed"] += 1
                continue
            self.counts["reads"] += 1
            if actual not in before | self.ledger.allowed(path):
                self.wrong.append(f"{path}: a read returned {actual and actual[:12]}, "
                                  f"never written there")


# ---------------------------------------------------------------------------------------
# The killer

class Killer(threading.Thread):
    """Every few seconds: SIGKILL one random role (sometimes two at once), wait a little,
    start them again."""

    def __init__(self, h: Harness, stop: threading.Event, seed: int,
                 roles: list[str] | None = None, every: tuple[float, float] = (2.0, 5.0),
                 down: tuple[float, float] = (0.3, 2.5), double: float = 0.2,
                 log: Callable[[str], None] = print) -> None:
        super().__init__(name="killer", daemon=True)
        self.h, self.stop_event, self.rng = h, stop, random.Random(seed)
        self.roles = roles or ["mds", "broker", *h.nodes]
        self.every, self.down, self.double, self.log = every, down, double, log
        self.kills: Counter = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.wait(self.rng.uniform(*self.every)):
            victims = self.rng.sample(self.roles, 2 if self.rng.random() < self.double else 1)
            for role in victims:
                self.h.kill(role)
                self.kills[role] += 1
            self.log(f"  [{time.monotonic() - t0:6.1f}s] kill -9 {' + '.join(victims)}")
            self.stop_event.wait(self.rng.uniform(*self.down))
            # the broker first: nothing else can be seen serving without it
            for role in sorted(victims, key=lambda r: (r != "broker", r != "mds", r)):
                try:
                    self.h.start_role(role, timeout=30.0)
                except (RuntimeError, TimeoutError) as exc:
                    self.failures.append(f"{role}: {exc}")
                    self.log(f"  restart of {role} failed: {exc}")


# ---------------------------------------------------------------------------------------
# The run

@dataclass
class ChaosResult:
    seconds: float
    ops: Counter = field(default_factory=Counter)
    retried_errors: Counter = field(default_factory=Counter)
    kills: Counter = field(default_factory=Counter)
    ledger: dict = field(default_factory=dict)
    settle_seconds: float = 0.0
    settle_bound: float = 0.0
    work: dict = field(default_factory=dict)
    health: dict = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    unhealed: str = ""
    restart_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unhealed or self.restart_failures)

    def summary(self) -> str:
        h = self.health
        return (f"chaos {self.seconds:.0f}s: {self.ops['acked']} acknowledged ops "
                f"({', '.join(f'{k} {v}' for k, v in sorted(self.ops.items()) if k != 'acked')}); "
                f"retried errors {dict(self.retried_errors)}; kills {dict(self.kills)}; "
                f"ledger {self.ledger}; work left {self.work}; settled in "
                f"{self.settle_seconds:.1f}s (bound {self.settle_bound:.0f}s); "
                f"re-replicated {h.get('copies_done', 0)} blocks / {h.get('bytes_copied', 0)} "
                f"bytes, orphans found {h.get('orphans_found', 0)}, deleted "
                f"{h.get('orphans_deleted', 0)}, lost replicas dropped "
                f"{h.get('replicas_lost', 0)}; "
                f"lost {len(self.lost)}" + (f"; NOT HEALED: {self.unhealed}" if self.unhealed
                                            else ""))


# The chaos cluster's timings, and from them how long healing may take once the chaos
# stops. With nothing left to do, the slowest path to healed is a draft abandoned at the
# end: its lease runs out, its blocks are queued and wait out the delete grace; or a stray
# block: the next report finds it, the orphan grace passes, it is queued and waits out the
# delete grace. Every block left to delete, copy or adopt then costs at most 1/RATE s more
# (the cluster does thousands a second; RATE is a floor for a loaded 2-core machine).
LEASE, ORPHAN_GRACE, REPORT_EVERY, DELETE_GRACE, SAFEMODE = 5.0, 2.0, 3.0, 5.0, 10.0
SETTLE_SLACK = 15.0         # heartbeats, a second report, a restart's safe mode
SETTLE_RATE = 250.0         # blocks per second, at the least


def settle_bound(work: int) -> float:
    """Seconds the cluster may take to heal with `work` blocks to delete/copy/adopt."""
    fixed = max(LEASE, REPORT_EVERY + ORPHAN_GRACE) + DELETE_GRACE + SETTLE_SLACK
    return fixed + work / SETTLE_RATE


def chaos_harness(root: Path, datanodes: int = 3) -> Harness:
    return Harness(root, datanodes=datanodes, mds_flags=[
        "--lease", str(LEASE), "--orphan-grace", str(ORPHAN_GRACE),
        "--safemode-timeout", str(SAFEMODE), "--delete-grace", str(DELETE_GRACE)],
        dn_flags=["--block-report-interval", str(REPORT_EVERY)])


def gc_work(h: Harness) -> dict:
    """What the MDS still has to do: deletes queued, orphans seen, replicas short."""
    st = h.status()
    health = st["health"]
    return {"pending_deletes": st.get("pending_deletes", 0), "orphans": health["orphans"],
            "under_replicated": health["under_replicated"], "missing": health["missing"],
            "copies_in_flight": health["copies_in_flight"], "drafts": st.get("drafts", 0)}


def run_chaos(root: Path, seconds: float, *, seed: int | None = None, writers: int = 2,
              datanodes: int = 3, log: Callable[[str], None] = print) -> ChaosResult:
    seed = random.randrange(1 << 30) if seed is None else seed
    log(f"chaos: seed {seed}, {seconds:.0f}s, {writers} writers, {datanodes} DataNodes")
    h = chaos_harness(root, datanodes)
    h.start()
    try:
        ledger, stop_writers, stop_killer = Ledger(), threading.Event(), threading.Event()
        team = [Writer(h.fs, i, ledger, stop_writers, seed + i, block_size=h.block_size)
                for i in range(writers)]
        killer = Killer(h, stop_killer, seed - 1, log=log)
        reader = Reader(h.fs, ledger, stop_writers, seed - 2)
        t0 = time.monotonic()
        for w in team:
            w.start()
        reader.start()
        killer.start()
        stop_killer.wait(seconds)
        stop_killer.set()
        killer.join(60)
        stop_writers.set()
        for w in team:
            w.join(120)
        reader.join(60)
        result = ChaosResult(time.monotonic() - t0, kills=killer.kills,
                             restart_failures=killer.failures)
        for w in team:
            result.ops.update({k: v for k, v in w.counts.items() if not k.startswith("_")})
            result.retried_errors.update(w.errors)
            result.lost.extend(w.anomalies)
        result.ops.update(reader.counts)
        result.lost.extend(reader.wrong)
        result.ledger = ledger.size()
        # every role back, then wait for the cluster to heal itself
        for role in h.cluster.roles:
            if not h.alive(role):
                h.start_role(role)
        t1 = time.monotonic()
        try:
            h.wait_serving(60)
            # how long healing may take follows from the work left, not a fixed guess
            result.work = gc_work(h)
            blocks = sum(v for k, v in result.work.items() if k != "drafts")
            result.settle_bound = settle_bound(blocks)
            log(f"  work left after the chaos: {result.work}; healing may take "
                f"{result.settle_bound:.0f}s")
            h.wait_healed(result.settle_bound, top="/", log=log)
        except AssertionError as exc:
            result.unhealed = str(exc)
        result.settle_seconds = time.monotonic() - t1
        result.health = h.status()["health"]
        result.lost += check_ledger(h, ledger)
        log(result.summary())
        return result
    finally:
        h.stop()


def check_ledger(h: Harness, ledger: Ledger) -> list[str]:
    """Every path holds its acknowledged content (or one it may have been given since)."""
    lost = []
    for path in sorted(ledger.paths()):
        try:
            actual: str | None = sha(h.fs.read_bytes(path))
        except FileNotFoundError:
            actual = ABSENT
        except OSError as exc:
            lost.append(f"{path}: unreadable: {exc}")
            continue
        if actual not in ledger.allowed(path):
            lost.append(f"{path}: holds {actual and actual[:12]}, acknowledged "
                        f"{(ledger.acked.get(path) or 'absent')[:12]}")
    present = {p for p in h.files("/chaos")} if h.fs.exists("/chaos") else set()
    for path in sorted(present - ledger.paths()):
        lost.append(f"{path}: exists but was never written")
    return lost
