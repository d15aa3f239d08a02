"""AegisClient.close() while another thread is inside a call (a gateway or a mount shutting
down under load). ZeroMQ sockets are not thread-safe: closing one under the thread polling
it aborts the whole process in libzmq, so each thread's link is closed by that thread.

The broker here is a bare ROUTER socket on a free loopback port that never answers, so the
other thread is certainly inside its call when close() runs. The client runs in a child
process, because an abort would take pytest down with it."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from run_cluster import free_base_port
from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    import sys, threading, time
    import zmq
    from client import AegisClient

    port, CALLERS = int(sys.argv[1]), 4
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{port}")
    fs = AegisClient(f"tcp://127.0.0.1:{port}", timeout=1.5, retry_deadline=0,
                     connect_timeout=1.0, direct=False,
                     config={"security": {"mode": "off"}})
    seen = []

    def caller():
        first = second = None
        try:
            fs.ls("/")
        except OSError as exc:            # no answer within the timeout
            first = type(exc).__name__
        try:
            fs.ls("/")
        except ValueError as exc:         # the client was closed meanwhile
            second = str(exc)
        seen.append((first, second))

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    for t in threads:
        t.start()
    asked, deadline = 0, time.monotonic() + 10
    while asked < CALLERS and time.monotonic() < deadline:
        if router.poll(50):
            router.recv_multipart()
            asked += 1
    assert asked == CALLERS, f"{asked} of {CALLERS} requests reached the fake broker"
    fs.close()                            # every caller is inside its call now
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller never returned"
    for first, second in seen:
        print(first, "|", second, flush=True)
    router.close(linger=0)
""")


def test_close_under_a_thread_inside_a_call_does_not_abort_and_later_calls_raise(tmp_path):
    port = free_base_port(1)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], cwd=ROOT, timeout=60,
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT),
                                                              "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, (f"exit {out.returncode} (negative: killed by that signal)"
                                 f"\n{out.stdout}\n{out.stderr[-3000:]}")
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stdout + out.stderr[-3000:]
    for line in lines:
        first, second = (part.strip() for part in line.split("|"))
        # the call in flight ends as calls end (no answer within the timeout); the next
        # one is refused as a call on a closed client
        assert first == "TimeoutError", out.stdout + out.stderr[-3000:]
        assert second == "AegisClient is closed", out.stdout
