"""The standby's side of WAL shipping without sockets: the batches an active MetaStore
syncs (WriteAheadLog.last_batch), replayed by another (MetaStore.replicate), give the
same namespace, survive the standby's own restart and checkpoints; a lower epoch, a gap
or a damaged batch is refused and changes nothing; catch-up reads the frames after a
position from the active's segments (wal.frames_after)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from mds.metastore import MetaStore
from mds.namespace import NamespaceConfig
from mds.store_ha import StaleEpoch
from mds.wal import frame_crc, frames_after
from tests.support.clock import FakeClock

CONFIG = NamespaceConfig(replication=2, block_size=64, lease=30.0)


def open_store(path: Path, seed: int = 1, **kw) -> MetaStore:
    return MetaStore(path, config=CONFIG, clock=FakeClock(),
                     random_bytes=random.Random(seed).randbytes, **kw)


def work(store: MetaStore, rng: random.Random, n: int, top: str = "") -> None:
    """A mix of namespace changes, one flush each few, as the MDS loop does."""
    for i in range(n):
        name = f"{top}/d{rng.randrange(4)}"
        try:
            store.submit(lambda ns, p=name: ns.prepare_mkdir(p, parents=True))
        except OSError:
            pass
        h = store.submit(lambda ns, i=i: ns.prepare_create(f"{top}/d0/f{i}", parents=True))["handle"]
        alloc = store.submit(lambda ns, h=h: ns.prepare_allocate(h, [["n1", "n2"]]))
        blocks = [{"id": b["id"], "size": 5, "checksum": 1, "replicas": ["n1", "n2"]}
                  for b in alloc["blocks"]]
        store.submit(lambda ns, h=h, b=blocks: ns.prepare_commit(h, b))
        if i % 3 == 2:
            store.submit(lambda ns, i=i: ns.prepare_rm(f"{top}/d0/f{i - 1}"))
        store.once(os.urandom(16), 1000.0 + i, lambda i=i: store.submit(
            lambda ns: ns.prepare_mkdir(f"{top}/o{i}", parents=True)))
        if i % 2:
            store.flush()
    store.flush()


def ship_all(active: MetaStore, standby: MetaStore, rng: random.Random, n: int) -> None:
    def ship(first: int, frames: bytes) -> None:
        assert standby.replicate(first, frames) == active.last_seq
    active.on_sync = ship
    work(active, rng, n)
    active.on_sync = None


@pytest.fixture
def pair(tmp_path):
    active, standby = open_store(tmp_path / "a"), open_store(tmp_path / "s", seed=2)
    try:
        yield active, standby
    finally:
        for s in (active, standby):
            try:
                s.close()
            except OSError:
                pass


def test_the_standby_replays_to_the_actives_namespace(pair, tmp_path):
    active, standby = pair
    active.on_sync = standby.replicate
    active.begin_term(3)
    ship_all(active, standby, random.Random(5), 12)
    assert standby.last_seq == active.last_seq and standby.epoch == 3
    assert standby.ns.dump() == active.ns.dump()
    assert len(standby.ns.opids) == len(active.ns.opids)   # retried ops answer the same
    expected = active.ns.dump()
    standby.close()
    again = open_store(tmp_path / "s", seed=2)              # its own log recovers it
    assert again.ns.dump() == expected and again.epoch == 3
    again.close()


def test_the_standby_checkpoints_on_its_own(tmp_path):
    active = open_store(tmp_path / "a")
    standby = open_store(tmp_path / "s", checkpoint_records=10, keep_snapshots=1)
    try:
        def ship(first: int, frames: bytes) -> None:
            standby.replicate(first, frames)
            standby.poll()
        active.on_sync = ship
        active.begin_term(2)
        work(active, random.Random(1), 20)
        standby.checkpoint_now(wait=True)
        expected = active.ns.dump()
    finally:
        active.close()
        standby.close()
    again = open_store(tmp_path / "s")
    assert again.snapshot_seq > 0 and again.ns.dump() == expected and again.epoch == 2
    again.close()


def test_a_gap_a_damaged_batch_and_a_lower_epoch_change_nothing(pair):
    active, standby = pair
    active.on_sync = standby.replicate
    active.begin_term(5)
    ship_all(active, standby, random.Random(2), 2)
    before, seq = standby.ns.dump(), standby.last_seq
    active.submit(lambda ns: ns.prepare_mkdir("/x"))
    active.flush()
    first, frames = active.wal.last_batch
    with pytest.raises(ValueError):
        standby.replicate(first + 1, frames)                  # not where it stands
    damaged = bytearray(frames)
    damaged[-1] ^= 0xFF
    with pytest.raises(ValueError):
        standby.replicate(first, bytes(damaged))               # CRC
    assert standby.ns.dump() == before and standby.last_seq == seq
    standby.replicate(first, frames)                           # the real one still fits
    assert standby.ns.stat("/x")
    # a deposed primary's batch: a term lower than the standby has seen
    old = open_store(Path(str(active.dir) + "-old"), seed=3)
    try:
        old.begin_term(4)
        for _ in range(standby.last_seq - old.last_seq):
            old.submit(lambda ns: ns.prepare_mkdir("/pad", parents=True) if not
                       _exists(ns, "/pad") else ns.prepare_mkdir(f"/pad/{os.urandom(4).hex()}"))
        old.flush()
        old.begin_term(4)
        old.wal.append({"op": "epoch", "epoch": 4})
        old.flush()
        first, frames = old.wal.last_batch
        assert first == standby.last_seq + 1
        with pytest.raises(StaleEpoch):
            standby.replicate(first, frames)
        assert standby.last_seq == first - 1 and standby.epoch == 5
    finally:
        old.close()


def _exists(ns, path: str) -> bool:
    try:
        ns.stat(path)
        return True
    except OSError:
        return False


def test_frames_after_gives_the_missing_records_for_catch_up(pair):
    active, standby = pair
    active.on_sync = standby.replicate
    active.begin_term(1)
    active.on_sync = None            # the standby goes away after the first batch
    work(active, random.Random(3), 8)
    # the standby was away for the rest: it catches up from the active's segments
    while standby.last_seq < active.last_seq:
        got = frames_after(active.dir, standby.last_seq, limit=300)
        assert got is not None and got[2] > 0
        standby.replicate(got[0], got[1])
    assert frames_after(active.dir, active.last_seq)[2] == 0
    assert standby.ns.dump() == active.ns.dump()


def test_frames_after_is_none_once_a_checkpoint_pruned_the_records(tmp_path):
    active = open_store(tmp_path / "a", keep_snapshots=1)
    try:
        for i in range(3):
            active.submit(lambda ns, i=i: ns.prepare_mkdir(f"/p{i}"))
            active.checkpoint_now(wait=True)
        assert frames_after(active.dir, 0) is None
        assert frames_after(active.dir, active.last_seq)[2] == 0
    finally:
        active.close()


def test_the_standbys_answers(pair):
    """mds/standby_server.handle: what the standby's socket answers, for any input."""
    from mds.standby_server import handle
    active, standby = pair
    active.on_sync = standby.replicate
    active.begin_term(6)
    hello = handle(standby, {"op": "hello", "n": 1}, None)
    assert {k: hello[k] for k in ("n", "last", "epoch")} == {"n": 1, "last": 1, "epoch": 6}
    assert hello["crc"] == frame_crc(active.dir, 1) is not None    # the same history
    active.on_sync = None
    active.submit(lambda ns: ns.prepare_mkdir("/y"))
    active.flush()
    first, frames = active.wal.last_batch
    lower = handle(standby, {"op": "append", "n": 2, "first": first, "epoch": 5}, frames)
    assert "lower than epoch 6" in lower["err"] and lower["last"] == 1
    for header, part in [(None, None), ({"op": "nope"}, None), ({"op": "append"}, frames),
                         ({"op": "append", "first": "1", "epoch": 6}, frames),
                         ({"op": "append", "first": first, "epoch": 6}, None),
                         ({"op": "append", "first": first, "epoch": 6}, b"garbage")]:
        assert "err" in handle(standby, header, part), header
    assert standby.last_seq == 1
    ok = handle(standby, {"op": "append", "n": 3, "first": first, "epoch": 6}, frames)
    assert ok == {"n": 3, "last": first, "epoch": 6}
    standby.apply_replicated()           # what StandbyServer does once it has answered
    assert standby.ns.dump() == active.ns.dump()


def test_frame_crc_tells_histories_apart(tmp_path):
    """What the active compares before catching a standby up: the same seq in another
    history (another cluster's directory, a reset) has another frame CRC."""
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    try:
        a.submit(lambda ns: ns.prepare_mkdir("/same"))
        b.submit(lambda ns: ns.prepare_mkdir("/same"))
        a.submit(lambda ns: ns.prepare_mkdir("/one"))
        b.submit(lambda ns: ns.prepare_mkdir("/other"))
        a.flush()
        b.flush()
        assert frame_crc(a.dir, 1) == frame_crc(b.dir, 1) is not None
        assert frame_crc(a.dir, 2) != frame_crc(b.dir, 2)
        assert frame_crc(a.dir, 3) is None and frame_crc(a.dir, 0) is None
    finally:
        a.close()
        b.close()


def test_a_deferred_replay_is_durable_first_and_applied_after(pair, tmp_path):
    """The standby answers once the batch is fsynced and replays it after (off the
    active's critical path); a catch-up chunk may span several terms."""
    active, standby = pair
    active.begin_term(2)
    active.submit(lambda ns: ns.prepare_mkdir("/t2"))
    active.flush()
    active.begin_term(3)
    active.submit(lambda ns: ns.prepare_mkdir("/t3"))
    active.flush()
    first, frames, count = frames_after(active.dir, 0)
    assert count == 4
    assert standby.replicate(first, frames, defer=True) == 4
    assert standby.epoch == 3 and not _exists(standby.ns, "/t3")   # durable, not applied
    standby.apply_replicated()
    assert standby.ns.dump() == active.ns.dump()
    # durable before applied: a standby killed in between recovers it from its log
    active.submit(lambda ns: ns.prepare_mkdir("/t3/x"))
    active.flush()
    standby.replicate(*active.wal.last_batch, defer=True)
    standby.wal.close()
    standby._lock.close()
    again = open_store(tmp_path / "s", seed=2)
    try:
        assert again.ns.dump() == active.ns.dump() and again.epoch == 3
    finally:
        again.close()


def _deposed_pair(tmp_path):
    """A led epoch 5 shipping to B, then wrote a tail it never shipped (it died between
    its fsync and B's answer: never acknowledged); B took over with epoch 7 and wrote on.
    Returns (a, b, b's term start)."""
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b", seed=2)
    a.on_sync = b.replicate
    a.begin_term(5)
    ship_all(a, b, random.Random(7), 6)
    a.on_sync = None
    work(a, random.Random(8), 3, "/tail")        # the deposed term's unshipped tail
    assert a.last_seq > b.last_seq
    b.begin_term(7)
    start = b.last_seq                           # b's epoch record
    work(b, random.Random(9), 4, "/new")
    return a, b, start


def test_a_deposed_leaders_unacknowledged_tail_is_cut_back_and_it_follows(tmp_path):
    from mds.replication import cut_point
    from mds.standby_server import truncate
    from mds.wal import truncate_after
    a, b, start = _deposed_pair(tmp_path)
    tail = a.last_seq
    cut = cut_point(b, start, a.last_seq, a.epoch)
    assert cut == (start - 1, frame_crc(b.dir, start - 1))
    assert frame_crc(a.dir, start - 1) == cut[1]          # the shared history

    def reopen(seq: int) -> MetaStore:
        a.close(checkpoint=False)
        truncate_after(tmp_path / "a", seq)
        return open_store(tmp_path / "a")
    answer, a2 = truncate(a, {"n": 1, "seq": cut[0], "crc": cut[1], "epoch": b.epoch},
                          reopen)
    try:
        assert "err" not in answer and answer["last"] == start - 1 < tail
        assert a2.last_seq == start - 1 and answer["crc"] == cut[1]
        while a2.last_seq < b.last_seq:              # the catch-up from there
            got = frames_after(b.dir, a2.last_seq, limit=300)
            a2.replicate(got[0], got[1])
        assert a2.ns.dump() == b.ns.dump() and a2.epoch == 7
        a2.close()
        again = open_store(tmp_path / "a")            # and so it recovers from disk
        assert again.ns.dump() == b.ns.dump() and again.last_seq == b.last_seq
        again.close()
    finally:
        b.close()


def test_a_cut_is_refused_unless_it_is_a_lower_terms_tail_past_a_shared_record(tmp_path):
    from mds.replication import cut_point
    from mds.standby_server import truncate
    a, b, start = _deposed_pair(tmp_path)
    reopened: list[int] = []

    def reopen(seq: int) -> MetaStore:
        reopened.append(seq)
        return a
    try:
        # no term start known, a standby of the same or a newer epoch, one not past it
        assert cut_point(b, None, a.last_seq, a.epoch) is None
        assert cut_point(b, start, a.last_seq, b.epoch) is None
        assert cut_point(b, start, start - 1, a.epoch) is None
        crc = frame_crc(b.dir, start - 1)
        last = a.last_seq
        for header in ({"seq": start - 1, "crc": crc, "epoch": a.epoch},      # not newer
                       {"seq": start - 1, "crc": crc ^ 1, "epoch": 7},        # other record
                       {"seq": last, "crc": crc, "epoch": 7},                 # nothing after
                       {"seq": "x", "crc": crc, "epoch": 7}):                 # malformed
            answer, store = truncate(a, {"n": 2, **header}, reopen)
            assert "err" in answer and store is a and a.last_seq == last, header
        answer, _ = truncate(a, {"n": 3, "seq": start - 1, "crc": crc, "epoch": 7}, None)
        assert "err" in answer
        a.checkpoint_now()                             # covers the tail: cannot cut
        answer, _ = truncate(a, {"n": 4, "seq": start - 1, "crc": crc, "epoch": 7}, reopen)
        assert "checkpoint" in answer.get("err", ""), answer
        assert reopened == [] and a.last_seq == last
    finally:
        a.close()
        b.close()


def test_the_actives_key_ring_rides_on_an_append_until_acknowledged(pair):
    """The standby keeps the active's capability ring (mds/standby.py saves it), so the
    capabilities the active minted still verify after a takeover."""
    from mds.replication import StandbyLink
    from mds.standby_server import handle
    active, standby = pair
    link = StandbyLink("tcp://127.0.0.1:9", active, 0.1)    # never connected: headers only
    try:
        ring = {"keys": "first"}
        link.ring = lambda: ring
        first = link._append(1)
        assert first["ring"] is ring
        link._ring_acked = link._ring_sent                 # what an acknowledged append does
        assert "ring" not in link._append(2)
        ring = {"keys": "rotated"}
        assert link._append(3)["ring"] == {"keys": "rotated"}
    finally:
        link.close()
    kept: list = []
    active.on_sync = None
    active.begin_term(2)
    got = frames_after(active.dir, 0, limit=1 << 20)
    answer = handle(standby, {"op": "append", "n": 1, "first": got[0], "epoch": 2,
                              "ring": {"keys": "x"}}, got[1], kept.append)
    assert "err" not in answer and kept == [{"keys": "x"}]
    # a refused append keeps nothing
    answer = handle(standby, {"op": "append", "n": 2, "first": got[0], "epoch": 2,
                              "ring": {"keys": "y"}}, got[1], kept.append)
    assert "err" in answer and kept == [{"keys": "x"}]


def test_a_standby_behind_the_pruned_log_is_seeded_with_the_snapshot(tmp_path):
    """A standby at seq 0 while the active's checkpoints pruned its first records: the
    active's newest snapshot, sent in chunks, replaces the standby's state; the catch-up
    goes on from there to the same namespace, and it recovers so from disk."""
    from mds.standby_server import put_seed_in_place, seed
    from mds.snapshot import list_snapshots
    active = open_store(tmp_path / "a")
    standby = open_store(tmp_path / "s", seed=2)
    old_work = open_store(tmp_path / "s2", seed=3)
    try:
        active.begin_term(4)
        for round_ in range(3):
            work(active, random.Random(20 + round_), 5, f"/r{round_}")
            active.checkpoint_now()
        work(active, random.Random(30), 3, "/after")
        assert frames_after(active.dir, 0) is None           # pruned: catch-up impossible
        seq, path = list_snapshots(active.dir)[-1]
        data = path.read_bytes()

        def install(s: int, p: Path) -> MetaStore:
            standby.close(checkpoint=False)
            put_seed_in_place(tmp_path / "s", p)
            return open_store(tmp_path / "s", seed=2)
        store, n = standby, 0
        for offset in range(0, len(data), 1000):             # small chunks
            answer, store = seed(store, {"n": n, "seq": seq, "offset": offset,
                                         "size": len(data), "epoch": 4},
                                 data[offset:offset + 1000], install)
            assert "err" not in answer, answer
            n += 1
        assert store is not standby and store.last_seq == seq == answer["last"]
        while store.last_seq < active.last_seq:
            got = frames_after(active.dir, store.last_seq, limit=1 << 20)
            store.replicate(got[0], got[1])
        assert store.ns.dump() == active.ns.dump()
        store.close()
        again = open_store(tmp_path / "s", seed=2)
        assert again.ns.dump() == active.ns.dump() and again.last_seq == active.last_seq
        # refused, changing nothing: a standby not behind, a lower epoch, a bad chunk
        for header, chunk in (({"seq": again.last_seq, "offset": 0, "size": 3, "epoch": 4},
                               b"abc"),
                              ({"seq": 10**6, "offset": 0, "size": 3, "epoch": 1}, b"abc"),
                              ({"seq": 10**6, "offset": 2, "size": 3, "epoch": 4}, b"abc"),
                              ({"seq": 10**6, "offset": 0, "size": 3, "epoch": 4}, None)):
            answer, kept = seed(again, {"n": 9, **header}, chunk, install)
            assert "err" in answer and kept is again, header
        # a damaged snapshot is refused at its last chunk
        work(old_work, random.Random(40), 2)
        old_work.begin_term(4)
        broken = bytearray(data)
        broken[len(broken) // 2] ^= 0xFF
        answer, kept = seed(old_work, {"n": 1, "seq": seq, "offset": 0, "size": len(data),
                                       "epoch": 4}, bytes(broken), install)
        assert "err" in answer and kept is old_work and old_work.last_seq < seq
        assert "seed at seq" not in answer["err"] and "outside" not in answer["err"], answer
        again.close()
    finally:
        for s in (active, old_work):
            s.close()
