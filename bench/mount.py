"""`aegisfs mount` beside the CLI, in the same run on the same cluster.

    python bench/mount.py                        # 1 GiB dd, 10,000 x 4 KiB tar, ls -l
    python bench/mount.py --size-mib 256 --files 1000

Starts its own cluster (run_cluster.Cluster, CURVE on, 3 DataNodes) in a temporary
directory and mounts it (tests/support/mount.py: the daemon by PID). Measures: `dd` of
the file through the mount (bs=1M, conv=fsync) and back (the kernel's page cache is
dropped first), beside `aegisfs put` / `get` of the same file; `tar -x` of FILES 4 KiB
files, then `sync` (what tar sees), and until every file is durable (then an fsync of
the directory, which waits for the background commits: docs/mount.md); `ls -l` of the
resulting directory, first and warm (right after); random 4 KiB writes with an fsync
every 100 into a file of RANDOM_MIB. Prints a table; benchmarks are scripts, not tests.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from run_cluster import Cluster, free_base_port  # noqa: E402
from tests.support.cluster import wait_mds  # noqa: E402
from tests.support.mount import Mount  # noqa: E402

MiB = 1 << 20


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(cmd: list[str], **kw: Any) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {done.stderr}")


def drop_caches() -> None:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--random-mib", type=int, default=256)
    ap.add_argument("--random-writes", type=int, default=2000)
    ap.add_argument("--mount-opt", action="append", default=[],
                    help="an option for aegisfs mount (e.g. --mount-opt=--sync-close)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aegisfs-bench-mount-") as tmp:
        t = Path(tmp)
        cluster = Cluster(t / "data", free_base_port(), datanodes=3)
        cluster.start()
        m = None
        try:
            wait_mds(cluster, 3, serving=True)
            m = Mount.start(cluster, t / "mnt", *args.mount_opt)
            rows = []
            src = t / "big.bin"
            with open(src, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MiB))
            n = args.size_mib * MiB
            put = timed(lambda: run([sys.executable, "-m", "client.cli", "--broker",
                                     cluster.broker, "--key", str(cluster.key), "put",
                                     str(src), "/cli.bin"], cwd=ROOT))
            get = timed(lambda: run([sys.executable, "-m", "client.cli", "--broker",
                                     cluster.broker, "--key", str(cluster.key), "get",
                                     "/cli.bin", str(t / "back.bin")], cwd=ROOT))
            os.unlink(t / "back.bin")
            dd_w = timed(lambda: run(["dd", f"if={src}", f"of={m.path}/dd.bin", "bs=1M",
                                      "conv=fsync", "status=none"]))
            drop_caches()
            dd_r = timed(lambda: run(["dd", f"if={m.path}/dd.bin", "of=/dev/null", "bs=1M",
                                      "status=none"]))
            rows += [("aegisfs put", n / put / MiB, "MB/s"), ("dd write (mount)", n / dd_w / MiB,
                                                             "MB/s"),
                     ("  ratio", put / dd_w, "x put"),
                     ("aegisfs get", n / get / MiB, "MB/s"), ("dd read (mount)", n / dd_r / MiB,
                                                             "MB/s"),
                     ("  ratio", get / dd_r, "x get")]
            tarball = t / "small.tar"
            with tarfile.open(tarball, "w") as tf:
                for i in range(args.files):
                    info = tarfile.TarInfo(f"many/f{i:05d}")
                    info.size = 4096
                    tf.addfile(info, fileobj=io.BytesIO(os.urandom(4096)))
            tar_s = timed(lambda: run(["sh", "-c", f"tar -xf {tarball} && sync"], cwd=m.path))

            def fsync_dir() -> None:
                # `sync` never reaches a FUSE daemon (Linux forwards syncfs to virtiofs
                # only): the directory's fsync is what waits for the background commits
                fd = os.open(m.path / "many", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            durable_s = tar_s + timed(fsync_dir)
            rows.append((f"tar -x {args.files} x 4 KiB + sync", args.files / tar_s, "files/s"))
            rows.append(("  until all durable (+ fsync of the dir)", args.files / durable_s,
                         "files/s"))
            cold_s = timed(lambda: run(["ls", "-l", str(m.path / "many")]))
            ls_s = timed(lambda: run(["ls", "-l", str(m.path / "many")]))
            rows.append((f"ls -l of {args.files} entries (first)", cold_s, "s"))
            rows.append((f"ls -l of {args.files} entries (warm)", ls_s, "s"))
            path = m.path / "random.bin"
            run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={args.random_mib}",
                 "status=none"])
            rng = random.Random(4)
            fd = os.open(path, os.O_RDWR)
            try:
                def writes() -> None:
                    for i in range(args.random_writes):
                        os.pwrite(fd, os.urandom(4096),
                                  rng.randrange(args.random_mib * 256) * 4096)
                        if i % 100 == 99:
                            os.fsync(fd)
                rand_s = timed(writes)
            finally:
                os.close(fd)
            rows.append((f"random 4 KiB writes, fsync/100, {args.random_mib} MiB file",
                         args.random_writes / rand_s, "IOPS"))
            print(f"\n{'what':48s} {'figure':>10s}")
            for what, value, unit in rows:
                print(f"{what:48s} {value:10.2f} {unit}")
        finally:
            if m is not None:
                m.stop()
            cluster.stop()


if __name__ == "__main__":
    main()
