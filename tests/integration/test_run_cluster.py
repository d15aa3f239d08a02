"""`python run_cluster.py` as a user runs it: --reset, --data-dir, --base-port, --datanodes,
the `ready` line, per-role logs, a child killed -9 reported loudly, SIGTERM and Ctrl-C
stopping every child, and --viz. Children are found and killed by PID, never by name."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil

from run_cluster import free_base_port

from .conftest import ROOT, run_cli


class Launched:
    """run_cluster.py in a process group of its own, its stdout and stderr read by threads."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "run_cluster.py", *args], cwd=str(ROOT),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        self.children: list[psutil.Process] = []

    def _pump(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            self._lines.put(line)

    def wait_line(self, needle: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.out + self.err:
            if needle in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} line; stdout {self.out!r} stderr {self.err!r}")

    def role_pids(self) -> dict[str, int]:
        """Role name -> pid of run_cluster.py's children (from their command lines)."""
        self.children = psutil.Process(self.proc.pid).children()
        out = {}
        for child in self.children:
            argv = child.cmdline()
            if "--id" in argv:
                out[argv[argv.index("--id") + 1]] = child.pid
            elif "-m" in argv:        # python -m broker / mds / streamlit (the viz)
                out[argv[argv.index("-m") + 1]] = child.pid
        return out

    def close(self) -> None:
        for p in [self.proc.pid] + [c.pid for c in self.children]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def gone(pids, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_run_cluster_resets_serves_reports_a_dead_child_and_stops_on_sigterm(tmp_path):
    data = tmp_path / "data"
    (data / "old").mkdir(parents=True)
    (data / "old" / "stale.bin").write_bytes(b"from an earlier run")
    port = free_base_port()
    c = Launched("--reset", "--data-dir", str(data), "--base-port", str(port),
                 "--datanodes", "2")
    try:
        ready = c.wait_line("ready")
        assert f"tcp://127.0.0.1:{port}" in ready
        assert any(f"logs in {data / 'logs'}" in line for line in c.out)
        assert any("reset: removed" in line for line in c.out)
        assert not (data / "old").exists()
        assert {p.name for p in (data / "logs").iterdir()} == {"broker.log", "mds.log",
                                                               "dn1.log", "dn2.log"}
        admin_key = data / "keys" / "users" / "admin.key_secret"
        assert ready.rstrip().endswith(f" key {admin_key}")   # security on: the admin key
        assert (admin_key.stat().st_mode & 0o777) == 0o600
        broker = f"tcp://127.0.0.1:{port}"
        # the Quick start: the CLI run beside ./data finds the admin key by itself
        assert run_cli(broker, "write", "/hello", "Hello AegisFS!",
                       cwd=tmp_path).returncode == 0
        assert run_cli(broker, "read", "/hello", cwd=tmp_path).stdout == b"Hello AegisFS!"
        assert (data / "mds").is_dir() and (data / "dn" / "dn1").is_dir()

        pids = c.role_pids()
        assert set(pids) == {"broker", "mds", "dn1", "dn2"}
        os.kill(pids["dn2"], signal.SIGKILL)
        died = c.wait_line("died", timeout=15)
        assert f"dn2 (pid {pids['dn2']})" in died and "ERROR" in died and "dn2.log" in died
        assert died in c.err                                   # loud: on stderr

        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(30) == 1                             # a child had died
        assert gone(pids.values())
        assert any("stopped" in line for line in c.out)
    finally:
        c.close()


def test_run_cluster_with_viz_stops_on_ctrl_c(tmp_path):
    port, viz_port = free_base_port(), free_base_port(1)
    c = Launched("--data-dir", str(tmp_path / "data"), "--base-port", str(port),
                 "--datanodes", "1", "--viz", "--viz-port", str(viz_port))
    try:
        ready = c.wait_line("ready")
        assert f"viz http://127.0.0.1:{viz_port}" in ready
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{viz_port}/_stcore/health",
                                            timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the visualizer never answered"
                time.sleep(0.5)
        pids = c.role_pids()
        assert set(pids) == {"broker", "mds", "dn1", "streamlit"}
        c.proc.send_signal(signal.SIGINT)                       # Ctrl-C
        assert c.proc.wait(30) == 0
        assert gone(pids.values())
        assert (tmp_path / "data" / "logs" / "viz.log").exists()
    finally:
        c.close()


def test_supervision_restarts_a_killed_mds_and_status_says_why(tmp_path):
    data = tmp_path / "data"
    port = free_base_port()
    c = Launched("--data-dir", str(data), "--base-port", str(port), "--datanodes", "1")
    try:
        c.wait_line("ready")
        broker = f"tcp://127.0.0.1:{port}"
        assert run_cli(broker, "write", "/before", "one", cwd=tmp_path).returncode == 0
        old = c.role_pids()
        os.kill(old["mds"], signal.SIGKILL)
        died = c.wait_line("restarting", timeout=15)
        assert f"mds (pid {old['mds']})" in died and "killed by SIGKILL" in died
        # the CLI waits out the restart instead of failing, then everything is there
        wrote = run_cli(broker, "write", "/after", "two", cwd=tmp_path)
        assert wrote.returncode == 0, wrote.stderr
        assert run_cli(broker, "read", "/before", cwd=tmp_path).stdout == b"one"
        new = c.role_pids()
        assert new["mds"] != old["mds"] and new["dn1"] == old["dn1"]
        status = run_cli(broker, "status", cwd=tmp_path)
        text = status.stdout.decode()
        assert status.returncode == 0, status.stderr
        line = next(row for row in text.splitlines() if row.startswith("role mds"))
        assert "up" in line and "restarts 1" in line and "killed by SIGKILL" in line, text
        assert f"pid {new['mds']}" in line
        # an MDS that cannot start says why, and is retried with backoff until it can
        fmt = data / "mds" / "FORMAT"
        good = fmt.read_text()
        fmt.write_text('{"format": "aegisfs-mds", "version": 99}')   # read only at start
        os.kill(new["mds"], signal.SIGKILL)
        refused = c.wait_line("format version 99", timeout=30)
        assert "exit code 2: cannot start the MDS" in refused, refused
        status = run_cli(broker, "--retry-deadline", "0", "status", cwd=tmp_path)
        line = next(row for row in status.stdout.decode().splitlines()
                    if row.startswith("role mds"))
        assert "format version 99" in line, line
        fmt.write_text(good)                   # the next restart succeeds
        wrote = run_cli(broker, "write", "/third", "three", cwd=tmp_path)
        assert wrote.returncode == 0, wrote.stderr
        assert run_cli(broker, "read", "/after", cwd=tmp_path).stdout == b"two"
        last = c.role_pids()
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(30) == 1            # a child had died, even if it came back
        assert gone(list(old.values()) + list(new.values()) + list(last.values()))
    finally:
        c.close()
