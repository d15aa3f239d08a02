"""Every role serves Prometheus metrics on its own port (--metrics-port, run_cluster's
Cluster(metrics_port=)): the named series exist and move when work is done."""
from __future__ import annotations

import re
import urllib.request

from client import AegisClient
from run_cluster import free_base_port
from tests.support.cluster import start_cluster
from tests.support.wait import wait_for


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def series(samples: dict[str, float], metric: str, /, **labels: str) -> float:
    """The sum of `metric` over the samples whose labels include `labels`."""
    total = 0.0
    for key, value in samples.items():
        if key.split("{", 1)[0] != metric:
            continue
        if all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def test_every_role_serves_metrics_that_move(tmp_path):
    base = free_base_port(4)
    cluster = start_cluster(tmp_path / "c", datanodes=2, metrics_port=base)
    try:
        ports = {"broker": base, "mds": base + 1, "dn1": base + 2, "dn2": base + 3}
        before = {role: scrape(p) for role, p in ports.items()}
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/m")
            fs.write_bytes("/m/f", b"z" * 300_000)          # a small file: pool, put_small
            assert fs.read_bytes("/m/f") == b"z" * 300_000
            fs.write_bytes("/m/big", b"b" * 1_100_000)      # past SMALL_MAX: create, commit
            try:
                fs.rm("/m/missing")
            except FileNotFoundError:
                pass
            fs.whoami()
        after = {role: scrape(p) for role, p in ports.items()}
        mds_b, mds_a = before["mds"], after["mds"]
        for op in ("mkdir", "pool", "put_small", "create", "commit", "stat"):
            assert series(mds_a, "aegisfs_requests_total", service="mds", op=op) > \
                series(mds_b, "aegisfs_requests_total", service="mds", op=op), op
        assert series(mds_a, "aegisfs_request_errors_total", op="rm", code="ENOENT") >= 1
        assert series(mds_a, "aegisfs_request_seconds_count", op="commit") >= 1
        assert series(mds_a, "aegisfs_mds_wal_fsync_seconds_count") > \
            series(mds_b, "aegisfs_mds_wal_fsync_seconds_count")
        assert series(mds_a, "aegisfs_mds_wal_batch_requests_count") >= 1
        # gauges follow the MDS's upkeep (every 0.5 s at most)
        wait_for(lambda: series(scrape(ports["mds"]), "aegisfs_state", role="mds",
                                name="files") >= 1, 10, what="the files gauge")
        mds_a = scrape(ports["mds"])
        assert series(mds_a, "aegisfs_state", role="mds", name="nodes_up") == 2
        assert series(mds_a, "aegisfs_state", role="mds", name="safe_mode") == 0
        stored = sum(series(after[n], "aegisfs_payload_in_bytes_total") for n in ("dn1", "dn2"))
        assert stored >= 2 * 300_000            # R=2 replicas of every byte came in
        served = sum(series(after[n], "aegisfs_payload_out_bytes_total") for n in ("dn1", "dn2"))
        assert served >= 300_000
        for node in ("dn1", "dn2"):
            assert series(after[node], "aegisfs_figure", name="capacity") > 0
        assert series(after["broker"], "aegisfs_figure", role="broker", name="requests") > \
            series(before["broker"], "aegisfs_figure", role="broker", name="requests")
        assert series(after["broker"], "aegisfs_requests_total", op="whoami") >= 1
    finally:
        cluster.stop()
