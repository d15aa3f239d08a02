"""`aegisfs chmod`, `chown` and `chgrp`: changing the mode, owner or group of paths (with
-R, of trees) in MDS batches, coreutils-like in reporting each failure and going on.
Mode and owner arguments are parsed by modes.py. Registered on the root group by cli.py.
"""
from __future__ import annotations

from typing import Callable

import click

from .cli_errors import Failure, exit_code_for
from .cli_params import REMOTE
from .cli_state import State, pass_state
from .output import describe


def change_attrs(state: State, command: str, paths: tuple[str, ...], recursive: bool,
                 change: Callable[[str, dict], dict]) -> None:
    """chmod/chown/chgrp over PATHS (with -R, each tree, parents first): `change(path,
    entry)` gives the fields to set. Like coreutils, a failure is reported and the rest
    still done; the exit code is 1 if anything failed."""
    fs = state.fs
    failed: list[OSError] = []
    items: list[tuple[str, dict]] = []
    for path in paths:
        try:
            if recursive:
                for p, entry in fs.walk(path, onerror=failed.append):
                    items.append((p, change(p, entry)))
            else:
                entry = fs.stat(path) if needs_entry(change) else {}
                items.append((path, change(path, entry)))
        except OSError as exc:
            failed.append(exc)
    tried = len(items) + len(failed)            # entries, plus those never reached
    if items:
        failed += [o for o in fs.set_attrs(items) if isinstance(o, OSError)]
    for err in failed:
        click.echo(f"aegisfs: {command}: {describe(err)}", err=True)
    if failed:
        raise Failure(f"{command}: {len(failed)} of {tried} failed",
                      max(exit_code_for(e) for e in failed))


def needs_entry(change: Callable) -> bool:
    """Symbolic modes are relative: they need the entry's current mode (a stat)."""
    return getattr(change, "needs_entry", True)


@click.command()
@click.argument("mode", metavar="MODE")
@click.argument("paths", nargs=-1, required=True, type=REMOTE, metavar="PATH...")
@click.option("-R", "--recursive", is_flag=True, help="Change directories and their content.")
@pass_state
def chmod(state: State, mode: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Change the mode (permissions) of each PATH. Only the owner (or admin) may.

    MODE is octal (644, 0755, 1777, 4755) or symbolic clauses separated by commas:
    [ugoa...][+-=][rwxXst...], e.g. u+x, go-w, a=r, u=rwx,g=rx,o=. With no u/g/o/a the
    umask 022 bits are left alone (+w means u+w); X is x only for directories and files
    that already have some x. Symbolic modes apply to each entry's current mode. A MODE
    that starts with '-' goes after '--' (aegisfs chmod -- -w FILE). With -R the tree is
    listed first, then changed, parents first.

    \b
    Examples:
      aegisfs chmod 640 /reports/q3.pdf
      aegisfs chmod -R go-rwx /home/alice/private
      aegisfs chmod u+x,g+rX /tools/run.sh
      aegisfs chmod 1777 /tmp
    """
    from .modes import Mode, ModeError, parse_mode
    try:
        parsed: Mode = parse_mode(mode)
    except ModeError as exc:
        raise click.BadParameter(str(exc), param_hint="MODE") from None

    def change(path: str, entry: dict) -> dict:
        return {"mode": parsed.apply(int(entry.get("mode") or 0), entry.get("type") == "dir")}
    change.needs_entry = parsed.needs_current   # type: ignore[attr-defined]
    change_attrs(state, "chmod", paths, recursive, change)


@click.command()
@click.argument("owner", metavar="OWNER[:GROUP]")
@click.argument("paths", nargs=-1, required=True, type=REMOTE, metavar="PATH...")
@click.option("-R", "--recursive", is_flag=True, help="Change directories and their content.")
@pass_state
def chown(state: State, owner: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Change the owner and/or group of each PATH.

    Only admin may give a file to another user; the owner may change the group to one
    it belongs to (today: its own name's group). OWNER: keeps the group; :GROUP changes
    only the group (as chgrp).

    \b
    Examples:
      aegisfs chown alice /home/alice
      aegisfs chown -R alice:staff /projects/web
      aegisfs chown :staff /projects/web/index.html
    """
    from .modes import ModeError, parse_owner
    try:
        new_owner, new_group = parse_owner(owner)
    except ModeError as exc:
        raise click.BadParameter(str(exc), param_hint="OWNER[:GROUP]") from None
    fields = {"owner": new_owner, "group": new_group}
    change_attrs(state, "chown", paths, recursive, _fixed(fields))


@click.command()
@click.argument("group", metavar="GROUP")
@click.argument("paths", nargs=-1, required=True, type=REMOTE, metavar="PATH...")
@click.option("-R", "--recursive", is_flag=True, help="Change directories and their content.")
@pass_state
def chgrp(state: State, group: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Change the group of each PATH: the owner, to a group it belongs to, or admin.

    \b
    Examples:
      aegisfs chgrp staff /projects/web
      aegisfs chgrp -R staff /projects
    """
    if not group or ":" in group:
        raise click.BadParameter(f"invalid group {group!r}", param_hint="GROUP")
    change_attrs(state, "chgrp", paths, recursive, _fixed({"group": group}))


def _fixed(fields: dict) -> Callable[[str, dict], dict]:
    def change(path: str, entry: dict) -> dict:
        return dict(fields)
    change.needs_entry = False   # type: ignore[attr-defined]
    return change
