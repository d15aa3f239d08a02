"""`python -m mds`: run the AegisFS metadata server."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from broker import config, curve
from broker.process import (metrics_option, security_flags, security_options, setup_logging,
                            start_metrics, stop_on_signals)


def _store_dir(security: dict) -> Path | None:
    """The keys directory when it holds the whole key store (its registry), else None."""
    directory = curve.keys_dir(security)
    return directory if (directory / "registry.json").exists() else None


def _drop_alone_mark(settings) -> int:
    """The operator's way out when the lone active's disk is lost: accept the loss."""
    from .etcd import EtcdUnavailable, Gateway
    log = logging.getLogger("mds")
    if not settings.ha_etcd:
        log.error("--drop-alone-mark needs [ha] etcd (--etcd URL)")
        return 2
    key = settings.ha_key.encode() + b"/alone"
    try:
        gateway = Gateway(settings.ha_etcd)
        mark = gateway.get(key)
        if mark is None:
            log.info("no ran-alone mark at %s", key.decode())
            return 0
        gateway.delete(key)
    except EtcdUnavailable as exc:
        log.error("cannot drop the ran-alone mark: %s", exc)
        return 1
    log.warning("dropped the ran-alone mark %s (%s): a standby may now take over without "
                "the writes that MDS acknowledged alone", key.decode(),
                mark.value.decode(errors="replace"))
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(file_okay=False), help="Metadata directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config.")
@click.option("--base-port", type=int, help="Broker endpoints derived from base port P.")
@click.option("--broker-host", metavar="HOST", help="The broker's address, with --base-port "
              "([broker] host, default 127.0.0.1).")
@click.option("--broker-worker", help="Broker worker endpoint (register here).")
@click.option("--events", help="Broker XSUB endpoint to publish events to.")
@click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats "
              "(DataNodes are declared dead after 5 intervals unless --dead-after).")
@click.option("--replication", type=int, help="Default replication factor R.")
@click.option("--block-size", type=int, help="Default block size in bytes.")
@click.option("--lease", type=float, help="Seconds a draft lives without renewal.")
@click.option("--dead-after", type=float, help="A DataNode silent this long is down.")
@click.option("--safemode-timeout", type=float, default=30.0, show_default=True,
              help="Leave safe mode after this long even if some DataNodes never reported.")
@click.option("--orphan-grace", type=float, default=60.0, show_default=True,
              help="Seconds an unknown block may sit on a DataNode before it is deleted.")
@click.option("--delete-grace", type=float, default=5.0, show_default=True,
              help="Seconds a replaced or removed file's blocks stay readable on the "
                   "DataNodes (for readers that opened it just before).")
@click.option("--salvage", is_flag=True, help="Cut the log at the first damaged record "
              "instead of refusing to start (loses what follows it; logged loudly).")
@click.option("--etcd", metavar="URL", help="Lead only while holding the leader lease in "
              "etcd at URL ([ha] etcd; default off).")
@click.option("--ha-name", metavar="NAME", help="This MDS's name in the leader key "
              "([ha] name; default <hostname>:<pid>).")
@click.option("--standby", "standby_mode", is_flag=True, help="Run as the standby: take the "
              "active's WAL batches on [ha] standby (--standby-endpoint), serve no client.")
@click.option("--standby-endpoint", metavar="ENDPOINT", help="The standby's endpoint ([ha] "
              "standby): the active ships its WAL there, a standby binds it.")
@click.option("--ha-peer", metavar="ENDPOINT", help="The other MDS's standby endpoint ([ha] "
              "peer): a standby that takes over (--standby with --etcd) ships there.")
@click.option("--drop-alone-mark", is_flag=True, help="Delete the ran-alone mark in etcd "
              "([ha] key + /alone) and exit: lets a standby take over without the writes "
              "the lone active acknowledged (only when that MDS's disk is lost for good).")
@security_options(member=True)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-file", type=click.Path(dir_okay=False))
@metrics_option
def main(data_dir, config_path, base_port, broker_host, broker_worker, events, heartbeat_interval,
         replication, block_size, lease, dead_after, safemode_timeout, orphan_grace,
         delete_grace, salvage, etcd, ha_name, standby_mode, standby_endpoint, ha_peer, drop_alone_mark, security, keys_dir, key_file, broker_key,
         log_level, log_file, metrics_port) -> None:
    """Serve the AegisFS namespace (service "mds") with a write-ahead log.

    With security on (the default) it connects with the member key of "mds"
    (<keys>/mds.key_secret) and trusts the broker key <keys>/broker.key.

    Example: python -m mds --data-dir data/mds --base-port 5550 --keys data/keys
    """
    setup_logging(log_level, log_file)
    from .store_files import RecoveryError
    from .quota import Limits
    from .server import MetadataServer, Settings
    from .wal import WalCorruption
    broker_flags = config.broker_flags(base_port, host=broker_host,
                                       worker=broker_worker, events_in=events,
                                       heartbeat_interval=heartbeat_interval)
    try:
        cfg = config.load(config_path, {
            "broker": broker_flags,
            "mds": {"data_dir": data_dir, "replication": replication, "block_size": block_size,
                    "lease": lease, "dead_after": dead_after},
            "ha": {"etcd": etcd, "name": ha_name, "standby": standby_endpoint,
                   "peer": ha_peer},
            "security": security_flags(security, keys_dir, key_file, broker_key)})
        b, m, ha = cfg["broker"], cfg["mds"], cfg["ha"]
        keys = curve.member_keys(cfg["security"], "mds")
        hb = float(b["heartbeat_interval"])
        settings = Settings(
            data_dir=Path(m["data_dir"]), worker_endpoint=b["worker"],
            events_endpoint=b["events_in"], replication=int(m["replication"]),
            block_size=int(m["block_size"]), lease=float(m["lease"]), heartbeat=hb,
            liveness=int(b["heartbeat_liveness"]),
            dead_after=float(dead_after or (5 * hb if heartbeat_interval else m["dead_after"])),
            checkpoint_records=int(m["checkpoint_records"]),
            checkpoint_bytes=int(m["checkpoint_bytes"]), salvage=salvage,
            safemode_timeout=safemode_timeout, orphan_grace=orphan_grace,
            delete_grace=delete_grace, curve=keys,
            limits=Limits(user_blocks=int(m["user_blocks"]), user_bytes=int(m["user_bytes"]),
                          draft_blocks=int(m["draft_blocks"]),
                          draft_bytes=int(m["draft_bytes"])),
            cap_read_ttl=float(m["cap_read_ttl"]), cap_write_ttl=float(m["cap_write_ttl"]),
            key_rotation=float(m["key_rotation"]),
            ha_etcd=str(ha["etcd"]), ha_key=str(ha["key"]), ha_lease_ttl=int(ha["lease_ttl"]),
            ha_name=str(ha["name"]), ha_standby=str(ha["standby"]),
            ha_standby_timeout=float(ha["standby_timeout"]), ha_peer=str(ha["peer"]),
            # receipts derive from the cluster secret of the key store when this host has
            # the whole store (a local cluster); else from a secret in the data directory
            keys_dir=_store_dir(cfg["security"]) if keys is not None else None)
        if drop_alone_mark:
            sys.exit(_drop_alone_mark(settings))
        if standby_mode:
            if not settings.ha_standby:
                raise config.ConfigError("--standby needs [ha] standby (--standby-endpoint)")
            from .standby import Standby
            standby = Standby(settings)
            # served while a standby too (its position and epoch); requests once it leads
            standby.metrics = start_metrics(metrics_port, "mds", [])
            stop_on_signals(standby.stop)
            if not standby.run():
                return
            server = standby.take_over()     # elected: the active, in this process
            if standby.metrics:
                from broker import metrics
                server.ops.service.observe = metrics.observe
                server.metrics = True
            stop_on_signals(server.stop)
            if standby._stop:                # a signal came during the takeover
                server.stop()
        else:
            server = MetadataServer(settings)
            server.metrics = start_metrics(metrics_port, "mds", [server.ops.service])
    except (WalCorruption, RecoveryError) as exc:
        logging.getLogger("mds").critical("cannot recover the metadata: %s. Nothing was "
                                          "changed. Start with --salvage to cut the log at "
                                          "the damage (loses what follows it).", exc)
        sys.exit(3)
    except (config.ConfigError, OSError, ValueError) as exc:   # ValueError: bad lifetimes
        logging.getLogger("mds").error("cannot start the MDS: %s", exc)
        sys.exit(2)
    stop_on_signals(server.stop)
    server.run()


if __name__ == "__main__":
    main()
