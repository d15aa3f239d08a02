"""Small new files closed without fsync, committed in the background in batches.

A new file of at most `small` bytes whose whole content is still in the daemon's memory
when it is closed (FUSE flush) is not committed by the close: it becomes a PendingFile
here and close returns. A committer thread takes everything queued as one batch (so
batches grow with the load: a lone file goes alone, a `tar -x` fills them) and writes it
with the batched protocol of client/batch.py: one MDS batch of sized creates, one
put_blocks per DataNode, one MDS batch of commits with each file's owner and mtime
right after its commit. Each file still appears whole at its own commit, or not at all.

This mount sees a pending file at once (getattr, readdir); every other client sees it
from its commit. Anything that needs the MDS's version of a pending path (open, rename,
rmdir or chmod of it or of a directory above it, fsync) waits for its commit first
(`settle`). Memory is bounded: `max_files` and `max_bytes` pending at most; a close over
the bound waits for room. An error of a background commit is logged (ERROR) and kept
for the path: the next open, fsync or fsyncdir that touches it raises it (EIO), once.

The queue (PendingQueue) is pure logic; the commit function is given to it, so the unit
tests drive it without sockets (tests/unit/test_mount_pending.py).
"""
from __future__ import annotations

import errno
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

log = logging.getLogger(__name__)

QUEUED, COMMITTING, DONE = "queued", "committing", "done"
MAX_BATCH_FILES = 64        # 64 creates, then <= 4 ops a file in one MDS batch (256 max)
MAX_BATCH_BYTES = 16 << 20
MAX_ERRORS = 10_000         # failed paths remembered for the next open/fsync


@dataclass(eq=False)
class PendingFile:
    path: str
    data: bytes
    mode: int
    owner: tuple[int, int]          # uid, gid of the creator
    created: float                  # wall clock, the create
    mtime: float | None = None      # set by utimens before the commit
    atime: float | None = None
    exclusive: bool = False
    chown: tuple[str, str] | None = None   # owner and group names for the MDS, if not ours
    replaces: bool = False          # renamed over an existing file: set its mode too
    state: str = QUEUED
    error: OSError | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def size(self) -> int:
        return len(self.data)


Commit = Callable[[Sequence[PendingFile]], Sequence["OSError | None"]]


def below(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


class PendingQueue:
    """path -> PendingFile, in close order; a thread commits them through `commit`."""

    def __init__(self, commit: Commit, *, max_files: int = 4096,
                 max_bytes: int = 64 << 20, batch_files: int = MAX_BATCH_FILES,
                 batch_bytes: int = MAX_BATCH_BYTES) -> None:
        self._commit = commit
        self.max_files, self.max_bytes = max_files, max_bytes
        self.batch_files, self.batch_bytes = batch_files, batch_bytes
        self._files: OrderedDict[str, PendingFile] = OrderedDict()
        self._bytes = 0
        self._errors: OrderedDict[str, OSError] = OrderedDict()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.committed = 0             # files committed so far (for tests and logs)
        self.failed = 0

    # -- producers -----------------------------------------------------------------------

    def add(self, f: PendingFile, timeout: float | None = None) -> None:
        """Queue a closed file; waits while the queue is over its bounds."""
        with self._cv:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._files and (len(self._files) >= self.max_files
                                   or self._bytes + f.size > self.max_bytes):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, "pending commits are not draining",
                                       f.path)
                self._cv.wait(left)
            assert f.path not in self._files, f"{f.path} is pending twice"
            self._errors.pop(f.path, None)
            self._files[f.path] = f
            self._bytes += f.size
            self._cv.notify_all()

    def get(self, path: str) -> PendingFile | None:
        return self._files.get(path)

    def names_in(self, directory: str) -> list[tuple[str, PendingFile]]:
        prefix = directory.rstrip("/") + "/"
        with self._cv:
            return [(p[len(prefix):], f) for p, f in self._files.items()
                    if p.startswith(prefix) and "/" not in p[len(prefix):]]

    def update(self, path: str, fn: Callable[[PendingFile], None]) -> bool:
        """Change a file still queued (not being committed): True when done."""
        with self._cv:
            f = self._files.get(path)
            if f is None or f.state != QUEUED:
                return False
            fn(f)
            return True

    def move(self, old: str, new: str) -> bool:
        """Rename a queued file (not being committed): it will be created at `new`,
        replacing whatever is there (a file queued at `new` is dropped). True when done."""
        with self._cv:
            f = self._files.get(old)
            g = self._files.get(new)
            if f is None or f.state != QUEUED or (g is not None and g.state != QUEUED):
                return False
            if g is not None:
                self._remove(g)
                g.done.set()          # replaced before its commit: nothing to wait for
            self._remove(f)
            f.path = new
            f.exclusive = False       # O_EXCL was about the old name; rename replaces
            self._files[new] = f
            self._bytes += f.size
            self._errors.pop(new, None)
            return True

    def cancel(self, path: str) -> bool:
        """Drop a queued file (unlinked before its commit): True when it was dropped."""
        with self._cv:
            f = self._files.get(path)
            if f is None or f.state != QUEUED:
                return False
            self._remove(f)
            f.error = FileNotFoundError(errno.ENOENT, "unlinked before its commit", path)
            f.done.set()
            return True

    def settle(self, top: str = "/", exact: bool = False, timeout: float | None = None,
               raise_errors: bool = True) -> None:
        """Wait until nothing is pending at `top` (or below it unless `exact`); then, with
        `raise_errors`, raise the first error kept for those paths (once: it is then
        forgotten)."""
        with self._cv:
            waiting = [f for p, f in self._files.items()
                       if (p == top if exact else below(p, top))]
        deadline = None if timeout is None else time.monotonic() + timeout
        for f in waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not f.done.wait(left):
                raise TimeoutError(errno.ETIMEDOUT, "the pending commit did not finish",
                                   f.path)
        if raise_errors:
            self.raise_error(top, exact)

    def raise_error(self, top: str, exact: bool = False) -> None:
        with self._cv:
            hit = next((p for p in self._errors
                        if (p == top if exact else below(p, top))), None)
            exc = self._errors.pop(hit) if hit is not None else None
        if exc is not None:
            raise OSError(errno.EIO, f"a background commit failed: {exc}", hit)

    def __len__(self) -> int:
        return len(self._files)

    # -- the committer -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aegisfs-mount-commit",
                                        daemon=True)
        self._thread.start()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Commit what is queued (unless not `drain`), then end the thread."""
        if drain and self._thread is not None:
            try:
                self.settle(timeout=timeout)
            except OSError as exc:
                log.error("unmount: %s", exc)
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def take(self) -> list[PendingFile]:
        """The next batch: queued files in close order within the batch bounds (waits for
        one; empty when stopping)."""
        with self._cv:
            while not self._stopping and not any(f.state == QUEUED
                                                 for f in self._files.values()):
                self._cv.wait()
            batch: list[PendingFile] = []
            size = 0
            for f in self._files.values():
                if f.state != QUEUED:
                    continue
                if batch and (len(batch) >= self.batch_files
                              or size + f.size > self.batch_bytes):
                    break
                f.state = COMMITTING
                batch.append(f)
                size += f.size
            return batch

    def finish(self, batch: Iterable[PendingFile], errors: Iterable[OSError | None]) -> None:
        with self._cv:
            for f, exc in zip(batch, errors):
                self._remove(f)
                f.error = exc
                f.state = DONE
                if exc is None:
                    self.committed += 1
                else:
                    self.failed += 1
                    log.error("%s: the background commit of this closed file failed; the "
                              "file is not in the namespace: %s", f.path, exc)
                    self._errors[f.path] = exc
                    while len(self._errors) > MAX_ERRORS:
                        self._errors.popitem(last=False)
                f.done.set()
            self._cv.notify_all()

    def run_once(self) -> bool:
        batch = self.take()
        if not batch:
            return False
        try:
            errors = list(self._commit(batch))
            if len(errors) != len(batch):
                raise RuntimeError(f"commit answered {len(errors)} of {len(batch)} files")
        except Exception as exc:        # never lose a file silently, whatever failed
            log.exception("background commit of %d files failed", len(batch))
            err = exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc))
            errors = [err] * len(batch)
        self.finish(batch, errors)
        return True

    def _run(self) -> None:
        while self.run_once():
            pass

    def _remove(self, f: PendingFile) -> None:
        if self._files.get(f.path) is f:
            del self._files[f.path]
            self._bytes -= f.size
