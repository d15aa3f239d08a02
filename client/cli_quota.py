"""`aegisfs quota set|get|ls|clear`: limits on the bytes and entries of directory trees,
enforced by the metadata server (EDQUOT). Setting and clearing: the superuser only;
seeing a quota: anyone who may read its directory.
"""
from __future__ import annotations

from typing import Any

import click

from .cli_params import REMOTE, SizeType
from .output import emit_json, human


def _limit(value: int | None, size: bool) -> str:
    if value is None:
        return "-"
    return human(value) if size else str(value)


def _lines(rows: list[dict]) -> list[str]:
    out = [f"{'BYTES':>10} {'LIMIT':>10} {'FILES':>8} {'LIMIT':>8}  TREE"]
    for q in rows:
        out.append(f"{human(q['bytes']):>10} {_limit(q['max_bytes'], True):>10} "
                   f"{q['files']:>8} {_limit(q['max_files'], False):>8}  {q['path']}")
    return out


def _show(rows: list[dict], as_json: bool, empty: str) -> None:
    if as_json:
        emit_json({"quotas": rows})
    elif not rows:
        click.echo(empty)
    else:
        for line in _lines(rows):
            click.echo(line)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def quota() -> None:
    """Quotas on directory trees: a limit on the bytes of the files below a directory
    and on its entries (files and directories). Every enclosing tree's quota applies;
    a copy counts its full size, as du does. Writes that would pass a limit fail with
    "Disk quota exceeded" naming the tree.

    \b
    Example:
      aegisfs quota set /projects/a --bytes 10G --files 100000
      aegisfs quota get /projects/a/src
      aegisfs quota ls
      aegisfs quota clear /projects/a
    """


@quota.command("set")
@click.argument("path", type=REMOTE)
@click.option("--bytes", "max_bytes", type=SizeType(), metavar="N",
              help="Limit on the bytes below PATH (N, or with K/M/G/T: 10G).")
@click.option("--files", "max_files", type=click.IntRange(0), metavar="N",
              help="Limit on the entries (files and directories) below PATH.")
@click.pass_obj
def quota_set(state: Any, path: str, max_bytes: int | None, max_files: int | None) -> None:
    """Set the quota of directory PATH (the superuser only); a limit not given is none."""
    if max_bytes is None and max_files is None:
        raise click.UsageError("give --bytes and/or --files (quota clear removes a quota)")
    state.fs.quota_set(path, max_bytes=max_bytes, max_files=max_files)
    click.echo(f"quota of {path}: bytes {_limit(max_bytes, True)}, "
               f"files {_limit(max_files, False)}")


@quota.command("get")
@click.argument("path", type=REMOTE)
@click.option("--json", "as_json", is_flag=True, help="Print {quotas: [...]} as JSON.")
@click.pass_obj
def quota_get(state: Any, path: str, as_json: bool) -> None:
    """The quotas that apply in directory PATH, usage and limits, enclosing ones first."""
    _show(state.fs.quota_get(path), as_json, f"no quota applies in {path}")


@quota.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print {quotas: [...]} as JSON.")
@click.pass_obj
def quota_ls(state: Any, as_json: bool) -> None:
    """Every quota on a directory you may read, with usage and limits."""
    _show(state.fs.quota_ls(), as_json, "no quotas")


@quota.command("clear")
@click.argument("path", type=REMOTE)
@click.pass_obj
def quota_clear(state: Any, path: str) -> None:
    """Remove the quota of directory PATH (the superuser only)."""
    state.fs.quota_clear(path)
    click.echo(f"quota of {path} cleared")
