"""1 GiB put and get at R=2 with every role on its own host (network namespaces joined by
veth pairs and a bridge), beside the same on loopback in the same run; prints both and
the ratio. Needs root (network namespaces). Times are of the `aegisfs` CLI, start-up included.

    .venv/bin/python bench/multihost.py [--size-mib 1024] [--keep]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.multihost import netns  # noqa: E402
from tests.multihost.harness import MultiHost  # noqa: E402
from tests.support.cluster import start_cluster  # noqa: E402


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for i in range(size >> 20):
            chunk = bytes([i & 0xFF]) + block[1:]      # distinct blocks, cheap to make
            fh.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def timed(run, *args) -> float:
    started = time.monotonic()
    out = run(*args)
    if out.returncode != 0:
        err = out.stderr if isinstance(out.stderr, str) else out.stderr.decode(errors="replace")
        raise SystemExit(f"aegisfs {' '.join(args)} failed: {err[-2000:]}")
    return time.monotonic() - started


def bench(name: str, run, src: Path, dst: Path, digest: str) -> tuple[float, float]:
    put = timed(run, "put", str(src), "/bench/big.bin")
    get = timed(run, "get", "/bench/big.bin", str(dst))
    if sha_file(dst) != digest:
        raise SystemExit(f"{name}: the file read back differs")
    dst.unlink()
    return put, get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    reason = netns.why_unavailable()
    if reason:
        raise SystemExit(f"cannot run: {reason}")
    netns.clean_stale()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="aegis-mh-bench-") as tmp:
        tmp = Path(tmp)
        src, dst = tmp / "src.bin", tmp / "dst.bin"
        digest = make_file(src, size)
        results = {}

        mh = MultiHost(tmp / "mh", datanodes=3, replication=2, block_size=4 << 20)
        try:
            mh.start()
            results["namespaces"] = bench("namespaces", lambda *a: mh.aegisfs(
                *a, "--no-progress", timeout=900, request_timeout=60), src, dst, digest)
        finally:
            mh.close()

        cluster = start_cluster(tmp / "lo", datanodes=3, replication=2,
                                extra={"mds": ["--block-size", str(4 << 20)]})
        try:
            def local(*a: str):
                return subprocess.run([sys.executable, "-m", "client.cli", "--broker",
                                       cluster.broker, "--key", str(cluster.key),
                                       "--timeout", "60", *a,
                                       "--no-progress"], capture_output=True, text=True,
                                      timeout=900, cwd=str(ROOT))
            results["loopback"] = bench("loopback", local, src, dst, digest)
        finally:
            cluster.stop()

    mib = size / (1 << 20)
    print(f"{args.size_mib} MiB, R=2, 3 DataNodes, 4 MiB blocks")
    for name, (put, get) in results.items():
        print(f"  {name:<10}  put {put:6.2f} s ({mib / put:7.1f} MiB/s)   "
              f"get {get:6.2f} s ({mib / get:7.1f} MiB/s)")
    (np_, ng), (lp, lg) = results["namespaces"], results["loopback"]
    print(f"  namespaces / loopback throughput: put {lp / np_:.2f}, get {lg / ng:.2f}")


if __name__ == "__main__":
    main()
