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

The "ran alone" mark (`<key>/alone`). An active whose standby is not in sync writes the
mark - its name, epoch, the standby's last acknowledged seq (`since`) and its own last seq
(`last`) - before it acknowledges anything only its own disk holds (`mark_alone`, put only
while the leader key is the one created at its epoch, so a deposed leader cannot), and
clears it the same way once the standby is in sync again (`clear_mark`). A candidate may
not lead while the mark is set unless it is the mark's writer with at least `last` in
its own log. Why the campaign transaction itself compares the mark (absent, or the very
version the candidate read) rather than the candidate only reading it first: between a
read and the create, the active can write the mark, acknowledge a lone write and die;
only a compare inside the create transaction makes "mark absent" and "I lead" one fact.
A comparison of seqs alone could not do it either: the lone active's writes go on past
what any mark says, so only its own log is known to hold them all.

Deposed: a leader that lost its key and finds it held with a higher create revision
(another MDS took over) has `deposed_by` set; the MDS exits on it (mds/server.py, 77).

State table (step, with `now` from the clock):

    state      | event                          | next state
    -----------+--------------------------------+------------------------------------------
    candidate  | no lease, or etcd says it ended | grant a lease, then try to create the key
    candidate  | create won, or the key is ours | leader (epoch = create revision)
    candidate  | key held by another            | candidate (retry every `poll`); if it
               |                                | led before at a lower epoch: deposed_by
    candidate  | the "ran alone" mark is set by | candidate, `refusal` says why (logged
               | another (or our log lacks it)  | once); the campaign is not tried
    leader     | renewal due, etcd answers      | leader, lease end moved on
    leader     | etcd says the lease is gone    | candidate (stepped down)
    leader     | now >= lease end - margin      | candidate (stepped down), even if etcd is
               |                                | unreachable: checked before any call

Public API: Election(etcd, key, name, ttl, clock, margin=None, poll=0.5, last_seq=None)
    .step() -> "elected" | "stepped_down" | None   does the due etcd calls (may block for
                                                  the etcd client's timeout)
    .leading(now) -> epoch | None                 safe to call from another thread
    .describe(now) -> dict                        for `aegisfs status`
    .resign()                                     revoke the lease (clean shutdown)
    .mark_alone(epoch, since, last) -> bool       write the "ran alone" mark (guarded)
    .clear_mark(epoch) -> bool                    delete it (guarded)
    .refusal, .deposed_by                         why it may not lead; who deposed it
    Campaign(election): a daemon thread calling step() until stop()
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable, Protocol

from .etcd import EtcdUnavailable, Held

log = logging.getLogger(__name__)


class Etcd(Protocol):
    def grant(self, ttl: int) -> tuple[int, int]: ...
    def keepalive(self, lease: int) -> int: ...
    def revoke(self, lease: int) -> None: ...
    def campaign(self, key: bytes, value: bytes, lease: int, mark: bytes,
                 mark_mod: int) -> Held: ...
    def get(self, key: bytes) -> Held | None: ...
    def put_if_leader(self, key: bytes, value: bytes, leader: bytes, epoch: int) -> bool: ...
    def delete_if_leader(self, key: bytes, leader: bytes, epoch: int) -> bool: ...


def read_mark(raw: bytes) -> dict | None:
    """The mark's value ({name, epoch, since, last}), or None when it is unreadable."""
    try:
        mark = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(mark, dict) and isinstance(mark.get("name"), str) and all(
        type(mark.get(k)) is int for k in ("epoch", "since", "last"))
    return mark if ok else None


class Election:
    def __init__(self, etcd: Etcd, key: bytes, name: bytes, ttl: int,
                 clock: Callable[[], float], margin: float | None = None,
                 poll: float = 0.5, last_seq: Callable[[], int] | None = None) -> None:
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
        self.mark_key = key + b"/alone"
        self.last_seq = last_seq or (lambda: 0)   # this MDS's log end (the mark's check)
        self.refusal: str | None = None   # why this candidate may not lead now
        self.led: int | None = None       # the highest epoch it led with
        self.deposed_by: int | None = None

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
                "etcd_error": self.error, "takeover": self.refusal}

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
                change = self._campaign(now) or change
            self.error = None
        except EtcdUnavailable as exc:
            if self.error is None:
                log.warning("etcd: %s", exc)
            self.error = str(exc)
        return change

    def _may_not_lead(self, mark: Held | None) -> str | None:
        """Why the mark forbids this candidate to lead (None: it may)."""
        if mark is None:
            return None
        value = read_mark(mark.value)
        if value is None:
            return f"will not take over: unreadable mark {mark.value[:80]!r}"
        if value["name"] == self.name.decode(errors="replace") \
                and self.last_seq() >= value["last"]:
            return None      # our own mark, and our log holds every write it covers
        return (f"will not take over: the active {value['name']} ran alone since seq "
                f"{value['since']} (this MDS is at seq {self.last_seq()})")

    def _campaign(self, now: float) -> str | None:
        assert self.lease is not None
        mark = self.etcd.get(self.mark_key)
        why = self._may_not_lead(mark)
        if why is not None:
            if why != self.refusal:
                log.warning("%s", why)
            self.refusal = why
            held = self.etcd.get(self.key)
        else:
            if self.refusal is not None:
                log.info("the ran-alone mark no longer stands in the way: campaigning")
            self.refusal = None
            held = self.etcd.campaign(self.key, self.name, self.lease, self.mark_key,
                                      mark.mod_revision if mark else 0)
        self.holder = held if held is not None and held.create_revision else None
        if held is None or not held.create_revision:
            return None      # nobody leads (or the mark changed meanwhile): next poll
        if held.won or held.lease == self.lease:
            self.term = (held.create_revision, self.lease_end)
            self.led = max(self.led or 0, held.create_revision)
            self._next = now + self.ttl / 3
            log.info("elected MDS leader with epoch %d (lease %x, %d s)",
                     held.create_revision, self.lease, self.ttl)
            return "elected"
        if self.led is not None and held.create_revision > self.led \
                and self.deposed_by is None:
            self.deposed_by = held.create_revision
            log.warning("deposed: the leader key is held by epoch %d (%s)",
                        held.create_revision, held.value.decode(errors="replace"))
        return None

    def mark_alone(self, epoch: int, since: int, last: int) -> bool:
        """Write the "ran alone" mark while leading with `epoch` (False: not written -
        etcd unreachable, or the leader key is no longer ours)."""
        value = json.dumps({"name": self.name.decode(errors="replace"), "epoch": epoch,
                            "since": since, "last": last}).encode()
        try:
            return self.etcd.put_if_leader(self.mark_key, value, self.key, epoch)
        except EtcdUnavailable as exc:
            self.error = str(exc)
            return False

    def clear_mark(self, epoch: int) -> bool:
        try:
            return self.etcd.delete_if_leader(self.mark_key, self.key, epoch)
        except EtcdUnavailable as exc:
            self.error = str(exc)
            return False

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
