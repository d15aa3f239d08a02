"""The client's retry policy (client/retry.py) on a fake clock: what is retried, the
backoff with jitter and its cap, the deadline, the notices, the operation ids."""
from __future__ import annotations

import errno

import pytest

from broker.client import BrokerUnavailable
from client.retry import MUTATING, Retrier, RetryPolicy, retryable, stamp_opids
from tests.support.clock import FakeClock


def failing(errors: list[BaseException], result: str = "done"):
    """An attempt that raises `errors` in turn, then returns `result`; counts calls."""
    calls = []

    def attempt() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result
    return attempt, calls


def refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "no live worker for service 'mds'")


@pytest.mark.parametrize("exc", [
    refused(), ConnectionResetError(errno.ECONNRESET, "worker lost"),
    TimeoutError(errno.ETIMEDOUT, "no reply"), BrokerUnavailable(errno.ECONNREFUSED, "x"),
    OSError(errno.EAGAIN, "waiting for DataNodes: 1 of 2 reported")])
def test_restart_symptoms_are_retried(exc):
    assert retryable(exc)


@pytest.mark.parametrize("exc", [
    FileNotFoundError(errno.ENOENT, "x"), FileExistsError(errno.EEXIST, "x"),
    PermissionError(errno.EACCES, "key refused"), OSError(errno.ENOSPC, "full"),
    OSError(errno.EINVAL, "bad")])
def test_answers_are_not_retried(exc):
    clock = FakeClock()
    attempt, calls = failing([exc])
    with pytest.raises(type(exc)):
        Retrier(clock=clock, sleep=clock.sleep).run(attempt)
    assert len(calls) == 1 and clock.slept == []


def test_backoff_doubles_to_the_cap_with_jitter_in_the_upper_half():
    clock = FakeClock()
    draws = iter([0.0, 1.0] * 20)          # jitter at both ends of its range
    policy = RetryPolicy(deadline=60, first=0.1, cap=0.8)
    attempt, calls = failing([refused() for _ in range(8)])
    assert Retrier(policy, clock=clock, sleep=clock.sleep, rng=lambda: next(draws)).run(
        attempt) == "done"
    assert len(calls) == 9
    assert clock.slept == pytest.approx([0.05, 0.2, 0.2, 0.8, 0.4, 0.8, 0.4, 0.8])


def test_gives_up_at_the_deadline_with_the_last_error():
    clock = FakeClock()
    seen = []
    retrier = Retrier(RetryPolicy(deadline=5.0), clock=clock, sleep=clock.sleep,
                      notice=lambda state, exc: seen.append(state))
    attempt, calls = failing([refused() for _ in range(1000)])
    with pytest.raises(ConnectionRefusedError) as info:
        retrier.run(attempt)
    assert clock.now - 1000.0 == pytest.approx(5.0)     # slept exactly up to the deadline
    assert "retry_deadline" in " ".join(getattr(info.value, "__notes__", []))
    assert seen == ["waiting"] and len(calls) > 5


def test_notices_once_per_wait_and_when_back():
    clock = FakeClock()
    seen = []
    retrier = Retrier(clock=clock, sleep=clock.sleep,
                      notice=lambda state, exc: seen.append((state, exc and exc.errno)))
    attempt, _ = failing([refused(), refused(), ConnectionResetError(errno.ECONNRESET, "x")])
    retrier.run(attempt)
    assert seen == [("waiting", errno.ECONNREFUSED), ("back", None)]
    assert retrier.retries == 3
    seen.clear()
    retrier.run(failing([])[0])           # no wait: nothing said
    assert seen == []


def test_deadline_zero_fails_at_once():
    clock = FakeClock()
    attempt, calls = failing([refused()])
    with pytest.raises(ConnectionRefusedError):
        Retrier(RetryPolicy(deadline=0), clock=clock, sleep=clock.sleep).run(attempt)
    assert len(calls) == 1


def test_opids_once_per_logical_operation():
    ids = iter(bytes([i]) * 16 for i in range(1, 100))
    new = lambda n: next(ids)     # noqa: E731
    rm = stamp_opids({"op": "rm", "path": "/a"}, new)
    assert rm["opid"] == b"\x01" * 16
    assert stamp_opids(rm, new) == rm                   # a retry keeps its id
    assert "opid" not in stamp_opids({"op": "stat", "path": "/a"}, new)
    batch = stamp_opids({"op": "batch", "ops": [{"op": "stat", "path": "/a"},
                                                 {"op": "create", "path": "/b"},
                                                 {"op": "commit", "handle": "h"}]}, new)
    items = batch["ops"]
    assert "opid" not in items[0] and items[1]["opid"] != items[2]["opid"]
    assert {"mkdir", "create", "commit", "rm", "mv", "chmod", "chown"} <= MUTATING
