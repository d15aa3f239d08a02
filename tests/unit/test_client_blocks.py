"""The client's pure block logic: splitting, ranges, the ordered window, replica choice."""
from __future__ import annotations

import errno
import random

import pytest
from hypothesis import given, strategies as st

from client.blocks import (OrderedWindow, Piece, ReplicaWrite, Suspects, alloc_batch,
                           block_ranges, pieces_for_range, reason_of, renew_period,
                           replica_order)

BS = 64 * 1024


# -- splitting --------------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [
    (0, []),
    (1, [(0, 1)]),
    (BS - 1, [(0, BS - 1)]),
    (BS, [(0, BS)]),
    (BS + 1, [(0, BS), (BS, 1)]),
    (3 * BS + 7, [(0, BS), (BS, BS), (2 * BS, BS), (3 * BS, 7)]),
])
def test_block_ranges_edge_sizes(size, expected):
    assert block_ranges(size, BS) == expected


@given(st.integers(0, 10_000), st.integers(1, 512))
def test_block_ranges_tile_the_file(size, bs):
    ranges = block_ranges(size, bs)
    assert sum(n for _, n in ranges) == size
    assert all(n == bs for _, n in ranges[:-1])           # only the last block is short
    assert all(0 < n <= bs for _, n in ranges)
    assert [off for off, _ in ranges] == list(range(0, size, bs))


def test_block_ranges_rejects_nonsense():
    with pytest.raises(ValueError):
        block_ranges(-1, BS)
    with pytest.raises(ValueError):
        block_ranges(10, 0)


# -- ranges -----------------------------------------------------------------------------

def test_pieces_whole_file_are_whole_blocks():
    sizes = [BS, BS, 7]
    assert pieces_for_range(sizes) == [Piece(0, 0, BS, True), Piece(1, 0, BS, True),
                                       Piece(2, 0, 7, True)]


def test_pieces_range_inside_one_block_is_partial():
    assert pieces_for_range([BS, BS], 10, 20) == [Piece(0, 10, 20, False)]


def test_pieces_range_across_a_boundary_fetches_only_what_is_needed():
    assert pieces_for_range([BS, BS, BS], BS - 5, BS + 10) == [
        Piece(0, BS - 5, 5, False), Piece(1, 0, BS, True), Piece(2, 0, 5, False)]


def test_pieces_range_past_the_end_is_clipped_or_empty():
    assert pieces_for_range([BS, 7], BS + 3, 100) == [Piece(1, 3, 4, False)]
    assert pieces_for_range([BS, 7], BS + 7, 100) == []
    assert pieces_for_range([BS, 7], 10 * BS) == []
    assert pieces_for_range([], 0) == []
    assert pieces_for_range([BS], 0, 0) == []


@given(st.lists(st.integers(1, 50), max_size=8), st.integers(0, 450), st.none() | st.integers(0, 450))
def test_pieces_reassemble_the_range(sizes, offset, length):
    data = bytes(random.Random(len(sizes)).randrange(256) for _ in range(sum(sizes)))
    blocks, pos = [], 0
    for s in sizes:
        blocks.append(data[pos:pos + s])
        pos += s
    got = b"".join(blocks[p.index][p.offset:p.offset + p.length]
                   for p in pieces_for_range(sizes, offset, length))
    end = None if length is None else offset + length
    assert got == data[offset:end]
    for p in pieces_for_range(sizes, offset, length):
        assert p.whole == (p.offset == 0 and p.length == sizes[p.index])
        assert p.length > 0


# -- the window -------------------------------------------------------------------------

def test_window_bounds_items_in_flight():
    w: OrderedWindow[str] = OrderedWindow(3)
    assert [w.start() for _ in range(3)] == [0, 1, 2]
    assert w.full() and w.in_flight == 3
    with pytest.raises(RuntimeError):
        w.start()


def test_window_releases_in_order_even_when_completed_out_of_order():
    w: OrderedWindow[str] = OrderedWindow(4)
    for _ in range(4):
        w.start()
    w.complete(2, "c")
    w.complete(1, "b")
    assert w.release() == []             # 0 is still out: nothing may overtake it
    assert w.full()                      # so no slot is free yet
    w.complete(0, "a")
    assert w.release() == [(0, "a"), (1, "b"), (2, "c")]
    assert w.in_flight == 1 and not w.full()
    w.complete(3, "d")
    assert w.release() == [(3, "d")]
    assert w.empty()


def test_window_slots_are_reused_only_after_release():
    w: OrderedWindow[int] = OrderedWindow(2)
    slots = []
    for seq in range(6):
        while w.full():
            head = seq - w.size
            w.complete(head, head)
            w.release()
        slots.append(w.next_slot())
        assert w.start() == seq
    assert slots == [0, 1, 0, 1, 0, 1]
    # the slot handed out never belongs to an unreleased item
    live = {s % 2 for s in range(6 - w.in_flight, 6)}
    assert len(live) == w.in_flight


def test_window_rejects_unknown_or_double_completion():
    w: OrderedWindow[int] = OrderedWindow(2)
    w.start()
    with pytest.raises(ValueError):
        w.complete(1, 1)                 # not started
    w.complete(0, 0)
    with pytest.raises(ValueError):
        w.complete(0, 0)                 # twice
    w.release()
    with pytest.raises(ValueError):
        w.complete(0, 0)                 # already released
    with pytest.raises(ValueError):
        OrderedWindow(0)


@given(st.integers(1, 6), st.lists(st.integers(0, 5), min_size=1, max_size=40))
def test_window_random_completion_order_keeps_order_and_bound(size, picks):
    w: OrderedWindow[int] = OrderedWindow(size)
    released, outstanding, n = [], [], 0
    for pick in picks:
        if not w.full():
            outstanding.append(w.start())
            n += 1
        assert w.in_flight <= size
        if outstanding:
            seq = outstanding.pop(pick % len(outstanding))
            w.complete(seq, seq)
            released += [s for s, _ in w.release()]
    for seq in outstanding:
        w.complete(seq, seq)
    released += [s for s, _ in w.release()]
    assert released == list(range(n))
    assert w.empty()


# -- replicas ---------------------------------------------------------------------------

def test_replica_order_is_a_permutation_that_varies():
    rng = random.Random(1)
    orders = {tuple(replica_order(["a", "b", "c"], rng=rng)) for _ in range(50)}
    assert all(sorted(o) == ["a", "b", "c"] for o in orders)
    assert len(orders) > 1               # reads are spread over replicas


def test_replica_order_puts_suspects_last():
    rng = random.Random(2)
    for _ in range(20):
        order = replica_order(["a", "b", "c", "d"], suspects={"b", "d"}, rng=rng)
        assert set(order[:2]) == {"a", "c"} and set(order[2:]) == {"b", "d"}
    assert sorted(replica_order(["a"], suspects={"a"})) == ["a"]   # never dropped
    assert replica_order([]) == []


def test_suspects_are_forgotten_after_ttl():
    now = [100.0]
    s = Suspects(ttl=30, clock=lambda: now[0])
    s.mark("dn1")
    now[0] += 10
    s.mark("dn2")
    assert s.current() == {"dn1", "dn2"}
    now[0] += 25
    assert s.current() == {"dn2"}
    s.clear("dn2")
    assert s.current() == set()


def test_replica_write_all_ack():
    r = ReplicaWrite(["dn1", "dn2"], replication=2)
    assert r.take_queue() == ["dn1", "dn2"] and not r.done
    r.ack("dn2")
    r.ack("dn1")
    assert r.done and r.acked == ["dn2", "dn1"] and not r.wants_replacement()


def test_replica_write_failover_excludes_every_node_tried():
    r = ReplicaWrite(["dn1", "dn2"], replication=2)
    r.take_queue()
    r.ack("dn1")
    r.fail("dn2", "node down")
    assert r.wants_replacement()
    assert r.exclude() == ["dn1", "dn2"]
    r.add("dn3")
    assert not r.wants_replacement()     # dn3 queued: R is covered again
    assert r.take_queue() == ["dn3"]
    r.fail("dn3", "timeout")
    assert r.exclude() == ["dn1", "dn2", "dn3"]
    assert r.wants_replacement()
    r.add("dn1")                          # a node already tried is never re-added
    assert r.queue == []
    assert r.done and r.acked == ["dn1"]  # finished with fewer replicas: still good
    assert "dn2 (node down)" in r.describe_failures()


def test_replica_write_swaps_a_suspect_target_before_sending():
    r = ReplicaWrite(["dn1", "dn2"], replication=2)
    assert r.swap("dn2", "dn3", "recently down")
    assert not r.swap("dn1", "dn3", "x")          # dn3 already a target
    assert not r.swap("dn9", "dn4", "x")          # not a queued target
    assert r.take_queue() == ["dn1", "dn3"]
    assert r.exclude() == ["dn1", "dn2", "dn3"]


def test_replica_write_gives_up_after_max_tries():
    r = ReplicaWrite(["a"], replication=1, max_tries=3)
    for node in ["a", "b", "c"]:
        if node != "a":
            r.add(node)
        r.take_queue()
        r.fail(node, "down")
    assert not r.wants_replacement()
    assert r.done and r.acked == []       # the caller turns this into an error


def test_replica_write_with_fewer_targets_than_r_is_filled_after_a_failure_only():
    r = ReplicaWrite(["a"], replication=2)
    assert r.wants_replacement()          # the caller may ask for one up front
    r.take_queue()
    r.ack("a")
    assert r.done


def test_reason_of_maps_errors_to_short_words():
    assert reason_of(ConnectionRefusedError(errno.ECONNREFUSED, "x")) == "node down"
    assert reason_of(ConnectionResetError(errno.ECONNRESET, "x")) == "node lost"
    assert reason_of(TimeoutError(errno.ETIMEDOUT, "x")) == "timeout"
    assert reason_of(FileNotFoundError(errno.ENOENT, "No such block")) == "missing"
    assert reason_of(OSError(errno.EIO, "block is corrupt")) == "block is corrupt"


# -- lease and allocation pacing --------------------------------------------------------

def test_renew_period_reads_seconds_remaining():
    assert renew_period(60.0) == 20.0
    assert renew_period(6.0) == 2.0
    assert renew_period(1.0) == 1.0                       # never busier than once a second
    assert renew_period(90) == 20.0                       # ints too: msgpack keeps the type
    # only one meaning: a large value is a long lease, never mistaken for a deadline
    assert renew_period(1.7e9) == 20.0
    for unusable in (None, 0, -5.0, True, "60"):
        assert renew_period(unusable) == 10.0


def test_alloc_batch_exact_when_size_known_else_growing():
    assert alloc_batch(1, 8, 0) == 1
    assert alloc_batch(5, 8, 0) == 5
    assert alloc_batch(10_000, 8, 0) == 16
    assert [alloc_batch(None, 8, a) for a in (0, 1, 2, 4, 8, 16, 64)] == [1, 1, 2, 4, 8, 16, 16]
    assert alloc_batch(0, 8, 3) == 3     # the file grew past its known size


def test_alloc_batch_never_asks_past_the_mds_limit():
    from broker.limits import MAX_ALLOCATE
    assert alloc_batch(10 * MAX_ALLOCATE, 4096, 0) == MAX_ALLOCATE
    assert alloc_batch(None, 4096, 10 * MAX_ALLOCATE) == MAX_ALLOCATE
