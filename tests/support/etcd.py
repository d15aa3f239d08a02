"""A real etcd (Debian's etcd-server) as a child process of a test: loopback ports from
free_base_port, data in a temp dir, stopped and killed by its PID only."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from broker.free_ports import free_base_port
from broker.local_roles import ETCD, etcd_argv
from mds.etcd import EtcdUnavailable, Gateway


def need_etcd() -> None:
    if not shutil.which(ETCD) and not os.path.exists(ETCD):
        pytest.skip(f"{ETCD} not installed (apt-get install etcd-server)")


class EtcdProcess:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        need_etcd()
        self.data_dir = Path(data_dir)
        self.port = port or free_base_port(span=2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> EtcdProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(etcd_argv(self.data_dir, self.port, self.port + 1),
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        gateway, deadline = Gateway(self.url, timeout=0.5), time.monotonic() + timeout
        while True:
            try:
                gateway.get(b"/ready-probe")
                return self
            except EtcdUnavailable:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"etcd did not start; see {self.log_path}")
                time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
