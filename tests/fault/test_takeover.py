"""Standby MDS takeover (issue 18, point 2), real processes: etcd, a broker, two symmetric
MDS (`--standby --etcd`, the winner leads and ships to the other), DataNodes.

(a) the active SIGKILLed under a writing and reading client: no operation fails, every
    acknowledged write is there, the standby took over within 10 s;
(b) the gap: the standby SIGKILLed, the active acknowledges writes alone (the ran-alone
    mark), the active SIGKILLed, the stale standby restarted: it does not serve; the old
    active restarted: it leads with every acknowledged write;
(c) split brain: the active SIGSTOPped until the standby took over; SIGCONT: it changes
    nothing, exits deposed (77); restarted it is the standby and catches up; both
    namespaces equal the ledger.
"""
from __future__ import annotations

import os
import signal
import threading
import time

from client import AegisClient
from client.cli_cluster import leadership
from mds.etcd import Gateway
from mds.metastore import MetaStore
from run_cluster import free_base_port
from tests.support.cluster import start_cluster
from tests.support.etcd import need_etcd
from tests.support.figures import record
from tests.support.ha import ha_status, settled, standby_in_sync
from tests.support.wait import wait_for

HB = 0.3
TTL = 2                  # [ha] lease_ttl
TIMEOUT = 1.0            # [ha] standby_timeout
MARK = b"/aegisfs/mds/leader/alone"


def ha_cluster(tmp_path):
    return start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB,
                         etcd_port=free_base_port(span=2), standby_port=free_base_port(span=2),
                         env={"AEGISFS_HA_LEASE_TTL": str(TTL),
                              "AEGISFS_HA_STANDBY_TIMEOUT": str(TIMEOUT)})


def leader_name(cluster) -> str:
    held = Gateway(cluster.etcd_url).get(b"/aegisfs/mds/leader")
    return held.value.decode() if held else ""


class Writer(threading.Thread):
    """Writes a file and reads the one before it, until stopped: the ledger of what was
    acknowledged, with the time of each acknowledgement; any error fails the test."""

    def __init__(self, cluster, prefix: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.prefix = cluster, prefix
        self.acked: list[tuple[float, str, bytes]] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with AegisClient(self.cluster.broker, key=self.cluster.key) as fs:
                i = 0
                while not self.halt.is_set():
                    path, data = f"{self.prefix}/f{i}", os.urandom(1000 + i % 5 * 700)
                    fs.write_bytes(path, data)
                    self.acked.append((time.monotonic(), path, data))
                    if i:
                        _, before, expect = self.acked[-2]
                        assert fs.read_bytes(before) == expect, before
                    i += 1
                    time.sleep(0.01)
        except BaseException as exc:      # any error a client sees fails the test
            self.errors.append(exc)

    def stop(self) -> None:
        self.halt.set()
        self.join(60)
        assert not self.is_alive()
        assert not self.errors, self.errors


def test_active_killed_under_load_the_standby_takes_over(tmp_path):
    need_etcd()
    cluster = ha_cluster(tmp_path)
    writer = Writer(cluster, "/a")
    try:
        wait_for(lambda: standby_in_sync(cluster), 20, 0.1, "the standby in sync")
        first = ha_status(cluster)["epoch"]
        assert leader_name(cluster) == "mds"
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/a")
        writer.start()
        wait_for(lambda: len(writer.acked) >= 20, 30, 0.05, "20 writes acknowledged")
        cluster.kill("mds")
        killed = time.monotonic()
        count = len(writer.acked)
        wait_for(lambda: len(writer.acked) >= count + 10, 30, 0.05,
                 "writes through the new active")
        took = writer.acked[count][0] - killed
        writer.stop()
        after = ha_status(cluster)
        assert after["state"] == "active" and after["epoch"] > first, after
        assert leader_name(cluster) == "mds-standby"
        assert took <= 10.0, f"takeover took {took:.2f}s"
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for _, path, data in writer.acked:
                assert fs.read_bytes(path) == data, path
        cluster.start_role("mds")       # what a supervisor does: it is the standby now
        back = time.monotonic()
        wait_for(lambda: ha_status(cluster, 10)["standby"], 20, 0.1,
                 "the killed active caught up",
                 done=lambda st: st["state"] == "in_sync")
        caught_up = time.monotonic() - back
        assert leader_name(cluster) == "mds-standby"
        wait_for(lambda: settled(cluster), 20, 0.1, "nothing left for the active to record")
        cluster.stop()
        with MetaStore(cluster.data_dir / "mds") as a, \
                MetaStore(cluster.data_dir / "mds-standby") as b:
            assert a.last_seq == b.last_seq and a.ns.dump() == b.ns.dump()
            assert {e["name"] for e in a.ns.ls("/a")} == {
                p.rsplit("/", 1)[1] for _, p, _ in writer.acked}
        record(f"takeover: active kill -9 under a writing+reading client (lease ttl {TTL}s):"
               f" first write through the new active {took:.2f}s after the kill; epoch "
               f"{first} -> {after['epoch']}; {len(writer.acked)} writes acknowledged, all "
               f"present, 0 client errors; the killed one restarted was its standby in sync "
               f"after {caught_up:.2f}s, namespaces equal")
    finally:
        writer.halt.set()
        cluster.stop()


def test_a_stale_standby_does_not_serve_after_the_active_ran_alone(tmp_path):
    need_etcd()
    cluster = ha_cluster(tmp_path)
    etcd = Gateway(cluster.etcd_url)
    try:
        wait_for(lambda: standby_in_sync(cluster), 20, 0.1, "the standby in sync")
        assert etcd.get(MARK) is None, "a mark with the standby in sync"
        ledger: dict[str, bytes] = {}
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/g")
            for i in range(5):
                ledger[f"/g/a{i}"] = os.urandom(1500)
                fs.write_bytes(f"/g/a{i}", ledger[f"/g/a{i}"])
            standby_seq = ha_status(cluster)["standby"]["acked_seq"]
            cluster.kill("mds-standby")
            for i in range(5):       # acknowledged by the active alone
                ledger[f"/g/b{i}"] = os.urandom(1500)
                fs.write_bytes(f"/g/b{i}", ledger[f"/g/b{i}"])
            st = ha_status(cluster)
            assert st["standby"]["state"] == "gone", st
        mark = etcd.get(MARK)
        assert mark is not None, "acknowledged alone without the mark"
        import json
        value = json.loads(mark.value)
        assert value["name"] == "mds" and value["since"] >= standby_seq, value
        cluster.kill("mds")
        cluster.start_role("mds-standby")       # the stale one: must not lead
        log = cluster.roles["mds-standby"].log_path
        wait_for(lambda: "will not take over" in log.read_text(), 15, 0.1,
                 "the stale standby saying why it does not lead")
        time.sleep(TTL + 1.0)                   # the killed active's lease has lapsed
        assert leader_name(cluster) == "", "the stale standby took the leader key"
        # what `aegisfs status` prints first: the MDS the mark names, and the way out
        said = leadership(cluster.etcd_url, "/aegisfs/mds/leader")
        assert "no MDS leads" in said[0] and "start mds again" in said[0], said
        assert f"from seq {value['since']}" in said[0], said
        assert "--drop-alone-mark" in said[1], said
        assert cluster.roles["mds-standby"].alive()
        with AegisClient(cluster.broker, key=cluster.key, retry_deadline=0,
                         timeout=1) as fs:
            try:
                fs.status()
                raise AssertionError("an MDS answered while only the stale standby runs")
            except (ConnectionError, TimeoutError, OSError):
                pass
        cluster.start_role("mds")               # the lone active: it leads with everything
        started = time.monotonic()
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for path, data in ledger.items():
                assert fs.read_bytes(path) == data, path
            back = time.monotonic() - started
            assert leader_name(cluster) == "mds"
            wait_for(lambda: standby_in_sync(cluster), 20, 0.1, "the old standby caught up")
            wait_for(lambda: etcd.get(MARK) is None, 10, 0.1, "the mark cleared")
            ledger["/g/c"] = b"after"
            fs.write_bytes("/g/c", b"after")
        record(f"ran alone: the stale standby refused to lead (mark since seq "
               f"{value['since']}); the restarted lone active served all {len(ledger) - 1} "
               f"acknowledged writes {back:.2f}s after its start; the mark cleared once "
               f"the standby was in sync")
    finally:
        cluster.stop()


def test_split_brain_a_paused_active_changes_nothing_and_comes_back_as_standby(tmp_path):
    need_etcd()
    cluster = ha_cluster(tmp_path)
    try:
        wait_for(lambda: standby_in_sync(cluster), 20, 0.1, "the standby in sync")
        first = ha_status(cluster)["epoch"]
        ledger: dict[str, bytes] = {}
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/s")
            for i in range(10):
                ledger[f"/s/a{i}"] = os.urandom(1200)
                fs.write_bytes(f"/s/a{i}", ledger[f"/s/a{i}"])
            old = cluster.roles["mds"]
            os.kill(old.pid, signal.SIGSTOP)    # between two acknowledged writes
            paused = time.monotonic()
            try:
                for i in range(10):             # the first waits for the takeover
                    ledger[f"/s/b{i}"] = os.urandom(1200)
                    fs.write_bytes(f"/s/b{i}", ledger[f"/s/b{i}"])
                took = time.monotonic() - paused
                assert leader_name(cluster) == "mds-standby"
                second = fs.status()["ha"]["epoch"]
                assert second > first
            finally:
                os.kill(old.pid, signal.SIGCONT)
            # the old active resumes: it must exit deposed, changing nothing meanwhile
            code = old.proc.wait(15)
            assert code == 77, (code, old.log_path.read_text()[-2000:])
            assert "deposed by epoch" in old.log_path.read_text()
            for i in range(5):
                ledger[f"/s/c{i}"] = os.urandom(1200)
                fs.write_bytes(f"/s/c{i}", ledger[f"/s/c{i}"])
            assert fs.status()["ha"]["epoch"] == second
            cluster.start_role("mds")           # restarted: the standby of the new active
            wait_for(lambda: ha_status(cluster, 10)["standby"], 20, 0.1,
                     "the old active caught up",
                     done=lambda st: st["state"] == "in_sync")
            assert leader_name(cluster) == "mds-standby"
            for path, data in ledger.items():
                assert fs.read_bytes(path) == data, path
        wait_for(lambda: settled(cluster), 20, 0.1, "nothing left for the active to record")
        broker_log = cluster.roles["broker"].log_path.read_text()
        cluster.stop()
        with MetaStore(cluster.data_dir / "mds") as a, \
                MetaStore(cluster.data_dir / "mds-standby") as b:
            assert a.last_seq == b.last_seq and a.epoch == b.epoch == second
            assert a.ns.dump() == b.ns.dump()
            assert {e["name"] for e in a.ns.ls("/s")} == {p[3:] for p in ledger}
        record(f"split brain: active SIGSTOPped, the standby led with epoch {second} "
               f"(was {first}) and a write went through {took:.2f}s after the pause; on "
               f"SIGCONT the old active exited 77 (deposed); restarted as standby it caught "
               f"up; both namespaces equal, {len(ledger)} acknowledged writes"
               + ("; the broker refused its lower epoch" if "refused" in broker_log else ""))
    finally:
        cluster.stop()


def test_the_operator_drops_the_mark_and_a_candidate_leads(tmp_path):
    """The way out when the lone active's disk is lost for good, against a real etcd: the
    mark (written guarded by a leader) refuses a candidate; `python -m mds --drop-alone-mark`
    deletes it; the candidate leads at its next poll."""
    import subprocess
    import sys

    from mds.election import Election
    from tests.support.etcd import EtcdProcess
    with EtcdProcess(tmp_path / "etcd") as etcd:
        gw = Gateway(etcd.url, timeout=0.5)
        a = Election(gw, b"/aegisfs/mds/leader", b"a", TTL, time.monotonic)
        wait_for(lambda: a.step() or a.leading(time.monotonic()), 10, 0.05, "a leads")
        epoch = a.leading(time.monotonic())
        assert a.mark_alone(epoch, since=4, last=9)
        a.resign()                          # the lone active gone (its disk lost)
        b = Election(gw, b"/aegisfs/mds/leader", b"b", TTL, time.monotonic)
        end = time.monotonic() + 2
        while time.monotonic() < end:
            b.step()
            assert b.leading(time.monotonic()) is None
            time.sleep(0.05)
        assert "the active a ran alone since seq 4" in (b.refusal or "")
        done = subprocess.run([sys.executable, "-m", "mds", "--etcd", etcd.url,
                               "--security", "off", "--drop-alone-mark"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "dropped the ran-alone mark" in done.stderr
        assert gw.get(MARK) is None
        wait_for(lambda: b.step() or b.leading(time.monotonic()), 10, 0.05, "b leads")
        assert b.leading(time.monotonic()) > epoch and b.refusal is None


def test_the_standby_serves_metrics_and_its_requests_once_it_leads(tmp_path):
    """The second MDS's metrics endpoint answers while it is a standby (leader 0, standby
    1, its position) and, once it took over, says it leads and counts its requests."""
    from tests.integration.test_metrics import scrape, series
    need_etcd()
    port = free_base_port(span=5)
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB, metrics_port=port,
                            etcd_port=free_base_port(span=2),
                            standby_port=free_base_port(span=2),
                            env={"AEGISFS_HA_LEASE_TTL": str(TTL),
                                 "AEGISFS_HA_STANDBY_TIMEOUT": str(TIMEOUT)})
    standby_port = port + 4        # broker, mds, dn1, dn2, then mds-standby

    def state(name: str) -> float:
        return series(scrape(standby_port), "aegisfs_state", role="mds", name=name)
    try:
        wait_for(lambda: standby_in_sync(cluster), 20, 0.1, "the standby in sync")
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/m")
        wait_for(lambda: state("standby") == 1 and state("last_seq") > 0, 10, 0.1,
                 "the standby's gauges")
        assert state("leader") == 0
        assert series(scrape(port + 1), "aegisfs_state", role="mds", name="leader") == 1
        cluster.kill("mds")
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.write_bytes("/m/after", b"x" * 100)        # waits out the takeover
        wait_for(lambda: state("leader") == 1 and state("standby") == 0, 10, 0.1,
                 "the promoted standby's gauges")
        assert series(scrape(standby_port), "aegisfs_requests_total") >= 1
    finally:
        cluster.stop()


def test_a_standby_the_pruned_log_no_longer_reaches_is_seeded_and_can_take_over(tmp_path):
    """The standby killed; the active acknowledges writes alone and checkpoints often
    enough that its WAL no longer holds the standby's position; the standby restarted is
    sent the active's snapshot, catches up, and takes over with every write."""
    need_etcd()
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB,
                            etcd_port=free_base_port(span=2),
                            standby_port=free_base_port(span=2),
                            env={"AEGISFS_HA_LEASE_TTL": str(TTL),
                                 "AEGISFS_HA_STANDBY_TIMEOUT": str(TIMEOUT),
                                 "AEGISFS_MDS_CHECKPOINT_RECORDS": "40"})
    try:
        wait_for(lambda: standby_in_sync(cluster), 20, 0.1, "the standby in sync")
        ledger: dict[str, bytes] = {}
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/seed")
            cluster.kill("mds-standby")
            for i in range(120):             # several checkpoints: the log is pruned
                ledger[f"/seed/f{i}"] = os.urandom(300)
                fs.write_bytes(f"/seed/f{i}", ledger[f"/seed/f{i}"])
        cluster.start_role("mds-standby")
        wait_for(lambda: standby_in_sync(cluster), 30, 0.1, "the seeded standby in sync")
        log = cluster.roles["mds"].log_path.read_text()
        assert "seeding it with snapshot" in log, log[-2000:]
        cluster.kill("mds")
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            for path, data in ledger.items():
                assert fs.read_bytes(path) == data, path
        assert leader_name(cluster) == "mds-standby"
    finally:
        cluster.stop()
