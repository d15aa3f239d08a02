"""Fixtures for the multi-host tests: a cluster whose every role runs in its own network
namespace (tests/multihost/harness.py), torn down by PID and namespace even when a test
fails or the run is interrupted (the fixture's finalizer, and atexit as the last resort)."""
from __future__ import annotations

import atexit

import pytest

from tests.multihost import netns
from tests.multihost.harness import MultiHost

_UNAVAILABLE: list = []
_LIVE: list[MultiHost] = []


def _close_all() -> None:
    while _LIVE:
        _LIVE.pop().close()


atexit.register(_close_all)


def pytest_collection_modifyitems(items):
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.multihost)
            item.add_marker(pytest.mark.timeout(240))


@pytest.fixture(scope="session")
def namespaces_ok():
    """Skip (saying why) only when this machine cannot make network namespaces."""
    if not _UNAVAILABLE:
        reason = netns.why_unavailable()
        _UNAVAILABLE.append(reason)
        if reason is None:
            netns.clean_stale()
    if _UNAVAILABLE[0]:
        print(f"\nmultihost tests skipped: {_UNAVAILABLE[0]}")
        pytest.skip(_UNAVAILABLE[0])


@pytest.fixture
def multihost(namespaces_ok, tmp_path, request):
    """A factory: multihost(datanodes=3, ...) -> a started MultiHost, closed after the test."""
    made: list[MultiHost] = []

    def make(**kw) -> MultiHost:
        mh = MultiHost(tmp_path / f"c{len(made)}", **kw)
        made.append(mh)
        _LIVE.append(mh)
        mh.start()
        return mh

    def finish() -> None:
        for mh in made:
            mh.close()          # the role logs stay in tmp_path for a failed test
            if mh in _LIVE:
                _LIVE.remove(mh)

    request.addfinalizer(finish)
    return make
