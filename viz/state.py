"""Folding cluster events into what the page shows: per-node counters, bytes committed per
node per time bucket, sequence gaps per (publisher, topic), and the recent events.

Pure: no sockets, no Streamlit, the clock is a parameter. The feed thread calls `apply`
under its lock; the page reads an immutable `View`.
"""
from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Mapping

from client.output import CLOCK
from client.output import human as human_bytes  # sizes read as in the CLI: one helper
from client.output import when as format_time

log = logging.getLogger(__name__)

# Fields every event body carries; the rest is the event's own payload.
ENVELOPE = ("src", "seq", "ts")
NAMESPACE_TOPICS = ("file.", "dir.")


@dataclass(frozen=True, slots=True)
class FeedEvent:
    topic: str
    src: str
    seq: int
    ts: float
    fields: Mapping[str, Any]
    received: float

    @classmethod
    def from_body(cls, topic: str, body: Mapping[str, Any], received: float) -> "FeedEvent":
        seq, ts = body.get("seq", 0), body.get("ts", received)
        return cls(topic=topic, src=str(body.get("src", "?")),
                   seq=seq if isinstance(seq, int) else 0,
                   ts=float(ts) if isinstance(ts, (int, float)) else received,
                   fields={k: v for k, v in body.items() if k not in ENVELOPE},
                   received=received)

    @property
    def node(self) -> str:
        """Whom the event is about: its `node` field (the MDS reports on DataNodes), else
        its publisher."""
        node = self.fields.get("node")
        return str(node) if node is not None else self.src

    def summary(self) -> str:
        """One short line of the event's payload for the feed table."""
        f = self.fields
        parts: list[str] = []
        if "path" in f:
            parts.append(str(f["path"]))
        if "src" in f and "dst" in f:   # file.rename carries its own src/dst in fields
            parts.append(f"{f['src']} → {f['dst']}")
        if "block" in f:
            parts.append(f"block {short_id(f['block'])}")
        if isinstance(f.get("size"), int):
            parts.append(human_bytes(f["size"]))
        if "checksum" in f:
            parts.append(f"crc {short_checksum(f['checksum'])}")
        if isinstance(f.get("blocks"), int):
            parts.append(plural(f["blocks"], "block"))
        if "replication" in f:
            parts.append(f"R={f['replication']}")
        if "reason" in f:
            parts.append(str(f["reason"]))
        return " · ".join(parts)


@dataclass(slots=True)
class Stream:
    """Sequence bookkeeping for one (publisher, topic)."""
    first: int
    last: int
    received: int = 1
    missed: int = 0
    gaps: int = 0
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class Gap:
    src: str
    topic: str
    expected: int
    got: int
    at: float

    @property
    def missing(self) -> int:
        return self.got - self.expected


@dataclass(frozen=True, slots=True)
class View:
    """A consistent copy of the state for one page render (safe to read without a lock)."""
    total: int
    topics: dict[str, int]
    nodes: dict[str, dict[str, int]]          # node -> topic -> count
    node_bytes: dict[str, int]                # node -> bytes committed (since the feed began)
    buckets: list[tuple[float, dict[str, int]]]   # (bucket start, node -> bytes), oldest first
    streams: dict[tuple[str, str], Stream]
    gaps: list[Gap]                           # newest last
    recent: list[FeedEvent]                   # newest first
    last_event: float | None

    @property
    def missed(self) -> int:
        return sum(s.missed for s in self.streams.values())

    def publishers(self) -> dict[str, dict[str, int]]:
        """Sequence bookkeeping summed per publisher: topics, received, missed, gaps,
        restarts."""
        out: dict[str, dict[str, int]] = {}
        for (src, _topic), s in self.streams.items():
            row = out.setdefault(src, dict.fromkeys(
                ("topics", "received", "missed", "gaps", "restarts"), 0))
            row["topics"] += 1
            row["received"] += s.received
            row["missed"] += s.missed
            row["gaps"] += s.gaps
            row["restarts"] += s.restarts
        return out

    @property
    def namespace_changes(self) -> int:
        """Events that change what a directory listing shows (a page redraws on a change)."""
        return sum(n for t, n in self.topics.items() if t.startswith(NAMESPACE_TOPICS))


@dataclass
class VizState:
    bucket_seconds: float = 10.0
    window_seconds: float = 300.0
    max_recent: int = 200
    max_gaps: int = 200
    total: int = 0
    topics: Counter = field(default_factory=Counter)
    nodes: dict[str, Counter] = field(default_factory=dict)
    node_bytes: Counter = field(default_factory=Counter)
    buckets: dict[int, Counter] = field(default_factory=dict)
    streams: dict[tuple[str, str], Stream] = field(default_factory=dict)
    gaps: deque = field(init=False)
    recent: deque = field(init=False)
    last_event: float | None = None

    def __post_init__(self) -> None:
        self.gaps = deque(maxlen=self.max_gaps)
        self.recent = deque(maxlen=self.max_recent)

    def apply(self, topic: str, body: Mapping[str, Any], now: float) -> FeedEvent:
        """Fold one event received at `now` (unix seconds) into the state."""
        ev = FeedEvent.from_body(topic, body, now)
        self.total += 1
        self.last_event = now
        self.topics[topic] += 1
        self.nodes.setdefault(ev.node, Counter())[topic] += 1
        if topic == "block.commit" and isinstance(ev.fields.get("size"), int):
            self.node_bytes[ev.node] += ev.fields["size"]
            # Bucketed by arrival time, not the publisher's `ts`: a DataNode whose clock
            # is off must not push its bars outside the window.
            self.buckets.setdefault(self._bucket(now), Counter())[ev.node] += ev.fields["size"]
            self._prune(now)
        self._sequence(ev, now)
        self.recent.appendleft(ev)
        return ev

    def _bucket(self, t: float) -> int:
        return math.floor(t / self.bucket_seconds)

    def _prune(self, now: float) -> None:
        oldest = self._bucket(now - self.window_seconds)
        for b in [b for b in self.buckets if b <= oldest]:
            del self.buckets[b]

    def _sequence(self, ev: FeedEvent, now: float) -> None:
        key = (ev.src, ev.topic)
        s = self.streams.get(key)
        if s is None:
            # The first event seen from a stream is its baseline: earlier ones went out
            # before we subscribed, which is not a loss.
            self.streams[key] = Stream(first=ev.seq, last=ev.seq)
            return
        s.received += 1
        if ev.seq == s.last + 1:
            s.last = ev.seq
            return
        if ev.seq > s.last + 1:
            self._gap(s, ev, s.last + 1, now)
        else:
            # The counter went back: the publisher restarted. Events before this one
            # from the new incarnation (1..seq-1) were lost to us.
            s.restarts += 1
            if ev.seq > 1:
                self._gap(s, ev, 1, now)
        s.last = ev.seq

    def _gap(self, s: Stream, ev: FeedEvent, expected: int, now: float) -> None:
        gap = Gap(ev.src, ev.topic, expected, ev.seq, now)
        s.gaps += 1
        s.missed += gap.missing
        self.gaps.append(gap)
        log.warning("sequence gap from %s on %s: expected %d, got %d",
                    ev.src, ev.topic, expected, ev.seq)

    def series(self, now: float) -> list[tuple[float, dict[str, int]]]:
        """Bytes committed per node for every bucket of the window, empty ones included
        (so a chart's time axis has no holes), oldest first."""
        last = self._bucket(now)
        first = self._bucket(now - self.window_seconds) + 1
        nodes = sorted({n for c in self.buckets.values() for n in c})
        return [(b * self.bucket_seconds,
                 {n: int(self.buckets.get(b, {}).get(n, 0)) for n in nodes})
                for b in range(first, last + 1)]

    def view(self, now: float, recent: int = 50) -> View:
        return View(
            total=self.total,
            topics=dict(self.topics),
            nodes={n: dict(c) for n, c in sorted(self.nodes.items())},
            node_bytes=dict(self.node_bytes),
            buckets=self.series(now),
            streams={k: Stream(s.first, s.last, s.received, s.missed, s.gaps, s.restarts)
                     for k, s in sorted(self.streams.items())},
            gaps=list(self.gaps),
            recent=list(self.recent)[:recent],
            last_event=self.last_event,
        )


# -- small formatting helpers shared by the page and the graph ------------------------------

def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def short_id(block: Any, length: int = 8) -> str:
    if isinstance(block, (bytes, bytearray, memoryview)):
        block = bytes(block).hex()
    return str(block)[:length]


def short_checksum(checksum: Any) -> str:
    """CRC32C values are ints on the wire; show them as 8 hex digits."""
    if isinstance(checksum, int) and not isinstance(checksum, bool):
        return f"{checksum & 0xFFFFFFFF:08x}"
    if isinstance(checksum, (bytes, bytearray, memoryview)):
        return bytes(checksum).hex()[:8]
    return str(checksum)[:8]


def when(ts: float | None) -> str:
    """A wall-clock time of today's activity; "–" for none."""
    return "–" if not ts else format_time(ts, CLOCK, missing="–")
