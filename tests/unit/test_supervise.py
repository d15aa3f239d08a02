"""run_cluster.py's supervision core (broker/supervise.py): backoff of restarts, its reset
once a role stayed up, the reasons given, the state file."""
from __future__ import annotations

import signal

from broker.supervise import Supervisor, exit_reason, last_line, read_state, write_state


def test_restarts_back_off_and_reset_after_a_stable_run():
    sup = Supervisor(base=0.5, cap=4.0, stable=60.0)
    sup.started("mds", 0.0)
    delays = []
    t = 1.0
    for _ in range(5):                       # a crash loop: each run lasts a second
        delays.append(sup.exited("mds", t, 1e9, "exit code 1"))
        assert sup.due(t) == [] and sup.due(t + delays[-1]) == ["mds"]
        t += delays[-1]
        sup.started("mds", t)
        t += 1.0
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert sup.due(t) == []                  # running: nothing to start
    t += 120.0                               # then up for two minutes: a new crash is rare
    assert sup.exited("mds", t, 1e9, "killed by SIGKILL") == 0.5
    snap = sup.snapshot()["mds"]
    assert snap["restarts"] == 6 and snap["last_exit"] == "killed by SIGKILL"


def test_reasons_name_the_signal_or_the_last_logged_line(tmp_path):
    log = tmp_path / "mds.log"
    log.write_text("old run: fine\n")
    start = log.stat().st_size
    with open(log, "a") as f:
        f.write("INFO serving\nCRITICAL the WAL cannot be made durable\n"
                "OSError: [Errno 28] No space left on device: '/data/mds/wal-1.log'\n\n")
    line = last_line(log, start)
    assert line == "OSError: [Errno 28] No space left on device: '/data/mds/wal-1.log'"
    assert exit_reason(70, line) == f"exit code 70: {line}"
    assert exit_reason(-signal.SIGKILL, line) == "killed by SIGKILL"
    assert last_line(log, log.stat().st_size) is None        # nothing new since the start
    assert exit_reason(1, None) == "exit code 1"


def test_state_file_round_trip(tmp_path):
    assert read_state(tmp_path) is None
    write_state(tmp_path, {"mds": {"state": "up", "restarts": 1}})
    assert read_state(tmp_path) == {"roles": {"mds": {"state": "up", "restarts": 1}}}
    write_state(tmp_path, {}, {"etcd": "http://127.0.0.1:5558"})    # run with --ha
    assert read_state(tmp_path) == {"roles": {}, "ha": {"etcd": "http://127.0.0.1:5558"}}
    (tmp_path / "supervisor.json").write_text("{not json")
    assert read_state(tmp_path) is None


def test_the_mds_names_a_full_disk_and_its_file():
    import errno
    from pathlib import Path

    from mds.server import stop_reason
    seg = Path("/data/mds/wal-00000000000000000001.log")
    assert stop_reason(OSError(errno.ENOSPC, "No space left on device"), seg) == \
        f"disk full at {seg}"
    assert stop_reason(OSError(errno.EIO, "Input/output error", "/x/wal"), seg) == \
        "Input/output error at /x/wal"
    assert stop_reason(RuntimeError("bug"), None) == "RuntimeError('bug')"


def test_a_logged_reason_loses_the_log_prefix():
    line = ("2026-12-01 12:00:00,123 CRITICAL mds.server[4242]: mds stopped: disk full at "
            "/data/mds/wal-1.log")
    assert exit_reason(70, line) == "exit code 70: disk full at /data/mds/wal-1.log"
