"""The `aegisfs` command line (also `python -m client.cli`): a thin click layer over
AegisClient. Results go to stdout (raw bytes for `read`); errors go to stderr as one line
naming the path and the reason, with a non-zero exit code (tracebacks only with --debug).

Which files a put or get moves is transfer_plan.py; how results look is output.py.
Defaults the flags do not give come from the [client] config section (broker/config.py):
flag > AEGISFS_CLIENT_* environment > config file.

A call should start fast (issue 19: each one is a new process): the API, zmq, the config
loader, the transfer planner and the command groups kept in other modules (`LAZY`) are
imported only by the commands that use them. tests/unit/test_client_cli.py holds this.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from .output import (Progress, describe, drain_text, emit_json, fsck_lines, human, ls_line,
                     node_lines, role_lines, stat_lines, status_lines)

if TYPE_CHECKING:
    from .api import AegisClient

EXIT_FAILED = 1          # the operation failed (missing file, bad path, unhealthy fsck ...)
EXIT_USAGE = 2           # click's own code for bad arguments
EXIT_UNAVAILABLE = 3     # the cluster cannot be reached (broker, MDS or DataNodes down)
EXIT_INTERNAL = 70       # a bug: EX_SOFTWARE

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------------------------------
# Errors

class Failure(click.ClickException):
    """An expected failure: one line on stderr and an exit code, no traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        # click's stub calls exit_code a ClassVar, but ClickException.main() reads it from
        # the instance (self.exit_code), so each failure can carry its own code
        self.exit_code = exit_code  # type: ignore[misc]

    def show(self, file: Any = None) -> None:
        click.echo(f"aegisfs: {self.message}", err=True)


def exit_code_for(exc: OSError) -> int:
    from broker.client import BrokerUnavailable
    if isinstance(exc, (BrokerUnavailable, ConnectionError, TimeoutError)):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class AegisGroup(click.Group):
    """Turns exceptions from any command into one-line errors (see module docstring), and
    finds the commands named in `lazy` ({name: "module:attribute"}) when first asked for."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # the reader went away (`aegisfs read /x | head`): not an error worth a message
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(EXIT_FAILED)
        except OSError as exc:
            if _debug(ctx):
                raise
            command = ctx.invoked_subcommand or "aegisfs"
            raise Failure(f"{command}: {describe(exc)}", exit_code_for(exc)) from None
        except Exception as exc:
            if _debug(ctx):
                raise
            raise Failure(f"unexpected error: {exc.__class__.__name__}: {exc} "
                          "(run with --debug for the traceback)", EXIT_INTERNAL) from None


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.obj and ctx.obj.debug)


# ---------------------------------------------------------------------------------------
# Shared state and parameter types

@dataclass
class State:
    broker: str | None
    timeout: float | None
    config: str | None
    debug: bool
    key: str | None = None
    retry_deadline: float | None = None
    _cfg: dict | None = field(default=None, repr=False)
    _fs: AegisClient | None = field(default=None, repr=False)

    @property
    def cfg(self) -> dict:
        """The merged configuration (file < environment), loaded once."""
        if self._cfg is None:
            from broker import config as broker_config
            try:
                self._cfg = broker_config.load(self.config)
            except broker_config.ConfigError as exc:
                raise Failure(f"configuration: {exc}", EXIT_USAGE) from None
        return self._cfg

    def option(self, key: str, flag: Any) -> Any:
        """A [client] setting: the flag when given, else the configuration's."""
        return flag if flag is not None else self.cfg["client"][key]

    @property
    def fs(self) -> AegisClient:
        if self._fs is None:
            from .api import AegisClient
            connect = float(self.cfg["client"]["connect_timeout"])
            if self.timeout:        # a short --timeout also bounds reaching the broker
                connect = min(connect, self.timeout)
            self._fs = AegisClient(self.broker, timeout=self.timeout, config=self.cfg,
                                   connect_timeout=connect, key=self.key,
                                   retry_deadline=self.retry_deadline, on_wait=_say_waiting)
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()


pass_state = click.make_pass_decorator(State)
_waited: list[str] = []


def _say_waiting(state: str, exc: OSError | None) -> None:
    """A user sees one line when the CLI starts waiting out an MDS restart, and one
    when it is over; the retries themselves stay quiet."""
    if state == "waiting" and not _waited:
        _waited.append("waiting")
        click.echo(f"aegisfs: waiting for the metadata server ({exc})...", err=True)
    elif state == "back" and _waited and _waited[-1] == "waiting":
        _waited.append("back")
        click.echo("aegisfs: the metadata server is back", err=True)

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)


class SizeType(click.ParamType):
    """A byte count: 1048576, 64K, 4M, 4MiB, 1G."""
    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size (examples: 65536, 64K, 4M)", param, ctx)
        n = int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")
        if n <= 0:
            self.fail("size must be positive", param, ctx)
        return n


class OctalMode(click.ParamType):
    """An octal mode: 755, 0700, 1777."""
    name = "octal"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        from .modes import ModeError, parse_mode
        try:
            mode = parse_mode(str(value))
        except ModeError:
            mode = None
        if mode is None or mode.absolute is None:
            self.fail(f"{value!r} is not an octal mode (examples: 755, 0700)", param, ctx)
        return mode.absolute


class RemotePath(click.ParamType):
    """A path in AegisFS; shell completion asks the cluster for names (quietly)."""
    name = "path"

    def shell_complete(self, ctx: click.Context, param: Any, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        from .api import AegisClient
        parent, _, stem = (incomplete or "/").rpartition("/")
        parent = parent or "/"
        try:
            root = ctx.find_root().params
            with AegisClient(root.get("broker"), timeout=1.0, connect_timeout=1.0,
                             key=root.get("key")) as fs:
                entries = fs.ls(parent, detail=True)
        except Exception:       # completion must never print an error
            return []
        base = parent.rstrip("/")
        return [CompletionItem(f"{base}/{e['name']}" + ("/" if e["type"] == "dir" else ""),
                               type="plain")
                for e in entries if e["name"].startswith(stem)]


REMOTE = RemotePath()
OCTAL_MODE = OctalMode()
LOCAL_IN = click.Path(allow_dash=True)      # a missing file is reported like any error
LOCAL_OUT = click.Path(allow_dash=True)


# ---------------------------------------------------------------------------------------
# Commands

# Command groups with modules of their own: user add/ls/rm and whoami (the key store, not
# the file system), the S3 gateway, the mount and tree quotas.
LAZY = {"user": "client.cli_users:user", "whoami": "client.cli_users:whoami",
        "s3": "client.s3.cli:s3", "mount": "client.mount.cli:mount",
        "umount": "client.mount.cli:umount", "quota": "client.cli_quota:quota"}


@click.group(cls=AegisGroup, context_settings=CONTEXT, lazy=LAZY)
@click.option("--broker", envvar="AEGISFS_BROKER", metavar="ENDPOINT",
              help="Broker client endpoint [env AEGISFS_BROKER; default from the config].")
@click.option("--key", type=click.Path(), metavar="FILE",
              help="Your secret key file [env AEGISFS_KEY; else [security] key from the "
                   "config; else data/keys/users/admin.key_secret of a local cluster].")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Seconds to wait for each request [default from the config: 30].")
@click.option("--retry-deadline", type=click.FloatRange(0), metavar="SECONDS",
              envvar="AEGISFS_CLIENT_RETRY_DEADLINE",
              help="Seconds to wait out a metadata server restart before failing "
                   "[default from the config: 60; 0: fail at once].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="AEGISFS_CONFIG", help="TOML config [default configs/cluster.toml].")
@click.option("-v", "--verbose", is_flag=True, help="Log failovers and retries to stderr.")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks of unexpected errors.")
@click.version_option(package_name="aegisfs", prog_name="aegisfs")
@click.pass_context
def cli(ctx: click.Context, broker: str | None, key: str | None, timeout: float | None,
        retry_deadline: float | None, config_path: str | None, verbose: bool,
        debug: bool) -> None:
    """AegisFS: a distributed file system. Paths are absolute (/dir/file).

    Every connection is authenticated with your key (CURVE). Run from the directory
    where `make run` started a local cluster, the admin key is found by itself.

    \b
    Example:
      aegisfs put photo.png /uploads/photo.png
      aegisfs --broker tcp://10.0.0.5:5550 --key ~/.aegisfs.key ls -l /uploads
    Shell completion: eval "$(aegisfs completion bash)"
    """
    # Failovers are the system working as designed: quiet unless asked, so an error stays
    # one line on stderr.
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="aegisfs: %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    state = ctx.obj = State(broker, timeout, config_path, debug, key,
                            retry_deadline=retry_deadline)
    ctx.call_on_close(state.close)


@cli.command()
@click.argument("path", type=REMOTE)
@click.argument("text")
@click.option("--replication", "-R", type=click.IntRange(1, 255), help="Replicas per block.")
@pass_state
def write(state: State, path: str, text: str, replication: int | None) -> None:
    """Store TEXT (UTF-8) as the file PATH, replacing it if it exists.

    \b
    Example:
      aegisfs write /hello "Hello AegisFS!"
    """
    result = state.fs.write_bytes(path, text.encode("utf-8"), replication=replication)
    click.echo(f"wrote {result.get('path', path)} ({result.get('size', len(text))} bytes)")


@cli.command()
@click.argument("path", type=REMOTE)
@click.option("--offset", type=click.IntRange(0), default=0, help="First byte to read.")
@click.option("--length", type=click.IntRange(0), help="Bytes to read [default: to the end].")
@pass_state
def read(state: State, path: str, offset: int, length: int | None) -> None:
    """Write the content of PATH to stdout (raw bytes, binary-safe).

    \b
    Example:
      aegisfs read /hello
      aegisfs read /uploads/song.wav > song.wav
    """
    out = sys.stdout.buffer
    if offset or length is not None:
        out.write(state.fs.read_bytes(path, offset, length))
    else:
        state.fs.get(path, out)
    out.flush()


@cli.command()
@click.argument("path", type=REMOTE)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def stat(state: State, path: str, as_json: bool) -> None:
    """Show a file's size, mode, owner, group, times, replication and blocks (or a
    directory's summary). The block list needs read permission on the file.

    \b
    Example:
      aegisfs stat /uploads/image.png --json
    """
    info = state.fs.stat(path)
    if as_json:
        keep = ("path", "type", "size", "replication", "block_size", "mtime", "ctime",
                "atime", "mode", "owner", "group", "blocks", "entries")
        emit_json({k: info[k] for k in keep if k in info})
        return
    for line in stat_lines(info, path):
        click.echo(line)


@cli.command()
@click.argument("path", type=REMOTE, default="/")
@click.option("-l", "long", is_flag=True,
              help="Long listing: mode, owner, group, replication, size, mtime.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def ls(state: State, path: str, long: bool, as_json: bool) -> None:
    """List a directory (default /). Directories end with '/'. Needs read permission
    on the directory; --json gives mode as a number (the 12 permission bits).

    \b
    Example:
      aegisfs ls -l /uploads
      drwxr-x--- alice    alice      -            0  2026-12-01 10:00:00  raw/
      -rw-r--r-- alice    alice      2       183402  2026-12-01 10:02:13  image.png
    """
    entries = state.fs.ls(path, detail=True)
    if as_json:
        emit_json(entries)
        return
    for e in entries:
        click.echo(ls_line(e, long))


@cli.command()
@click.argument("path", type=REMOTE)
@click.option("-r", "--recursive", is_flag=True, help="Remove a directory and its content.")
@pass_state
def rm(state: State, path: str, recursive: bool) -> None:
    """Remove a file (or, with -r, a directory tree). Its blocks are freed in the background.

    \b
    Example:
      aegisfs rm /demo
      aegisfs rm -r /uploads
    """
    state.fs.rm(path, recursive=recursive)
    click.echo(f"removed {path}")


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=LOCAL_IN)
@click.argument("remote", type=REMOTE)
@click.option("--recursive", "-r", is_flag=True, help="Upload directories with their contents.")
@click.option("--replication", "-R", type=click.IntRange(1, 255), help="Replicas per block.")
@click.option("--block-size", "-b", type=SizeType(), help="Block size, e.g. 4M or 65536.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on a terminal.")
@pass_state
def put(state: State, sources: tuple[str, ...], remote: str, recursive: bool,
        replication: int | None, block_size: int | None, progress: bool | None) -> None:
    """Upload local files to REMOTE. Missing parent directories are created; an existing
    file is replaced atomically.

    With one SOURCE file ('-' for stdin), REMOTE is the new file's path; a REMOTE ending in
    '/' or naming a directory receives the file under its own name. With several SOURCES,
    or a directory and -r, REMOTE is a directory that receives each under its own name
    (as cp -r does). Small files are sent many at a time, which is much faster than one
    by one. A file that fails is reported and the others go on; the exit code is non-zero
    if any failed.

    \b
    Example:
      aegisfs put image.png /uploads/image.png
      aegisfs put --replication 3 --block-size 8M big.iso /isos/
      aegisfs put -r photos/ notes.txt /backup
    """
    from . import transfer_plan as plan
    fs = state.fs
    progress = state.option("progress", progress)
    if plan.single_upload(sources):
        local = sources[0]
        remote = plan.upload_target(fs, local, remote)
        src = sys.stdin.buffer if local == "-" else local
        with Progress(f"put {remote}", progress) as bar:
            result = fs.put(src, remote, replication=replication, block_size=block_size,
                            progress=bar)
        click.echo(f"stored {result.get('path', remote)} ({result.get('size', '?')} bytes)")
        return
    with planning():
        files, empty_dirs = plan.plan_upload(sources, remote, recursive,
                                             warn=lambda m: click.echo(m, err=True))
    total = sum(size for _, _, size in files)
    with Progress(f"put {len(files)} files", progress) as bar:
        outcomes = fs.put_many(((local, dest) for local, dest, _ in files),
                               replication=replication, block_size=block_size,
                               errors="return",
                               progress=(lambda n, done: bar(done, total)) if bar else None)
    for d in empty_dirs:
        try:
            fs.mkdir(d, parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            outcomes.append(exc)
    finish_many("put", outcomes, "stored", remote.rstrip("/") or "/")


@contextlib.contextmanager
def planning() -> Iterator[None]:
    """A transfer plan that cannot be made is an expected failure (exit 2 for usage)."""
    from . import transfer_plan as plan
    try:
        yield
    except plan.PlanError as exc:
        raise Failure(exc.message, EXIT_USAGE if exc.usage else EXIT_FAILED) from None


def finish_many(command: str, outcomes: list, verb: str, where: str) -> None:
    """Report a many-file command: each failure on stderr, then what was done, then a
    non-zero exit if any failed."""
    failed = [o for o in outcomes if isinstance(o, OSError)]
    for exc in failed:
        click.echo(f"aegisfs: {command}: {describe(exc)}", err=True)
    size = sum(int(o.get("size") or 0) for o in outcomes if isinstance(o, dict))
    click.echo(f"{verb} {len(outcomes) - len(failed)} files ({human(size)}) under {where}")
    if failed:
        raise Failure(f"{command}: {len(failed)} of {len(outcomes)} failed",
                      max(exit_code_for(exc) for exc in failed))


@cli.command()
@click.argument("remotes", nargs=-1, required=True, type=REMOTE)
@click.argument("local", type=LOCAL_OUT)
@click.option("--recursive", "-r", is_flag=True, help="Download directories with their contents.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on a terminal.")
@pass_state
def get(state: State, remotes: tuple[str, ...], local: str, recursive: bool,
        progress: bool | None) -> None:
    """Download files from AegisFS. A local file appears only once complete and verified.

    With one REMOTE file, LOCAL is the file to write ('-' for stdout; a directory receives
    it under its own name). With several REMOTEs, or a directory and -r, LOCAL is a
    directory (created if missing) that receives each under its own name. Small files are
    fetched many at a time. A file that fails is reported and the others go on.

    \b
    Example:
      aegisfs get /uploads/image.png recovered.png
      aegisfs get -r /backup/photos ./restore
    """
    from . import transfer_plan as plan
    fs = state.fs
    progress = state.option("progress", progress)
    if plan.single_download(fs, remotes, recursive):
        remote = remotes[0]
        if local == "-":
            fs.get(remote, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        local = plan.download_target(remote, local)
        with Progress(f"get {remote}", progress) as bar:
            try:
                n = fs.get(remote, local, progress=bar)
            except IsADirectoryError:
                raise Failure(f"get: {remote}: is a directory (use -r to download it)",
                              EXIT_USAGE) from None
        click.echo(f"wrote {local} ({n} bytes)")
        return
    with planning():
        files, dirs, missing = plan.plan_download(fs, remotes, local, recursive)
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    total = sum(size for _, _, size in files)
    with Progress(f"get {len(files)} files", progress) as bar:
        outcomes = fs.get_many(((remote, dest) for remote, dest, _ in files), errors="return",
                               progress=(lambda n, done: bar(done, total)) if bar else None)
    finish_many("get", outcomes + missing, "wrote", local)


@cli.command()
@click.argument("path", type=REMOTE)
@click.option("-p", "--parents", is_flag=True, help="Create parents; no error if it exists.")
@click.option("-m", "--mode", "mode", type=OCTAL_MODE, metavar="OCTAL",
              help="Mode of the new directory, less the umask 022 [default: 777].")
@pass_state
def mkdir(state: State, path: str, parents: bool, mode: int | None) -> None:
    """Create a directory, owned by you.

    \b
    Example:
      aegisfs mkdir -p /projects/2024/raw
      aegisfs mkdir -m 750 /projects/private
    """
    state.fs.mkdir(path, parents=parents, mode=mode)


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


@cli.command()
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


@cli.command()
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


@cli.command()
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


@cli.command()
@click.argument("src", type=REMOTE)
@click.argument("dst", type=REMOTE)
@pass_state
def mv(state: State, src: str, dst: str) -> None:
    """Rename or move SRC to DST (into DST when it is a directory).

    \b
    Example:
      aegisfs mv /uploads/image.png /archive/
    """
    final = state.fs.mv(src, dst)
    click.echo(f"moved {src} -> {final}")


@cli.command()
@click.argument("src", type=REMOTE)
@click.argument("dst", type=REMOTE)
@click.option("-n", "--no-clobber", is_flag=True,
              help="Fail instead of replacing an existing DST.")
@pass_state
def cp(state: State, src: str, dst: str, no_clobber: bool) -> None:
    """Copy file SRC to DST inside the cluster (into DST when it is a directory).

    Server side: the copy shares SRC's blocks, no byte leaves the DataNodes, and it
    takes one request however big the file. Use put/get to copy to or from local disk.

    \b
    Example:
      aegisfs cp /data/model.bin /backup/model.bin
    """
    final = state.fs.copy(src, dst, exclusive=no_clobber)
    click.echo(f"copied {src} -> {final}")


@cli.command()
@click.argument("path", type=REMOTE, default="/")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def du(state: State, path: str, as_json: bool) -> None:
    """Bytes, files and directories under PATH (default /).

    \b
    Example:
      aegisfs du /uploads
    """
    usage = state.fs.du(path)
    if as_json:
        emit_json({"path": path, **usage})
        return
    click.echo(f"{human(usage.get('bytes', 0)):>10}  {usage.get('bytes', 0)} bytes  "
               f"{usage.get('files', 0)} files  {usage.get('dirs', 0)} dirs  {path}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """The DataNodes (up/down, capacity, used, blocks) and the replication health;
    for a cluster run by run_cluster.py here, its roles, restarts and why they stopped.

    \b
    Example:
      aegisfs status
    """
    # a local cluster's supervisor (run_cluster.py) says which roles restarted and why:
    # shown first, since it is what explains an MDS that does not answer
    from broker.curve import keys_dir
    from broker.supervise import read_state
    supervised = read_state(keys_dir(state.cfg.get("security", {})).parent)
    if supervised and not as_json:
        for line in role_lines(supervised["roles"]):
            click.echo(line)
    info = {**state.fs.status(), "brokers": state.fs.brokers()}
    if as_json:
        emit_json({**info, "roles": supervised["roles"]} if supervised else info)
        return
    for line in status_lines(info):
        click.echo(line)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--repair", is_flag=True, help="Schedule re-replication and orphan deletion.")
@pass_state
def fsck(state: State, as_json: bool, repair: bool) -> None:
    """Check every block: missing, under-replicated, corrupt and orphan blocks. Exits 1
    when the file system is not healthy.

    \b
    Example:
      aegisfs fsck --json
      aegisfs fsck --repair
    """
    report = state.fs.fsck(repair=repair)
    healthy = bool(report.get("healthy"))
    if as_json:
        emit_json({**report, "healthy": healthy})
    else:
        for line in fsck_lines(report, healthy):
            click.echo(line)
    if not healthy:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.group()
def node() -> None:
    """The DataNodes: list them, drain one before removing it.

    \b
    Example:
      aegisfs node ls
      aegisfs node drain dn3 --wait
    """


@node.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def node_ls(state: State, as_json: bool) -> None:
    """Every DataNode the MDS knows: up/down, usage, and drain progress.

    \b
    Example:
      aegisfs node ls
    """
    nodes = state.fs.status().get("nodes") or []
    if as_json:
        emit_json(nodes)
        return
    for line in node_lines(nodes):
        click.echo(line)


@node.command("drain")
@click.argument("node_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait, showing progress, until it is drained.")
@click.option("--max-wait", type=float, metavar="SECONDS",
              help="With --wait: give up (exit 1) after this long [default: no limit].")
@click.option("--cancel", is_flag=True, help="Stop draining: the node takes new blocks again.")
@pass_state
def node_drain(state: State, node_id: str, wait: bool, max_wait: float | None,
               cancel: bool) -> None:
    """Copy DataNode ID's blocks to the others, then drop them from it. Once drained
    it can be stopped and removed with nothing under-replicated. An MDS restart
    forgets a drain: run it again.

    \b
    Example:
      aegisfs node drain dn3 --wait && systemctl stop aegisfs-datanode@dn3
    """
    import time
    info = state.fs.drain(node_id, cancel=cancel)
    if cancel or not wait:
        click.echo(f"{node_id}: {drain_text(info) if not cancel else 'in service'}")
        return
    started, shown = time.monotonic(), None
    while info.get("drain") != "drained":
        if max_wait is not None and time.monotonic() - started > max_wait:
            raise Failure(f"node drain: {node_id} not drained after {max_wait:g} s "
                          f"({drain_text(info)})")
        text = drain_text(info)
        if text != shown:
            click.echo(f"{node_id}: {text}", err=True)
            shown = text
        time.sleep(1.0)
        # follow through status, not by asking again: a drain cancelled meanwhile stays so
        found = [n for n in state.fs.status().get("nodes") or [] if n.get("id") == node_id]
        if not found or not found[0].get("drain"):
            raise Failure(f"node drain: {node_id} is no longer draining (cancelled, or the "
                          "MDS restarted: run the drain again)")
        info = found[0]
    click.echo(f"{node_id}: drained after {time.monotonic() - started:.0f} s")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), default="bash")
def completion(shell: str) -> None:
    """Print the shell completion script (commands, options and remote paths).

    \b
    Example:
      eval "$(aegisfs completion bash)"     # in ~/.bashrc
    """
    from click.shell_completion import get_completion_class
    comp_cls = get_completion_class(shell)
    # None only for a shell click has no class for; click.Choice above admits only the
    # three it ships, so this cannot fail on user input.
    assert comp_cls is not None, shell
    comp = comp_cls(cli, {}, "aegisfs", "_AEGISFS_COMPLETE")
    click.echo(comp.source())


# `cat` is `read` under the name people try first
cli.add_command(read, "cat")


def main() -> None:
    """Console entry point (`aegisfs`, `python -m client.cli`, `python -m client`)."""
    cli(prog_name="aegisfs")


if __name__ == "__main__":
    main()
