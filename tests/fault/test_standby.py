"""Synchronous WAL shipping to a standby MDS (mds/replication.py), real processes: every
acknowledged write is on the standby too; the standby SIGKILLed, the active goes on alone
after the timeout and says so; the standby restarted catches up from the active's WAL;
afterwards both namespaces are equal and hold the ledger."""
from __future__ import annotations

import os
import time

from client import AegisClient
from mds.metastore import MetaStore
from run_cluster import free_base_port
from tests.support.cluster import start_cluster
from tests.support.etcd import need_etcd
from tests.support.figures import record
from tests.support.ha import settled
from tests.support.wait import wait_for

HB = 0.3
TIMEOUT = 1.0     # [ha] standby_timeout


def standby_state(fs) -> dict:
    return fs.status()["ha"]["standby"]


def assert_only_the_mds_key_gets_in(cluster) -> None:
    """The standby's socket is CURVE with the MDS key and admits that key only: the admin
    user's key, even knowing the server key, gets no answer."""
    import msgpack
    import zmq

    from broker.curve import CurveKeys
    mds = cluster.member_curve("mds")
    ctx = zmq.Context()
    try:
        for who, keys in (("admin", cluster.curve), ("mds", mds)):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            CurveKeys(keys.public, keys.secret, mds.public).apply(sock)
            sock.connect(f"tcp://127.0.0.1:{cluster.standby_port}")
            sock.send(msgpack.packb({"op": "hello", "n": 1}))
            answered = bool(sock.poll(1500))
            sock.close()
            assert answered == (who == "mds"), f"{who}: answered={answered}"
    finally:
        ctx.term()


def test_standby_mirrors_goes_away_and_catches_up(tmp_path):
    need_etcd()
    cluster = start_cluster(tmp_path / "c", datanodes=2, heartbeat=HB,
                            etcd_port=free_base_port(span=2),
                            standby_port=free_base_port(span=2),
                            env={"AEGISFS_HA_LEASE_TTL": "3",
                                 "AEGISFS_HA_STANDBY_TIMEOUT": str(TIMEOUT)})
    ledger: dict[str, bytes] = {}
    try:
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            wait_for(lambda: standby_state(fs)["state"] == "in_sync", 20, 0.1,
                     "the standby in sync")

            def write(prefix: str, n: int) -> list[float]:
                took = []
                for i in range(n):
                    path, data = f"/s/{prefix}{i}", os.urandom(1000 + 37 * i)
                    t0 = time.monotonic()
                    fs.write_bytes(path, data)
                    took.append(time.monotonic() - t0)
                    ledger[path] = data
                return took

            fs.mkdir("/s")
            synced = write("a", 20)
            st = standby_state(fs)
            assert st["state"] == "in_sync" and st["acked_seq"] > 0
            cluster.kill("mds-standby")
            alone = write("b", 20)            # the first waits for the timeout, once
            st = standby_state(fs)
            assert st["state"] == "gone", st
            assert max(alone) >= TIMEOUT * 0.9, "no write waited for the lost standby"
            assert sorted(alone)[-2] < TIMEOUT, "more than one write waited the timeout"
            cluster.start_role("mds-standby")
            back = time.monotonic()
            wait_for(lambda: standby_state(fs)["state"] == "in_sync", 30, 0.1,
                     "the standby caught up")
            caught_up = time.monotonic() - back
            write("c", 10)
            last = fs.status()
        assert_only_the_mds_key_gets_in(cluster)
        wait_for(lambda: settled(cluster), 20, 0.1, "nothing left for the active to record")
        cluster.stop()     # both MDS at once: one stopped alone would hand over to the other
        with MetaStore(cluster.data_dir / "mds") as active, \
                MetaStore(cluster.data_dir / "mds-standby") as standby:
            assert standby.last_seq == active.last_seq
            assert standby.epoch == active.epoch > 0
            assert standby.ns.dump() == active.ns.dump()
            names = {e["name"] for e in standby.ns.ls("/s")}
            assert names == {p.rsplit("/", 1)[1] for p in ledger}
        med = sorted(synced)[len(synced) // 2]
        record(f"standby shipping: write median {med * 1000:.1f} ms in sync; standby "
               f"kill -9: one write waited {max(alone):.2f}s (timeout {TIMEOUT}s), then alone; "
               f"restarted standby in sync after {caught_up:.2f}s; namespaces equal at seq "
               f"{last['ha']['standby']['acked_seq']}")
    finally:
        cluster.stop()
