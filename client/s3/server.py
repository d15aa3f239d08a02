"""Serving the gateway: uvicorn on one host/port (127.0.0.1 by default), the gateway's own
AegisClient (the owner of /.s3meta) and, with security on, one per S3 user (identity.py),
each shared by the worker threads. `python -m client.s3.server` is what run_cluster.py starts.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import uvicorn

from ..api import AegisClient
from .app import Gateway
from .credentials import Credentials
from .identity import UserClients

log = logging.getLogger(__name__)


def serve(*, host: str = "127.0.0.1", port: int = 9000, broker: str | None = None,
          keys_dir: Path | str, threads: int = 64, region: str = "us-east-1",
          log_level: str = "info", key: Path | str | None = None) -> None:
    """Run until SIGINT/SIGTERM (uvicorn's own handlers stop it cleanly). `key`: the
    gateway's own AegisFS user key (CURVE), found as the CLI finds one when not given."""
    fs = AegisClient(broker, key=key)
    # security on: every request acts as its user, with the user's own key; off: the
    # cluster takes everyone for admin anyway, so one identity it is
    users = None
    if fs.key_file is not None:
        users = UserClients(keys_dir, lambda path: AegisClient(fs.broker, key=path))
    gateway = Gateway(fs, Credentials(keys_dir), region=region, threads=threads,
                      users=users)
    threading.Thread(target=_prepare, args=(gateway,), name="s3-prepare-meta",
                     daemon=True).start()
    config = uvicorn.Config(gateway, host=host, port=port, log_level=log_level,
                            lifespan="on", access_log=False, server_header=False,
                            date_header=True, timeout_keep_alive=30)
    log.info("S3 gateway on http://%s:%d (broker %s, keys %s)", host, port, fs.broker,
             keys_dir)
    try:
        uvicorn.Server(config).run()
    finally:
        if users is not None:
            users.close()
        fs.close()


def _prepare(gateway: Gateway) -> None:
    try:
        gateway.prepare_meta()
    except Exception as exc:      # the first request tries again
        log.warning("could not make /.s3meta private yet: %s", exc)


def main() -> None:
    from .cli import s3
    s3.main(["serve", *__import__("sys").argv[1:]], prog_name="aegisfs s3")


if __name__ == "__main__":
    main()
