"""Supervision of run_cluster.py's children: when a role that exited unexpectedly is
started again (exponential backoff, reset once it has stayed up), why it stopped, and the
state file `aegisfs status` shows. Sans-IO: times come in as arguments.

Public API: `Supervisor` (exited, due, started, snapshot), `exit_reason`, `last_line`,
`STATE_FILE`, `read_state`, `write_state`.
"""
from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "supervisor.json"     # in the cluster's data directory, beside keys/
_LOG_PREFIX = re.compile(r"^\S+ \S+ (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
_STOPPED = re.compile(r"^[\w.-]+ stopped: ")


@dataclass
class RoleState:
    restarts: int = 0
    last_exit: str | None = None        # "killed by SIGKILL", "exit code 70: OSError: ..."
    last_exit_at: float | None = None   # wall clock
    backoff: float = 0.0                # the next delay (0: the base)
    next_start: float | None = None     # monotonic; None: running or not supervised
    up_since: float | None = None       # monotonic


class Supervisor:
    """Restart delays: `base`, doubling to `cap`; a role up for `stable` seconds since its
    last start begins again at `base` (a crash loop backs off, a rare crash does not)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, stable: float = 60.0) -> None:
        self.base, self.cap, self.stable = base, cap, stable
        self.roles: dict[str, RoleState] = {}

    def started(self, name: str, now: float) -> None:
        st = self.roles.setdefault(name, RoleState())
        st.next_start, st.up_since = None, now

    def exited(self, name: str, now: float, wall: float, reason: str) -> float:
        """A role stopped unexpectedly: remember why; returns the delay to its restart."""
        st = self.roles.setdefault(name, RoleState())
        if st.up_since is not None and now - st.up_since >= self.stable:
            st.backoff = 0.0
        delay = st.backoff or self.base
        st.backoff = min(self.cap, delay * 2)
        st.last_exit, st.last_exit_at = reason, wall
        st.next_start, st.up_since = now + delay, None
        st.restarts += 1
        return delay

    def due(self, now: float) -> list[str]:
        return [n for n, st in self.roles.items()
                if st.next_start is not None and st.next_start <= now]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(st) for name, st in self.roles.items()}


def last_line(path: Path, since: int = 0, tail: int = 8192) -> str | None:
    """The last non-empty line a role wrote to its log after byte `since`."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            start = max(since, end - tail)
            if start >= end:
                return None
            f.seek(start)
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:300]
    return None


def exit_reason(returncode: int, log_line: str | None) -> str:
    """Why a child stopped, for a person: the signal, or the exit code and the last line
    it logged (a fail-stop role logs its cause last, e.g. the fsync error and its path).
    After a signal the last line is whatever it was doing, so it is left out."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    reason = f"exit code {returncode}"
    if not log_line:
        return reason
    m = _LOG_PREFIX.match(log_line)      # broker/process.py FORMAT: keep the message
    message = log_line[m.end():] if m else log_line
    message = _STOPPED.sub("", message)  # "mds stopped: disk full at ..." said once
    return f"{reason}: {message}"


def write_state(directory: Path, roles: dict[str, dict[str, Any]],
                ha: dict[str, str] | None = None) -> None:
    """Atomically replace the state file (a reader never sees half of it). `ha`:
    {"etcd": URL} of a cluster run with --ha, where `aegisfs status` reads who leads
    (the MDS may not answer)."""
    path = directory / STATE_FILE
    tmp = path.with_name(f"{STATE_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"roles": roles, **({"ha": ha} if ha else {})}, indent=1,
                              sort_keys=True))
    os.replace(tmp, path)


def read_state(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("roles"), dict) else None
