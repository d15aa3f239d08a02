"""mds/election.py on a fake etcd and a fake clock; mds/etcd.py's request and answer
shapes (the gateway's JSON: int64 as strings, zero values omitted)."""
from __future__ import annotations

import base64

import pytest

from mds.election import Election
from mds.etcd import EtcdUnavailable, create_body, parse_create, parse_get, parse_keepalive
from tests.support.clock import FakeClock
from tests.support.fake_etcd import FakeEtcd

KEY = b"/aegisfs/mds/leader"


def election(etcd: FakeEtcd, clock: FakeClock, name: bytes, ttl: int = 6) -> Election:
    return Election(etcd, KEY, name, ttl, clock, margin=1.0, poll=0.5)


def run_for(clock: FakeClock, seconds: float, *elections: Election, tick: float = 0.1) -> list:
    changes = []
    end = clock.now + seconds
    while clock.now < end:
        for e in elections:
            change = e.step()
            if change:
                changes.append((e.name, change, clock.now))
        clock.advance(tick)
    return changes


@pytest.fixture
def world():
    clock = FakeClock()
    return clock, FakeEtcd(clock)


def test_first_candidate_leads_with_the_create_revision_as_epoch(world):
    clock, etcd = world
    a = election(etcd, clock, b"a")
    assert a.leading(clock()) is None
    assert a.step() == "elected"
    assert a.leading(clock()) == etcd.keys[KEY].create_revision
    assert etcd.keys[KEY].value == b"a"


def test_a_second_candidate_waits_while_the_leader_renews(world):
    clock, etcd = world
    a, b = election(etcd, clock, b"a"), election(etcd, clock, b"b")
    a.step()
    epoch = a.leading(clock())
    changes = run_for(clock, 60, a, b)
    assert changes == []
    assert a.leading(clock()) == epoch and b.leading(clock()) is None
    assert b.describe(clock())["holder"] == "a"


def test_leader_steps_down_before_its_lease_can_lapse_when_etcd_is_down(world):
    clock, etcd = world
    a = election(etcd, clock, b"a")
    a.step()
    run_for(clock, 3, a)                    # renewed at least once
    renewed = a.term[1]
    etcd.down = True
    changes = run_for(clock, 10, a, tick=0.05)
    assert [c[1] for c in changes] == ["stepped_down"]
    down_at = changes[0][2]
    # stepped down a margin before the end of the lease etcd may be counting, not after
    assert renewed - 1.0 - 0.05 <= down_at < renewed - 1.0 + 0.06
    assert a.leading(clock()) is None


def test_leading_is_false_past_the_margin_even_without_any_step(world):
    """The MDS loop reads leading(now) itself: a hung election thread cannot keep it."""
    clock, etcd = world
    a = election(etcd, clock, b"a")
    a.step()
    end = a.term[1]
    assert a.leading(end - 1.01) is not None
    assert a.leading(end - 1.0) is None


def test_the_other_candidate_takes_over_with_a_higher_epoch(world):
    clock, etcd = world
    a, b = election(etcd, clock, b"a"), election(etcd, clock, b"b")
    a.step()
    first = a.leading(clock())
    b.step()
    # a stops renewing (killed, paused): b keeps trying
    changes = run_for(clock, 10, b)
    assert [c[1] for c in changes] == ["elected"]
    second = b.leading(clock())
    assert second > first
    # a, paused past its lease, never believes it still leads
    assert a.leading(clock()) is None
    # and when it runs again it finds the lease gone and does not get the key
    run_for(clock, 3, a, b)
    assert a.leading(clock()) is None and b.leading(clock()) == second
    assert a.describe(clock())["holder"] == "b"


def test_etcd_back_with_our_lease_alive_resumes_the_same_epoch(world):
    clock, etcd = world
    a, b = election(etcd, clock, b"a"), election(etcd, clock, b"b")
    a.step()
    epoch = a.leading(clock())
    etcd.down = True
    run_for(clock, 8, a, b)
    assert a.leading(clock()) is None
    etcd.restart()                  # leases come back with a full TTL
    changes = run_for(clock, 2, a, b)
    assert [c[:2] for c in changes] == [(b"a", "elected")]
    assert a.leading(clock()) == epoch


def test_a_lease_etcd_forgot_means_a_new_campaign(world):
    clock, etcd = world
    a = election(etcd, clock, b"a")
    a.step()
    epoch = a.leading(clock())
    etcd.leases.clear()             # expired in etcd (its key too, once etcd notices)
    etcd.keys.clear()
    changes = run_for(clock, 3, a)
    assert [c[1] for c in changes] == ["stepped_down", "elected"]
    assert a.leading(clock()) > epoch


def test_resign_frees_the_key_at_once(world):
    clock, etcd = world
    a, b = election(etcd, clock, b"a"), election(etcd, clock, b"b")
    a.step()
    b.step()
    a.resign()
    assert a.leading(clock()) is None
    changes = run_for(clock, 1, b)
    assert [c[1] for c in changes] == ["elected"]


def test_ttl_below_two_seconds_is_refused(world):
    clock, etcd = world
    with pytest.raises(ValueError):
        Election(etcd, KEY, b"a", 1, clock)


# -- the gateway's shapes ---------------------------------------------------------------------


def test_create_body_compares_the_create_revision_with_zero():
    body = create_body(b"k", b"v", 0x1234)
    assert body["compare"] == [{"key": base64.b64encode(b"k").decode(), "target": "CREATE",
                                "result": "EQUAL", "create_revision": "0"}]
    put = body["success"][0]["request_put"]
    assert base64.b64decode(put["value"]) == b"v" and put["lease"] == str(0x1234)


def test_parse_create_won_and_lost():
    won = parse_create({"header": {"revision": "42"}, "succeeded": True}, b"me", 7)
    assert won.won and won.create_revision == 42 and won.lease == 7
    lost = parse_create({"header": {"revision": "50"}, "responses": [{"response_range": {
        "kvs": [{"key": "aw==", "create_revision": "41", "value": base64.b64encode(b"other")
                 .decode(), "lease": "9"}]}}]}, b"me", 7)
    assert (lost.won, lost.create_revision, lost.value, lost.lease) == (False, 41, b"other", 9)
    with pytest.raises(EtcdUnavailable):
        parse_create({"header": {"revision": "3"}}, b"me", 7)


def test_parse_keepalive_and_get():
    assert parse_keepalive({"result": {"ID": "5", "TTL": "4"}}) == 4
    assert parse_keepalive({"result": {"ID": "5"}}) == 0     # TTL 0 omitted: lease gone
    assert parse_keepalive({"error": {"message": "lease not found"}}) == 0
    assert parse_get({"header": {}}) is None
    assert parse_get({"kvs": [{"create_revision": "8", "value": "eA=="}]}).value == b"x"
