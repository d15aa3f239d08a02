"""One thread's broker connection shared by its streams: `Mux` hands each reply to the
stream that sent the request, whoever is waiting when it arrives, and is the one place
the client retries the MDS (client/retry.py). `BufferPool` keeps block buffers between a
thread's writes. Used by streams.py (writing), reading.py, batch.py and files.py.
"""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

from broker.client import BrokerUnavailable, Client, Reply
from broker.limits import MDS_SERVICE

from .retry import Retrier, stamp_opids

if TYPE_CHECKING:
    from .smallfiles import BlockPool


class BufferPool:
    """Block buffers kept between the writes of one thread. A fresh multi-MiB bytearray
    costs a page fault per 4 KiB on first touch, which would dominate small-file puts."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        while self._free:
            buf = self._free.pop()
            if len(buf) == size:
                return buf
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        if self._free and len(self._free[0]) != len(buf):
            self._free.clear()          # keep one block size only
        if len(self._free) < self.keep:
            self._free.append(buf)


T = TypeVar("T")


class _Final(Exception):
    """Carries an error past the Retrier (which retries OSErrors only)."""

    def __init__(self, error: OSError) -> None:
        self.error = error


class Mux:
    """Lets several streams of one thread share its broker Client: each reply goes to the
    stream that sent the request, whoever happens to be waiting when it arrives."""

    def __init__(self, rpc: Client, keep_buffers: int = 8,
                 retry: Retrier | None = None) -> None:
        self.rpc = rpc
        self.buffers = BufferPool(keep_buffers)
        self.retry = retry
        self._owner: dict[int, object] = {}
        self._stash: dict[object, deque[Reply]] = {}
        # this thread's block pools for put_small, by (replication, block_size) asked
        self.pools: dict[tuple[int | None, int | None], "BlockPool"] = {}

    def call(self, service: str, header: dict, payload: Iterable = (),
             timeout: float | None = None) -> Reply:
        """One request and its reply. MDS requests ride through restarts (client/retry.py):
        mutations get an operation id, then the same request is retried until the
        deadline - the one place the client retries the MDS. A broker this connection
        never reached is not waited for: that is a cluster not running (or a wrong
        endpoint), reported within connect_timeout."""
        if self.retry is None or service != MDS_SERVICE:
            return self.rpc.call(service, header, payload, timeout)
        header = stamp_opids(header)
        return self.retried(lambda: self.call_once(service, header, payload, timeout))

    def call_once(self, service: str, header: dict, payload: Iterable = (),
                  timeout: float | None = None) -> Reply:
        """One attempt of a retried call, for use inside `retried`: a broker this
        connection never reached raises past the retry policy."""
        try:
            return self.rpc.call(service, header, payload, timeout)
        except BrokerUnavailable as exc:
            if not getattr(self.rpc, "ever_connected", True):
                raise _Final(exc) from None
            raise

    def retried(self, attempt: Callable[[], T]) -> T:
        """`attempt` (built on `call_once`) under the retry policy: the one retry loop
        for MDS requests, also for callers that retry part of an answer (mds_batch)."""
        assert self.retry is not None, "retried() needs a retry policy"
        try:
            return self.retry.run(attempt)
        except _Final as final:
            raise final.error from None

    def send(self, owner: object, service: str, header: dict, payload: Iterable = (),
             timeout: float | None = None) -> int:
        rid = self.rpc.send(service, header, payload, timeout)
        self._owner[rid] = owner
        return rid

    def next(self, owner: object, timeout: float | None) -> Reply | None:
        """The next reply for `owner` (errors not raised), or None after `timeout`."""
        stash = self._stash.get(owner)
        if stash:
            return stash.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            reply = self.rpc.wait_any(left)
            if reply is None:
                return None
            who = self._owner.pop(reply.rid, None)
            if who is owner:
                return reply
            if who is not None:
                self._stash.setdefault(who, deque()).append(reply)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def cancel(self, owner: object, rids: Iterable[int]) -> None:
        """Forget requests: their replies, now or later, are dropped."""
        for rid in rids:
            self._owner.pop(rid, None)
            try:
                self.rpc.wait(rid, timeout=0)
            except (OSError, KeyError):
                pass
        self._stash.pop(owner, None)
