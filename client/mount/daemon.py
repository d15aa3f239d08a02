"""Mounting and unmounting: the FUSE loop (foreground, or a daemon that the command
leaves running once the mount serves) and `umount`, lazily when the daemon is dead.
libfuse's own SIGINT/SIGTERM/SIGHUP handlers end the loop and unmount cleanly.
"""
from __future__ import annotations

import ctypes.util
import errno
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass
class MountOptions:
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    allow_other: bool = False
    spool_dir: str | None = None
    debug: bool = False


# what getattr answers (client/mount/ops_attrs.py): plain fields and nanosecond times
_STAT_FIELDS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_blocks", "st_blksize", "st_rdev")
_STAT_TIMES = (("st_atime", "st_atimespec"), ("st_mtime", "st_mtimespec"),
               ("st_ctime", "st_ctimespec"))
_KNOWN = frozenset(_STAT_FIELDS) | {key for key, _ in _STAT_TIMES}


def fill_stat(st: Any, attrs: dict) -> None:
    """Set a zeroed mfusepy c_stat from a getattr dict (times in nanoseconds, as the
    mount's use_ns): the fields our getattr gives directly, any other as mfusepy's own
    set_st_attrs would."""
    known = 0
    for key in _STAT_FIELDS:
        if key in attrs:
            setattr(st, key, attrs[key])
            known += 1
    for key, spec in _STAT_TIMES:
        if key in attrs:
            ts = getattr(st, spec)
            ts.tv_sec, ts.tv_nsec = divmod(int(attrs[key]), 1_000_000_000)
            known += 1
    if known < len(attrs):             # anything else (not on the hot path: no set built)
        import mfusepy
        mfusepy.set_st_attrs(st, {k: v for k, v in attrs.items() if k not in _KNOWN},
                             use_ns=True)


def _fuse_class() -> Any:
    """mfusepy's FUSE, passing what its wrappers drop: rename flags (RENAME_NOREPLACE)
    and utimensat's raw timespecs (UTIME_NOW / UTIME_OMIT); and two of its calls made
    cheaper, the mount's busiest (a tar -x of small files costs a create and four
    getattrs a file: libfuse answers create, chown, chmod and utimensat with one): create
    without an inspect.signature of the operation per call, getattr filling the stat
    with fill_stat. mfusepy loads libfuse when imported, so only the serving process
    imports it."""
    import ctypes

    import mfusepy

    memset, stat_size = ctypes.memset, ctypes.sizeof(mfusepy.c_stat)

    class AegisFUSE(mfusepy.FUSE):
        # mfusepy wraps each registered call (OSError -> -errno) itself
        def create(self, path: bytes, mode: int, fip: Any) -> int:
            fi = fip.contents
            fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode,
                                           fi.flags)
            return 0

        def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
            memset(buf, 0, stat_size)
            attrs = self.operations.getattr(
                None if path is None else path.decode(self.encoding, self.errors),
                fip.contents.fh if fip else None)
            fill_stat(buf.contents, attrs)
            return 0

        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            return self.operations.rename(old.decode(self.encoding, self.errors),
                                          new.decode(self.encoding, self.errors), flags)

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            times = (buf.contents.actime, buf.contents.modtime) if buf else None
            return self.operations.utimens(None if path is None else
                                           path.decode(self.encoding, self.errors), times)

    return AegisFUSE


def fuse_available() -> str | None:
    """Why a mount cannot work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is absent (Debian: apt-get install fuse3)"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse 3 is absent (Debian: apt-get install libfuse3-3)"
    return None


def serve(mountpoint: str, make_ops: Callable[[], Any], opts: MountOptions) -> None:
    """Run the FUSE loop in this process until unmounted or signalled."""
    ops = make_ops()
    kw: dict[str, Any] = {"foreground": True, "fsname": "aegisfs", "subtype": "aegisfs",
                          "default_permissions": True,
                          # st_ino from the MDS (ops_attrs.py): one per file, whatever
                          # its names (hard links), as tools that compare them expect
                          "use_ino": True,
                          "attr_timeout": opts.attr_timeout,
                          "entry_timeout": opts.entry_timeout,
                          "negative_timeout": 0}
    if opts.allow_other:
        kw["allow_other"] = True
    if opts.debug:
        kw["debug"] = True
    _fuse_class()(ops, mountpoint, **kw)


def start(mountpoint: str, make_ops: Callable[[], Any], opts: MountOptions, *,
          check: Callable[[], None], foreground: bool, log_file: str | None = None,
          ready_timeout: float = 30.0) -> int:
    """Mount; returns the daemon's PID once the mount serves (foreground: blocks until
    unmounted, then returns 0). `check` runs first, in the serving process (it reaches
    the cluster: an unreachable one fails here, before anything is mounted)."""
    if not os.path.isdir(mountpoint):
        raise NotADirectoryError(errno.ENOTDIR, "mount point is not a directory", mountpoint)
    if os.path.ismount(mountpoint):
        raise OSError(errno.EBUSY, "already mounted (aegisfs umount it first)", mountpoint)
    if foreground:
        check()
        serve(mountpoint, make_ops, opts)
        return 0
    read_fd, write_fd = os.pipe()
    pid = os.fork()          # before any ZeroMQ context or thread exists in this process
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            os.setsid()
            _detach(log_file)
            check()
            os.write(write_fd, b"ok\n")
            serve(mountpoint, make_ops, opts)
        except BaseException as exc:   # the parent shows it; nothing else may run here
            try:
                os.write(write_fd, f"{type(exc).__name__}: {exc}\n".encode()[:4000])
            except OSError:
                pass
            code = 1
        os._exit(code)
    os.close(write_fd)
    message = b""
    deadline = time.monotonic() + ready_timeout
    os.set_blocking(read_fd, False)
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(read_fd, 4096)
                if chunk:
                    message += chunk
            except BlockingIOError:
                pass
            if message.startswith(b"ok") and os.path.ismount(mountpoint):
                return pid
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                text = message.decode(errors="replace").strip() or \
                    f"the mount daemon exited with status {status}"
                raise OSError(errno.EIO, f"mount failed: {text}", mountpoint)
            time.sleep(0.02)
    finally:
        os.close(read_fd)
    raise TimeoutError(errno.ETIMEDOUT, f"the mount was not live after {ready_timeout:g} s "
                       f"(daemon pid {pid} left running)", mountpoint)


def _detach(log_file: str | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) \
        if log_file else null
    os.dup2(out, 1)
    os.dup2(out, 2)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler):
            h.setStream(sys.stderr)


def umount(mountpoint: str, lazy: bool = False) -> str:
    """Unmount; a mount whose daemon died ("transport endpoint is not connected") is
    detached lazily. Returns how: "unmounted" or "lazy"."""
    if not os.path.ismount(mountpoint) and not _dead_mount(mountpoint):
        raise OSError(errno.EINVAL, "not mounted", mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    if not lazy:
        done = subprocess.run([tool, "-u", mountpoint], capture_output=True, text=True)
        if done.returncode == 0:
            return "unmounted"
        log.info("fusermount3 -u %s: %s", mountpoint, done.stderr.strip())
    done = subprocess.run([tool, "-u", "-z", mountpoint], capture_output=True, text=True)
    if done.returncode == 0:
        return "lazy"
    if os.geteuid() == 0:
        if subprocess.run(["umount", "-l", mountpoint], capture_output=True).returncode == 0:
            return "lazy"
    raise OSError(errno.EBUSY, f"could not unmount: {done.stderr.strip()}", mountpoint)


def _dead_mount(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False

