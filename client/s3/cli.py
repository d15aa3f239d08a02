"""`aegisfs s3 serve` and `aegisfs s3 credentials`: the gateway's command line group,
registered on the main CLI by one line in client/cli.py.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from .credentials import Credentials, default_keys_dir

KEYS_HELP = "Keys directory holding s3-credentials.json ($AEGISFS_KEYS_DIR, else data/keys)."


@click.group("s3")
def s3() -> None:
    """The S3-compatible gateway (docs/s3.md).

    \b
    Example:
      aegisfs s3 credentials --user alice --keys-dir data/keys
      aegisfs s3 serve --port 9000 --keys-dir data/keys
    """


@s3.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option("--broker", default=None, help="Broker endpoint ($AEGISFS_BROKER, else config).")
@click.option("--keys-dir", type=click.Path(file_okay=False), default=None, help=KEYS_HELP)
@click.option("--key", type=click.Path(dir_okay=False), default=None,
              help="The gateway's AegisFS user key (default: as the CLI finds one).")
@click.option("--threads", default=64, show_default=True,
              help="Worker threads: requests served at once.")
@click.option("--region", default="us-east-1", show_default=True)
def serve_cmd(host: str, port: int, broker: str | None, keys_dir: str | None,
              key: str | None, threads: int, region: str) -> None:
    """Serve S3 over HTTP on HOST:PORT, backed by the cluster.

    \b
    Example:
      aegisfs s3 serve --port 9000 --broker tcp://127.0.0.1:5550 --keys-dir data/keys
    """
    from .server import serve
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    serve(host=host, port=port, broker=broker, keys_dir=keys_dir or default_keys_dir(),
          threads=threads, region=region, key=key)


@s3.command("credentials")
@click.option("--user", default=None, help="AegisFS user (default $USER).")
@click.option("--keys-dir", type=click.Path(file_okay=False), default=None, help=KEYS_HELP)
@click.option("--endpoint", default="http://127.0.0.1:9000", show_default=True,
              help="The gateway's URL, printed for the client's configuration.")
@click.option("--new", is_flag=True, help="Create another key even if the user has one.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def credentials_cmd(user: str | None, keys_dir: str | None, endpoint: str, new: bool,
                    as_json: bool) -> None:
    """Show (or create) the S3 access key of a user.

    \b
    Example:
      aegisfs s3 credentials --user alice --keys-dir data/keys --json
    """
    user = user or os.environ.get("USER") or "admin"
    creds = Credentials(Path(keys_dir) if keys_dir else default_keys_dir())
    access, secret = creds.create(user) if new else creds.get_or_create(user)
    out = {"access_key_id": access, "secret_access_key": secret, "endpoint": endpoint,
           "user": user}
    if as_json:
        click.echo(json.dumps(out))
    else:
        for k, v in out.items():
            click.echo(f"{k}: {v}")
