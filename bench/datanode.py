"""DataNode benchmark: put and get of 4 MiB blocks to one DataNode through the broker,
beside the raw disk doing the same durable writes in plain Python, measured in one run.

    python bench/datanode.py [--mib 1024] [--runs 3] [--window 8]

Raw put = tmp + writev + fsync + DONTNEED + rename + fsync dir (bench/raw_disk.raw_put);
raw get = read the same files back. The cluster part goes client -> broker -> DataNode,
CRC32C computed by the client and verified by the DataNode, `window` blocks in flight.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crc32c  # noqa: E402

from bench.raw_disk import raw_get, raw_put  # noqa: E402
from broker.client import Client  # noqa: E402
from run_cluster import Cluster, free_base_port  # noqa: E402

MiB = 1024 * 1024
BLOCK = 4 * MiB


def cluster_run(tmp: Path, payload: bytes, n: int, window: int) -> tuple[float, float]:
    """(put MB/s, get MB/s) through the broker to one DataNode."""
    # the DataNode alone is measured: blocks go to it without an MDS allocating them;
    # security off, comparable with the earlier figures (bench/put_get.py has CURVE)
    cluster = Cluster(tmp / "cluster", free_base_port(), datanodes=1, security=False,
                      extra={"dn1": ["--no-capabilities"]})
    cluster.start()
    try:
        crc = crc32c.crc32c(payload)
        ids = [os.urandom(16) for _ in range(n)]
        with Client(cluster.broker, timeout=60, max_in_flight=window) as c:
            c.call("dn.dn1", {"op": "info"})
            start = time.perf_counter()
            for bid in ids:
                c.send("dn.dn1", {"op": "put_block", "id": bid, "checksum": crc}, [payload])
                while c.in_flight >= window:
                    c.wait_any().unwrap()
            while c.in_flight:
                c.wait_any().unwrap()
            put = n * BLOCK / (time.perf_counter() - start) / 1e6
            start = time.perf_counter()
            for bid in ids:
                c.send("dn.dn1", {"op": "get_block", "id": bid})
                while c.in_flight >= window:
                    r = c.wait_any().unwrap()
                    if crc32c.crc32c(r.payload[0]) != crc:
                        raise SystemExit("get returned wrong bytes")
            while c.in_flight:
                c.wait_any().unwrap()
            get = n * BLOCK / (time.perf_counter() - start) / 1e6
        return put, get
    finally:
        cluster.stop()


def raw_run(tmp: Path, payload: bytes, n: int) -> tuple[float, float]:
    d = tmp / "raw"
    d.mkdir()
    start = time.perf_counter()
    raw_put(d, [memoryview(payload)], n)
    put = n * BLOCK / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    raw_get(d, n, BLOCK)
    get = n * BLOCK / (time.perf_counter() - start) / 1e6
    return put, get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="MiB written per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--dir", help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    n = max(1, args.mib // 4)
    payload = os.urandom(BLOCK)
    samples: dict[str, list[float]] = {k: [] for k in ("raw_put", "raw_get", "dn_put", "dn_get")}
    for _ in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="aegis-bench-dn-", dir=args.dir))
        try:
            rp, rg = raw_run(tmp, payload, n)
            dp, dg = cluster_run(tmp, payload, n, args.window)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for k, v in zip(samples, (rp, rg, dp, dg)):
            samples[k].append(v)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{n} x 4 MiB blocks, {args.runs} runs (median), window {args.window}")
    print(f"{'':<6}{'DataNode via broker':>22}{'raw disk':>14}{'ratio':>8}")
    for op in ("put", "get"):
        ours, raw = med[f"dn_{op}"], med[f"raw_{op}"]
        print(f"{op:<6}{ours:>17,.0f} MB/s{raw:>9,.0f} MB/s{ours / raw:>8.2f}")


if __name__ == "__main__":
    main()
