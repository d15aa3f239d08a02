"""Blocks of free TCP ports on loopback for local clusters (run_cluster.py, the tests,
bench/): `free_base_port`, and `PORTS_ENV`, the range a test runner keeps its ports in.
"""
from __future__ import annotations

import os
import socket

# "LO-HI": take ports only from LO..HI-1. Several test runners on one host (pytest-xdist
# workers, tests/conftest.py) each get a range of their own below the kernel's ephemeral
# range, so neither another runner's probe nor an outgoing connection can take a port
# between the moment it is found free and the moment a role binds it.
PORTS_ENV = "AEGISFS_PORTS"
_cursor: dict[str, int] = {}


def _ports_free(base: int, span: int, host: str) -> bool:
    held = []
    try:
        for port in range(base, base + span):
            t = socket.socket()
            held.append(t)
            t.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for t in held:
            t.close()


def _free_in_range(window: str, span: int, host: str) -> int:
    try:
        lo, hi = (int(p) for p in window.split("-"))
    except ValueError:
        raise RuntimeError(f"{PORTS_ENV}={window!r}: expected LO-HI, e.g. 20000-23000") from None
    if not 0 < lo < hi - span <= 65536:
        raise RuntimeError(f"{PORTS_ENV}={window!r}: no room for {span} ports")
    # a random start: child processes that inherit the range do not all begin at LO
    base = _cursor.get(window) or lo + int.from_bytes(os.urandom(2), "big") % (hi - lo - span)
    for _ in range(hi - lo):
        if base + span > hi:
            base = lo
        if _ports_free(base, span, host):
            _cursor[window] = base + span
            return base
        base += 1
    raise RuntimeError(f"no {span} free ports in a row in {PORTS_ENV}={window}")


def free_base_port(span: int = 4, host: str = "127.0.0.1") -> int:
    """A port P such that P..P+span-1 are all free on `host` right now (within
    $AEGISFS_PORTS when it is set)."""
    window = os.environ.get(PORTS_ENV)
    if window:
        return _free_in_range(window, span, host)
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + span < 65000 and _ports_free(base, span, host):
            return base
    raise RuntimeError("no free block of ports found")
