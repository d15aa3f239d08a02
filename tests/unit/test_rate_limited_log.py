"""The broker's rate-limited warning log (broker.server.RateLimitedLog): per kind of
refusal, a bounded number of kinds, and the count of what was left out."""
from __future__ import annotations

import logging

from broker.server import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_noisy_kind_does_not_hide_the_first_of_another(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.rl"), per_interval=2, interval=10,
                             clock=clock, what="refusals")
    with caplog.at_level(logging.WARNING, "t.rl"):
        for i in range(50):
            limited.warning("refused %d: may not act for 'mds'", i, key="mds")
        limited.warning("refused: may not act for 'dn.dn1'", key="dn")
        clock.now += 10
        limited.warning("refused again", key="mds")
    assert _logged(caplog) == ["refused 0: may not act for 'mds'",
                               "refused 1: may not act for 'mds'",
                               "refused: may not act for 'dn.dn1'",
                               "48 more refusals were not logged", "refused again"]


def test_kinds_are_bounded_per_interval(caplog):
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.rl2"), per_interval=5, interval=10,
                             clock=clock, kinds=3)
    with caplog.at_level(logging.WARNING, "t.rl2"):
        for i in range(100):          # a peer inventing a new reason each time
            limited.warning("reason %d", i, key=i)
        limited.warning("reason 1 again", key=1)   # a kind already seen is still logged
    assert _logged(caplog) == ["reason 0", "reason 1", "reason 2", "reason 1 again"]
    assert limited.suppressed == 97
