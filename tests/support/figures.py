"""Figures a test measured (settle times, rates), printed in the terminal summary of the
whole run. They travel in the test's report (`user_properties`), so they also reach the
summary from pytest-xdist workers, whose own output the controller never prints."""
from __future__ import annotations

from typing import Any

KEY = "figure"
_running: list[Any] = []        # the item whose test runs now, in this process


def record(line: str) -> None:
    """A figure worth keeping: printed now (pytest -s) and in the terminal summary."""
    print(line)
    if _running:
        _running[-1].user_properties.append((KEY, line))


def started(item: Any) -> None:
    _running[:] = [item]


def ended() -> None:
    _running.clear()


def lines(reports: list[Any]) -> list[str]:
    """The figures in these test reports (each test's once, from its call phase)."""
    return [value for rep in reports if getattr(rep, "when", None) == "call"
            for key, value in getattr(rep, "user_properties", ()) if key == KEY]
