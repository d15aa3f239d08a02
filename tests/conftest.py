"""Shared test options and fixtures: --soak for long runs, free loopback ports, processes
that are always stopped by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.free_ports import PORTS_ENV  # noqa: E402
from tests.support import figures  # noqa: E402

# Under pytest-xdist each worker (gw0, gw1, ...) takes its clusters' ports from a range of
# its own below the ephemeral range (32768-60999 here): no two workers ever race for one.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit() and PORTS_ENV not in os.environ:
    _lo = 20000 + 3000 * (int(_WORKER[2:]) % 4)
    os.environ[PORTS_ENV] = f"{_lo}-{_lo + 3000}"


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="run long soak variants (more kills, longer chaos)")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: only with --soak")


def pytest_runtest_setup(item):
    figures.started(item)


def pytest_runtest_teardown(item):
    figures.ended()


def pytest_terminal_summary(terminalreporter) -> None:
    stats = terminalreporter.stats
    found = figures.lines([r for key in ("passed", "failed") for r in stats.get(key, [])])
    if found:
        terminalreporter.section("figures")
        for line in found:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        return
    # not part of the default suite: deselected (pytest counts them as "deselected"),
    # not skipped, so a skip in the default run always means a missing facility
    soaks = [item for item in items if "soak" in item.keywords]
    if soaks:
        config.hook.pytest_deselected(items=soaks)
        items[:] = [item for item in items if "soak" not in item.keywords]


@pytest.fixture
def soak(request) -> bool:
    return bool(request.config.getoption("--soak"))


class Processes:
    """Child processes started by a test; every one is killed by PID at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, name: str = "proc") -> subprocess.Popen:
        log = open(self.tmp / f"{name}-{len(self.procs)}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(ROOT), env=env)
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
