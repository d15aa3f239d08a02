"""FUSE mounts of a test cluster: `Mount.start` runs `aegisfs mount` (the daemon keeps
running; its PID comes from the command's output) and `stop` unmounts through `aegisfs
umount`, then ends the daemon by that PID if it is still there. `fuse_skip_reason`
says why mounts cannot run here, or None."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from client.mount.daemon import fuse_available

ROOT = Path(__file__).resolve().parents[2]


def fuse_skip_reason() -> str | None:
    why = fuse_available()
    if why is None and os.geteuid() != 0:
        why = "the mount tests run as root (allow_other, chown, pjdfstest)"
    return why


def cli(broker: str, key: str | os.PathLike | None, *args: str,
        timeout: float = 60.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("AEGISFS_BROKER", "AEGISFS_KEY"):
        env.pop(name, None)
    keyarg = ["--key", str(key)] if key else []
    return subprocess.run([sys.executable, "-m", "client.cli", "--broker", broker, *keyarg,
                           *args], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(ROOT))


class Mount:
    def __init__(self, broker: str, key: str | os.PathLike | None, path: Path,
                 pid: int, log: Path) -> None:
        self.broker, self.key, self.path, self.pid, self.log = broker, key, path, pid, log

    @classmethod
    def start(cls, cluster: Any, path: Path, *opts: str,
              timeout: float | None = None) -> "Mount":
        path.mkdir(parents=True, exist_ok=True)
        log = path.parent / f"{path.name}.log"
        extra = ["--timeout", str(timeout)] if timeout else []
        done = cli(cluster.broker, cluster.key, *extra, "mount", str(path), "--allow-other",
                   "--log-file", str(log), *opts)
        m = re.search(r"daemon pid (\d+)", done.stdout)
        if done.returncode != 0 or m is None:
            raise RuntimeError(f"aegisfs mount failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}")
        return cls(cluster.broker, cluster.key, path, int(m.group(1)), log)

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def kill(self) -> None:
        """SIGKILL the daemon (the mount point is left behind, dead)."""
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def umount(self) -> subprocess.CompletedProcess:
        return cli(self.broker, self.key, "umount", str(self.path))

    def __enter__(self) -> "Mount":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Unmount and make sure the daemon is gone (by its PID)."""
        try:
            if os.path.ismount(self.path) or self._dead():
                self.umount()
            deadline = time.monotonic() + 15
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if self.alive():
                os.kill(self.pid, signal.SIGKILL)
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)],
                               capture_output=True)

    def _dead(self) -> bool:
        try:
            os.stat(self.path)
        except OSError:
            return True
        return False
