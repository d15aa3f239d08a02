"""broker.free_ports.free_base_port within $AEGISFS_PORTS: what keeps parallel test
workers (and the clusters they start) from racing for one port."""
from __future__ import annotations

import socket

import pytest

from broker import free_ports
from broker.free_ports import PORTS_ENV, free_base_port


@pytest.fixture
def window(monkeypatch):
    """A 24-port range that is free right now, as $AEGISFS_PORTS, with a fresh cursor."""
    monkeypatch.delenv(PORTS_ENV, raising=False)
    lo = free_base_port(24)
    monkeypatch.setenv(PORTS_ENV, f"{lo}-{lo + 24}")
    monkeypatch.setattr(free_ports, "_cursor", {})
    return lo, lo + 24


def test_blocks_come_from_the_range_without_overlap_and_skip_a_bound_port(window):
    lo, hi = window
    first = free_base_port(4)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", first + 4 if first + 8 <= hi else lo))
        bases = [first] + [free_base_port(4) for _ in range(3)]
        spans = [set(range(b, b + 4)) for b in bases]
        assert all(lo <= b and b + 4 <= hi for b in bases)
        assert sum(len(s) for s in spans) == len(set().union(*spans))   # no overlap
        assert all(taken.getsockname()[1] not in s for s in spans)
    finally:
        taken.close()


def test_a_full_range_and_a_bad_value_are_clear_errors(window, monkeypatch):
    lo, hi = window
    held = []
    try:
        for port in range(lo, hi):
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            held.append(s)
        with pytest.raises(RuntimeError, match="no 4 free ports in a row"):
            free_base_port(4)
    finally:
        for s in held:
            s.close()
    monkeypatch.setenv(PORTS_ENV, "20000")
    with pytest.raises(RuntimeError, match="expected LO-HI"):
        free_base_port(4)
