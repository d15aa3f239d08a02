"""client/mount/pending.py without sockets: the queue of closed small files, its bounds,
batches, waits and error reporting, and the MDS batch split of background.py."""
from __future__ import annotations

import errno
import threading
import time

import pytest

from client.mount.background import commit_groups, then_ops
from client.mount.cache import AttrCache, OwnChanges
from client.mount.events import Invalidator
from client.mount.pending import COMMITTING, PendingFile, PendingQueue, below


def pf(path: str, size: int = 10, **kw) -> PendingFile:
    return PendingFile(path, b"x" * size, 0o644, (0, 0), time.time(), **kw)


class Recorder:
    """A commit function that records its batches and fails the paths it is told to."""

    def __init__(self, fail: dict[str, OSError] | None = None,
                 gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail or {}
        self.gate = gate

    def __call__(self, batch):
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append([f.path for f in batch])
        return [self.fail.get(f.path) for f in batch]


def test_take_makes_batches_in_close_order_within_bounds() -> None:
    q = PendingQueue(Recorder(), batch_files=3, batch_bytes=25)
    for i in range(5):
        q.add(pf(f"/d/f{i}"))
    assert [f.path for f in q.take()] == ["/d/f0", "/d/f1"]     # 30 bytes > 25
    assert [f.path for f in q.take()] == ["/d/f2", "/d/f3"]
    assert all(q.get(p).state == COMMITTING for p in ("/d/f0", "/d/f3"))
    q2 = PendingQueue(Recorder(), batch_files=3)
    for i in range(5):
        q2.add(pf(f"/f{i}"))
    assert len(q2.take()) == 3


def test_committed_files_leave_and_waiters_return() -> None:
    rec = Recorder()
    q = PendingQueue(rec)
    q.add(pf("/a/x"))
    q.add(pf("/a/y"))
    assert {n for n, _ in q.names_in("/a")} == {"x", "y"}
    assert q.run_once()
    assert rec.batches == [["/a/x", "/a/y"]]
    assert q.get("/a/x") is None and len(q) == 0 and q.committed == 2
    q.settle("/a")                     # nothing pending: returns at once, no error


def test_a_failed_commit_is_kept_and_raised_once_at_the_next_settle(caplog) -> None:
    q = PendingQueue(Recorder(fail={"/d/bad": FileExistsError(errno.EEXIST, "exists")}))
    q.add(pf("/d/bad"))
    q.add(pf("/d/good"))
    q.run_once()
    assert "background commit" in caplog.text and "/d/bad" in caplog.text
    q.settle("/d/good", exact=True)    # the good one: no error
    q.settle("/d", raise_errors=False)  # a rename or rmdir does not consume it
    with pytest.raises(OSError) as info:
        q.settle("/d")
    assert info.value.errno == errno.EIO and "exists" in str(info.value)
    q.settle("/d")                     # reported once
    assert q.failed == 1


def test_a_commit_function_that_raises_fails_the_whole_batch_loudly() -> None:
    def broken(batch):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "no MDS")
    q = PendingQueue(broken)
    q.add(pf("/f"))
    q.run_once()
    with pytest.raises(OSError) as info:
        q.raise_error("/f", exact=True)
    assert "no MDS" in str(info.value)


def test_settle_waits_for_the_background_thread() -> None:
    gate = threading.Event()
    rec = Recorder(gate=gate)
    q = PendingQueue(rec)
    q.start()
    try:
        q.add(pf("/w/a"))
        with pytest.raises(TimeoutError):
            q.settle("/w", timeout=0.2)          # held by the gate: not committed
        assert q.get("/w/a") is not None
        gate.set()
        q.settle("/w", timeout=10)
        assert rec.batches == [["/w/a"]] and q.get("/w/a") is None
    finally:
        gate.set()
        q.stop(timeout=10)


def test_add_blocks_while_over_the_count_or_byte_bound() -> None:
    gate = threading.Event()
    q = PendingQueue(Recorder(gate=gate), max_files=2, max_bytes=1000)
    q.add(pf("/1"))
    q.add(pf("/2"))
    with pytest.raises(TimeoutError):
        q.add(pf("/3"), timeout=0.2)             # two files pending: the third waits
    q3 = PendingQueue(Recorder(), max_bytes=100)
    q3.add(pf("/big", 90))
    with pytest.raises(TimeoutError):
        q3.add(pf("/more", 20), timeout=0.1)
    q.start()
    gate.set()
    q.add(pf("/3"), timeout=10)                  # room once the batch is through
    q.stop(timeout=10)
    assert len(q) == 0


def test_update_and_cancel_only_touch_queued_files() -> None:
    q = PendingQueue(Recorder())
    q.add(pf("/a"))
    q.add(pf("/b"))
    assert q.update("/a", lambda f: setattr(f, "mtime", 5.0))
    assert q.get("/a").mtime == 5.0
    assert q.cancel("/b") and q.get("/b") is None
    batch = q.take()
    assert [f.path for f in batch] == ["/a"]
    assert not q.update("/a", lambda f: setattr(f, "mtime", 6.0))   # being committed
    assert not q.cancel("/a")
    assert not q.update("/nope", lambda f: None)


def test_stop_drains_what_is_queued() -> None:
    rec = Recorder()
    q = PendingQueue(rec)
    q.start()
    for i in range(20):
        q.add(pf(f"/s/{i}"))
    q.stop(timeout=10)
    assert sorted(p for b in rec.batches for p in b) == sorted(f"/s/{i}" for i in range(20))


def test_below() -> None:
    assert below("/a/b", "/a") and below("/a", "/a") and below("/x", "/")
    assert not below("/ab", "/a") and not below("/a", "/a/b")


def test_commit_groups_never_split_a_file_and_stay_within_the_batch_limit() -> None:
    groups = [[{}] * 3 for _ in range(100)]
    parts = commit_groups(groups, limit=256)
    assert [i for p in parts for i in p] == list(range(100))
    assert all(sum(len(groups[i]) for i in p) <= 256 for p in parts)
    assert len(parts) == 2                        # 85 groups of 3 fit in 256


def test_then_ops_carry_owner_and_mtime() -> None:
    assert then_ops(pf("/f")) == []
    ops = then_ops(pf("/f", mtime=7.5, chown=("u", "g")))
    assert ops == [{"op": "chown", "path": "/f", "owner": "u", "group": "g"},
                   {"op": "utimens", "path": "/f", "mtime": 7.5}]


def test_events_of_our_own_commits_keep_the_parent_cached() -> None:
    cache = AttrCache(60)
    own = OwnChanges()
    inv = Invalidator("tcp://127.0.0.1:1", None, cache, own)
    cache.put("/d", {"st_mtime": 1})
    cache.put("/d/ours", {"st_mtime": 1})
    own.add("/d/ours")
    inv.apply("file.commit", {"path": "/d/ours"})
    inv.apply("file.attr", {"path": "/d/ours"})
    assert cache.get("/d") is not None and cache.get("/d/ours") is None
    inv.apply("file.commit", {"path": "/d/theirs"})       # made elsewhere: parent dropped
    assert cache.get("/d") is None
    cache.put("/d", {"st_mtime": 1, "st_size": 3})
    cache.touch("/d", 99)
    assert cache.get("/d") == {"st_mtime": 99, "st_ctime": 99, "st_size": 3}


def test_known_dirs_answer_absent_names_only_while_fresh() -> None:
    from client.mount.cache import KnownDirs
    k = KnownDirs(ttl=60)
    assert k.absent("/d/x") is False                 # unknown directory: ask the MDS
    assert k.install("/d", {"a"}, k.begin("/d"))
    assert k.absent("/d/x") is True and k.absent("/d/a") is False
    k.add("/d/x")
    assert k.absent("/d/x") is False
    assert k.absent("/") is False and k.absent("/d") is False   # "/" is never known absent
    assert k.absent("/d/" + "n" * 256) is False      # too long: the MDS says ENAMETOOLONG
    k._d["/d"] = (time.monotonic() - 1, k._d["/d"][1])          # past its ttl
    assert k.absent("/d/y") is None                  # list it again first
    assert KnownDirs(ttl=0).install("/d", set(), 0) is False     # attr timeout 0: off


def test_known_dirs_refuse_a_listing_dropped_while_it_was_read() -> None:
    from client.mount.cache import KnownDirs
    k = KnownDirs(ttl=60)
    token = k.begin("/a/b")
    k.drop_below("/a")                               # /a moved or removed meanwhile
    assert not k.install("/a/b", set(), token)
    assert k.absent("/a/b/x") is False
    assert k.install("/a/b", set(), k.begin("/a/b"))
    k.drop_below("/a")
    assert k.absent("/a/b/x") is False               # forgotten with its ancestor


def test_events_add_names_to_known_dirs_and_drop_moved_ones() -> None:
    from client.mount.cache import KnownDirs
    cache, known = AttrCache(60), KnownDirs(60)
    inv = Invalidator("tcp://127.0.0.1:1", None, cache, OwnChanges(), known)
    known.install("/d", set(), known.begin("/d"))
    known.install("/d/sub", set(), known.begin("/d/sub"))
    inv.apply("file.commit", {"path": "/d/made-elsewhere"})
    assert known.absent("/d/made-elsewhere") is False and known.absent("/d/other") is True
    inv.apply("dir.delete", {"path": "/d/sub"})
    assert known.absent("/d/sub/x") is False         # no longer trusted
    inv.apply("file.rename", {"path": "/d/moved-in"})
    assert known.absent("/d/moved-in") is False


def test_move_renames_a_queued_file_and_replaces_one_queued_there() -> None:
    q = PendingQueue(Recorder())
    q.add(pf("/d/.tmp1", exclusive=True))
    q.add(pf("/d/final", 3))
    old_final = q.get("/d/final")
    assert q.move("/d/.tmp1", "/d/final")
    assert q.get("/d/.tmp1") is None and old_final.done.is_set()
    moved = q.get("/d/final")
    assert moved.size == 10 and not moved.exclusive and len(q) == 1
    assert [f.path for f in q.take()] == ["/d/final"]
    q.add(pf("/d/x"))
    assert not q.move("/d/x", "/d/final")        # the target is being committed
    assert not q.move("/d/none", "/d/y")
    ops = then_ops(pf("/f", replaces=True, chown=("u", "g")))
    assert ops[0] == {"op": "chmod", "path": "/f", "mode": 0o644}
