"""`aegisfs user add|ls|rm` and `aegisfs whoami`: the users of a cluster and their keys.

User commands act on the cluster's keys directory on this host (--keys, else [security]
keys, else ./data/keys): run them where the broker's keys directory is. The broker
re-reads the registry within a second, so a new user can connect at once and a removed
one is cut off within seconds. `whoami` asks the broker who it takes us for.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from broker import curve
from broker.keys import KeyStore

from .output import emit_json

KEYS_HELP = ("The cluster's keys directory [default: [security] keys from the config, "
             "data/keys].")


def _store(state, keys_dir: str | None) -> KeyStore:
    directory = Path(keys_dir) if keys_dir else curve.keys_dir(state.cfg["security"])
    if not (directory / "registry.json").exists():
        raise FileNotFoundError(2, f"no key registry in {directory} (not a cluster's keys "
                                "directory: start the cluster once, or give --keys DIR on "
                                "the broker's host)", str(directory))
    return KeyStore(directory)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def user() -> None:
    """Manage the users who may connect (their CURVE keys).

    These commands change the keys directory of the cluster on this host, so run them
    where the broker runs (the broker picks changes up within a second). A user's key
    file is all that user needs: give it to them (keep it mode 0600) and they connect
    with `aegisfs --key FILE ...` or AEGISFS_KEY=FILE.

    \b
    Example:
      aegisfs user add alice
      aegisfs user ls
      aegisfs user rm alice
    """


@user.command("add")
@click.argument("name")
@click.option("--superuser", is_flag=True, help="May do anything (like admin).")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False), help=KEYS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print {user, key_file} as JSON.")
@click.pass_obj
def user_add(state, name: str, superuser: bool, keys_dir: str | None, as_json: bool) -> None:
    """Create user NAME and write its secret key file (mode 0600); print where.

    NAME: 1-32 of a-z 0-9 _ -, starting with a letter or _. The key file also names the
    broker's public key, so it is the only file the user needs.

    \b
    Example:
      aegisfs user add alice
      scp data/keys/users/alice.key_secret alice@laptop:.aegisfs.key
      aegisfs --key ~/.aegisfs.key ls /      # on alice's laptop
    """
    store = _store(state, keys_dir)
    path = store.add_user(name, superuser=superuser).resolve()
    if as_json:
        emit_json({"user": name, "key_file": str(path)})
    else:
        click.echo(f"created user {name}{' (superuser)' if superuser else ''}; key file "
                   f"{path}")


@user.command("ls")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False), help=KEYS_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def user_ls(state, keys_dir: str | None, as_json: bool) -> None:
    """List the users: name, superuser, when created, key file.

    \b
    Example:
      aegisfs user ls --json
    """
    store = _store(state, keys_dir)
    rows: list[dict[str, Any]] = [{"user": u.name, "superuser": u.superuser, "created": u.created,
             "key_file": str(store.user_key_path(u.name).resolve())}
            for u in store.users().values()]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        click.echo(f"{r['user']:<20} {'superuser' if r['superuser'] else 'user':<9} "
                   f"{created}  {r['key_file']}")


@user.command("rm")
@click.argument("name")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False), help=KEYS_HELP)
@click.pass_obj
def user_rm(state, name: str, keys_dir: str | None) -> None:
    """Remove user NAME and delete its key files. Its key stops working for new
    connections at once and for open ones within a few seconds (EACCES).

    \b
    Example:
      aegisfs user rm alice
    """
    _store(state, keys_dir).remove_user(name)
    click.echo(f"removed user {name}; its key is revoked")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print {user, class} as JSON.")
@click.pass_obj
def whoami(state, as_json: bool) -> None:
    """Who the cluster takes you for: the user of your key ("admin" for everyone when the
    cluster runs with security off), as the broker stamps it on your requests.

    \b
    Example:
      aegisfs whoami
      aegisfs --key alice.key_secret whoami --json
    """
    me = state.fs.whoami()
    if as_json:
        emit_json({"user": me.get("user"), "class": me.get("class")})
    else:
        click.echo(me.get("user"))
