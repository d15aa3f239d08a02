"""Broker connections for a multithreaded mount: a pool of Muxes, one leased per open
file (its streams keep requests in flight between FUSE calls, which may come from any
FUSE thread) and per namespace call, so no ZeroMQ socket is used by two threads at once.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from broker.client import Client

from ..api import AegisClient
from ..retry import Retrier, RetryPolicy
from ..mux import Mux

KEEP_IDLE = 16


class MountClient(AegisClient):
    """AegisClient whose requests go through the Mux the calling thread leased."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lease = threading.local()
        # MDS requests of the mount ride through an MDS restart (opids make a retried
        # mutation safe) for at most --timeout: an MDS away longer, or a cluster gone,
        # still fails the operation within about that time, never hangs
        self.mount_retrier = Retrier(RetryPolicy(deadline=self.timeout),
                                     notice=self.retrier.notice)
        self._idle: list[Mux] = []
        self._pool_lock = threading.Lock()
        self._clients: list[Client] = []     # every leased connection (closed at close())

    def _io(self) -> Mux:
        mux = getattr(self._lease, "mux", None)
        return mux if mux is not None else super()._io()

    def take(self) -> Mux:
        """A Mux of its own for the caller until give(): pooled, or a new connection."""
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        rpc = self._connect()       # direct to the DataNodes' data endpoints, as the CLI
        with self._lock:
            self._clients.append(rpc)
        return Mux(rpc, keep_buffers=self.window, retry=self.mount_retrier)

    def give(self, mux: Mux, broken: bool = False) -> None:
        """Return a Mux; one whose requests may still be in flight is closed instead."""
        with self._pool_lock:
            if not broken and len(self._idle) < KEEP_IDLE:
                self._idle.append(mux)
                return
        with self._lock:
            if mux.rpc in self._clients:
                self._clients.remove(mux.rpc)
        mux.rpc.close()

    def close(self) -> None:
        """Close the threads' links (AegisClient.close) and every leased connection:
        call once the FUSE loop has stopped, when no lease is in use."""
        super().close()
        with self._lock:
            clients, self._clients = self._clients, []
        with self._pool_lock:
            self._idle.clear()
        for rpc in clients:
            rpc.close()

    @contextlib.contextmanager
    def using(self, mux: Mux | None = None) -> Iterator[Mux]:
        """Run AegisClient calls of this thread through `mux` (or a pooled one)."""
        prev = getattr(self._lease, "mux", None)
        own = mux is None
        m = self.take() if mux is None else mux
        self._lease.mux = m
        broken = False
        try:
            yield m
        except (TimeoutError, ConnectionError):
            broken = True        # a reply may still come on this socket: do not reuse it
            raise
        finally:
            self._lease.mux = prev
            if own:
                self.give(m, broken)
