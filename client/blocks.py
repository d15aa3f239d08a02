"""The pure decisions of block streaming: cutting a file into blocks and ranges, the
bounded window of blocks in flight, and which replicas to write to or read from next.

No sockets and no clock of its own (Suspects takes one): streams.py and reading.py drive
these objects.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Sequence, TypeVar

from broker.limits import MAX_ALLOCATE

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Pure: geometry

def block_ranges(size: int, block_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each block of a `size`-byte file; an empty file has no block."""
    if size < 0 or block_size <= 0:
        raise ValueError(f"bad size {size} or block size {block_size}")
    return [(off, min(block_size, size - off)) for off in range(0, size, block_size)]


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of one block to fetch: the whole block (checksum verifiable) or a range of it."""
    index: int
    offset: int
    length: int
    whole: bool


def pieces_for_range(sizes: Sequence[int], offset: int = 0,
                     length: int | None = None) -> list[Piece]:
    """The pieces of blocks (with these sizes, in file order) covering [offset, offset+length)."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"bad range offset={offset} length={length}")
    end = sum(sizes) if length is None else min(sum(sizes), offset + length)
    if end <= offset:
        return []             # an empty range (or one past the end) needs no block
    pieces, start = [], 0
    for i, size in enumerate(sizes):
        stop = start + size
        if stop > offset and start < end:
            lo, hi = max(offset, start) - start, min(end, stop) - start
            pieces.append(Piece(i, lo, hi - lo, lo == 0 and hi == size))
        start = stop
        if start >= end:
            break
    return pieces


# ---------------------------------------------------------------------------------------
# Pure: the window

class OrderedWindow(Generic[T]):
    """At most `size` items in flight, numbered in start order; they may complete in any
    order but are released strictly in order. Release order is what lets a slot buffer be
    named `seq % size`: the slot of seq s is free once s - size has been released."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self._next = 0          # the next sequence number to start
        self._head = 0          # the lowest sequence number not yet released
        self._done: dict[int, T] = {}

    @property
    def in_flight(self) -> int:
        """Started and not yet released (completed ones waiting for an earlier one count)."""
        return self._next - self._head

    @property
    def started(self) -> int:
        return self._next

    def full(self) -> bool:
        return self.in_flight >= self.size

    def empty(self) -> bool:
        return self._next == self._head

    def next_slot(self) -> int:
        return self._next % self.size

    def start(self) -> int:
        if self.full():
            raise RuntimeError("window is full")
        seq = self._next
        self._next += 1
        return seq

    def complete(self, seq: int, value: T) -> None:
        if not self._head <= seq < self._next or seq in self._done:
            raise ValueError(f"sequence {seq} is not in flight")
        self._done[seq] = value

    def release(self) -> list[tuple[int, T]]:
        """The completed items at the head, in order; their slots become free."""
        out = []
        while self._head in self._done:
            out.append((self._head, self._done.pop(self._head)))
            self._head += 1
        return out


# ---------------------------------------------------------------------------------------
# Pure: replicas

class Suspects:
    """DataNodes that failed us recently: tried last when reading, excluded when allocating.
    Forgotten after `ttl` seconds so a node that came back is used again."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._seen: dict[str, float] = {}

    def mark(self, node: str) -> None:
        self._seen[node] = self._clock()

    def clear(self, node: str) -> None:
        self._seen.pop(node, None)

    def current(self) -> set[str]:
        now = self._clock()
        for node in [n for n, t in self._seen.items() if now - t >= self.ttl]:
            del self._seen[node]
        return set(self._seen)


def replica_order(replicas: Iterable[str], suspects: Iterable[str] = (),
                  rng: random.Random | None = None) -> list[str]:
    """Replicas in a random order (spreading reads), recently failed nodes last."""
    order = list(replicas)
    (rng or random).shuffle(order)
    bad = set(suspects)
    return [n for n in order if n not in bad] + [n for n in order if n in bad]


class ReplicaWrite:
    """Where one block is being written: nodes to send to, in flight, acked, failed.

    A failed node is replaced (up to `max_tries` sends in all) while the block has fewer
    than `replication` replicas acked or in flight; the block is done when nothing is in
    flight or queued, and good when at least one replica acked.
    """

    def __init__(self, targets: Sequence[str], replication: int, max_tries: int | None = None):
        self.replication = replication
        self.queue: list[str] = list(dict.fromkeys(targets))
        self.pending: set[str] = set()
        self.acked: list[str] = []
        self.failed: dict[str, str] = {}
        self.max_tries = max_tries if max_tries is not None else replication + 3
        self.tries = 0

    def take_queue(self) -> list[str]:
        """Nodes to send to now (they become in flight)."""
        nodes, self.queue = self.queue, []
        self.pending.update(nodes)
        self.tries += len(nodes)
        return nodes

    def ack(self, node: str) -> None:
        self.pending.discard(node)
        if node not in self.acked:
            self.acked.append(node)

    def fail(self, node: str, reason: str) -> None:
        self.pending.discard(node)
        self.failed[node] = reason

    def exclude(self) -> list[str]:
        """Nodes a replacement must not be: every node already holding or tried."""
        return sorted(set(self.acked) | self.pending | set(self.queue) | set(self.failed))

    def wants_replacement(self) -> bool:
        short = self.replication - len(self.acked) - len(self.pending) - len(self.queue)
        return short > 0 and self.tries < self.max_tries

    def add(self, node: str) -> None:
        if node not in self.exclude():
            self.queue.append(node)

    def swap(self, old: str, new: str, reason: str) -> bool:
        """Replace a queued target before sending (it is known to be down)."""
        if old not in self.queue or new in self.exclude():
            return False
        self.queue[self.queue.index(old)] = new
        self.failed[old] = reason
        return True

    @property
    def done(self) -> bool:
        return not self.pending and not self.queue

    def describe_failures(self) -> str:
        return ", ".join(f"{n} ({why})" for n, why in self.failed.items()) or "no DataNode"


def put_spec(block_id: bytes, checksum: int, cap: bytes | None) -> dict[str, Any]:
    """The fields that store one block on one node: a `put_block` header without its op,
    or one item of `put_blocks`. `cap` is that node's write capability, if the MDS gave one."""
    spec: dict[str, Any] = {"id": block_id, "checksum": checksum}
    if cap is not None:
        spec["cap"] = cap
    return spec


def put_refusal(result: Any, size: int, checksum: int) -> str | None:
    """Why a DataNode's answer to a put does not prove it stored these bytes (None: it
    does): the size and checksum it acknowledges must be the ones sent."""
    got = result if isinstance(result, dict) else {}
    if got.get("size") != size or got.get("checksum") != checksum:
        return (f"acked size {got.get('size')} checksum {got.get('checksum')}, "
                f"sent {size} / {checksum}")
    return None


def reason_of(exc: BaseException) -> str:
    """A short reason for logs, bad_replica reports and error messages."""
    if isinstance(exc, ConnectionRefusedError):
        return "node down"
    if isinstance(exc, ConnectionResetError):
        return "node lost"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__


def renew_period(lease: Any) -> float:
    """Seconds between lease renewals: a third of the lease, within 1..20 s. `lease` is what
    the MDS's create, allocate and renew replies carry: the seconds the draft has left
    (broker.limits.LEASE_UNIT). Missing or unusable: every 10 s."""
    if not isinstance(lease, (int, float)) or isinstance(lease, bool) or lease <= 0:
        return 10.0
    return min(20.0, max(1.0, lease / 3))


def alloc_batch(remaining_blocks: int | None, window: int, allocated: int) -> int:
    """How many block ids to ask for next: what is left when the size is known, else a
    batch that grows (1, 2, 4 ...); never more than twice the window, so placement keeps
    up with nodes going down and a big file still needs few round trips, and never more
    than one `allocate` may ask for."""
    if remaining_blocks is not None and remaining_blocks > 0:
        return min(remaining_blocks, 2 * window, MAX_ALLOCATE)
    return max(1, min(2 * window, allocated or 1, MAX_ALLOCATE))
