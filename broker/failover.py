"""Several brokers, sans-IO: which connection a client sends on, and which events a
subscriber has already seen (each broker relays every event, so N brokers deliver it N times).

Public API: `BrokerChoice` (sticky preferred broker with failover), `EventDedupe`.
No sockets and no clock here: broker/client.py and broker/events.py feed them.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable


class BrokerChoice:
    """Sticky choice among `n` broker connections.

    A client sends everything on its preferred broker while that connection is up (so a
    client's requests stay ordered through one broker and N clients spread over N brokers
    by their `start`); when the preferred one cannot take a send, the next up connection
    in ring order becomes preferred and stays so (no flapping back when the first returns:
    either is as good, and moving costs nothing but a reordering risk). A preferred
    connection that has never been up is still connecting (or its broker was down from
    the start): the next one serves meanwhile without taking the preference, so clients
    that all start at once still spread instead of all settling on whichever broker
    finished its handshake first. `failed(i)` moves the preference off `i` for a broker
    that is connected but did not answer in time.
    """

    def __init__(self, n: int, start: int = 0) -> None:
        if n < 1:
            raise ValueError("at least one broker")
        self.n = n
        self.preferred = start % n
        self.switches = 0          # times the preference moved: a figure for status/tests
        self._seen_up: set[int] = set()   # connections that were ready at least once

    def pick(self, ready: Callable[[int], bool]) -> int | None:
        """The connection to send on: the preferred one if `ready(i)`, else the next one
        that is (it becomes preferred, unless the preferred one was never up yet); None
        when none is ready."""
        for k in range(self.n):
            i = (self.preferred + k) % self.n
            if ready(i):
                self._seen_up.add(i)
                if i != self.preferred and self.preferred in self._seen_up:
                    self.preferred = i
                    self.switches += 1
                return i
        return None

    def others(self, i: int) -> list[int]:
        """Every connection but `i`, in ring order after it: where a lost one's requests go."""
        return [(i + k) % self.n for k in range(1, self.n)]

    def failed(self, i: int) -> None:
        """Connection `i` let a request time out: prefer the next one from now on."""
        if self.n > 1 and i == self.preferred:
            self.preferred = (i + 1) % self.n
            self.switches += 1


class EventDedupe:
    """Accept each event once, whichever broker relayed it first.

    An event is identified by its publisher's `src`, that publisher's `run` (an id drawn
    per Publisher, so a restarted publisher numbering from 1 again is not taken for a
    repeat) and its topic; `seq` numbers it within that. Per stream we keep the highest
    seq seen and which of the `window` seqs below it were seen: copies arrive out of
    order across brokers, but never `window` events apart in practice (the per-peer HWM
    is the bound), and anything older than the window is taken as seen (dropped) rather
    than risk acting twice. At most `streams` streams are remembered, least recently
    used dropped first (publishers come and go).
    """

    def __init__(self, window: int = 4096, streams: int = 4096) -> None:
        self.window = window
        self.max_streams = streams
        self._streams: OrderedDict[Hashable, list] = OrderedDict()   # key -> [top, mask]
        self.duplicates = 0

    def first(self, key: Hashable, seq: int) -> bool:
        """True the first time (key, seq) is offered; False for a copy (or a too-old one)."""
        state = self._streams.get(key)
        if state is None:
            self._streams[key] = [seq, 1]
            if len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
            return True
        self._streams.move_to_end(key)
        top, mask = state
        if seq > top:
            # bit k of mask: seq (top - k) was seen
            shift = seq - top
            state[0] = seq
            state[1] = ((mask << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            return True
        back = top - seq
        if back >= self.window or mask >> back & 1:
            self.duplicates += 1
            return False
        state[1] = mask | (1 << back)
        return True
