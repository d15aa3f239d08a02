"""Several brokers (issue 18 point 3): with two brokers, each SIGKILLed in turn under load
(the first brought back before the second goes), no client operation fails and every
acknowledged file reads back exactly; the longest pause a client saw is reported. A broker
SIGSTOPped (alive to the kernel, answering nothing) costs no operation either: clients drop
it after broker.protocol.BROKER_DEAD_AFTER without traffic, not at each request's timeout."""
from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time

from broker.protocol import BROKER_DEAD_AFTER
from client import AegisClient
from tests.fault.conftest import record
from tests.support.cluster import start_cluster

HB = 0.3
THREADS = 8
BLOCK = 64 * 1024                 # small blocks: multi-block files stay small
SIZES = (0, 300, 5_000, 60_000, 3 * BLOCK + 17, 5 * BLOCK)
PHASE_OPS = 60                    # operations finished between one step and the next,
PHASE_SECONDS = 2.0               # and at least this long (several heartbeat periods)
STOPPED_FOR = BROKER_DEAD_AFTER + 4.0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Load:
    """THREADS clients, each on its own AegisClient (so each picks its own preferred
    broker), writing files and reading back earlier ones until stopped. Every operation's
    start and duration is kept; every failure is kept; `ledger` holds what was acknowledged."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ledger: dict[str, str] = {}
        self.ops: list[tuple[float, float, str]] = []        # (start, seconds, what)
        self.failures: list[str] = []
        self.resent = 0
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(THREADS)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def done(self) -> int:
        with self.lock:
            return len(self.ops)

    def wait_ops(self, more: int = PHASE_OPS, seconds: float = PHASE_SECONDS,
                 timeout: float = 60.0) -> None:
        """Until `more` operations have finished since now and `seconds` have passed."""
        now = time.monotonic()
        target, deadline, least = self.done() + more, now + timeout, now + seconds
        while self.done() < target or time.monotonic() < least:
            assert time.monotonic() < deadline, f"the load stalled: {self.failures[:3]}"
            assert not self.failures, self.failures[:5]
            time.sleep(0.02)

    def _timed(self, what: str, fn) -> bool:
        t0 = time.monotonic()
        try:
            fn()
        except Exception as exc:      # every failure is the test's finding, not a crash
            with self.lock:
                self.failures.append(f"{what}: {exc!r}")
            return False
        with self.lock:
            self.ops.append((t0, time.monotonic() - t0, what))
        return True

    def _run(self, n: int) -> None:
        rng = random.Random(1800 + n)
        mine: dict[str, bytes] = {}
        with AegisClient(self.cluster.broker, key=self.cluster.key) as fs:
            i = 0
            while not self.stop.is_set():
                path = f"/load/t{n}/f{i}"
                data = rng.randbytes(rng.choice(SIZES))
                if self._timed(f"write {path}",
                               lambda: fs.write_bytes(path, data, block_size=BLOCK)):
                    mine[path] = data
                    with self.lock:
                        self.ledger[path] = _sha(data)
                if mine:
                    old = rng.choice(list(mine))

                    def read_back(old: str = old) -> None:
                        got = fs.read_bytes(old)
                        if got != mine[old]:
                            raise AssertionError(f"{old}: {len(got)} bytes read back, "
                                                 f"{len(mine[old])} written, or different")
                    self._timed(f"read {old}", read_back)
                i += 1
            for _, mux in fs._links:  # requests moved to the other broker (broker/client.py)
                c = mux.rpc
                with self.lock:
                    self.resent += getattr(getattr(c, "broker", c), "resent", 0)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), "a load thread hung"

    def longest_after(self, t: float) -> float:
        """The longest operation among those running at or started within 5 s after t."""
        with self.lock:
            return max((d for s, d, _ in self.ops if s + d >= t and s <= t + 5), default=0.0)


def fs_status(cluster) -> dict:
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        return fs.status()


def test_each_broker_killed_under_load_costs_no_operation(tmp_path):
    cluster = start_cluster(tmp_path / "c", datanodes=3, heartbeat=HB, brokers=2)
    load = None
    try:
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/load")
        load = Load(cluster).start()
        load.wait_ops()
        kills = []
        pid = cluster.roles["broker2"].pid
        cluster.kill("broker2")                       # SIGKILL by PID
        kills.append(("broker2", time.monotonic(), pid))
        load.wait_ops()
        cluster.start_role("broker2")
        cluster.wait_ready(30)      # every worker answers through both brokers again
        load.wait_ops()
        pid = cluster.roles["broker"].pid
        cluster.kill("broker")
        kills.append(("broker", time.monotonic(), pid))
        load.wait_ops()
        load.join()
        # the DataNodes' heartbeats reached the MDS through whichever broker was up: none
        # was declared down (dead_after is 5 heartbeats, 1.5 s: shorter than each phase)
        status = fs_status(cluster)
        assert all(n["state"] == "up" for n in status["nodes"]), status["nodes"]
        mds_log = cluster.roles["mds"].log_path.read_text()
        assert " is down: " not in mds_log, [l for l in mds_log.splitlines() if "down" in l]

        assert not load.failures, load.failures[:10]
        assert load.resent > 0, "no request was in flight on a killed broker"
        durations = sorted(d for _, d, _ in load.ops)
        pauses = {name: load.longest_after(t) for name, t, _ in kills}
        record(f"2 brokers, {THREADS} client threads, each broker SIGKILLed in turn: "
               f"{len(load.ops)} ops, 0 failed, {len(load.ledger)} files, "
               f"{load.resent} requests moved to the other broker; op seconds median "
               f"{durations[len(durations) // 2]:.3f}, longest {durations[-1]:.3f}; "
               f"longest pause after each kill: "
               + ", ".join(f"{n} {p:.3f}s" for n, p in pauses.items()))
        # the survivor alone serves the check: every acknowledged file, exactly
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for path, digest in load.ledger.items():
                assert _sha(fs.read_bytes(path)) == digest, path
            listed = {f"/load/{d}/{f}" for d in fs.ls("/load") for f in fs.ls(f"/load/{d}")}
            assert set(load.ledger) <= listed
    finally:
        if load is not None:
            load.stop.set()
            for t in load.threads:
                t.join(30)
        cluster.stop()


def test_a_broker_stopped_under_load_costs_no_operation(tmp_path):
    """SIGSTOP, not SIGKILL: the broker's connections stay open and TCP still acknowledges,
    so only the ZMTP heartbeat tells a client it is gone. Without it, a request sent through
    the stopped broker waits out its 30 s timeout (the load stalls and fails)."""
    cluster = start_cluster(tmp_path / "c", datanodes=3, heartbeat=HB, brokers=2)
    load, stopped = None, None
    try:
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/load")
        load = Load(cluster).start()
        load.wait_ops()
        stopped = cluster.roles["broker2"].pid
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.monotonic()
        # stopped well past BROKER_DEAD_AFTER: a request that waited for the broker to
        # wake up would take at least this long
        load.wait_ops(seconds=STOPPED_FOR, timeout=30.0)
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        load.wait_ops()          # and the woken broker costs nothing either
        load.join()
        pause = load.longest_after(t_stop)
        assert not load.failures, load.failures[:10]
        assert load.resent > 0, "no request was in flight on the stopped broker"
        record(f"2 brokers, {THREADS} client threads, broker2 SIGSTOPped then SIGCONTed: "
               f"{len(load.ops)} ops, 0 failed, {load.resent} requests moved; longest "
               f"pause after the stop {pause:.3f}s (dead after {BROKER_DEAD_AFTER:g}s)")
        # a stopped broker is dropped after BROKER_DEAD_AFTER, then the request goes again
        # through the other: not held until the broker wakes (or the 30 s request timeout)
        assert pause < BROKER_DEAD_AFTER + 2.0 < STOPPED_FOR, pause
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for path, digest in load.ledger.items():
                assert _sha(fs.read_bytes(path)) == digest, path
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if load is not None:
            load.stop.set()
            for t in load.threads:
                t.join(30)
        cluster.stop()
