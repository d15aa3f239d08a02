"""Takeover's state logic without sockets: the ran-alone mark (mds/election.py) on a fake
etcd and a fake clock, the MDS's "covered before acknowledged" rule (mds/server.py
`_covered`, `_clear_mark`) on fakes, and the broker routing `mds` only to the highest
epoch (broker/registration.py)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from broker import protocol as P
from broker.callers import CLIENT, WORKER, Refused
from broker.routing import Router
from mds.election import Election
from mds.etcd import campaign_body, guarded_body, parse_campaign
from mds.server import MetadataServer
from tests.support.clock import FakeClock
from tests.support.fake_etcd import FakeEtcd

KEY = b"/aegisfs/mds/leader"
MARK = KEY + b"/alone"


@pytest.fixture
def world():
    clock = FakeClock()
    return clock, FakeEtcd(clock)


def candidate(etcd, clock, name: bytes, last_seq: int = 0) -> Election:
    seq = {"v": last_seq}
    e = Election(etcd, KEY, name, 6, clock, margin=1.0, poll=0.5, last_seq=lambda: seq["v"])
    e.seq = seq       # type: ignore[attr-defined]   the test moves the log end
    return e


def run_for(clock, seconds, *elections, tick=0.1):
    end = clock.now + seconds
    while clock.now < end:
        for e in elections:
            e.step()
        clock.advance(tick)


def lapse(clock, etcd, election):
    """The leader dies: it stops renewing and etcd drops its key after the TTL."""
    clock.advance(7)
    etcd._expire()


def test_a_candidate_is_refused_while_the_mark_is_set_and_leads_once_it_is_gone(world):
    clock, etcd = world
    a, b = candidate(etcd, clock, b"a", 10), candidate(etcd, clock, b"b", 10)
    assert a.step() == "elected"
    epoch = a.leading(clock())
    assert a.mark_alone(epoch, since=10, last=12)
    lapse(clock, etcd, a)
    assert KEY not in etcd.keys
    run_for(clock, 5, b)
    assert b.leading(clock()) is None and KEY not in etcd.keys
    assert b.refusal == "will not take over: the active a ran alone since seq 10 (this " \
                        "MDS is at seq 10)"
    assert b.describe(clock())["takeover"] == b.refusal
    # the operator's way out (the lone active's disk lost): delete the mark
    del etcd.keys[MARK]
    run_for(clock, 1, b)
    assert b.leading(clock()) > epoch and b.refusal is None


def test_the_marks_writer_leads_again_only_with_every_write_it_covers(world):
    clock, etcd = world
    a = candidate(etcd, clock, b"a", 10)
    a.step()
    epoch = a.leading(clock())
    assert a.mark_alone(epoch, since=3, last=10)
    lapse(clock, etcd, a)
    a.seq["v"] = 9            # its log lost the tail the mark covers (a fresh disk)
    run_for(clock, 2, a)
    assert a.leading(clock()) is None and "ran alone since seq 3" in a.refusal
    a.seq["v"] = 10
    run_for(clock, 2, a)
    assert a.leading(clock()) > epoch


def test_the_campaign_compares_the_mark_in_the_same_transaction(world):
    """The mark written after the candidate read it (absent) and before its create: the
    create fails, nothing leads; the next poll sees the mark and refuses."""
    clock, etcd = world
    a, b = candidate(etcd, clock, b"a"), candidate(etcd, clock, b"b")
    a.step()
    epoch = a.leading(clock())
    real_get = etcd.get

    def get_then_the_active_marks(key):
        held = real_get(key)
        if key == MARK:
            assert etcd.put_if_leader(MARK, json.dumps(
                {"name": "a", "epoch": epoch, "since": 0, "last": 5}).encode(), KEY, epoch)
            del etcd.keys[KEY]        # and its lease lapses at once
        return held

    b.lease, _ = etcd.grant(6)
    b._next = 0.0
    etcd.get = get_then_the_active_marks          # type: ignore[method-assign]
    assert b.step() is None
    etcd.get = real_get                           # type: ignore[method-assign]
    assert b.leading(clock()) is None and KEY not in etcd.keys
    run_for(clock, 1, b)
    assert b.leading(clock()) is None and "ran alone" in b.refusal


def test_guarded_writes_fail_for_a_deposed_epoch(world):
    clock, etcd = world
    a, b = candidate(etcd, clock, b"a"), candidate(etcd, clock, b"b")
    a.step()
    old = a.leading(clock())
    assert a.mark_alone(old, 0, 1) and a.clear_mark(old)
    lapse(clock, etcd, a)
    run_for(clock, 1, b)
    new = b.leading(clock())
    assert new > old
    assert not a.mark_alone(old, 0, 1), "a deposed leader wrote the mark"
    assert MARK not in etcd.keys
    assert b.mark_alone(new, 0, 1)
    assert not a.clear_mark(old), "a deposed leader cleared the mark"
    assert MARK in etcd.keys
    assert a.deposed_by is None
    run_for(clock, 1, a)              # its next campaign finds the key held higher
    assert a.deposed_by == new and a.leading(clock()) is None
    assert b.deposed_by is None


def test_etcd_down_the_mark_is_not_written(world):
    clock, etcd = world
    a = candidate(etcd, clock, b"a")
    a.step()
    etcd.down = True
    assert not a.mark_alone(a.leading(clock()), 0, 1)
    assert a.error


# -- mds/server.py: acknowledged only once covered -----------------------------------------

def server(etcd, clock, link_state="gone", acked=3, last_seq=8):
    e = candidate(etcd, clock, b"a", last_seq)
    assert e.step() == "elected"
    return SimpleNamespace(
        campaign=SimpleNamespace(election=e), marked=False, _stale_mark=False,
        _uncovered=False, _mark_next=0.0, _clear_next=0.0, epoch=e.leading(clock()),
        link=SimpleNamespace(state=link_state, acked=acked) if link_state else None,
        store=SimpleNamespace(last_seq=last_seq))


def test_in_sync_needs_no_mark(world):
    clock, etcd = world
    s = server(etcd, clock, "in_sync", acked=8)
    assert MetadataServer._covered(s)
    assert MARK not in etcd.keys and not s.marked


def test_alone_the_mark_is_written_before_it_counts_as_covered(world, monkeypatch):
    clock, etcd = world
    monkeypatch.setattr("mds.server.time.monotonic", clock)
    s = server(etcd, clock, "gone", acked=3, last_seq=8)
    etcd.down = True
    assert not MetadataServer._covered(s), "covered without the mark"
    assert not MetadataServer._covered(s)         # retried only after MARK_RETRY
    etcd.down = False
    assert not MetadataServer._covered(s)
    clock.advance(0.6)
    assert MetadataServer._covered(s) and s.marked
    mark = json.loads(etcd.keys[MARK].value)
    assert mark == {"name": "a", "epoch": s.epoch, "since": 3, "last": 8}
    # the standby back in sync: cleared (guarded) at the first turn, not MARK_RETRY
    # after the mark was written (a kill in between would leave no standby to lead)
    s.link.state, s.link.acked = "in_sync", 8
    etcd.down = True
    MetadataServer._clear_mark(s)
    assert MARK in etcd.keys and s.marked          # etcd away: kept, retried later
    etcd.down = False
    MetadataServer._clear_mark(s)
    assert MARK in etcd.keys                       # not before MARK_RETRY after a failure
    clock.advance(0.6)
    MetadataServer._clear_mark(s)
    assert MARK not in etcd.keys and not s.marked


def test_the_mark_is_cleared_at_the_first_turn_in_sync(world, monkeypatch):
    clock, etcd = world
    monkeypatch.setattr("mds.server.time.monotonic", clock)
    s = server(etcd, clock, "gone", acked=3, last_seq=8)
    assert MetadataServer._covered(s) and s.marked
    s.link.state, s.link.acked = "in_sync", 8
    MetadataServer._clear_mark(s)                  # no clock advance
    assert MARK not in etcd.keys and not s.marked


def test_a_deposed_server_is_never_covered(world, monkeypatch):
    clock, etcd = world
    monkeypatch.setattr("mds.server.time.monotonic", clock)
    s = server(etcd, clock, None)
    del etcd.keys[KEY]                             # another MDS's turn now
    etcd.create(KEY, b"b", etcd.grant(6)[0])
    assert not MetadataServer._covered(s) and MARK not in etcd.keys


# -- mds/etcd.py: the transaction shapes ---------------------------------------------------

def test_campaign_and_guarded_bodies():
    body = campaign_body(KEY, b"a", 7, MARK, 0)
    assert [c["target"] for c in body["compare"]] == ["CREATE", "CREATE"]
    assert body["compare"][1]["create_revision"] == "0"
    body = campaign_body(KEY, b"a", 7, MARK, 42)
    assert body["compare"][1] == {"key": body["compare"][1]["key"], "target": "MOD",
                                  "result": "EQUAL", "mod_revision": "42"}
    g = guarded_body(KEY, 9, {"request_delete_range": {"key": "x"}})
    assert g["compare"][0]["create_revision"] == "9" and g["failure"] == []
    # failed because of the mark: the leader key absent from the answer
    failed = {"succeeded": False, "responses": [{"response_range": {}},
                                                {"response_range": {"kvs": []}}]}
    assert parse_campaign(failed, KEY, b"a", 7).create_revision == 0


# -- broker/registration.py: `mds` to the highest epoch only -------------------------------

def ready(router, ident, epoch):
    return router.on_worker(ident, P.ready_envelope("mds", {"exclusive": True,
                                                          "epoch": epoch}), [])


def test_the_broker_routes_mds_to_the_highest_epoch_only():
    clock = FakeClock()
    r = Router(clock=clock)
    ready(r, b"OLD", 2)
    out = ready(r, b"NEW", 4)
    assert [w.identity for w in r.services[b"mds"].workers] == [b"NEW"]
    with pytest.raises(Refused, match="epoch 2 refused: workers of epoch 4"):
        ready(r, b"OLD", 2)           # the paused old active, resumed
    assert [w.identity for w in r.services[b"mds"].workers] == [b"NEW"]
    sent = r.on_client(b"C", P.pack(P.REQUEST, b"mds", b"r1", P.encode_header({})), [])
    assert sent[0][0] == WORKER and sent[0][1] == b"NEW"
    assert out == [] or all(s[0] in (CLIENT, WORKER) for s in out)
    ready(r, b"NEW", 4)               # the same epoch registers again (a reconnection)
    assert [w.identity for w in r.services[b"mds"].workers] == [b"NEW"]


def test_status_lines_say_the_mark_and_why_the_standby_does_not_take_over():
    from client import output
    base = {"nodes": [], "counts": {}, "health": {}}
    lines = list(output.status_lines({**base, "ha": {
        "state": "active", "epoch": 5, "lease_left": 2.0, "alone_mark": True,
        "standby": {"state": "catching_up", "acked_seq": 9, "for": 1.5, "reason": "probing",
                    "takeover": "will not take over: the active mds ran alone since seq 9"}}}))
    assert lines[-2] == "mds: active   epoch: 5   lease left: 2.0 s   ran-alone mark set"
    assert lines[-1] == ("standby: catching_up   at seq 9 for 1.5 s (probing): the active "
                         "runs alone; standby: will not take over: the active mds ran alone "
                         "since seq 9")
