"""Outstanding allocations: the blocks and bytes each draft and each user has reserved with
`allocate` and not yet committed, aborted or lost to lease expiry, with their limits.

Sans-IO and not durable: after an MDS restart the drafts it recovers count for nobody
until they end (their lease bounds that). Public API: `Allocations` (reserve, release,
retain, usage).
"""
from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Iterable

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Limits:
    user_blocks: int = 4096
    user_bytes: int = 16 * GIB
    draft_blocks: int = 4096
    draft_bytes: int = 16 * GIB


class Allocations:
    """One user's flood of `allocate` must not exhaust placement for the others: each user
    (the caller id the broker stamped) and each draft may hold at most so many reserved
    blocks and bytes. A draft's reservation is released as a whole when it ends."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._drafts: dict[str, tuple[str, int, int]] = {}    # handle -> (user, blocks, bytes)
        self._users: dict[str, list[int]] = {}                # user -> [blocks, bytes]

    def usage(self, user: str) -> tuple[int, int]:
        used = self._users.get(user)
        return (used[0], used[1]) if used else (0, 0)

    def reserve(self, user: str, handle: str, blocks: int, nbytes: int) -> None:
        """Count `blocks` more for the draft and the user, or EDQUOT changing nothing."""
        lim = self.limits
        owner, d_blocks, d_bytes = self._drafts.get(handle, (user, 0, 0))
        u_blocks, u_bytes = self.usage(owner)
        if d_blocks + blocks > lim.draft_blocks or d_bytes + nbytes > lim.draft_bytes:
            raise OSError(errno.EDQUOT, f"draft {handle} would hold {d_blocks + blocks} "
                          f"uncommitted blocks ({d_bytes + nbytes} bytes); one draft may "
                          f"hold {lim.draft_blocks} ({lim.draft_bytes} bytes): commit first",
                          handle)
        if u_blocks + blocks > lim.user_blocks or u_bytes + nbytes > lim.user_bytes:
            raise OSError(errno.EDQUOT, f"user {owner} would hold {u_blocks + blocks} "
                          f"uncommitted blocks ({u_bytes + nbytes} bytes); the limit is "
                          f"{lim.user_blocks} blocks and {lim.user_bytes} bytes per user "
                          "([mds] user_blocks, user_bytes): commit or abort drafts first")
        self._drafts[handle] = (owner, d_blocks + blocks, d_bytes + nbytes)
        used = self._users.setdefault(owner, [0, 0])
        used[0] += blocks
        used[1] += nbytes

    def unreserve(self, handle: str, blocks: int, nbytes: int) -> None:
        """Give back part of a reservation (an allocate that failed after reserving)."""
        entry = self._drafts.get(handle)
        if entry is None:
            return
        owner, d_blocks, d_bytes = entry
        blocks, nbytes = min(blocks, d_blocks), min(nbytes, d_bytes)
        self._drafts[handle] = (owner, d_blocks - blocks, d_bytes - nbytes)
        self._take(owner, blocks, nbytes)

    def release(self, handle: str) -> None:
        """The draft ended (commit, abort, expiry): its whole reservation is free again."""
        entry = self._drafts.pop(handle, None)
        if entry is not None:
            self._take(entry[0], entry[1], entry[2])

    def retain(self, live: Iterable[str]) -> None:
        """Release every draft not in `live`: a safety net for drafts that ended by a path
        that did not call release."""
        keep = set(live)
        for handle in [h for h in self._drafts if h not in keep]:
            self.release(handle)

    def _take(self, user: str, blocks: int, nbytes: int) -> None:
        used = self._users.get(user)
        if used is None:
            return
        used[0] -= blocks
        used[1] -= nbytes
        if used[0] <= 0 and used[1] <= 0:
            del self._users[user]
