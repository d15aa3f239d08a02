"""Real clusters for tests: ``start_cluster`` runs run_cluster.Cluster on free ports in a
directory and returns once the MDS is ready; ``wait_mds`` is that readiness check, for
after a restart too."""
from __future__ import annotations

import time
from pathlib import Path

from broker.client import Client
from run_cluster import Cluster, free_base_port

HEARTBEAT = 0.5


def wait_mds(cluster: Cluster, nodes: int = 0, *, serving: bool = False,
             timeout: float = 30.0, interval: float = 0.05) -> float:
    """Until the MDS answers ping, counts ``nodes`` DataNodes up and, with ``serving``, has
    left safe mode (before that an allocation answers EAGAIN, waiting for DataNodes);
    returns the seconds waited.
    Fails at once when the MDS process has exited."""
    started = time.monotonic()
    last: object = None
    with Client(cluster.broker, timeout=1, connect_timeout=1, curve=cluster.curve) as c:
        while True:
            mds = cluster.roles["mds"]
            if mds.proc is not None and not mds.alive():
                raise RuntimeError(f"MDS exited with {mds.proc.returncode}; "
                                   f"see {mds.log_path}")
            try:
                c.call("mds", {"op": "ping"})
                if not nodes and not serving:
                    return time.monotonic() - started
                last = st = c.call("mds", {"op": "status"}).result
                up = sum(n["state"] == "up" for n in st["nodes"])
                if up >= nodes and not (serving and st.get("safe_mode")):
                    return time.monotonic() - started
            except (ConnectionError, TimeoutError) as exc:
                last = exc
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"MDS not ready after {timeout}s: {last}")
            time.sleep(interval)


def start_cluster(data_dir: Path, datanodes: int = 3, *, heartbeat: float = HEARTBEAT,
                  nodes: int | None = None, serving: bool = True, **kwargs) -> Cluster:
    """A started cluster whose MDS sees ``nodes`` DataNodes up (default: all of them) and,
    with ``serving``, is out of safe mode. Stopped again if it does not get there; the
    caller stops it otherwise. ``kwargs`` go to Cluster (extra=, env=, viz=, ...)."""
    # four ports per broker (run_cluster.py --brokers N: base ports P, P+4, ...)
    cluster = Cluster(data_dir, free_base_port(4 * kwargs.get("brokers", 1)),
                      datanodes=datanodes, heartbeat=heartbeat, **kwargs)
    try:
        cluster.start()
        wait_mds(cluster, datanodes if nodes is None else nodes, serving=serving)
    except BaseException:
        cluster.stop()
        raise
    return cluster
