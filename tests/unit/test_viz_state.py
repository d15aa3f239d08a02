"""viz/state.py: counters, byte buckets over a sliding window, sequence-gap detection."""
from __future__ import annotations

from viz.state import FeedEvent, VizState, human_bytes, plural, short_checksum, short_id

T0 = 1_700_000_000.0     # a bucket boundary for 10 s buckets


def ev(state: VizState, topic: str, src: str, seq: int, now: float = T0, **fields):
    return state.apply(topic, {"src": src, "seq": seq, "ts": now, **fields}, now)


def test_counters_per_node_and_topic():
    s = VizState()
    ev(s, "block.commit", "dn1", 1, node="dn1", block="ab" * 16, size=100, checksum=7)
    ev(s, "block.commit", "dn1", 2, node="dn1", block="cd" * 16, size=50, checksum=8)
    ev(s, "block.delete", "dn2", 1, node="dn2", block="ab" * 16)
    ev(s, "file.commit", "mds", 1, path="/a", size=150, blocks=2, replication=2)
    # The MDS reports on a DataNode: counted under the node it is about.
    ev(s, "node.down", "mds", 1, node="dn3")
    v = s.view(T0)
    assert v.total == 5
    assert v.nodes == {"dn1": {"block.commit": 2}, "dn2": {"block.delete": 1},
                       "dn3": {"node.down": 1}, "mds": {"file.commit": 1}}
    assert v.topics["block.commit"] == 2
    assert v.node_bytes == {"dn1": 150}
    assert [e.topic for e in v.recent] == ["node.down", "file.commit", "block.delete",
                                           "block.commit", "block.commit"]


def test_bytes_are_bucketed_by_arrival_and_the_window_slides():
    s = VizState(bucket_seconds=10, window_seconds=60)
    ev(s, "block.commit", "dn1", 1, now=T0 + 1, node="dn1", size=10)
    ev(s, "block.commit", "dn1", 2, now=T0 + 9, node="dn1", size=5)
    ev(s, "block.commit", "dn2", 1, now=T0 + 12, node="dn2", size=7)
    series = s.series(T0 + 15)
    assert len(series) == 6                      # every bucket of the window, empty ones too
    assert series[-1] == (T0 + 10, {"dn1": 0, "dn2": 7})
    assert series[-2] == (T0, {"dn1": 15, "dn2": 0})
    assert all(sum(v.values()) == 0 for _, v in series[:-2])
    # 70 s later the first bucket has left the window; totals keep everything.
    ev(s, "block.commit", "dn2", 2, now=T0 + 85, node="dn2", size=1)
    series = s.series(T0 + 85)
    assert sum(v.get("dn1", 0) for _, v in series) == 0
    assert series[-1][1]["dn2"] == 1
    assert T0 // 10 not in s.buckets             # pruned, so memory stays bounded
    assert s.view(T0 + 85).node_bytes == {"dn1": 15, "dn2": 8}


def test_publisher_clock_does_not_move_buckets():
    s = VizState(bucket_seconds=10, window_seconds=60)
    s.apply("block.commit", {"src": "dn1", "seq": 1, "ts": T0 - 3600, "node": "dn1",
                             "size": 4}, T0 + 1)
    assert s.series(T0 + 1)[-1][1] == {"dn1": 4}


def test_first_event_is_a_baseline_not_a_gap():
    s = VizState()
    ev(s, "block.commit", "dn1", 41, node="dn1", size=1)
    ev(s, "block.commit", "dn1", 42, node="dn1", size=1)
    v = s.view(T0)
    assert v.gaps == [] and v.missed == 0
    assert v.streams[("dn1", "block.commit")].first == 41


def test_gap_detected_per_publisher_and_topic():
    s = VizState()
    ev(s, "block.commit", "dn1", 1, node="dn1", size=1)
    ev(s, "block.delete", "dn1", 1, node="dn1")        # another topic: its own sequence
    ev(s, "block.commit", "dn2", 1, node="dn2", size=1)
    ev(s, "block.commit", "dn1", 5, node="dn1", size=1)   # 2, 3, 4 lost
    ev(s, "block.commit", "dn1", 6, node="dn1", size=1)
    ev(s, "block.delete", "dn1", 2, node="dn1")
    v = s.view(T0)
    assert len(v.gaps) == 1
    gap = v.gaps[0]
    assert (gap.src, gap.topic, gap.expected, gap.got, gap.missing) == \
        ("dn1", "block.commit", 2, 5, 3)
    stream = v.streams[("dn1", "block.commit")]
    assert (stream.last, stream.missed, stream.gaps, stream.received) == (6, 3, 1, 3)
    assert v.streams[("dn1", "block.delete")].missed == 0
    assert v.missed == 3
    assert v.publishers() == {
        "dn1": {"topics": 2, "received": 5, "missed": 3, "gaps": 1, "restarts": 0},
        "dn2": {"topics": 1, "received": 1, "missed": 0, "gaps": 0, "restarts": 0}}


def test_publisher_restart_is_not_a_gap_unless_events_were_lost():
    s = VizState()
    for seq in (1, 2, 3):
        ev(s, "node.up", "dn1", seq, node="dn1")
    ev(s, "node.up", "dn1", 1, node="dn1")           # restarted, counter back at 1
    assert s.view(T0).missed == 0
    assert s.streams[("dn1", "node.up")].restarts == 1
    ev(s, "node.up", "dn1", 3, node="dn1")           # 2 missed
    ev(s, "node.up", "dn1", 2, node="dn1")           # went back again: restart that lost 1
    v = s.view(T0)
    assert v.streams[("dn1", "node.up")].restarts == 2
    assert [(g.expected, g.got) for g in v.gaps] == [(2, 3), (1, 2)]
    assert v.missed == 2


def test_recent_and_gaps_are_bounded():
    s = VizState(max_recent=5, max_gaps=2)
    for i in range(20):
        ev(s, "block.commit", "dn1", 1 + 2 * i, node="dn1", size=1)
    v = s.view(T0, recent=3)
    assert len(s.recent) == 5 and len(v.recent) == 3
    assert v.recent[0].seq == 39
    assert len(v.gaps) == 2 and v.missed == 19


def test_view_is_a_copy():
    s = VizState()
    ev(s, "block.commit", "dn1", 1, node="dn1", size=3)
    v = s.view(T0)
    ev(s, "block.commit", "dn1", 3, node="dn1", size=3)
    assert v.total == 1 and v.nodes["dn1"]["block.commit"] == 1
    assert v.streams[("dn1", "block.commit")].last == 1


def test_garbage_envelope_fields_do_not_break_folding():
    s = VizState()
    e = s.apply("weird", {"seq": "x", "ts": "y", "size": "big"}, T0)
    assert (e.src, e.seq, e.ts) == ("?", 0, T0)
    s.apply("block.commit", {"src": "dn1", "seq": 1, "size": "big"}, T0)
    assert s.view(T0).node_bytes == {}


def test_summary_and_formatting():
    e = FeedEvent.from_body("block.commit", {"src": "dn1", "seq": 1, "ts": T0, "node": "dn1",
                                             "block": "0123456789abcdef" * 2, "size": 4 << 20,
                                             "checksum": 0xDEADBEEF}, T0)
    assert e.summary() == "block 01234567 · 4.0 MiB · crc deadbeef"
    f = FeedEvent.from_body("file.commit", {"src": "mds", "seq": 1, "path": "/x/y.png",
                                            "size": 10, "blocks": 1, "replication": 2}, T0)
    assert f.summary() == "/x/y.png · 10 B · 1 block · R=2"
    assert human_bytes(0) == "0 B" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**40) == "3.0 TiB"
    assert short_id(bytes(range(16))) == "00010203"
    assert plural(1, "block") == "1 block" and plural(0, "entry", "entries") == "0 entries"
    assert short_checksum(1) == "00000001" and short_checksum("abcdef0123") == "abcdef01"
