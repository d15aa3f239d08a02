"""The fsspec front-end beside the native client, measured in the same run on one cluster.

    python bench/fsspec.py                       # 1 GiB put_file/get_file, 10,000 small cats
    python bench/fsspec.py --size-mib 256 --small 2000

Starts its own cluster (run_cluster.Cluster: broker, MDS, 3 DataNodes, R=2) on free ports in
a temporary directory. Each figure alternates native and fsspec three times and keeps the
best of each, so a busy moment does not decide the ratio; both gets read the same file (the
same replicas), so where its blocks landed does not either. Target (issue 16): fsspec >=
0.9 x native.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# this script's own name would shadow the fsspec package: take bench/ off the path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

from client import AegisClient  # noqa: E402
from client.fsspec_fs import AegisFileSystem  # noqa: E402
from run_cluster import Cluster, free_base_port  # noqa: E402
from tests.support.cluster import wait_mds  # noqa: E402

MiB = 1024 * 1024


def best_of_each(native, fsspec, runs: int = 3) -> tuple[float, float]:
    """Seconds of the best of `runs` runs of each, run alternately (native, fsspec, ...)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in ((native, times[0]), (fsspec, times[1])):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return min(times[0]), min(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=10_000, help="4 KiB files read by cat")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aegisfs-bench-fsspec-"))
    cluster = Cluster(tmp / "cluster", free_base_port(), datanodes=3).start()
    try:
        wait_mds(cluster, nodes=3, serving=True)
        src = tmp / "src.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        native = AegisClient(cluster.broker, timeout=120, key=cluster.key)
        fs = AegisFileSystem(cluster.broker, timeout=120, key=cluster.key,
                             skip_instance_cache=True)
        size = args.size_mib * MiB
        rows = []
        put_n, put_f = best_of_each(lambda: native.put(str(src), "/bench/native.bin"),
                                    lambda: fs.put_file(str(src), "/bench/fsspec.bin"))
        rows.append(("put 1 file", size / put_n / 1e6, size / put_f / 1e6, "MB/s"))
        get_n, get_f = best_of_each(
            lambda: native.get("/bench/native.bin", str(tmp / "n.out")),
            lambda: fs.get_file("/bench/native.bin", str(tmp / "f.out")))
        rows.append(("get 1 file", size / get_n / 1e6, size / get_f / 1e6, "MB/s"))
        paths = [f"/bench/small/f{i:05d}" for i in range(args.small)]
        native.put_many([(os.urandom(4096), p) for p in paths])

        def native_cat() -> None:
            import io
            native.get_many([(p, io.BytesIO()) for p in paths])

        cat_n, cat_f = best_of_each(native_cat, lambda: fs.cat(paths))
        rows.append((f"cat {args.small} x 4 KiB", args.small / cat_n, args.small / cat_f,
                     "files/s"))
        print(f"{'workload':<22}{'native':>12}{'fsspec':>12}{'ratio':>8}  (target >= 0.9)")
        for name, n, f, unit in rows:
            print(f"{name:<22}{n:>12,.0f}{f:>12,.0f}{f / n:>8.2f}  {unit}")
        native.close()
        fs.client.close()
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
