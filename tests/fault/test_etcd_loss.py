"""etcd SIGKILLed under a writing client (issue 18): the MDS keeps serving while its lease
is valid, then changes nothing (clients wait on EAGAIN, they get no error), and serves
again when etcd is back; every acknowledged write is there afterwards."""
from __future__ import annotations

import os
import threading
import time
import urllib.request

from client import AegisClient
from run_cluster import free_base_port
from tests.support.cluster import start_cluster
from tests.support.etcd import need_etcd
from tests.support.figures import record
from tests.support.wait import wait_for

HB = 0.3
TTL = 3          # [ha] lease_ttl: renewed every 1 s, the MDS stops 0.75 s before it ends


def mds_gauge(cluster, name: str) -> float:
    """aegisfs_state{role="mds", name} from the MDS's metrics endpoint."""
    url = f"http://127.0.0.1:{cluster.metrics_port + 1}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    want = f'aegisfs_state{{name="{name}",role="mds"}} '
    line = next(x for x in text.splitlines() if x.startswith(want))
    return float(line.rsplit(" ", 1)[1])


def ha_status(cluster) -> dict:
    with AegisClient(cluster.broker, key=cluster.key, retry_deadline=0, timeout=2) as fs:
        return fs.status()["ha"]


def test_etcd_killed_the_mds_stops_changing_then_resumes(tmp_path):
    need_etcd()
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB,
                            etcd_port=free_base_port(span=2),
                            metrics_port=free_base_port(span=4),
                            env={"AEGISFS_HA_LEASE_TTL": str(TTL)})
    stop = threading.Event()
    acked: list[tuple[float, str, bytes]] = []      # (when, path, data): the ledger
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with AegisClient(cluster.broker, key=cluster.key) as fs:
                fs.mkdir("/e")
                i = 0
                while not stop.is_set():
                    path, data = f"/e/f{i}", os.urandom(1000 + i % 7 * 3000)
                    fs.write_bytes(path, data)
                    acked.append((time.monotonic(), path, data))
                    i += 1
                    time.sleep(0.02)
        except BaseException as exc:     # any error a client sees fails the test
            errors.append(exc)

    thread = threading.Thread(target=writer)
    try:
        before = ha_status(cluster)
        assert before["state"] == "active" and before["epoch"], before
        thread.start()
        wait_for(lambda: len(acked) >= 10, 30, 0.05, "10 writes acknowledged")
        assert mds_gauge(cluster, "leader") == 1
        assert mds_gauge(cluster, "epoch") == before["epoch"]
        killed = time.monotonic()
        cluster.kill("etcd")
        # stepped down before the lease could lapse in etcd (at most TTL after the kill)
        wait_for(lambda: ha_status(cluster)["state"] == "candidate", 10, 0.05,
                 "the MDS stepped down", retry=(OSError,))
        down = time.monotonic()
        assert down - killed < TTL + 1.0, f"stepped down {down - killed:.2f}s after the kill"
        served_after_kill = [t for t, _, _ in acked if t > killed]
        # while the lease was valid it kept serving
        assert served_after_kill, "no write acknowledged in the lease left after the kill"
        time.sleep(2.0)
        assert mds_gauge(cluster, "leader") == 0
        # a write answered just before the step-down may be noted by the (slow, loaded)
        # writer thread a little later: half a second of slack
        window = [t for t, _, _ in acked if down + 0.5 < t]
        assert not window, f"{len(window)} writes acknowledged without a lease"
        assert not errors, errors
        count_down = len(acked)
        cluster.start_role("etcd")
        back = time.monotonic()
        wait_for(lambda: len(acked) >= count_down + 10, 45, 0.05, "writes resumed")
        resumed = next(t for t, _, _ in acked[count_down:]) - back
        after = ha_status(cluster)
        assert after["state"] == "active" and after["epoch"] >= before["epoch"], after
        stop.set()
        thread.join(60)
        assert not thread.is_alive()
        assert not errors, errors
        assert cluster.roles["mds"].alive()
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for _, path, data in acked:
                assert fs.read_bytes(path) == data, path
        record(f"etcd kill -9 (lease ttl {TTL}s): MDS stepped down {down - killed:.2f}s "
               f"after the kill, {len(served_after_kill)} writes acknowledged in that time, "
               f"0 while down; writes resumed {resumed:.2f}s after etcd restarted; epoch "
               f"{before['epoch']} -> {after['epoch']}; {len(acked)} writes, 0 client errors")
    finally:
        stop.set()
        thread.join(10) if thread.is_alive() else None
        cluster.stop()


def test_a_killed_leader_restarts_with_a_higher_epoch_and_nothing_lost(tmp_path):
    """kill -9 of the leading MDS: its lease is not revoked, so the restarted process
    leads only once etcd expired it, with a higher epoch that its WAL records; clients
    wait through it."""
    need_etcd()
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB,
                            etcd_port=free_base_port(span=2),
                            env={"AEGISFS_HA_LEASE_TTL": str(TTL)})
    try:
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            first = fs.status()["ha"]["epoch"]
            fs.mkdir("/k")
            ledger = {}
            for i in range(5):
                ledger[f"/k/a{i}"] = os.urandom(2000)
                fs.write_bytes(f"/k/a{i}", ledger[f"/k/a{i}"])
            cluster.kill("mds")
            killed = time.monotonic()
            cluster.start_role("mds")
            for i in range(5):          # the first of these waits for the new leader
                ledger[f"/k/b{i}"] = os.urandom(2000)
                fs.write_bytes(f"/k/b{i}", ledger[f"/k/b{i}"])
            waited = time.monotonic() - killed
            second = fs.status()["ha"]["epoch"]
            assert second > first
            assert waited >= TTL - 1.0, "led again before the killed leader's lease expired"
            for path, data in ledger.items():
                assert fs.read_bytes(path) == data, path
        cluster.stop_role("mds")
        from mds.metastore import MetaStore
        with MetaStore(cluster.data_dir / "mds") as store:   # the epoch is in its WAL
            assert store.epoch == second
        record(f"MDS kill -9 under HA (lease ttl {TTL}s): writes waited {waited:.2f}s, "
               f"epoch {first} -> {second}")
    finally:
        cluster.stop()


def test_a_leader_paused_past_its_lease_comes_back_under_a_new_epoch(tmp_path):
    """SIGSTOP the leading MDS longer than its lease, with a client writing: etcd drops its
    key; on SIGCONT it must not act on the old term - it finds its lease gone, campaigns
    again, logs the higher epoch before serving - and no acknowledged write is lost."""
    import signal
    need_etcd()
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB,
                            etcd_port=free_base_port(span=2),
                            env={"AEGISFS_HA_LEASE_TTL": str(TTL)})
    stop = threading.Event()
    acked: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with AegisClient(cluster.broker, key=cluster.key) as fs:
                i = 0
                while not stop.is_set():
                    path, data = f"/p/f{i}", os.urandom(1500)
                    fs.write_bytes(path, data)
                    acked.append((path, data))
                    i += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    try:
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/p")
        first = ha_status(cluster)["epoch"]
        thread.start()
        wait_for(lambda: len(acked) >= 10, 30, 0.05, "10 writes acknowledged")
        pid = cluster.roles["mds"].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(TTL + 2.0)          # the lease lapses in etcd meanwhile
        finally:
            os.kill(pid, signal.SIGCONT)
        count = len(acked)
        mds = cluster.roles["mds"]
        wait_for(lambda: len(acked) >= count + 10 or not mds.alive(), 45, 0.05,
                 "writes resumed or the MDS fenced itself")
        if mds.alive():
            after = ha_status(cluster)
            assert after["state"] == "active" and after["epoch"] > first, after
            outcome = f"kept running, epoch {first} -> {after['epoch']}"
        else:   # paused mid-batch: fenced and exited 75 unacknowledged; a restart recovers
            assert mds.proc.returncode == 75, mds.proc.returncode
            outcome = "exited 75 (lease ended mid-batch), restarted"
            cluster.start_role("mds")         # what run_cluster.py's supervisor does
            wait_for(lambda: len(acked) >= count + 10, 45, 0.05,
                     "writes resumed after the restart")
        stop.set()
        thread.join(60)
        assert not errors, errors
        cluster.stop_role("mds")
        cluster.start_role("mds")
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for path, data in acked:
                assert fs.read_bytes(path) == data, path
            assert fs.status()["ha"]["epoch"] > first
        record(f"MDS SIGSTOPped {TTL + 2.0:.0f}s (lease ttl {TTL}s) under writes: "
               f"{outcome}; {len(acked)} writes acknowledged, all present, 0 client errors")
    finally:
        stop.set()
        thread.join(10) if thread.is_alive() else None
        cluster.stop()
