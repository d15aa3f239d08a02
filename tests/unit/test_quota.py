"""mds/quota.py: outstanding allocations per draft and per user, refused with EDQUOT
without changing anything, released as a whole when a draft ends."""
from __future__ import annotations

import errno

import pytest

from mds.quota import Allocations, Limits

LIM = Limits(user_blocks=10, user_bytes=1000, draft_blocks=6, draft_bytes=600)


def test_a_user_is_bounded_across_drafts_and_others_are_not():
    a = Allocations(LIM)
    a.reserve("alice", "h1", 6, 600)
    with pytest.raises(OSError) as info:
        a.reserve("alice", "h2", 5, 10)
    assert info.value.errno == errno.EDQUOT and "user alice" in info.value.strerror
    assert a.usage("alice") == (6, 600)          # the refused reservation changed nothing
    a.reserve("bob", "h3", 6, 600)               # another user is not affected
    a.reserve("alice", "h2", 4, 400)
    assert a.usage("alice") == (10, 1000)


def test_a_draft_is_bounded_and_counts_for_its_first_user():
    a = Allocations(LIM)
    a.reserve("alice", "h1", 5, 100)
    with pytest.raises(OSError) as info:
        a.reserve("alice", "h1", 2, 100)
    assert info.value.errno == errno.EDQUOT and "draft h1" in info.value.strerror
    with pytest.raises(OSError):
        a.reserve("alice", "h1", 1, 501)         # bytes bound too
    a.reserve("bob", "h1", 1, 10)                # a handle shared: it stays alice's
    assert a.usage("alice") == (6, 110) and a.usage("bob") == (0, 0)


def test_release_unreserve_and_retain():
    a = Allocations(LIM)
    a.reserve("alice", "h1", 4, 400)
    a.reserve("alice", "h2", 4, 400)
    a.unreserve("h1", 3, 300)                    # an allocate that failed after reserving
    assert a.usage("alice") == (5, 500)
    a.release("h1")
    assert a.usage("alice") == (4, 400)
    a.release("h1")                              # twice is harmless
    a.retain(["other"])                          # h2 ended by a path that did not say so
    assert a.usage("alice") == (0, 0)
    a.reserve("alice", "h3", 6, 600)             # all of it is usable again
