"""MDS leadership from etcd: a lease-backed leader key, the epoch, and stepping down.

Theory of operation. A candidate holds an etcd lease of `ttl` seconds and tries, in one
transaction, to create the leader key bound to that lease only if the key is absent.
The one who creates it leads; its epoch is the key's create revision, which etcd only
ever increases, so every later leader has a higher epoch. The leader renews the lease
every ttl/3. Its own view of the lease's end is conservative: the time *before* the
renewal was sent plus the TTL etcd granted (etcd counts from when it received it). It
may act as leader only while `now < lease end - margin`; past that it has stepped down,
whether or not it could talk to etcd - so it never acts on a lease that may have lapsed.
When the lease really lapses, etcd deletes the key and another candidate creates it
with a higher epoch. If etcd comes back with our lease still alive (etcd restores
leases with a fresh TTL on restart) the key is still ours and we lead again with the
same epoch: nobody else can have held it meanwhile.

State table (step, with `now` from the clock):

    state      | event                          | next state
    -----------+--------------------------------+------------------------------------------
    candidate  | no lease, or etcd says it ended | grant a lease, then try to create the key
    candidate  | create won, or the key is ours | leader (epoch = create revision)
    candidate  | key held by another            | candidate (retry every `poll`)
    leader     | renewal due, etcd answers      | leader, lease end moved on
    leader     | etcd says the lease is gone    | candidate (stepped down)
    leader     | now >= lease end - margin      | candidate (stepped down), even if etcd is
               |                                | unreachable: checked before any call

Public API: Election(etcd, key, name, ttl, clock, margin=None, poll=0.5)
    .step() -> "elected" | "stepped_down" | None   does the due etcd calls (may block for
                                                  the etcd client's timeout)
    .leading(now) -> epoch | None                 safe to call from another thread
    .describe(now) -> dict                        for `aegisfs status`
    .resign()                                     revoke the lease (clean shutdown)
    Campaign(election): a daemon thread calling step() until stop()
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from .etcd import EtcdUnavailable, Held

log = logging.getLogger(__name__)


class Etcd(Protocol):
    def grant(self, ttl: int) -> tuple[int, int]: ...
    def keepalive(self, lease: int) -> int: ...
    def revoke(self, lease: int) -> None: ...
    def create(self, key: bytes, value: bytes, lease: int) -> Held: ...


class Election:
    def __init__(self, etcd: Etcd, key: bytes, name: bytes, ttl: int,
                 clock: Callable[[], float], margin: float | None = None,
                 poll: float = 0.5) -> None:
        if ttl < 2:
            raise ValueError(f"leader lease ttl {ttl}: at least 2 s")
        self.etcd, self.key, self.name, self.ttl, self.clock = etcd, key, name, ttl, clock
        # the longest one MDS turn may take after checking the lease (a batch and its fsync)
        self.margin = min(1.0, ttl / 4) if margin is None else margin
        self.poll = min(poll, ttl / 3)
        self.lease: int | None = None
        self.lease_end = 0.0
        # (epoch, lease end) while leading, replaced as a whole: another thread reads it
        self.term: tuple[int, float] | None = None
        self.holder: Held | None = None
        self.error: str | None = None
        self._next = 0.0

    # -- reads (any thread) ----------------------------------------------------------------

    def leading(self, now: float) -> int | None:
        term = self.term
        return term[0] if term is not None and now < term[1] - self.margin else None

    def describe(self, now: float) -> dict:
        epoch = self.leading(now)
        holder = self.holder
        return {"state": "active" if epoch is not None else "candidate",
                "epoch": epoch if epoch is not None else (holder.create_revision
                                                          if holder else None),
                "lease_left": round(max(0.0, self.lease_end - now), 2) if self.lease else 0.0,
                "holder": holder.value.decode(errors="replace") if holder else None,
                "etcd_error": self.error}

    # -- the state machine ----------------------------------------------------------------

    def _step_down(self, why: str) -> str | None:
        if self.term is None:
            return None
        log.warning("stepping down as MDS leader (epoch %d): %s", self.term[0], why)
        self.term = None
        return "stepped_down"

    def step(self) -> str | None:
        now = self.clock()
        change = None
        if self.term is not None and now >= self.term[1] - self.margin:
            why = f"etcd: {self.error}" if self.error else "the process ran too late"
            change = self._step_down(f"the lease could not be renewed in time ({why})")
        if now < self._next:
            return change
        self._next = now + self.poll
        try:
            # a lease past its end in our view may still live in etcd (a restarted etcd
            # gives its leases a fresh TTL): ask before granting a new one
            if self.lease is None:
                self.lease, granted = self.etcd.grant(self.ttl)
                self.lease_end = now + granted
            else:
                left = self.etcd.keepalive(self.lease)
                if left <= 0:
                    self.lease = None
                    change = self._step_down("etcd says the lease expired") or change
                    self._next = now     # grant a new one at once
                    return change
                self.lease_end = now + left
                if self.term is not None:
                    self.term = (self.term[0], self.lease_end)
                    self._next = now + self.ttl / 3
            if self.term is None:
                held = self.etcd.create(self.key, self.name, self.lease)
                self.holder = held
                if held.won or held.lease == self.lease:
                    self.term = (held.create_revision, self.lease_end)
                    self._next = now + self.ttl / 3
                    log.info("elected MDS leader with epoch %d (lease %x, %d s)",
                             held.create_revision, self.lease, self.ttl)
                    change = "elected"
            self.error = None
        except EtcdUnavailable as exc:
            if self.error is None:
                log.warning("etcd: %s", exc)
            self.error = str(exc)
        return change

    def resign(self) -> None:
        """Give up leadership now (clean shutdown): a standby need not wait for the TTL."""
        self.term = None
        lease, self.lease = self.lease, None
        if lease is not None:
            try:
                self.etcd.revoke(lease)
            except EtcdUnavailable as exc:
                log.warning("could not revoke the leader lease: %s", exc)


class Campaign:
    """Runs Election.step in a thread of its own, so an etcd that hangs never blocks the
    MDS loop (which only reads `leading(now)`)."""

    def __init__(self, election: Election, tick: float = 0.05) -> None:
        self.election = election
        self.changes: list[str] = []    # transitions, appended here, read by the loop
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mds-election", daemon=True)

    def start(self) -> Campaign:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                change = self.election.step()
            except Exception:      # a bug here must not leave a leader that never steps down
                log.exception("election step failed")
                self.election.term = None
                change = "stepped_down"
            if change:
                self.changes.append(change)
            self._stop.wait(self._tick)

    def stop(self, resign: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if resign:
            self.election.resign()
