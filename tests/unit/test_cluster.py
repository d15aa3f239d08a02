from __future__ import annotations

import errno
import random
from collections import Counter

import pytest

from mds.cluster import ClusterView, NodeEvent

GB = 1 << 30


def view(seed: int = 1, **kwargs: object) -> ClusterView:
    return ClusterView(dead_after=5.0, rng=random.Random(seed), **kwargs)


def topics(events: list[NodeEvent]) -> list[tuple[str, str]]:
    return [(e.topic, e.node) for e in events]


def test_liveness_transitions() -> None:
    c = view()
    assert topics(c.register("a", 10 * GB, 0, 0, now=0.0)) == [("node.up", "a")]
    assert topics(c.heartbeat("b", 10 * GB, 0, 0, now=0.5)) == [("node.up", "b")]
    assert c.heartbeat("a", 10 * GB, GB, 3, now=1.0) == []  # steady state: no events
    assert c.live_nodes() == ["a", "b"]
    assert c.check(now=5.4) == []  # b was seen 4.9 s ago, a 4.4 s ago
    assert topics(c.check(now=5.5)) == [("node.down", "b")]
    assert c.check(now=5.6) == []  # reported once
    assert c.live_nodes() == ["a"]
    events = c.check(now=6.0)
    assert topics(events) == [("node.down", "a")]
    assert events[0].as_dict() == {"topic": "node.down", "node": "a", "time": 6.0,
                                   "reason": "heartbeat timeout"}
    assert c.live_nodes() == []
    assert topics(c.heartbeat("a", 10 * GB, GB, 3, now=7.0)) == [("node.up", "a")]
    assert c.live_nodes() == ["a"]
    # a restarted process re-registers while still considered up: say so
    ev = c.register("a", 10 * GB, GB, 3, now=7.5)
    assert topics(ev) == [("node.up", "a")] and ev[0].reason == "re-registered"
    assert c.nodes()["a"]["used"] == GB and c.nodes()["b"]["up"] is False


def test_liveness_also_follows_the_clock_between_checks() -> None:
    c = view()
    c.heartbeat("a", GB, 0, 0, now=0.0)
    assert c.is_live("a", now=4.9) and not c.is_live("a", now=5.0)
    assert c.live_nodes(now=5.0) == [] and c.live_nodes() == ["a"]
    with pytest.raises(OSError):
        c.place(1, now=5.0)  # placement never picks a node that went silent
    c.forget("a")
    assert c.nodes() == {}


def test_place_returns_distinct_live_nodes_and_honours_exclude() -> None:
    c = view()
    for n in "abcde":
        c.heartbeat(n, 10 * GB, 0, 0, now=0.0)
    c.heartbeat("a", 10 * GB, 0, 0, now=-10.0)
    c.check(now=0.0)  # "a" is down
    for _ in range(200):
        got = c.place(3, now=0.0, exclude=["b"])
        assert len(got) == len(set(got)) == 3
        assert "a" not in got and "b" not in got
    assert sorted(c.place(3, now=0.0, exclude=["b"])) == ["c", "d", "e"]


def test_place_refuses_when_too_few_nodes() -> None:
    c = view()
    c.heartbeat("a", GB, 0, 0, now=0.0)
    c.heartbeat("b", GB, 0, 0, now=0.0)
    with pytest.raises(OSError) as info:
        c.place(3, now=1.0)
    assert info.value.errno == errno.ENOSPC
    assert "only 2 live DataNodes, need 3" in str(info.value)
    # the caller may accept fewer replicas explicitly
    assert sorted(c.place(3, now=1.0, min_nodes=2)) == ["a", "b"]
    assert len(c.place(3, now=1.0, min_nodes=1, exclude=["a"])) == 1
    with pytest.raises(OSError) as info:
        c.place(2, now=1.0, min_nodes=2, exclude=["a"])
    assert "excluding ['a']" in str(info.value)
    with pytest.raises(OSError) as info:
        c.place(0, now=1.0)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        c.place(2, now=1.0, min_nodes=3)


def test_full_nodes_are_not_eligible() -> None:
    c = view()
    c.heartbeat("full", GB, GB, 10, now=0.0)
    c.heartbeat("tight", GB, GB - 100, 10, now=0.0)
    c.heartbeat("roomy", GB, 0, 0, now=0.0)
    assert c.place(1, now=0.0, reserve=1000) == ["roomy"]
    with pytest.raises(OSError) as info:
        c.place(2, now=0.0, reserve=1000)
    assert "only 1 live DataNodes with 1000 bytes free, need 2" in str(info.value)
    assert sorted(c.place(2, now=0.0, reserve=50)) == ["roomy", "tight"]


def test_placement_is_weighted_by_free_space() -> None:
    c = view(seed=42)
    free = {"a": 1, "b": 2, "c": 3, "d": 4}
    for n, f in free.items():
        c.heartbeat(n, 100 * GB, 100 * GB - f * GB, 0, now=0.0)
    draws = 40_000
    counts = Counter(c.place(1, now=0.0)[0] for _ in range(draws))
    for n, f in free.items():
        assert abs(counts[n] / draws - f / 10) < 0.01, counts
    # without replacement: with r=2, the emptiest node is chosen most often, never twice
    pairs = Counter(tuple(sorted(c.place(2, now=0.0))) for _ in range(20_000))
    share_d = sum(v for k, v in pairs.items() if "d" in k) / 20_000
    share_a = sum(v for k, v in pairs.items() if "a" in k) / 20_000
    # exact: P(d chosen) = 0.4 + sum over x != d of P(x first) * 4 / (10 - free(x))
    expect_d = 0.4 + 0.1 * 4 / 9 + 0.2 * 4 / 8 + 0.3 * 4 / 7
    expect_a = 0.1 + 0.2 * 1 / 8 + 0.3 * 1 / 7 + 0.4 * 1 / 6
    assert abs(share_d - expect_d) < 0.015 and abs(share_a - expect_a) < 0.015


def test_same_seed_same_placements() -> None:
    def run(seed: int) -> list[list[str]]:
        c = view(seed=seed)
        for i in range(8):
            c.heartbeat(f"n{i}", (i + 1) * GB, 0, 0, now=0.0)
        return [c.place(3, now=0.0) for _ in range(50)]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_promised_bytes_count_until_they_expire() -> None:
    c = view(promise_ttl=10.0)
    c.heartbeat("a", 100, 0, 0, now=0.0)
    c.heartbeat("b", 100, 0, 0, now=0.0)
    first = c.place(1, now=0.0, reserve=60)
    second = c.place(1, now=1.0, reserve=60)
    assert first != second  # the first node has only 40 bytes left after the promise
    with pytest.raises(OSError) as info:
        c.place(1, now=2.0, reserve=60)
    assert info.value.errno == errno.ENOSPC
    assert c.nodes()[first[0]]["promised"] == 60
    c.heartbeat("a", 100, 0, 0, now=9.0)  # heartbeats keep the promises
    c.heartbeat("b", 100, 0, 0, now=9.0)
    with pytest.raises(OSError):
        c.place(1, now=9.5, reserve=60)
    assert c.place(1, now=10.0, reserve=60) == first  # first promise expired at t=10
    # a node that restarts forgets promises made to its previous incarnation
    c.register(second[0], 100, 0, 0, now=10.5)
    assert c.nodes()[second[0]]["promised"] == 0
