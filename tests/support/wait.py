"""Polling with a deadline, for tests and the fault harness: ``wait_for`` returns the
first truthy answer of a check or fails naming what it waited for and the last answer."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
             what: str = "condition", *, retry: tuple[type[BaseException], ...] = (),
             done: Callable[[Any], bool] = bool,
             log: Callable[[str], None] | None = None) -> Any:
    """Poll ``check`` until ``done(answer)``; returns that answer. An exception of a type
    in ``retry`` (a role restarting) counts as not yet; ``log`` hears the last answer every
    few seconds. Raises AssertionError after ``timeout`` seconds."""
    start = told = time.monotonic()
    last: Any = None
    while True:
        if log is not None and time.monotonic() - told >= 3.0:
            told = time.monotonic()
            log(f"  [{told - start:5.1f}s] not {what} yet: {last}")
        try:
            last = check()
            if done(last):
                return last
        except retry as exc:
            last = exc
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not {what} after {timeout:.0f}s: {last}")
        time.sleep(interval)
