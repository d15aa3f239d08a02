"""A freshly restarted MDS (InProcessCluster.restart_mds): until the DataNodes its
namespace names have reported it answers EAGAIN instead of a misleading ENOSPC, clients
wait that out, and what they write then still gets R replicas."""
from __future__ import annotations

import errno

import pytest

from tests.support.inprocess import InProcessCluster


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=2, replication=2) as c:
        c.client().write_bytes("/before", b"x" * 100)      # names dn1 and dn2
        yield c


def test_placement_waits_for_the_datanodes_with_eagain(cluster):
    cluster.restart_mds(safemode_timeout=30.0)
    conn = cluster.connect()
    draft = conn.call("mds", {"op": "create", "path": "/after", "size": 10}).result
    assert "blocks" not in draft            # best effort at create: nothing placed yet
    with pytest.raises(OSError) as info:
        conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1})
    assert info.value.errno == errno.EAGAIN
    assert "waiting for DataNodes: 0 of 2 reported" in str(info.value)
    cluster.beat("dn1")
    cluster.beat("dn1")                     # heartbeat, then the block report it asks for
    with pytest.raises(OSError) as info:    # one node known: one replica would be too few
        conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1})
    assert info.value.errno == errno.EAGAIN and "1 of 2" in str(info.value)
    cluster.beat()
    got = conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1}).result
    assert sorted(got["blocks"][0]["nodes"]) == ["dn1", "dn2"]


def test_a_client_write_rides_through_and_gets_r_replicas(cluster):
    cluster.restart_mds(safemode_timeout=30.0)
    fs = cluster.client()
    beats = []

    def sleep(seconds: float) -> None:       # the DataNodes report while the client waits
        cluster.clock.sleep(seconds)
        beats.append(seconds)
        if len(beats) < 3:
            cluster.beat("dn1")
        else:
            cluster.beat()
    fs.retrier.sleep = sleep
    fs.write_bytes("/after", b"y" * 1000)
    assert len(beats) >= 3                   # it did wait
    assert fs.read_bytes("/after") == b"y" * 1000
    replicas = [b["replicas"] for b in fs.stat("/after")["blocks"]]
    assert replicas and all(sorted(r) == ["dn1", "dn2"] for r in replicas)


def test_after_safe_mode_too_few_nodes_is_enospc_again(cluster):
    cluster.restart_mds(safemode_timeout=0.0)
    cluster.stop("dn2")
    cluster.run(1.0)                         # dn1 only: safe mode ends (timeout 0)
    conn = cluster.connect()
    draft = conn.call("mds", {"op": "create", "path": "/late"}).result
    got = conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1}).result
    assert got["blocks"][0]["nodes"] == ["dn1"]    # degraded but writable, as before


def test_an_empty_namespace_waits_for_the_first_datanode_too():
    with InProcessCluster(datanodes=2) as cluster:      # nothing written: no node named
        cluster.restart_mds(safemode_timeout=30.0)
        conn = cluster.connect()
        draft = conn.call("mds", {"op": "create", "path": "/first"}).result
        with pytest.raises(OSError) as info:
            conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1})
        assert info.value.errno == errno.EAGAIN
        assert "none has reported since the MDS started" in str(info.value)
        cluster.beat()
        got = conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1})
        assert len(got.result["blocks"][0]["nodes"]) == 2
        cluster.clock.advance(31.0)
        cluster.stop("dn1")
        cluster.stop("dn2")
        cluster.run(10.0)                     # both dead, long after the start: ENOSPC
        with pytest.raises(OSError) as info:
            conn.call("mds", {"op": "allocate", "handle": draft["handle"], "count": 1})
        assert info.value.errno == errno.ENOSPC
