"""The `aegisfs` command line (also `python -m client.cli`): a thin click layer over
AegisClient. Results go to stdout (raw bytes for `read`); errors go to stderr as one line
naming the path and the reason, with a non-zero exit code (tracebacks only with --debug).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import click
from click.shell_completion import CompletionItem, get_completion_class

from broker import config as broker_config
from broker.client import BrokerUnavailable

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
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"aegisfs: {self.message}", err=True)


def describe(exc: OSError) -> str:
    """'<path>: <reason>' from an OSError, without the '[Errno N]' noise."""
    reason = exc.strerror or str(exc) or exc.__class__.__name__
    if exc.filename is not None and str(exc.filename) not in reason:
        reason = f"{exc.filename}: {reason}"
    return reason


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
    _fs: AegisClient | None = field(default=None, repr=False)

    @property
    def fs(self) -> AegisClient:
        if self._fs is None:
            try:
                cfg = broker_config.load(self.config)
            except broker_config.ConfigError as exc:
                raise Failure(f"configuration: {exc}", EXIT_USAGE) from None
            connect = min(5.0, self.timeout) if self.timeout else 5.0
            self._fs = AegisClient(self.broker, timeout=self.timeout, config=cfg,
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
# Output helpers

def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def when(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


class Progress:
    """A progress bar with rate and ETA on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0
        self._t0 = time.monotonic()

    def __enter__(self) -> Callable[[int, int | None], None] | None:
        return self.update if self.enabled else None

    def update(self, done: int, total: int | None) -> None:
        if self._bar is None:
            # click's own ETA appears only after a second of samples; ours is there at once
            self._bar = click.progressbar(length=total or None, label=self.label,
                                          file=sys.stderr, show_eta=False, show_percent=True,
                                          item_show_func=lambda s: s)
            self._bar.__enter__()
        rate = done / max(1e-6, time.monotonic() - self._t0)
        info = f"{human(rate)}/s"
        if total and rate > 0:
            left = int(max(0, total - done) / rate)
            info += f"  ETA {left // 3600:d}:{left // 60 % 60:02d}:{left % 60:02d}"
        self._bar.update(done - self._done, info)
        self._done = done

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


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
    click.echo(f"path:        {info.get('path', path)}")
    click.echo(f"type:        {info.get('type')}")
    click.echo(f"size:        {info.get('size', 0)} bytes ({human(info.get('size', 0))})")
    click.echo(f"mtime:       {when(info.get('mtime'))}")
    if info.get("type") != "file":
        if "entries" in info:
            click.echo(f"entries:     {info['entries']}")
        return
    blocks = info.get("blocks") or []
    click.echo(f"replication: {info.get('replication')}")
    click.echo(f"block size:  {info.get('block_size')} bytes ({human(info.get('block_size', 0))})")
    click.echo(f"blocks:      {len(blocks)}")
    for i, b in enumerate(blocks):
        replicas = ",".join(b.get("replicas") or []) or "(none)"
        click.echo(f"  {i:>4}  {b['id']}  {b['size']:>10}  crc32c {b['checksum']:08x}  "
                   f"{replicas}")


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
        name = e["name"] + ("/" if e.get("type") == "dir" else "")
        if long:
            kind = "d" if e.get("type") == "dir" else "-"
            repl = e.get("replication")
            click.echo(f"{kind} {repl if repl is not None else '-':>3} {e.get('size', 0):>12}  "
                       f"{when(e.get('mtime'))}  {name}")
        else:
            click.echo(name)


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
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
@pass_state
def put(state: State, sources: tuple[str, ...], remote: str, recursive: bool,
        replication: int | None, block_size: int | None, progress: bool) -> None:
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
    if len(sources) == 1 and (sources[0] == "-" or not os.path.isdir(sources[0])):
        local = sources[0]
        if local != "-" and (remote.endswith("/") or fs.isdir(remote)):
            remote = remote.rstrip("/") + "/" + Path(local).name
        src = sys.stdin.buffer if local == "-" else local
        with Progress(f"put {remote}", progress) as bar:
            result = fs.put(src, remote, replication=replication, block_size=block_size,
                            progress=bar)
        click.echo(f"stored {result.get('path', remote)} ({result.get('size', '?')} bytes)")
        return
    if "-" in sources:
        raise Failure("put: '-' (stdin) cannot be combined with other sources", EXIT_USAGE)
    files, empty_dirs = plan_upload(sources, remote, recursive)
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


def plan_upload(sources: tuple[str, ...], remote: str, recursive: bool
                ) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(local file, remote path, size) for every file to upload, and the remote
    directories that would stay empty (they are created too)."""
    base = remote.rstrip("/")
    files: list[tuple[str, str, int]] = []
    empty: list[str] = []
    for src in sources:
        name = Path(src).name or Path(os.path.abspath(src)).name
        if not os.path.isdir(src):
            try:
                size = os.stat(src).st_size
            except OSError as exc:
                raise Failure(f"put: {describe(exc)}") from None
            files.append((src, f"{base}/{name}", size))
            continue
        if not recursive:
            raise Failure(f"put: {src}: is a directory (use -r to upload it)", EXIT_USAGE)
        for top, dirs, names in os.walk(src, onerror=_walk_error):
            dirs.sort()
            rel = os.path.relpath(top, src)
            dest = f"{base}/{name}" + ("" if rel == "." else "/" + rel.replace(os.sep, "/"))
            if not dirs and not names:
                empty.append(dest)
            for n in sorted(names):
                local = os.path.join(top, n)
                try:
                    st = os.stat(local)
                except OSError as exc:
                    raise Failure(f"put: {describe(exc)}") from None
                if not os.path.isfile(local):
                    click.echo(f"aegisfs: put: skipping {local}: not a regular file", err=True)
                    continue
                files.append((local, f"{dest}/{n}", st.st_size))
    return files, empty


def _walk_error(exc: OSError) -> None:
    raise Failure(f"put: {describe(exc)}")


@cli.command()
@click.argument("remotes", nargs=-1, required=True, type=REMOTE)
@click.argument("local", type=LOCAL_OUT)
@click.option("--recursive", "-r", is_flag=True, help="Download directories with their contents.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on a terminal.")
@pass_state
def get(state: State, remotes: tuple[str, ...], local: str, recursive: bool,
        progress: bool) -> None:
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
    if len(remotes) == 1 and not (recursive and fs.isdir(remotes[0])):
        remote = remotes[0]
        if local == "-":
            fs.get(remote, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        if os.path.isdir(local):
            local = os.path.join(local, remote.rstrip("/").rsplit("/", 1)[-1])
        with Progress(f"get {remote}", progress) as bar:
            try:
                n = fs.get(remote, local, progress=bar)
            except IsADirectoryError:
                raise Failure(f"get: {remote}: is a directory (use -r to download it)",
                              EXIT_USAGE) from None
        click.echo(f"wrote {local} ({n} bytes)")
        return
    if local == "-":
        raise Failure("get: several files cannot go to stdout", EXIT_USAGE)
    files, dirs, missing = plan_download(fs, remotes, local, recursive)
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    total = sum(size for _, _, size in files)
    with Progress(f"get {len(files)} files", progress) as bar:
        outcomes = fs.get_many(((remote, dest) for remote, dest, _ in files), errors="return",
                               progress=(lambda n, done: bar(done, total)) if bar else None)
    finish_many("get", outcomes + missing, "wrote", local)


def plan_download(fs: AegisClient, remotes: tuple[str, ...], local: str, recursive: bool
                  ) -> tuple[list[tuple[str, str, int]], list[str], list[OSError]]:
    """(remote file, local path, size) for every file to download, the local directories
    to create (parents first), and the errors of REMOTEs that cannot be looked at."""
    files: list[tuple[str, str, int]] = []
    dirs = [local]
    missing: list[OSError] = []
    for remote in remotes:
        name = remote.rstrip("/").rsplit("/", 1)[-1] or "root"
        try:
            info = fs.stat(remote)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            missing.append(exc)
            continue
        if info["type"] != "dir":
            files.append((remote, os.path.join(local, name), int(info["size"])))
            continue
        if not recursive:
            raise Failure(f"get: {remote}: is a directory (use -r to download it)", EXIT_USAGE)
        stack = [(remote.rstrip("/") or "/", os.path.join(local, name))]
        while stack:
            top, dest = stack.pop()
            dirs.append(dest)
            for entry in sorted(fs.ls(top, detail=True), key=lambda e: e["name"]):
                child = top.rstrip("/") + "/" + entry["name"]
                if entry["type"] == "dir":
                    stack.append((child, os.path.join(dest, entry["name"])))
                else:
                    files.append((child, os.path.join(dest, entry["name"]), int(entry["size"])))
    return files, dirs, missing


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
    nodes = info.get("nodes") or []
    click.echo(f"{'NODE':<12} {'STATE':<6} {'CAPACITY':>11} {'USED':>11} {'BLOCKS':>8}")
    for n in nodes:
        click.echo(f"{n.get('id', '?'):<12} {n.get('state', '?'):<6} "
                   f"{human(n.get('capacity') or 0):>11} {human(n.get('used') or 0):>11} "
                   f"{n.get('blocks', 0):>8}")
    up = sum(1 for n in nodes if n.get("state") == "up")
    click.echo(f"datanodes: {up} up / {len(nodes)}   files: {info.get('files', '?')}   "
               f"dirs: {info.get('dirs', '?')}   blocks: {info.get('blocks', '?')}")
    for line in _health_lines(info.get("health")):
        click.echo(line)


def _health_lines(health: Any) -> Iterator[str]:
    if isinstance(health, dict):
        yield "health: " + "   ".join(f"{k.replace('_', ' ')}: {_count(v)}"
                                      for k, v in health.items())
    elif health is not None:
        yield f"health: {health}"


def _count(v: Any) -> Any:
    return len(v) if isinstance(v, (list, tuple, dict)) else v


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
        click.echo("HEALTHY" if healthy else "UNHEALTHY")
        for key in ("missing", "under_replicated", "corrupt", "orphans"):
            items = report.get(key)
            if items is None:
                continue
            click.echo(f"  {key.replace('_', '-'):<17} {_count(items)}")
            if isinstance(items, (list, tuple)):
                for item in items[:10]:
                    click.echo(f"      {item if not isinstance(item, dict) else _brief(item)}")
                if len(items) > 10:
                    click.echo(f"      ... {len(items) - 10} more")
        for key, value in report.items():
            if key not in ("healthy", "missing", "under_replicated", "corrupt", "orphans"):
                click.echo(f"  {key.replace('_', '-'):<17} {_count(value)}")
    if not healthy:
        raise click.exceptions.Exit(EXIT_FAILED)


def _brief(item: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in item.items())


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


def main() -> None:
    """Console entry point (`aegisfs`, `python -m client.cli`, `python -m client`)."""
    cli(prog_name="aegisfs")


if __name__ == "__main__":
    main()
