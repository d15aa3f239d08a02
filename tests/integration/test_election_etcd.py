"""mds/etcd.py and mds/election.py against a real etcd child process (loopback, temp dir):
the gateway's answers as etcd 3.4 really writes them, takeover with a higher epoch,
step-down while etcd is killed and the same epoch when it comes back."""
from __future__ import annotations

import time

from mds.election import Election
from mds.etcd import EtcdUnavailable, Gateway
from tests.support.etcd import EtcdProcess
from tests.support.wait import wait_for

KEY = b"/aegisfs/test/leader"


def test_gateway_round_trip(tmp_path):
    with EtcdProcess(tmp_path / "etcd") as etcd:
        gw = Gateway(etcd.url)
        lease, ttl = gw.grant(5)
        assert lease and ttl == 5
        assert 0 < gw.keepalive(lease) <= 5
        won = gw.create(KEY, b"a", lease)
        assert won.won and won.create_revision > 0
        other, _ = gw.grant(5)
        lost = gw.create(KEY, b"b", other)
        assert not lost.won
        assert (lost.create_revision, lost.value, lost.lease) == (won.create_revision, b"a",
                                                                  lease)
        assert gw.get(KEY).value == b"a"
        gw.revoke(lease)
        assert gw.keepalive(lease) == 0       # a revoked lease is gone
        assert gw.get(KEY) is None             # and its key with it
        again = gw.create(KEY, b"b", other)
        assert again.won and again.create_revision > won.create_revision


def test_unreachable_etcd_is_etcd_unavailable(tmp_path):
    etcd = EtcdProcess(tmp_path / "etcd")        # not started: nobody listens there
    try:
        Gateway(etcd.url, timeout=0.5).grant(5)
    except EtcdUnavailable:
        return
    raise AssertionError("no EtcdUnavailable from a port nobody listens on")


def test_takeover_step_down_and_return(tmp_path):
    with EtcdProcess(tmp_path / "etcd") as etcd:
        a = Election(Gateway(etcd.url, timeout=0.4), KEY, b"a", 3, time.monotonic)
        b = Election(Gateway(etcd.url, timeout=0.4), KEY, b"b", 3, time.monotonic)

        def step_both(*es):
            for e in es:
                e.step()
            return True

        wait_for(lambda: step_both(a) and a.leading(time.monotonic()), 10, 0.05, "a leads")
        first = a.leading(time.monotonic())
        # b campaigns for 4 s while a renews: b never leads
        end = time.monotonic() + 4
        while time.monotonic() < end:
            step_both(a, b)
            assert b.leading(time.monotonic()) is None
            assert a.leading(time.monotonic()) == first
            time.sleep(0.05)
        # a stops renewing (as if killed): b takes over with a higher epoch after the TTL
        started = time.monotonic()
        wait_for(lambda: step_both(b) and b.leading(time.monotonic()), 10, 0.05, "b leads")
        took = time.monotonic() - started
        second = b.leading(time.monotonic())
        assert second > first
        assert 1.0 < took < 6.0, took
        assert a.leading(time.monotonic()) is None

        # etcd killed: b steps down before its lease could lapse, then leads again with the
        # same epoch once etcd is back (etcd restores leases on restart)
        etcd.kill()
        killed = time.monotonic()
        wait_for(lambda: step_both(b) and b.leading(time.monotonic()) is None, 10, 0.05,
                 "b stepped down")
        assert time.monotonic() - killed < 3.0
        etcd.start()
        wait_for(lambda: step_both(a, b) and b.leading(time.monotonic()), 15, 0.05,
                 "b leads again")
        assert b.leading(time.monotonic()) == second
        assert a.leading(time.monotonic()) is None
