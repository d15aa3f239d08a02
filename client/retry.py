"""Riding through MDS restarts: which failures are worth waiting out, the backoff with
jitter up to a deadline, and the operation ids that make a retried mutation safe.

Sans-IO: the clock, the sleep and the random source are injected (tests use a fake
clock); `Retrier.run(attempt)` is the whole policy. Public API: `RetryPolicy`,
`Retrier`, `retryable`, `stamp_opids`, `MUTATING`, `DEFAULT_DEADLINE`.
"""
from __future__ import annotations

import errno
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

DEFAULT_DEADLINE = 60.0
OPID_LEN = 16
# The MDS operations declared mutating=True (mds/ops_*.py): each takes an `opid`.
MUTATING = frozenset({"mkdir", "create", "allocate", "replace_target", "commit", "abort",
                      "renew", "rm", "mv", "chmod", "chown", "copy",
                      "rename", "link", "utimens", "quota_set", "quota_clear", "pool",
                      "put_small"})
# A restart looks like this from a client: the broker has no MDS registered (refused),
# the MDS died with our request (reset), the request or the broker went silent
# (timeout, or the broker unreachable: BrokerUnavailable is a ConnectionRefusedError),
# or a fresh MDS still waiting for its DataNodes (EAGAIN).
_RETRY_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT,
                           errno.EAGAIN})

Notice = Callable[[str, "OSError | None"], None]   # ("waiting", error) / ("back", None)


def retryable(exc: BaseException) -> bool:
    """A failure that a restarting MDS (or broker) explains; others are the answer."""
    if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _RETRY_ERRNOS


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff from `first` to `cap` seconds, each delay drawn from
    [delay/2, delay] (jitter: clients woken by the same restart spread out), until
    `deadline` seconds after the first attempt; deadline 0 = no retries."""
    deadline: float = DEFAULT_DEADLINE
    first: float = 0.05
    cap: float = 1.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.deadline < 0 or self.first <= 0 or self.cap < self.first or self.factor < 1:
            raise ValueError(f"bad retry policy {self}")


class Retrier:
    def __init__(self, policy: RetryPolicy = RetryPolicy(), *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[], float] = random.random,
                 notice: Notice | None = None) -> None:
        self.policy, self.clock, self.sleep, self.rng = policy, clock, sleep, rng
        self.notice = notice
        self.retries = 0          # attempts repeated, over this Retrier's life

    def run(self, attempt: Callable[[], T]) -> T:
        """`attempt()` until it succeeds, fails with a non-retryable error, or the
        deadline passes (then the last error is raised, saying how long we waited)."""
        p = self.policy
        started = self.clock()
        delay, waiting = p.first, False
        while True:
            try:
                result = attempt()
            except OSError as exc:
                left = started + p.deadline - self.clock()
                if not retryable(exc) or left <= 0:
                    if waiting and retryable(exc):
                        exc.add_note(f"gave up after retrying for {p.deadline:g}s "
                                     "([client] retry_deadline)")
                    raise
                if not waiting and self.notice is not None:
                    self.notice("waiting", exc)
                waiting = True
                self.retries += 1
                self.sleep(min(left, delay * (0.5 + 0.5 * self.rng())))
                delay = min(p.cap, delay * p.factor)
                continue
            if waiting and self.notice is not None:
                self.notice("back", None)
            return result


def stamp_opids(header: Mapping[str, Any],
                new_id: Callable[[int], bytes] = os.urandom) -> dict:
    """The request with an operation id on it (and on each mutating batch item) unless
    it has one; done once per logical operation, before the first attempt, so every
    retry carries the same ids."""
    out = dict(header)
    op = out.get("op")
    if op in MUTATING and out.get("opid") is None:
        out["opid"] = new_id(OPID_LEN)
    elif op == "batch" and isinstance(out.get("ops"), (list, tuple)):
        out["ops"] = [stamp_opids(item, new_id) if isinstance(item, Mapping)
                      and item.get("op") in MUTATING else item for item in out["ops"]]
    return out
