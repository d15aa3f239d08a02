"""An echo worker for broker tests: replies with the request header and payload frames.

Ops: "echo" (default) returns {"echo": header, "worker": name}; "sleep" waits `seconds`
first (to hold requests in flight); "crash" exits the process at once. Replies also carry
`caller`: [class, id] as the broker stamped them. With --key it connects with that member
key (the broker then admits it only for the key's own service, e.g. dn.echo).
"""
from __future__ import annotations

import os
import sys
import threading
import time

import click

from broker.curve import CurveKeys
from broker.process import setup_logging, stop_on_signals
from broker.service import Outcome
from broker.worker import Worker


@click.command()
@click.option("--endpoint", required=True)
@click.option("--service", default="echo")
@click.option("--name", default="echo")
@click.option("--heartbeat-interval", type=float, default=1.0)
@click.option("--capacity", type=int, default=64)
@click.option("--key", "key_file", help="Member secret key file (security on); none = off.")
@click.option("--broker-key", help="The broker's public key file (with --key).")
def main(endpoint: str, service: str, name: str, heartbeat_interval: float, capacity: int,
         key_file: str | None, broker_key: str | None) -> None:
    setup_logging("INFO")
    stop = threading.Event()
    stop_on_signals(stop.set)
    keys = CurveKeys.load(key_file, broker_key) if key_file else None
    worker = Worker(endpoint, service, heartbeat_interval=heartbeat_interval, capacity=capacity,
                    curve=keys)

    class Echo:
        """Not a declared Service: echoes any header, with or without an op."""

        def run(self, header, payload, ctx) -> Outcome:
            op = header.get("op", "echo")
            if op == "crash":
                os._exit(1)
            if op == "sleep":
                time.sleep(float(header.get("seconds", 1)))
            return Outcome({"echo": header, "worker": name,
                            "caller": [ctx.caller_class, ctx.caller_id]}, payload)

    try:
        worker.serve(Echo(), stop)
    finally:
        worker.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
