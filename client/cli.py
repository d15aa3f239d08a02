"""The `aegisfs` command line (also `python -m client.cli`): a thin click layer over
AegisClient. Results go to stdout (raw bytes for `read`); errors go to stderr as one line
naming the path and the reason, with a non-zero exit code (tracebacks only with --debug).

Which files a put or get moves is transfer_plan.py; how results look is output.py.
Defaults the flags do not give come from the [client] config section (broker/config.py):
flag > AEGISFS_CLIENT_* environment > config file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import click
from click.shell_completion import CompletionItem, get_completion_class

from broker import config as broker_config
from broker.client import BrokerUnavailable

from . import transfer_plan as plan
from .api import AegisClient
from .output import (Progress, describe, emit_json, fsck_lines, human, ls_line, stat_lines,
                     status_lines)

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
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"aegisfs: {self.message}", err=True)


def exit_code_for(exc: OSError) -> int:
    if isinstance(exc, (BrokerUnavailable, ConnectionError, TimeoutError)):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


class AegisGroup(click.Group):
    """Turns exceptions from any command into one-line errors (see module docstring)."""

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
    _cfg: dict | None = field(default=None, repr=False)
    _fs: AegisClient | None = field(default=None, repr=False)

    @property
    def cfg(self) -> dict:
        """The merged configuration (file < environment), loaded once."""
        if self._cfg is None:
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
            connect = float(self.cfg["client"]["connect_timeout"])
            if self.timeout:        # a short --timeout also bounds reaching the broker
                connect = min(connect, self.timeout)
            self._fs = AegisClient(self.broker, timeout=self.timeout, config=self.cfg,
                                   connect_timeout=connect)
        return self._fs

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()


pass_state = click.make_pass_decorator(State)

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


class RemotePath(click.ParamType):
    """A path in AegisFS; shell completion asks the cluster for names (quietly)."""
    name = "path"

    def shell_complete(self, ctx: click.Context, param: Any, incomplete: str) -> list:
        parent, _, stem = (incomplete or "/").rpartition("/")
        parent = parent or "/"
        try:
            root = ctx.find_root().params
            with AegisClient(root.get("broker"), timeout=1.0, connect_timeout=1.0) as fs:
                entries = fs.ls(parent, detail=True)
        except Exception:       # completion must never print an error
            return []
        base = parent.rstrip("/")
        return [CompletionItem(f"{base}/{e['name']}" + ("/" if e["type"] == "dir" else ""),
                               type="plain")
                for e in entries if e["name"].startswith(stem)]


REMOTE = RemotePath()
LOCAL_IN = click.Path(allow_dash=True)      # a missing file is reported like any error
LOCAL_OUT = click.Path(allow_dash=True)


# ---------------------------------------------------------------------------------------
# Commands

@click.group(cls=AegisGroup, context_settings=CONTEXT)
@click.option("--broker", envvar="AEGISFS_BROKER", metavar="ENDPOINT",
              help="Broker client endpoint [env AEGISFS_BROKER; default from the config].")
@click.option("--timeout", type=float, metavar="SECONDS",
              help="Seconds to wait for each request [default from the config: 30].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              envvar="AEGISFS_CONFIG", help="TOML config [default configs/cluster.toml].")
@click.option("-v", "--verbose", is_flag=True, help="Log failovers and retries to stderr.")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks of unexpected errors.")
@click.version_option(package_name="aegisfs", prog_name="aegisfs")
@click.pass_context
def cli(ctx: click.Context, broker: str | None, timeout: float | None,
        config_path: str | None, verbose: bool, debug: bool) -> None:
    """AegisFS: a distributed file system. Paths are absolute (/dir/file).

    \b
    Example:
      aegisfs put photo.png /uploads/photo.png
      aegisfs --broker tcp://10.0.0.5:5550 ls -l /uploads
    Shell completion: eval "$(aegisfs completion bash)"
    """
    # Failovers are the system working as designed: quiet unless asked, so an error stays
    # one line on stderr.
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=level, format="aegisfs: %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    state = ctx.obj = State(broker, timeout, config_path, debug)
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
    """Show a file's size, replication, mtime and blocks (or a directory's summary).

    \b
    Example:
      aegisfs stat /uploads/image.png --json
    """
    info = state.fs.stat(path)
    if as_json:
        keep = ("path", "type", "size", "replication", "block_size", "mtime", "blocks",
                "entries")
        emit_json({k: info[k] for k in keep if k in info})
        return
    for line in stat_lines(info, path):
        click.echo(line)


@cli.command()
@click.argument("path", type=REMOTE, default="/")
@click.option("-l", "long", is_flag=True, help="Long listing: type, size, mtime.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def ls(state: State, path: str, long: bool, as_json: bool) -> None:
    """List a directory (default /). Directories end with '/'.

    \b
    Example:
      aegisfs ls -l /uploads
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
@pass_state
def mkdir(state: State, path: str, parents: bool) -> None:
    """Create a directory.

    \b
    Example:
      aegisfs mkdir -p /projects/2024/raw
    """
    state.fs.mkdir(path, parents=parents)


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
    """The DataNodes (up/down, capacity, used, blocks) and the replication health.

    \b
    Example:
      aegisfs status
    """
    info = state.fs.status()
    if as_json:
        emit_json(info)
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


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), default="bash")
def completion(shell: str) -> None:
    """Print the shell completion script (commands, options and remote paths).

    \b
    Example:
      eval "$(aegisfs completion bash)"     # in ~/.bashrc
    """
    comp_cls = get_completion_class(shell)
    comp = comp_cls(cli, {}, "aegisfs", "_AEGISFS_COMPLETE")
    click.echo(comp.source())


cli.add_command(__import__("client.s3.cli", fromlist=["s3"]).s3)   # the S3 gateway group


def main() -> None:
    """Console entry point (`aegisfs`, `python -m client.cli`, `python -m client`)."""
    cli(prog_name="aegisfs")


if __name__ == "__main__":
    main()
