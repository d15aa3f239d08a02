"""The `aegisfs` command line (also `python -m client.cli`): a thin click layer over
AegisClient. Results go to stdout (raw bytes for `read`); errors go to stderr as one line
naming the path and the reason, with a non-zero exit code (tracebacks only with --debug).

Here: the root group, the one-file verbs (write, read/cat, stat, ls, rm, mkdir, mv, cp,
du), completion and main. The other commands, by job: put/get in cli_transfer.py
(which files move is transfer_plan.py), chmod/chown/chgrp in cli_attrs.py, status, fsck
and node in cli_cluster.py. Parameter types are cli_params.py, the State every command
gets is cli_state.py, exit codes and the exception -> message mapping are cli_errors.py;
how results look is output.py.
Defaults the flags do not give come from the [client] config section (broker/config.py):
flag > AEGISFS_CLIENT_* environment > config file.

A call should start fast (issue 19: each one is a new process): the API, zmq, the config
loader, the transfer planner and the command groups kept in other modules (`LAZY`) are
imported only by the commands that use them. tests/unit/test_client_cli.py holds this.
"""
from __future__ import annotations

import logging
import sys

import click

from .cli_errors import AegisGroup
from .cli_params import OCTAL_MODE, REMOTE
from .cli_state import State, pass_state
from .output import emit_json, human, ls_line, stat_lines

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------------------------------
# Commands

# Command groups with modules of their own: user add/ls/rm and whoami (the key store, not
# the file system), the S3 gateway, the mount and tree quotas.
LAZY = {"user": "client.cli_users:user", "whoami": "client.cli_users:whoami",
        "s3": "client.s3.cli:s3", "mount": "client.mount.cli:mount",
        "umount": "client.mount.cli:umount", "quota": "client.cli_quota:quota",
        "put": "client.cli_transfer:put", "get": "client.cli_transfer:get",
        "chmod": "client.cli_attrs:chmod", "chown": "client.cli_attrs:chown",
        "chgrp": "client.cli_attrs:chgrp", "status": "client.cli_cluster:status",
        "fsck": "client.cli_cluster:fsck", "node": "client.cli_cluster:node"}


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
@pass_state
def ln(state: State, src: str, dst: str) -> None:
    """Make DST a hard link to file SRC: another name of the same file.

    Both names share everything: a change through one (its content, mode, owner or
    times) is seen through the other, and the file goes with its last name. DST is the
    exact new name and must not exist; a directory cannot be linked.

    \b
    Example:
      aegisfs ln /data/model.bin /releases/v2/model.bin
    """
    count = state.fs.link(src, dst)
    click.echo(f"linked {dst} -> {src} ({count} names)")


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
