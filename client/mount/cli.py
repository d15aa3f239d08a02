"""`aegisfs mount MOUNTPOINT` and `aegisfs umount MOUNTPOINT` (click commands; the
group's State arrives as the click object, as in cli_users.py: client.cli imports us)."""
from __future__ import annotations

import errno
import os
from typing import Any

import click


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Serve in this process until unmounted.")
@click.option("--attr-timeout", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds the kernel (and the mount) may reuse attributes.")
@click.option("--entry-timeout", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Seconds the kernel may reuse a name lookup.")
@click.option("--allow-other", is_flag=True,
              help="Let other local users in (root, or user_allow_other in /etc/fuse.conf).")
@click.option("--spool-dir", type=click.Path(file_okay=False),
              help="Local spill for random writes: new files spooled, dirty blocks of "
                   "copy-on-write edits beyond the window [default: TMPDIR].")
@click.option("--log-file", type=click.Path(dir_okay=False),
              help="The daemon's log [default: none].")
@click.option("--sync-close", is_flag=True,
              help="close() of a small new file commits before it returns, instead of "
                   "in the background batches (docs/mount.md).")
@click.option("--pending-mib", type=click.IntRange(1), default=64, show_default=True,
              help="Bytes of closed small files waiting for their background commit; "
                   "closes wait beyond.")
@click.pass_obj
def mount(state: Any, mountpoint: str, foreground: bool, attr_timeout: float,
          entry_timeout: float, allow_other: bool, spool_dir: str | None,
          log_file: str | None, sync_close: bool, pending_mib: int) -> None:
    """Mount the cluster at MOUNTPOINT (FUSE). Returns once the mount serves, leaving
    the daemon running (its PID is printed); -f serves in the foreground. SIGINT or
    SIGTERM to the daemon unmounts cleanly.

    \b
    Example:
      aegisfs mount /mnt/aegis && cp -a src /mnt/aegis/ && aegisfs umount /mnt/aegis
    """
    from .daemon import MountOptions, fuse_available, start
    why = fuse_available()
    if why:
        raise OSError(errno.ENODEV, f"cannot mount: {why}", mountpoint)
    opts = MountOptions(attr_timeout=attr_timeout, entry_timeout=entry_timeout,
                        allow_other=allow_other, spool_dir=spool_dir, debug=state.debug)
    holder: dict = {}

    def make_client() -> Any:
        from .conn import MountClient
        if "fs" not in holder:
            connect = float(state.cfg["client"]["connect_timeout"])
            holder["fs"] = MountClient(state.broker, timeout=state.timeout, config=state.cfg,
                                       connect_timeout=connect, key=state.key)
        return holder["fs"]

    def check() -> None:
        fs = make_client()
        with fs.using():
            holder["user"] = fs.whoami()["user"]
            fs.stat("/")

    def make_ops() -> Any:
        from .ids import IdMap
        from .ops import AegisOperations
        return AegisOperations(make_client(), IdMap(holder["user"]),
                               attr_timeout=attr_timeout, spool_dir=spool_dir,
                               background=not sync_close, pending_bytes=pending_mib << 20)

    mp = os.path.abspath(mountpoint)
    pid = start(mp, make_ops, opts, check=check, foreground=foreground, log_file=log_file)
    if not foreground:
        click.echo(f"mounted {mp} (daemon pid {pid})")


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-z", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
def umount(mountpoint: str, lazy: bool) -> None:
    """Unmount an AegisFS mount (lazily when its daemon is dead).

    \b
    Example:
      aegisfs umount /mnt/aegis
    """
    from .daemon import umount as do_umount
    how = do_umount(os.path.abspath(mountpoint), lazy=lazy)
    click.echo(f"{how} {os.path.abspath(mountpoint)}")
