"""broker/failover.py: the sticky broker choice of a client and the event dedupe of a
subscriber of several brokers."""
from __future__ import annotations

import random

import pytest

from broker.failover import BrokerChoice, EventDedupe


def up(*links: int):
    return lambda i: i in links


def test_the_preferred_broker_is_kept_while_it_is_up():
    c = BrokerChoice(3, start=1)
    assert [c.pick(up(0, 1, 2)) for _ in range(5)] == [1] * 5
    assert c.switches == 0


def test_a_down_preferred_broker_moves_the_choice_to_the_next_up_one_and_it_sticks():
    c = BrokerChoice(3, start=1)
    assert c.pick(up(0, 1, 2)) == 1
    assert c.pick(up(0, 2)) == 2            # ring order after 1
    assert c.pick(up(0, 1, 2)) == 2         # 1 is back: no flapping back to it
    assert c.pick(up(0)) == 0
    assert c.switches == 2


def test_a_preferred_broker_still_connecting_keeps_its_share():
    """All clients start at once and broker 0 finishes its handshake first: the clients
    that prefer broker 1 send through 0 meanwhile, then through 1 once it is up."""
    c = BrokerChoice(2, start=1)
    assert c.pick(up(0)) == 0 and c.pick(up(0)) == 0
    assert c.preferred == 1 and c.switches == 0
    assert c.pick(up(0, 1)) == 1
    # once it has been up, losing it moves the preference as before
    assert c.pick(up(0)) == 0 and c.preferred == 0 and c.switches == 1
    assert c.pick(up(0, 1)) == 0


def test_no_broker_up_is_none_and_changes_nothing():
    c = BrokerChoice(2, start=1)
    assert c.pick(up()) is None
    assert c.preferred == 1 and c.switches == 0


def test_a_timeout_on_the_preferred_moves_the_preference_on():
    c = BrokerChoice(2)
    c.failed(1)                               # not the preferred one: nothing
    assert c.preferred == 0
    c.failed(0)
    assert c.pick(up(0, 1)) == 1
    one = BrokerChoice(1)
    one.failed(0)
    assert one.pick(up(0)) == 0 and one.switches == 0


def test_others_are_every_other_broker_in_ring_order():
    assert BrokerChoice(4).others(2) == [3, 0, 1]
    assert BrokerChoice(1).others(0) == []
    with pytest.raises(ValueError):
        BrokerChoice(0)


def test_starts_spread_clients_over_the_brokers():
    rng = random.Random(3)
    firsts = {BrokerChoice(2, rng.randrange(2)).pick(up(0, 1)) for _ in range(20)}
    assert firsts == {0, 1}


def test_each_event_is_taken_once_whichever_copy_comes_first():
    d = EventDedupe()
    stream = ("mds", 7, "file.commit")
    # broker A relays 1..5, broker B the same a little behind and out of step
    arrivals = [1, 2, 1, 3, 2, 4, 3, 5, 4, 5]
    taken = [seq for seq in arrivals if d.first(stream, seq)]
    assert taken == [1, 2, 3, 4, 5]
    assert d.duplicates == 5


def test_a_late_first_copy_below_the_top_is_still_taken_once():
    d = EventDedupe(window=64)
    s = ("dn1", 1, "block.commit")
    assert d.first(s, 10)
    assert d.first(s, 7)          # broker B had 7 late; A never delivered it (a gap)
    assert not d.first(s, 7)
    assert d.first(s, 9) and not d.first(s, 10)


def test_streams_are_told_apart_by_source_run_and_topic():
    d = EventDedupe()
    assert d.first(("mds", 1, "file.commit"), 1)
    assert d.first(("mds", 2, "file.commit"), 1)       # a restarted MDS: new run
    assert d.first(("dn1", 1, "file.commit"), 1)
    assert d.first(("mds", 1, "node.up"), 1)
    assert not d.first(("mds", 1, "file.commit"), 1)


def test_older_than_the_window_is_dropped_rather_than_acted_on_twice():
    d = EventDedupe(window=8)
    s = ("mds", 1, "t")
    assert d.first(s, 100)
    assert not d.first(s, 92)                           # 8 back: outside the window
    assert d.first(s, 93)                               # 7 back: inside, unseen
    assert d.first(s, 1000)                             # a jump clears the window
    assert not d.first(s, 1000) and d.first(s, 999)


def test_the_number_of_streams_is_bounded_oldest_forgotten_first():
    d = EventDedupe(streams=2)
    for src in ("a", "b", "c"):
        assert d.first((src, 1, "t"), 1)
    assert d.first(("a", 1, "t"), 1)      # forgotten: taken again (bounded memory)
    assert not d.first(("c", 1, "t"), 1)
