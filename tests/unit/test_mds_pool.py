"""Block pools and put_small (issue 19) through the MDS's service layer with fixed clocks:
one request creates and commits a small file from pool blocks, receipts are judged as in
commit, every refusal leaves nothing partial, pools are nobody's file, count toward the
allocation limits, expire like drafts and survive a restart (WAL replay)."""
from __future__ import annotations

import errno

import pytest

from client.retry import MUTATING
from tests.unit.test_mds_ops import KIB, World, _as, error


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path / "mds")
    w.beat("dn1", "dn2", "dn3")
    try:
        yield w
    finally:
        w.store.close(checkpoint=False)


def proven(world: World, b: dict, size: int = 10, crc: int = 7) -> dict:
    return {"id": b["id"], "size": size, "checksum": crc, "replicas": b["nodes"],
            "receipts": [world.receipt(n, b["id"], size, crc) for n in b["nodes"]]}


def test_pool_and_put_small_are_mutating_client_ops():
    assert {"pool", "put_small"} <= MUTATING


def test_put_small_creates_and_commits_in_one_request(world):
    pool = world.ok("pool", count=4)
    assert (pool["replication"], pool["block_size"]) == (2, KIB)
    assert len(pool["blocks"]) == 4 and 0 < pool["lease"] <= 60
    assert all(len(b["caps"]) == len(b["nodes"]) == 2 for b in pool["blocks"])
    b = pool["blocks"][0]
    seq = world.store.last_seq
    out = world.ok("put_small", path="/d/f", pool=pool["handle"], blocks=[proven(world, b)],
                   parents=True)
    assert out == {"path": "/d/f", "size": 10}
    assert world.store.last_seq == seq + 3          # create, adopt, commit ...
    info = world.store.ns.file_info("/d/f")
    assert info["size"] == 10 and [x["id"] for x in info["blocks"]] == [b["id"]]
    assert info["blocks"][0]["replicas"] == b["nodes"]
    assert world.store.ns.draft_handles() == []     # no draft stays
    left = world.store.ns.draft_info(pool["handle"])["blocks"]
    assert [x["id"] for x in left] == [x["id"] for x in pool["blocks"][1:]]
    assert ("file.commit", {"path": "/d/f", "size": 10, "blocks": 1}) in world.events


def test_put_small_with_an_opid_is_one_wal_record_and_applied_once(world):
    pool = world.ok("pool", count=2)
    fields = dict(path="/f", pool=pool["handle"], opid=b"o" * 16,
                  blocks=[proven(world, pool["blocks"][0])])
    seq = world.store.last_seq
    first = world.ok("put_small", **fields)
    assert world.store.last_seq == seq + 1          # ... in one `once` record
    assert world.ok("put_small", **fields) == first   # a retry: the first answer
    assert world.store.last_seq == seq + 1


def test_an_empty_file_needs_no_block(world):
    pool = world.ok("pool", count=1)
    assert world.ok("put_small", path="/e", pool=pool["handle"], blocks=[])["size"] == 0
    assert world.store.ns.stat("/e")["size"] == 0
    assert len(world.store.ns.draft_info(pool["handle"])["blocks"]) == 1


def test_a_replaced_file_keeps_its_attributes_and_old_blocks_are_released(world):
    pool = world.ok("pool", count=2)
    a, b = pool["blocks"]
    world.ok("put_small", path="/f", pool=pool["handle"], blocks=[proven(world, a)])
    world.ok("chmod", path="/f", mode=0o600)
    world.ok("put_small", path="/f", pool=pool["handle"], blocks=[proven(world, b, 20)])
    assert world.store.ns.stat("/f")["mode"] == 0o600
    assert world.store.ns.block_info(a["id"]) is None
    assert all(a["id"] in world.store.ns.pending_deletes[n] for n in a["nodes"])


@pytest.mark.parametrize("why", ["no receipt", "forged", "other size", "exclusive",
                                 "no parent", "not in pool", "twice", "a directory"])
def test_a_refused_put_small_leaves_no_file_and_no_draft(world, why):
    pool = world.ok("pool", count=3)
    world.ok("put_small", path="/old", pool=pool["handle"],
             blocks=[proven(world, pool["blocks"][2])])
    world.ok("mkdir", path="/dir")
    b = pool["blocks"][0]
    block = proven(world, b)
    path, extra = "/new", {}
    if why == "no receipt":
        del block["receipts"]
    elif why == "forged":
        block["receipts"] = [b"x" * 17] * 2
    elif why == "other size":
        block["size"] = 11
    elif why == "exclusive":
        path, extra = "/old", {"exclusive": True}
    elif why == "no parent":
        path = "/nowhere/new"
    elif why == "not in pool":
        block["id"] = b"n" * 16
    elif why == "twice":
        extra = {"blocks": [block, block]}
    elif why == "a directory":
        path = "/dir"
    before = world.store.ns.stat("/old")
    out = world.call("put_small", path=path, pool=pool["handle"],
                     **{"blocks": [block], **extra})
    code = error(out).errno
    assert code in {"no receipt": (errno.EACCES,), "forged": (errno.EACCES,),
                    "other size": (errno.EACCES,), "exclusive": (errno.EEXIST,),
                    "no parent": (errno.ENOENT,), "not in pool": (errno.EINVAL,),
                    "twice": (errno.EINVAL,), "a directory": (errno.EISDIR,)}[why], out
    ns = world.store.ns
    assert ns.draft_handles() == []                 # nothing partial: no draft ...
    assert ns.stat("/old") == before                # ... and no file changed or made
    with pytest.raises((FileNotFoundError, NotADirectoryError)):
        ns.stat("/new")
    assert ns.stat("/dir")["type"] == "dir"
    pool_ids = {x["id"] for x in ns.draft_info(pool["handle"])["blocks"]}
    if why in ("not in pool", "twice", "exclusive", "a directory", "no parent"):
        assert b["id"] in pool_ids                  # refused before anything changed
    else:                                           # used up: deleted, not reusable
        assert b["id"] not in pool_ids and ns.block_info(b["id"]) is None


def test_a_pool_of_another_user_or_a_gone_pool_is_estale(world):
    for user in ("alice", "bob"):
        world.ok("mkdir", path=f"/{user}")
        world.ok("chown", path=f"/{user}", owner=user, group=user)
    pool = world.ok("pool", _as("alice"), count=1)
    block = proven(world, pool["blocks"][0])
    err = error(world.call("put_small", _as("bob"), path="/bob/f", pool=pool["handle"],
                           blocks=[block]))
    assert err.errno == errno.ESTALE
    draft = world.ok("create", _as("alice"), path="/alice/d")["handle"]   # not a pool
    assert error(world.call("put_small", _as("alice"), path="/alice/f", pool=draft,
                            blocks=[])).errno == errno.ESTALE
    world.ok("abort", _as("alice"), handle=pool["handle"])
    assert error(world.call("put_small", _as("alice"), path="/alice/f",
                            pool=pool["handle"], blocks=[block])).errno == errno.ESTALE
    assert world.store.ns.block_info(block["id"]) is None


def test_put_small_checks_the_callers_permissions(world):
    world.ok("mkdir", path="/alice")
    world.ok("chown", path="/alice", owner="alice", group="alice")
    pool = world.ok("pool", _as("bob"), count=1)
    err = error(world.call("put_small", _as("bob"), path="/alice/f", pool=pool["handle"],
                           blocks=[proven(world, pool["blocks"][0])]))
    assert err.errno == errno.EACCES
    assert world.store.ns.draft_handles() == [] and world.store.ns.ls("/alice") == []


def test_a_pool_can_never_be_committed(world):
    pool = world.ok("pool", count=1)
    err = error(world.call("commit", handle=pool["handle"],
                           blocks=[proven(world, pool["blocks"][0])]))
    assert err.errno == errno.EINVAL and "block pool" in err.strerror
    assert world.store.ns.pool_handles() == [pool["handle"]]


def test_pools_count_toward_the_allocation_limits_until_adopted(world):
    pool = world.ok("pool", _as("alice"), count=16)
    assert world.ops.allocations.usage("alice") == (16, 16 * KIB)
    b = pool["blocks"][0]
    world.ok("mkdir", path="/a")
    world.ok("chown", path="/a", owner="alice", group="alice")
    world.ok("put_small", _as("alice"), path="/a/f", pool=pool["handle"],
             blocks=[proven(world, b)])
    assert world.ops.allocations.usage("alice") == (15, 15 * KIB)
    world.ok("allocate", _as("alice"), handle=pool["handle"], count=16)    # a refill
    assert world.ops.allocations.usage("alice") == (31, 31 * KIB)
    world.ok("abort", _as("alice"), handle=pool["handle"])
    assert world.ops.allocations.usage("alice") == (0, 0)


def test_a_pool_flood_is_edquot_and_changes_nothing(world):
    world.ops.allocations.limits = type(world.ops.allocations.limits)(user_blocks=20)
    world.ok("pool", _as("mallory"), count=16)
    before = world.state()
    assert error(world.call("pool", _as("mallory"), count=16)).errno == errno.EDQUOT
    assert world.state() == before


def test_a_pool_in_safe_mode_is_eagain_and_changes_nothing(tmp_path):
    w = World(tmp_path / "m2")
    try:
        before = w.state()
        assert error(w.call("pool", count=1)).errno in (errno.EAGAIN, errno.ENOSPC)
        # retried under the same opid, it runs again once DataNodes are there
        assert error(w.call("pool", count=1, opid=b"p" * 16)).errno in (errno.EAGAIN,
                                                                       errno.ENOSPC)
        assert w.state() == before
        w.beat("dn1", "dn2")
        assert len(w.ok("pool", count=1, opid=b"p" * 16)["blocks"]) == 1
    finally:
        w.store.close(checkpoint=False)


def test_an_expired_pool_is_dropped_and_its_blocks_deleted(world):
    pool = world.ok("pool", count=2)
    ids = [b["id"] for b in pool["blocks"]]
    world.ops.upkeep(world.now, world.wall + 59)
    assert world.store.ns.pool_handles() == [pool["handle"]]
    world.ops.upkeep(world.now, world.wall + 61)
    assert world.store.ns.pool_handles() == []
    assert world.ops.allocations.usage("admin") == (0, 0)
    deletes = world.store.ns.pending_deletes
    assert all(bid in deletes[n] for b in pool["blocks"] for bid in [b["id"]]
               for n in b["nodes"]) and ids


def test_pools_and_small_files_survive_a_restart(tmp_path):
    w = World(tmp_path / "mds")
    w.beat("dn1", "dn2", "dn3")
    pool = w.ok("pool", count=3, opid=b"a" * 16)
    w.ok("put_small", path="/f", pool=pool["handle"], blocks=[proven(w, pool["blocks"][0])],
         opid=b"b" * 16)
    w.store.flush()
    dump = w.store.ns.dump()
    w.store.close(checkpoint=False)
    again = World(tmp_path / "mds")
    try:
        assert again.store.ns.dump() == dump            # replayed from the WAL
        assert again.store.ns.pool_handles() == [pool["handle"]]
        again.beat("dn1", "dn2", "dn3")
        again.ok("put_small", path="/g", pool=pool["handle"],
                 blocks=[proven(again, pool["blocks"][1])])
        assert again.store.ns.stat("/g")["size"] == 10
    finally:
        again.store.close(checkpoint=False)


@pytest.mark.parametrize("op,fields,code", [
    ("pool", {"count": 0}, errno.EINVAL),
    ("pool", {"count": 17}, errno.EINVAL),
    ("pool", {"count": "1"}, errno.EPROTO),
    ("pool", {"count": 1, "replication": 0}, errno.EINVAL),
    ("put_small", {"path": "/f", "pool": "p" * 129, "blocks": []}, errno.EINVAL),
    ("put_small", {"path": "/f", "pool": "p", "blocks": [{"id": b"x" * 16}] * 17},
     errno.EINVAL),
    ("put_small", {"path": "/f", "pool": "p", "blocks": "b"}, errno.EPROTO),
    ("put_small", {"path": "/f", "pool": "p", "blocks": [], "kind": "symlink"},
     errno.EINVAL),
])
def test_malformed_pool_requests(world, op, fields, code):
    before = world.state()
    assert error(world.call(op, **fields)).errno == code
    assert world.state() == before


@pytest.mark.parametrize("caller", [("datanode", "dn1"), ("mds", "mds"), ("broker", "b")])
def test_pool_ops_refuse_other_callers(world, caller):
    pool = world.ok("pool", count=1)
    before = world.state()
    for op, fields in [("pool", {"count": 1}),
                       ("put_small", {"path": "/f", "pool": pool["handle"], "blocks": []})]:
        err = error(world.call(op, caller, **fields))
        assert err.errno == errno.EPERM, (op, err)
    assert world.state() == before


def test_put_small_and_pool_in_a_batch(world):
    out = world.ok("batch", ops=[{"op": "pool", "count": 2}])
    pool = out["results"][0]["ok"]
    got = world.ok("batch", ops=[
        {"op": "put_small", "path": f"/b{i}", "pool": pool["handle"],
         "blocks": [proven(world, b)]} for i, b in enumerate(pool["blocks"])])
    assert [r["ok"]["path"] for r in got["results"]] == ["/b0", "/b1"]
