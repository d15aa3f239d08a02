"""Two users through the real AegisClient on the in-process cluster (tests/support/
inprocess.py stamps each connection with its caller id, as the CURVE broker will): a user
without permission gets EACCES/EPERM from get, read_bytes, get_many, put over, put_many,
ls, rm, mv, chmod, chown of another user's files, and nothing changes."""
from __future__ import annotations

import io

import pytest

from broker import protocol as P
from tests.support.inprocess import InProcessCluster

ALICE, BOB = (P.CALLER_CLIENT, "alice"), (P.CALLER_CLIENT, "bob")


@pytest.fixture
def cluster():
    with InProcessCluster(datanodes=3, block_size=64 * 1024) as c:
        with c.client() as admin:
            for user in ("alice", "bob"):
                admin.mkdir(f"/home/{user}", parents=True)
                admin.chown(f"/home/{user}", user, user)
        yield c


def test_another_user_is_refused_by_every_client_path(cluster, tmp_path):
    with cluster.client(ALICE) as alice, cluster.client(BOB) as bob:
        alice.write_bytes("/home/alice/secret", b"s" * 100)
        alice.write_bytes("/home/alice/big", b"b" * 200_000)    # streamed, 4 blocks
        alice.write_bytes("/home/alice/open", b"o")
        for p in ("/home/alice/secret", "/home/alice/big"):
            alice.chmod(p, 0o600)
        alice.mkdir("/home/alice/private", mode=0o700)
        alice.write_bytes("/home/alice/private/inner", b"i")
        ns = cluster.store.ns
        before, pools_before = ns.dump(), set(ns.pool_handles())

        def refused(fn, *args, **kw) -> PermissionError:
            with pytest.raises(PermissionError) as info:
                fn(*args, **kw)
            return info.value

        for p in ("/home/alice/secret", "/home/alice/big"):
            assert "/home/alice" in str(refused(bob.read_bytes, p))
            refused(bob.get, p, str(tmp_path / "out"))
            refused(bob.get, p, io.BytesIO())
            refused(bob.write_bytes, p, b"mine")
            assert "blocks" not in bob.stat(p)       # metadata yes, block list no
        assert not (tmp_path / "out").exists()
        (out,) = bob.get_many([("/home/alice/secret", io.BytesIO())], errors="return")
        assert isinstance(out, PermissionError)
        refused(bob.ls, "/home/alice/private")
        refused(bob.read_bytes, "/home/alice/private/inner")
        refused(bob.write_bytes, "/home/alice/new", b"x")
        (out,) = bob.put_many([(b"x", "/home/alice/new2")], errors="return")
        assert isinstance(out, PermissionError)
        refused(bob.mkdir, "/home/alice/d")
        refused(bob.rm, "/home/alice/open")
        refused(bob.rm, "/home/alice/private", recursive=True)
        refused(bob.mv, "/home/alice/open", "/home/bob/open")
        assert refused(bob.chmod, "/home/alice/open", 0o777).errno == 1     # EPERM
        assert refused(bob.chown, "/home/alice/open", "bob").errno == 1
        # nothing changed (refused creates leave no draft): alice sees what she wrote;
        # bob's client opened a block pool for its small writes (a reservation of his,
        # no entry of the namespace), which is all that differs
        after = ns.dump()
        pools = set(ns.pool_handles()) - pools_before
        assert [ns.drafts.by_handle[h].owner for h in pools] == ["bob"]
        after["drafts"] = {h: d for h, d in after["drafts"].items() if h not in pools}
        after["counts"]["pools"] -= 1
        assert after == before
        assert alice.read_bytes("/home/alice/secret") == b"s" * 100
        assert alice.read_bytes("/home/alice/big") == b"b" * 200_000
        assert sorted(alice.ls("/home/alice")) == ["big", "open", "private", "secret"]
        assert alice.stat("/home/alice/open")["mode"] == 0o644
        # what others may read, bob reads
        assert bob.read_bytes("/home/alice/open") == b"o"
        alice.chmod("/home/alice/secret", 0o644)
        assert bob.read_bytes("/home/alice/secret") == b"s" * 100
