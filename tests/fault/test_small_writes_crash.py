"""Single small files written one call at a time while the MDS and DataNodes are SIGKILLed
(issue 19): every acknowledged write reads back exactly, and a write whose outcome the
writer never learned is either absent or whole - never partial, never another's bytes."""
from __future__ import annotations

import os
import random
import sys
import threading
import time
import traceback

from client import AegisClient
from tests.support.cluster import start_cluster, wait_mds

WRITERS = 4
KILLS, SOAK_KILLS = 6, 60
SIZES = (0, 1, 100, 4096, 4096, 5000)


class Writer(threading.Thread):
    """Writes fresh paths and now and then overwrites one of its own, keeping per path the
    versions in order with whether each was acknowledged."""

    def __init__(self, idx: int, fs: AegisClient, seed: int) -> None:
        super().__init__(daemon=True, name=f"writer-{idx}")
        self.idx, self.fs, self.rng = idx, fs, random.Random(seed)
        self.history: dict[str, list[tuple[bytes, bool]]] = {}
        self.stop = False
        self.acked = self.failed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stop:
                own = list(self.history)
                if own and self.rng.random() < 0.25:
                    path = self.rng.choice(own)
                else:
                    path, n = f"/sw/w{self.idx}/f{n:05d}", n + 1
                data = self.rng.randbytes(self.rng.choice(SIZES))
                # a 4 KiB block size: 5000 bytes are two blocks, the streaming path
                bs = 4096 if self.rng.random() < 0.3 else None
                try:
                    self.fs.write_bytes(path, data, replication=2, block_size=bs)
                    ok = True
                    self.acked += 1
                except OSError:      # a killed role: the outcome is unknown
                    ok = False
                    self.failed += 1
                    time.sleep(0.05)
                self.history.setdefault(path, []).append((data, ok))
        except BaseException as exc:   # a bug: reported by the test, not lost in a thread
            self.error = exc


def allowed(versions: list[tuple[bytes, bool]]) -> tuple[set[bytes], bool]:
    """(contents the path may hold, whether it may be absent): the last acknowledged
    version or any attempted after it; with none acknowledged, any attempt or nothing."""
    last_ack = max((i for i, (_, ok) in enumerate(versions) if ok), default=-1)
    return {data for data, _ in versions[max(last_ack, 0):]}, last_ack < 0


def test_sigkill_mds_and_datanodes_under_single_file_writes(tmp_path, soak):
    rng = random.Random(int(os.environ.get("AEGISFS_TEST_SEED", "20261201")))
    cluster = start_cluster(tmp_path / "c", heartbeat=0.3, replication=2)
    clients = [AegisClient(cluster.broker, key=cluster.key, timeout=5, connect_timeout=2)
               for _ in range(WRITERS + 1)]
    writers = [Writer(i, clients[i], rng.randrange(1 << 30)) for i in range(WRITERS)]
    kills: list[str] = []
    try:
        for w in writers:
            w.start()
        for k in range(SOAK_KILLS if soak else KILLS):
            time.sleep(rng.uniform(0.3, 1.0))            # a stream of writes going on
            victims = [["mds"], [rng.choice(cluster.node_ids)],
                       ["mds", rng.choice(cluster.node_ids)]][k % 3]
            for v in victims:
                cluster.kill(v)
                kills.append(v)
            time.sleep(rng.uniform(0.0, 0.3))
            for v in victims:
                cluster.start_role(v)
            wait_mds(cluster, len(cluster.node_ids), serving=True)
        time.sleep(0.5)
        for w in writers:
            w.stop = True
        for w in writers:
            w.join(60)
        frames = sys._current_frames()
        stuck = {w.name: "".join(traceback.format_stack(frames[w.ident]))
                 for w in writers if w.is_alive() and w.ident in frames}
        assert not stuck, "writers still in a call 60 s after the stop:\n" + \
            "\n".join(f"{name}:\n{stack}" for name, stack in stuck.items())
        for w in writers:
            assert w.error is None, w.error

        fs = clients[-1]
        checked = 0
        for w in writers:
            listed = set(fs.ls(f"/sw/w{w.idx}")) if w.history else set()
            # nothing the writer never tried to write is there (no stray drafts)
            assert listed <= {p.rsplit("/", 1)[1] for p in w.history}, listed
            for path, versions in w.history.items():
                may_hold, may_be_absent = allowed(versions)
                name = path.rsplit("/", 1)[1]
                if name not in listed:
                    assert may_be_absent, f"{path}: an acknowledged write is gone"
                    continue
                data = fs.read_bytes(path)
                assert data in may_hold, (f"{path}: {len(data)} bytes that no write of it "
                                          f"put there ({len(versions)} versions)")
                checked += 1
        acked = sum(w.acked for w in writers)
        failed = sum(w.failed for w in writers)
        print(f"\n{len(kills)} SIGKILLs ({', '.join(kills)}): {acked} acknowledged "
              f"writes, {failed} with an unknown outcome, {checked} files checked")
        assert acked >= 4 * WRITERS            # the writes really went on between kills
        small = sum(clients[w.idx].small_puts for w in writers)
        print(f"{small} through block pools (put_small), {acked - small} streamed")
        assert small >= 2 * WRITERS and acked - small >= 1   # both paths were taken
    finally:
        for w in writers:
            w.stop = True
        for w in writers:
            w.join(10)
        # a client's sockets are closed only when no writer is inside a call on them (a
        # ZeroMQ socket closed under a sending thread aborts the process)
        if not any(w.is_alive() for w in writers):
            for c in clients:
                c.close()
        cluster.stop()
