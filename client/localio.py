"""Local-file I/O for the client: reading sources (sizes, full reads, small whole files) and
writing downloads safely (a temporary file beside the target, synced, renamed into place,
the directory synced). The only place in client/ that calls fsync.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import threading
from pathlib import Path
from typing import Any, Protocol

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------
# Reading sources

def known_size(f: Any) -> int | None:
    """Bytes left to read in a regular file or seekable buffer; None for pipes/streams."""
    try:
        st = os.fstat(f.fileno())
        if not (st.st_mode & 0o170000) == 0o100000:      # not a regular file
            return None
        return max(0, st.st_size - f.tell())
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    try:
        if f.seekable():
            pos = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(pos)
            return max(0, end - pos)
    except (AttributeError, OSError, ValueError):
        pass
    return None


class Sink(Protocol):
    """Where a download goes: a binary file, a raw one (may write short or, when not
    ready, nothing: None), or an AtomicFile."""

    def write(self, data: memoryview, /) -> int | None: ...


def read_full(f: Any, buf: memoryview) -> int:
    """Fill buf from f (short only at end of file)."""
    got = 0
    readinto = getattr(f, "readinto", None)
    while got < buf.nbytes:
        if readinto is not None:
            n = readinto(buf[got:])
        else:
            chunk = f.read(buf.nbytes - got)
            n = len(chunk) if chunk else 0
            buf[got:got + n] = chunk
        if not n:
            break
        got += n
    return got


def tell(f: Any) -> int | None:
    """Where a seekable stream stands (so a retry can rewind), else None."""
    try:
        return f.tell() if f.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def small_source(src: Any, limit: int) -> bytes | memoryview | None:
    """The whole content of a source (bytes-like, local path or binary file object) of at
    most `limit` bytes, else None (stream it; a file object is left where it was)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        view = memoryview(src).cast("B")
        return view if view.nbytes <= limit else None
    if isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb", buffering=0) as f:
                return _read_small(f, limit)
        except IsADirectoryError:
            raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(src)) from None
    return _read_small(src, limit) if known_size(src) is not None else None


def _read_small(f: Any, limit: int) -> bytes | None:
    size = known_size(f)
    if size is None or size > limit:
        return None
    data = f.read(size + 1) or b""   # +1: a file that grew since the stat is not cut short
    if len(data) > size:
        data += f.read(limit + 1 - len(data)) or b""
    if len(data) > limit:
        if tell(f) is None:
            raise OSError(errno.EIO, "the source grew while being read and cannot be rewound")
        f.seek(-len(data), io.SEEK_CUR)     # stream it from the start instead
        return None
    return data


# ---------------------------------------------------------------------------------------
# Writing downloads

def temp_beside(target: Path) -> Path:
    """A fresh temporary name in the target's directory, so the final rename is atomic."""
    return target.parent / f".{target.name}.{os.urandom(4).hex()}.part"


def write_all(out: Any, data: bytes | memoryview) -> None:
    """Write every byte to a binary file object (a raw file may write short)."""
    view = memoryview(data)
    while view.nbytes:
        n = out.write(view)
        if n is None:
            raise BlockingIOError(errno.EAGAIN, "output is not ready")
        view = view[n:]


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: not every file system lets a
    directory be opened or synced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A local file written under a temporary name beside `target` and renamed into place
    by commit(), synced first, so the target appears only complete; discard() removes it.

    The data is fdatasync'ed and dropped from the page cache every SYNC_EVERY bytes, so the
    cache recycles its pages instead of faulting fresh ones (shared/PERFORMANCE.md: fresh
    memory costs ~2 CPU-s per GiB on these VMs). That sync runs in a helper thread, one at
    a time, while the writer goes on: done inline it stalled a `get` for the whole flush
    of every 32 MiB, with the read window idle (issue 19: get slower than put). A failed
    background sync is raised by the next write, restart or commit.
    """

    SYNC_EVERY = 32 * 1024 * 1024

    def __init__(self, target: PathLike) -> None:
        self.target = Path(target)
        self.tmp = temp_beside(self.target)
        # 0o666 so the umask decides the mode, as for any new file
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._unsynced = 0
        self._syncer: threading.Thread | None = None
        self._sync_error: Exception | None = None

    def write(self, data: memoryview) -> int:
        if self._sync_error is not None:
            self._wait()
        n = os.write(self.fd, data)
        self._unsynced += n
        if self._unsynced >= self.SYNC_EVERY:
            self._wait()                 # at most one sync in flight
            self._unsynced = 0
            self._syncer = threading.Thread(target=self._sync, name="aegisfs-sync",
                                            daemon=True)
            self._syncer.start()
        return n

    def _sync(self) -> None:
        try:
            os.fdatasync(self.fd)        # releases the GIL: the writer goes on meanwhile
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except Exception as exc:        # kept for the writer: a thread's error is lost
            self._sync_error = exc

    def _wait(self) -> None:
        """Until the background sync is done; raises its error, once."""
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        if self._sync_error is not None:
            exc, self._sync_error = self._sync_error, None
            raise exc

    def restart(self) -> None:
        """Empty the file to write it again from the start."""
        self._wait()
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def commit(self) -> None:
        """Sync, rename into place, sync the directory."""
        self._close(sync=True)
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)

    def discard(self) -> None:
        self._close(sync=False)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def _close(self, sync: bool) -> None:
        if self.fd < 0:
            return
        try:
            try:
                self._wait()             # never close the fd under a running sync
            except OSError:
                if sync:
                    raise
            if sync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1


def write_local(dst: Any, data: bytes) -> bool:
    """Write a small file's bytes to a binary file object, or to a local path through a
    temporary file renamed into place without a sync: True says a sync is owed (one
    `sync_all()` for many small files is far cheaper than one fsync each)."""
    if not isinstance(dst, (str, os.PathLike)):
        write_all(dst, data)
        return False
    target = Path(dst)
    tmp = temp_beside(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view.nbytes:
            view = view[os.write(fd, view):]
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def sync_all() -> None:
    """Flush every file written with write_local (and everything else) to disk."""
    os.sync()
