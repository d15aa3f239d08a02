"""`aegisfs put` and `get`: copying local files into the cluster and out, one file or
many (which files, and where, is transfer_plan.py), with a progress bar and a per-file
report of failures. Registered on the root group by cli.py.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

import click

from .cli_errors import EXIT_FAILED, EXIT_USAGE, Failure, exit_code_for
from .cli_params import LOCAL_IN, LOCAL_OUT, REMOTE, SizeType
from .cli_state import State, pass_state
from .output import Progress, describe, human


@click.command()
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


@click.command()
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
