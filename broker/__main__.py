"""`python -m broker`: run the AegisFS broker (request routing and the event proxy)."""
from __future__ import annotations

import logging
import sys

import click
import zmq

from . import config, curve
from .process import (metrics_option, security_flags, security_options, setup_logging,
                      start_metrics, stop_on_signals, tune_malloc)
from .server import Broker


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default: $AEGISFS_CONFIG or configs/cluster.toml).")
@click.option("--base-port", type=int, help="Derive all endpoints: client P, "
              "worker P+1, events in P+2, events out P+3.")
@click.option("--bind", metavar="ADDRESS", help="Address to listen on ([broker] bind, "
              "default 127.0.0.1; 0.0.0.0 for every interface): each endpoint's port on it.")
@click.option("--client", help="Client endpoint (its port is bound on --bind), "
              "e.g. tcp://127.0.0.1:5550.")
@click.option("--worker", help="Worker endpoint to bind.")
@click.option("--events-in", help="XSUB endpoint publishers connect to.")
@click.option("--events-out", help="XPUB endpoint subscribers connect to.")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats.")
@security_options(member=False)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-file", type=click.Path(dir_okay=False), help="Log here instead of stderr.")
@metrics_option
def main(config_path, base_port, bind, client, worker, events_in, events_out,
         heartbeat_interval, security, keys_dir, log_level, log_file, metrics_port) -> None:
    """Route requests between AegisFS clients and workers, and relay events.

    With security on (the default) every socket is a CURVE server: the keys directory
    holds the broker's key pair and the registry of members and users, re-read once a
    second (so `aegisfs user rm` takes effect within seconds).

    Example: python -m broker --base-port 6000 --bind 198.18.0.1 --keys data/keys
    """
    setup_logging(log_level, log_file)
    tune_malloc()
    flags = config.broker_flags(base_port, bind=bind, client=client, worker=worker,
                                events_in=events_in, events_out=events_out,
                                heartbeat_interval=heartbeat_interval)
    try:
        full = config.load(config_path, {"broker": flags,
                                         "security": security_flags(security, keys_dir)})
        config.one_broker(full["broker"])
        secure = curve.warn_if_off(full["security"], "broker")
        broker = Broker(full["broker"], keys=curve.keys_dir(full["security"]) if secure else None)
        start_metrics(metrics_port, "broker", [broker.router.broker_ops],
                      lambda: {**broker.router.stats,
                               "services": len(broker.router.services),
                               "workers": len(broker.router.workers),
                               "in_flight": len(broker.router.in_flight)})
    except (config.ConfigError, zmq.ZMQError, OSError, ValueError) as exc:
        logging.getLogger("broker").error("cannot start the broker: %s", exc)
        sys.exit(2)
    stop_on_signals(broker.stop)
    broker.run()


if __name__ == "__main__":
    main()
