"""`python -m datanode --id dn1 --data-dir ...`: run one AegisFS DataNode."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from broker import config, curve
from broker.process import (metrics_option, security_flags, security_options, setup_logging,
                            start_metrics, stop_on_signals, tune_malloc)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--id", "node_id", required=True, help="Node id; registers as service dn.<id>.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Block directory (default: <datanode.data_dir>/<id>).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config.")
@click.option("--base-port", type=int, help="Broker endpoints derived from base port P.")
@click.option("--broker-host", metavar="HOST", help="The broker's address, with --base-port "
              "([broker] host, default 127.0.0.1).")
@click.option("--broker-worker", help="Broker worker endpoint (register here).")
@click.option("--broker-client", help="Unused, kept for old scripts: a DataNode talks to "
              "the MDS and its peers through the worker endpoint, as a member.")
@click.option("--events", help="Broker XSUB endpoint to publish events to.")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats.")
@click.option("--scrub-rate", type=float, help="Bytes/s the scrubber may read.")
@click.option("--scrub-pause", type=float, default=60.0, show_default=True,
              help="Seconds between two scrub passes.")
@click.option("--block-report-interval", type=float, default=600.0, show_default=True,
              help="Seconds between full block reports to the MDS.")
@click.option("--capacity", type=int, help="Advertise at most this many bytes of capacity.")
@click.option("--small-max", type=click.IntRange(0, 64 * 1024 * 1024), default=128 * 1024,
              show_default=True,
              help="Blocks up to this many bytes go to the pack files (0: a file each).")
@click.option("--no-capabilities", is_flag=True,
              help="Serve blocks without checking capabilities: only for benchmarking a "
                   "DataNode alone, with no MDS to hand out keys. Never in a cluster.")
@click.option("--data-bind", metavar="ADDR", help="Address of the data endpoint ([datanode] "
              "data_bind; default: the address toward the broker).")
@click.option("--data-port", type=click.IntRange(0, 65535),
              help="Port of the data endpoint (0: any free port).")
@click.option("--advertise", metavar="ADDR", help="Address clients dial for the data "
              "endpoint (default: the bound one).")
@click.option("--no-data-endpoint", is_flag=True, help="No data endpoint: every block "
              "through the broker.")
@security_options(member=True)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-file", type=click.Path(dir_okay=False))
@metrics_option
def main(node_id, data_dir, config_path, base_port, broker_host, broker_worker, broker_client, events,
         heartbeat_interval, scrub_rate, scrub_pause, block_report_interval, capacity,
         small_max, no_capabilities, data_bind, data_port, advertise, no_data_endpoint,
         security, keys_dir, key_file, broker_key, log_level,
         log_file, metrics_port) -> None:
    """Store blocks for AegisFS and serve them through the broker.

    With security on (the default) it connects with its member key
    (<keys>/dn/<id>.key_secret, made by `KeyStore.add_node` or run_cluster.py) and
    trusts the broker key <keys>/broker.key.

    Example: python -m datanode --id dn1 --data-dir data/dn/dn1 --base-port 5550 --keys data/keys
    """
    setup_logging(log_level, log_file)
    tune_malloc()
    from .server import DataNode   # after logging is set up
    broker_flags = config.broker_flags(base_port, host=broker_host,
                                       worker=broker_worker, client=broker_client,
                                       events_in=events, heartbeat_interval=heartbeat_interval)
    try:
        cfg = config.load(config_path, {
            "broker": broker_flags, "datanode": {
            "scrub_rate": scrub_rate, "data_bind": data_bind, "data_port": data_port,
            "advertise": advertise, "data_endpoint": False if no_data_endpoint else None},
            "security": security_flags(security, keys_dir, key_file, broker_key)})
        b, d = cfg["broker"], cfg["datanode"]
        keys = curve.member_keys(cfg["security"], f"dn.{node_id}")
        node = DataNode(node_id, Path(data_dir or Path(d["data_dir"]) / node_id),
                        worker_endpoint=b["worker"],
                        events_endpoint=b["events_in"],
                        heartbeat=float(heartbeat_interval or d["heartbeat"]),
                        liveness=int(b["heartbeat_liveness"]), scrub_rate=float(d["scrub_rate"]),
                        writer_threads=int(d["writer_threads"]), capacity=capacity,
                        max_message_size=int(b["max_message_size"]), scrub_pause=scrub_pause,
                        report_interval=block_report_interval, small_max=small_max,
                        capabilities=not no_capabilities, curve=keys,
                        data_bind=str(d["data_bind"]) if d["data_endpoint"] else None,
                        data_port=int(d["data_port"]), advertise=str(d["advertise"]))
        if no_capabilities:
            logging.getLogger("datanode").warning(
                "DataNode %s serves blocks WITHOUT capability checks (--no-capabilities)",
                node_id)
        start_metrics(metrics_port, f"dn.{node_id}", [node.service], node._stats)
    except (config.ConfigError, OSError, ValueError) as exc:
        logging.getLogger("datanode").error("cannot start DataNode %s: %s", node_id, exc)
        sys.exit(2)
    stop_on_signals(node.stop)
    node.run()


if __name__ == "__main__":
    main()
