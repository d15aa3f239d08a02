"""Clients ride through MDS restarts (issue 18): the MDS is killed -9 twice while users
work, and nothing they do fails, is lost, or is applied twice - the CLI waits and says so
once, the API retries with operation ids (client/retry.py, mds/opids.py)."""
from __future__ import annotations

import os
import random
import threading
import time

from client import AegisClient
from tests.fault.conftest import record
from tests.integration.conftest import run_cli
from tests.support.cluster import start_cluster

HB = 0.3
WRITES = 60
KILL_AT = (15, 38)       # kill the MDS when this many operations have finished
DOWN = 1.5               # seconds the MDS stays dead each time


def bounce_mds(cluster, done: list, stop: threading.Event) -> list[float]:
    """Kill the MDS -9 at each KILL_AT point, keep it down for DOWN seconds, start it
    again (a second try if it exits, e.g. its killed checkpoint child held the lock)."""
    kills = []
    for at in KILL_AT:
        while len(done) < at and not stop.is_set():
            time.sleep(0.02)
        if stop.is_set():
            break
        cluster.kill("mds")
        kills.append(time.monotonic())
        time.sleep(DOWN)
        for _ in range(5):
            cluster.start_role("mds")
            time.sleep(1.0)
            if cluster.roles["mds"].alive():
                break
    return kills


def test_sixty_cli_writes_through_two_mds_kills(tmp_path):
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB)
    stop = threading.Event()
    try:
        rng = random.Random(18)
        files = []
        for i in range(WRITES):
            f = tmp_path / f"in{i}"
            f.write_bytes(rng.randbytes(rng.choice([1, 900, 5000, 70_000, 300_000])))
            files.append(f)
        assert run_cli(cluster, "mkdir", "/w").returncode == 0
        done: list[tuple[int, int, bytes]] = []
        killer_out: list[list[float]] = []
        killer = threading.Thread(target=lambda: killer_out.append(
            bounce_mds(cluster, done, stop)))
        killer.start()
        took = []
        for i, f in enumerate(files):
            t0 = time.monotonic()
            proc = run_cli(cluster, "put", str(f), f"/w/f{i}", timeout=120)
            took.append(time.monotonic() - t0)
            done.append((i, proc.returncode, proc.stderr))
        killer.join(60)
        assert len(killer_out[0]) == 2, "the MDS was not killed twice during the writes"
        failed = [(i, err.decode()[-300:]) for i, code, err in done if code != 0]
        assert not failed, failed
        waited = [i for i, _, err in done if b"waiting for the metadata server" in err]
        assert waited, "no write saw a restart: the kills missed the writes"
        slow = sorted(took)
        record(f"60 CLI puts through 2 MDS kill -9s ({DOWN}s down each): 60 ok, "
               f"{len(waited)} waited; put seconds median {slow[len(slow) // 2]:.2f}, "
               f"max {slow[-1]:.2f}; waiting ones {[round(took[i], 1) for i in waited]}")
        for i, _, err in done:     # said once, and when it was over
            assert err.count(b"waiting for the metadata server") <= 1, err
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for i, f in enumerate(files):
                assert fs.read_bytes(f"/w/f{i}") == f.read_bytes(), f"/w/f{i}"
            assert len(fs.ls("/w")) == WRITES
    finally:
        stop.set()
        cluster.stop()


def test_api_stream_through_two_mds_kills_applies_nothing_twice(tmp_path):
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB)
    stop = threading.Event()
    try:
        rng = random.Random(7)
        ledger: dict[str, bytes] = {}      # what the namespace must hold afterwards
        done: list[str] = []
        killer_out: list[list[float]] = []
        killer = threading.Thread(target=lambda: killer_out.append(
            bounce_mds(cluster, done, stop)))
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/s")
            killer.start()
            deadline = time.monotonic() + 240
            i = 0
            while (len(killer_out) == 0 or len(done) < KILL_AT[-1] + 10) \
                    and time.monotonic() < deadline:
                path = f"/s/f{i}"
                data = os.urandom(rng.choice([10, 4000, 200_000]))
                fs.write_bytes(path, data)              # create + commit (exclusive: no)
                ledger[path] = data
                done.append(f"write {path}")
                if i % 3 == 1:                          # a retried mv would be ENOENT
                    new = f"/s/moved{i}"
                    assert fs.mv(path, new) == new
                    ledger[new] = ledger.pop(path)
                    done.append(f"mv {path}")
                if i % 5 == 2:                          # a retried rm would be ENOENT
                    victim = sorted(ledger)[0]
                    fs.rm(victim)
                    del ledger[victim]
                    done.append(f"rm {victim}")
                if i % 7 == 3:                          # a retried mkdir would be EEXIST
                    fs.mkdir(f"/s/d{i}")
                    done.append(f"mkdir /s/d{i}")
                i += 1
            killer.join(60)
            assert len(killer_out[0]) == 2, "the MDS was not killed twice"
            assert fs.retrier.retries > 0, "no operation met a restart"
            names = set(fs.ls("/s"))
            dirs = {n for n in names if n.startswith("d")}
            assert names - dirs == {p.rsplit("/", 1)[1] for p in ledger}
            assert len(dirs) == sum(1 for d in done if d.startswith("mkdir"))
            for path, data in ledger.items():
                assert fs.read_bytes(path) == data, path
    finally:
        stop.set()
        cluster.stop()
