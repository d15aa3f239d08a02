"""The mount under faults: a DataNode killed during a large cp into the mount (R=2: the
copy succeeds, whole), and the cluster going away (operations fail within the timeout,
never hang, and work again when it returns)."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.mount import Mount, fuse_skip_reason
from tests.support.wait import wait_for

pytestmark = pytest.mark.skipif(fuse_skip_reason() is not None,
                                reason=f"no FUSE mounts here: {fuse_skip_reason()}")
MiB = 1 << 20


def test_datanode_killed_during_a_large_cp(cluster, tmp_path: Path) -> None:
    h = cluster(datanodes=3, replication=2)
    m = Mount.start(h.cluster, tmp_path / "m")
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(96 * MiB))
        killer = threading.Timer(1.0, h.cluster.kill, args=("dn1",))
        killer.start()
        try:
            done = subprocess.run(["cp", str(src), str(m.path / "big.bin")],
                                  capture_output=True, text=True, timeout=300)
        finally:
            killer.join()
        assert done.returncode == 0, done.stderr
        assert not h.cluster.roles["dn1"].alive()
        subprocess.run(["cmp", str(src), str(m.path / "big.bin")], check=True)
        assert h.fs.read_bytes("/big.bin") == src.read_bytes()
    finally:
        m.stop()


def test_cluster_away_fails_fast_and_recovers(cluster, tmp_path: Path) -> None:
    h = cluster(datanodes=2, replication=1)
    m = Mount.start(h.cluster, tmp_path / "m", "--attr-timeout", "0", "--entry-timeout", "0",
                    timeout=3)
    try:
        (m.path / "before").write_bytes(b"x")
        h.cluster.stop()
        started = time.monotonic()
        for attempt in (lambda: os.listdir(m.path), lambda: (m.path / "new").write_bytes(b"y")):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EIO,
                                        errno.ENOTCONN), info.value
        took = time.monotonic() - started
        print(f"with the cluster away, two operations failed in {took:.1f} s")
        assert took < 30
        h.cluster.start()
        wait_for(lambda: (m.path / "before").read_bytes() == b"x", timeout=30,
                 what="the mount working again", retry=(OSError,))
        (m.path / "after").write_bytes(b"z")
        # the harness's own client saw the broker go: it may need a try to reconnect
        assert wait_for(lambda: h.fs.read_bytes("/after"), timeout=20,
                        what="the file written after the restart", retry=(OSError,)) == b"z"
    finally:
        m.stop()


def test_sigkilled_daemon_with_pending_files_leaves_nothing_partial(cluster,
                                                                    tmp_path: Path) -> None:
    """Small files closed without fsync wait for their background commit in the daemon;
    SIGKILL it while they do (the DataNodes are stopped, so the commit batch in flight
    cannot finish): every file is then either absent or whole, never partial, and the
    fsynced one is there."""
    h = cluster(datanodes=2, replication=1)
    m = Mount.start(h.cluster, tmp_path / "m")
    nodes = [h.cluster.roles[n] for n in ("dn1", "dn2")]
    stopped = False
    try:
        (m.path / "d").mkdir()
        synced = os.urandom(3000)
        with open(m.path / "d" / "synced", "wb") as f:
            f.write(synced)
            f.flush()
            os.fsync(f.fileno())
        for r in nodes:
            os.kill(r.pid, signal.SIGSTOP)
        stopped = True
        contents = {f"f{i}": os.urandom(100 + 37 * i) for i in range(200)}
        started = time.monotonic()
        for name, data in contents.items():
            (m.path / "d" / name).write_bytes(data)      # close returns: pending
        took = time.monotonic() - started
        assert sorted(os.listdir(m.path / "d")) == sorted([*contents, "synced"])
        assert (m.path / "d" / "f7").stat().st_size == len(contents["f7"])
        m.kill()
        for r in nodes:
            os.kill(r.pid, signal.SIGCONT)
        stopped = False
        print(f"200 closes with the DataNodes stopped took {took:.2f} s")
        fs = h.fs
        time.sleep(1.0)
        present = 0
        for name, data in contents.items():
            if fs.exists(f"/d/{name}"):
                assert fs.read_bytes(f"/d/{name}") == data, name
                present += 1
        print(f"{present} of 200 pending files were committed before the kill")
        assert present < len(contents)         # the kill did catch files pending
        assert fs.read_bytes("/d/synced") == synced
    finally:
        if stopped:
            for r in nodes:
                os.kill(r.pid, signal.SIGCONT)
        m.stop()


@pytest.mark.parametrize("close", ["background", "sync"])
def test_mds_restarted_during_a_tar_x_is_only_a_delay(cluster, tmp_path: Path,
                                                      close: str) -> None:
    """kill -9 of the MDS and a restart while tar -x writes into the mount: tar sees at
    most delays (the mount's MDS requests retried through the restart for up to
    --timeout, background commits kept queued and tried again), no error, and the tree
    matches the archive's; with commits in the background and with --sync-close."""
    h = cluster(datanodes=2, replication=1)
    m = Mount.start(h.cluster, tmp_path / "m", *(["--sync-close"] if close == "sync" else []))
    try:
        src = tmp_path / "src"
        for i in range(1500):
            d = src / f"d{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}").write_bytes(os.urandom(100 + i))
        subprocess.run(["tar", "-C", str(src), "-cf", str(tmp_path / "in.tar"), "."],
                       check=True)
        dest = m.path / "x"
        dest.mkdir()
        tar = subprocess.Popen(["tar", "-xf", str(tmp_path / "in.tar")], cwd=dest,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert tar.poll() is None, "tar finished before the MDS was killed"
        h.cluster.kill("mds")
        time.sleep(0.5)
        h.cluster.start_role("mds")
        _, err = tar.communicate(timeout=300)
        assert tar.returncode == 0, err
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)                       # every background commit through
        finally:
            os.close(fd)
        for i in range(1500):
            rel = f"d{i % 10}/f{i}"
            assert h.fs.read_bytes(f"/x/{rel}") == (src / rel).read_bytes(), rel
    finally:
        m.stop()
