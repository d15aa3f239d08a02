"""Start a local AegisFS cluster: the broker, the MDS and N DataNodes (and the viz on request).

    python run_cluster.py                 # 3 DataNodes, data in ./data, broker on :5550
    python run_cluster.py --reset --datanodes 5 --base-port 7000 --viz
    python run_cluster.py --ha            # two brokers (P, P+4), etcd (P+8, P+9) and two
                                          # MDS that campaign (standby endpoints P+10,
                                          # P+11): the winner leads, the other is standby
    python run_cluster.py --brokers 2     # brokers on P and P+4

Each role runs as a child process (`sys.executable -m <role>`) logging to
<data-dir>/logs/<role>.log. Security is on unless --insecure: the first start creates the
cluster's keys in <data-dir>/keys (broker, MDS, one per DataNode, the user "admin"). The
script prints one line with `ready`, the broker endpoint and the admin key file once every
role has registered, then supervises the children (--no-supervise: only watches them): a
child that exits unexpectedly is reported loudly with the reason (signal, or exit code and
the last line it logged) and started again with backoff (broker/supervise.py); the state,
restarts and reasons are in <data-dir>/supervisor.json, which `aegisfs status` shows.
Ctrl-C or SIGTERM stops them all. The `Cluster` class (broker/local_cluster.py, imported
from here as `from run_cluster import Cluster, free_base_port`) is also what the integration
tests use to run real clusters on free ports (with security on, unless security=False).
"""
from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path

import click

from broker import config
from broker.free_ports import free_base_port  # noqa: F401  (public: tests, bench/ import it)
from broker.local_cluster import Cluster
from broker.local_roles import ETCD

__all__ = ["Cluster", "free_base_port", "main"]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--datanodes", "-n", default=3, show_default=True, help="Number of DataNodes.")
@click.option("--data-dir", default="data", show_default=True,
              help="Root data directory (a subdirectory per role, logs in <dir>/logs).")
@click.option("--base-port", default=config.DEFAULT_BASE_PORT, show_default=True,
              help="Broker client endpoint tcp://127.0.0.1:P; P+1..P+3 for workers and events.")
@click.option("--brokers", type=click.IntRange(1, 16),
              help="Number of brokers, on base ports P, P+4, ...; every other role "
                   "connects to all of them ([broker] endpoints).  [default: 1; 2 with --ha]")
@click.option("--reset", is_flag=True, help="Wipe the data directory first.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default configs/cluster.toml).")
@click.option("--replication", type=int, help="Default replication factor R.")
@click.option("--viz", is_flag=True, help="Also start the Streamlit visualizer.")
@click.option("--viz-port", default=8501, show_default=True)
@click.option("--insecure", is_flag=True,
              help="Security off: no CURVE, every client is admin. For benchmarks only.")
@click.option("--s3", "s3_port", type=int, metavar="PORT",
              help="Also run the S3 gateway on 127.0.0.1:PORT (see docs/s3.md).")
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="Restart a role that exits unexpectedly (with backoff).")
@click.option("--metrics-port", type=int, metavar="PORT",
              help="Prometheus metrics: the broker on 127.0.0.1:PORT, the MDS on PORT+1, "
                   "DataNode i on PORT+1+i.")
@click.option("--mount", "mount_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also mount the cluster at DIR (FUSE; see docs/mount.md).")
@click.option("--ha", is_flag=True, help="Two brokers unless --brokers says otherwise, and "
              "etcd (from the etcd-server package, data "
              "in <data-dir>/etcd, client port Q, peer port Q+1, where Q = P + 4 x brokers); "
              "two MDS campaign for the leader lease there: the one leading ships its WAL "
              "synchronously to the other (standby endpoints Q+3 for mds, Q+2 for "
              "mds-standby, data in <data-dir>/mds-standby), which takes over when the "
              "leader's lease lapses; a deposed one exits 77 and is restarted as the "
              "standby (see docs/architecture.md, HA).")
def main(datanodes: int, data_dir: str, base_port: int, brokers: int | None, reset: bool,
         config_path: str | None,
         replication: int | None, viz: bool, viz_port: int, insecure: bool,
         s3_port: int | None, supervise: bool, metrics_port: int | None,
         mount_dir: str | None, ha: bool) -> None:
    """Run a local AegisFS cluster until Ctrl-C.

    The first start creates the cluster's keys in <data-dir>/keys; the aegisfs CLI run
    from the same directory finds the admin key there by itself.

    Example: python run_cluster.py --reset --datanodes 3
    """
    # --ha: no single point of failure, brokers included (issue 18)
    brokers = brokers if brokers is not None else 2 if ha else 1
    root = Path(data_dir).resolve()
    if reset and root.exists():
        shutil.rmtree(root)
        click.echo(f"reset: removed {root}")
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, base_port, datanodes, config_path=config_path,
                      replication=replication, viz=viz, viz_port=viz_port,
                      security=not insecure, s3_port=s3_port, supervise=supervise,
                      metrics_port=metrics_port, mount_dir=mount_dir, brokers=brokers,
                      etcd_port=base_port + 4 * brokers if ha else None,
                      standby_port=base_port + 4 * brokers + 2 if ha else None)
    if ha and not Path(ETCD).exists():
        click.echo(f"error: --ha needs {ETCD}: apt-get install etcd-server", err=True)
        sys.exit(1)
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    which = "broker" if brokers == 1 else f"{brokers} brokers"
    click.echo(f"starting {'etcd, ' if ha else ''}{which}, mds"
               f"{', a standby mds' if ha else ''} and {datanodes} DataNodes; "
               f"logs in {root / 'logs'} (Ctrl-C to stop)")
    if insecure:
        click.echo("WARNING: security is OFF (--insecure): no CURVE, no authentication, "
                   "every client is admin", err=True)
    try:
        made = cluster.ensure_keys()
        if made:
            click.echo(f"keys created in {cluster.keys_dir}: {', '.join(made)}")
        cluster.start()
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        cluster.stop()
        sys.exit(1)
    extra = f", viz http://127.0.0.1:{viz_port}" if viz else ""
    extra += f", s3 http://127.0.0.1:{s3_port}" if s3_port else ""
    extra += f", mounted at {Path(mount_dir).resolve()}" if mount_dir else ""
    key = f" key {cluster.key}" if cluster.key else " (security off)"
    click.echo(f"ready: broker{'s' if brokers > 1 else ''} {cluster.broker}{extra}{key}")
    sys.stdout.flush()
    status = 0
    cluster.write_status()
    try:
        while not stopping:
            if cluster.supervise_turn(report=lambda line: click.echo(line, err=True)):
                status = 1
            time.sleep(0.2)
    finally:
        click.echo("stopping cluster...")
        cluster.stop()
        click.echo("stopped")
    sys.exit(status)


if __name__ == "__main__":
    main()