"""Group commit for the pack log: writers wait for a log position to become durable and one
of them, the leader, runs a single sync for all who wait; a failed sync breaks the log.

No files of its own: the log passes in the function that syncs. Thread-safe.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Callable

log = logging.getLogger(__name__)

Ticket = tuple[int, int] | None     # (pack seq, end offset) that must be durable


def later(a: Ticket, b: Ticket) -> Ticket:
    """The later of two tickets (None: nothing to wait for)."""
    if a is None:
        return b
    return a if b is None or a >= b else b


class GroupCommit:
    """Leader/follower waiting on one durable position.

    sync() makes the log durable up to the position it returns (None: nothing to sync); on
    failure it calls fail() and returns None. A failed fdatasync (or write EIO) fails every
    waiter it covered and breaks the log: every later wait and check() raises OSError with
    the same errno (fsyncgate: the kernel may have dropped the dirty pages, so retrying
    would report success for lost data). Reopening the log is the only way back.
    """

    def __init__(self, name: str, sync: Callable[[], Ticket], *, enabled: bool = True) -> None:
        self._name = name
        self._sync = sync
        self._enabled = enabled  # False (no fsync): every wait returns at once
        self._cond = threading.Condition(threading.Lock())
        self._synced: tuple[int, int] = (0, 0)
        self._syncing = False
        self._broken: OSError | None = None

    @property
    def broken(self) -> bool:
        return self._broken is not None

    def error(self) -> OSError:
        """A fresh copy of the error that broke the log."""
        b = self._broken
        assert b is not None
        return OSError(b.errno, b.strerror)

    def check(self) -> None:
        if self._broken is not None:
            raise self.error()

    def fail(self, exc: OSError, what: str) -> OSError:
        """Break the log (the first failure names it); returns the error to raise."""
        with self._cond:
            if self._broken is None:
                err = exc.errno or errno.EIO
                msg = (f"pack log {self._name} is broken: {what} failed ({os.strerror(err)}); "
                       f"writes since the last good sync may be lost, so none are accepted "
                       f"until the store is reopened")
                log.error("%s", msg)
                self._broken = OSError(err, msg)
            self._cond.notify_all()
        return self.error()

    def advance(self, pos: tuple[int, int]) -> None:
        """Everything up to pos is durable (synced by the caller, e.g. when sealing)."""
        with self._cond:
            self._synced = max(self._synced, pos)
            self._cond.notify_all()

    def wait(self, ticket: Ticket) -> None:
        """Return once everything up to ticket is durable; OSError if it never will be."""
        if ticket is None or not self._enabled or self._synced >= ticket:
            return
        while True:
            with self._cond:
                while True:
                    if self._synced >= ticket:
                        return
                    if self._broken is not None:
                        raise self.error()
                    if not self._syncing:
                        self._syncing = True
                        break
                    self._cond.wait()
            self._lead()

    def _lead(self) -> None:
        """One sync on behalf of every writer waiting for it."""
        target: Ticket = None
        try:
            target = self._sync()
        finally:
            with self._cond:
                self._syncing = False
                if target is not None and target > self._synced:
                    self._synced = target
                self._cond.notify_all()
