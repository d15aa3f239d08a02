"""Several brokers on a real cluster (run_cluster.py --brokers 2): the CLI works while the
first listed broker is dead from the start, `status` says which brokers answer, and an
event reaches a subscriber of both brokers once, and still when one is gone."""
from __future__ import annotations

import json
import time

from broker.client import Client
from broker.events import Subscriber
from client import AegisClient
from tests.integration.conftest import run_cli
from tests.support.cluster import start_cluster
from tests.support.figures import record


def test_cli_with_the_first_broker_dead_from_the_start(tmp_path):
    cluster = start_cluster(tmp_path / "c", datanodes=2, brokers=2)
    try:
        dead, live = cluster.broker.split(",")
        cluster.kill("broker")                      # the first one listed: SIGKILL by PID
        src = tmp_path / "in.bin"
        src.write_bytes(bytes(range(256)) * 3000)   # 768 KB
        took = {}
        for name, args in [("mkdir", ("mkdir", "/d")),
                           ("put", ("put", str(src), "/d/f")),
                           ("get", ("get", "/d/f", str(tmp_path / "out.bin"))),
                           ("ls", ("ls", "/d"))]:
            t0 = time.monotonic()
            proc = run_cli(cluster, *args)
            took[name] = time.monotonic() - t0
            assert proc.returncode == 0, (name, proc.stderr.decode())
            assert b"waiting" not in proc.stderr, (name, proc.stderr.decode())
            if name == "ls":
                assert proc.stdout.decode().split() == ["f"]
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        # never waited for the dead broker (connect_timeout is 5 s)
        assert max(took.values()) < 5.0, took
        record("CLI with 2 brokers, the first dead: " +
               ", ".join(f"{k} {v:.2f}s" for k, v in took.items()))

        proc = run_cli(cluster, "status", "--json")
        assert proc.returncode == 0, proc.stderr.decode()
        brokers = json.loads(proc.stdout)["brokers"]
        assert [(b["endpoint"], b["up"]) for b in brokers] == [(dead, False), (live, True)]
        proc = run_cli(cluster, "status")
        assert proc.returncode == 0, proc.stderr.decode()
        assert f"brokers: 1 up / 2   {dead} unreachable   {live} up" in proc.stdout.decode()
    finally:
        cluster.stop()


def test_workers_answer_through_each_broker_on_its_own_connection(tmp_path):
    """The MDS and every DataNode registered with both brokers, and each reply goes back
    through the broker its request came in by (one DEALER per broker: a shared one would
    round-robin replies, and about half of these calls would time out)."""
    cluster = start_cluster(tmp_path / "c", datanodes=2, brokers=2)
    try:
        one, two = cluster.broker.split(",")
        with Client(one, timeout=2, curve=cluster.curve) as a, \
                Client(two, timeout=2, curve=cluster.curve) as b:
            for client in (a, b):
                services = client.call("broker", {"op": "services"}).result["services"]
                assert {"mds", "dn.dn1", "dn.dn2"} <= set(services), services
            for _ in range(20):
                for client in (a, b):
                    client.call("mds", {"op": "ping"})
                    client.call("dn.dn1", {"op": "info"})
    finally:
        cluster.stop()


def test_an_event_reaches_a_subscriber_of_two_brokers_once(tmp_path):
    cluster = start_cluster(tmp_path / "c", datanodes=2, brokers=2)
    sub = Subscriber(cluster.endpoints["events_out"], ["file.commit"], curve=cluster.curve)
    try:
        time.sleep(0.5)     # let the subscription reach the MDS's PUB through both proxies

        def commits_of(path: str, seconds: float = 1.5) -> list:
            got, end = [], time.monotonic() + seconds
            while time.monotonic() < end:
                ev = sub.recv(timeout=0.1)
                if ev is not None and ev.body.get("path") == path:
                    got.append(ev)
            return got

        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.write_bytes("/one", b"1")
            first = commits_of("/one")
            assert len(first) == 1, first                  # two brokers relayed it: one kept
            assert sub.dedupe is not None and sub.dedupe.duplicates >= 1
            cluster.kill("broker2")
            fs.write_bytes("/two", b"2")
            second = commits_of("/two")
            assert len(second) == 1, second                # through the survivor alone
            assert second[0].seq > first[0].seq
    finally:
        sub.close()
        cluster.stop()
