"""Namespace cost of reference-counted blocks, in process (no I/O, no broker): create +
allocate + commit and rm of one-block files (the common, unshared path), snapshot restore,
and server-side copies (clone) of a big file.

    python bench/shared_blocks.py [--files 50000] [--runs 5]

Times are the process's CPU time (time.process_time), so other load on a shared machine
inflates them less than wall time; each figure is the best of --runs. Run the same script from a checkout without shared blocks to compare: the
clone figures are then skipped.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mds.namespace import Namespace, NamespaceConfig  # noqa: E402
from mds.snapshot import load_snapshot, write_snapshot  # noqa: E402

CONFIG = NamespaceConfig(replication=2, block_size=4 << 20, lease=60.0)
REPLICAS = ["dn1", "dn2"]


def fill(files: int) -> tuple[Namespace, float]:
    ns = Namespace(CONFIG, clock=lambda: 1000.0, random_bytes=random.Random(1).randbytes)
    ns.apply(ns.prepare_mkdir("/d"))
    t0 = time.process_time()
    for i in range(files):
        h = ns.apply(ns.prepare_create(f"/d/f{i}"))["handle"]
        bid = ns.apply(ns.prepare_allocate(h, [REPLICAS]))["blocks"][0]["id"]
        ns.apply(ns.prepare_commit(h, [{"id": bid, "size": 1024, "checksum": 7,
                                        "replicas": REPLICAS}]))
    return ns, time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.files
    creates, rms, restores = [], [], []
    for _ in range(args.runs):
        ns, took = fill(n)
        creates.append(n / took)
        with tempfile.TemporaryDirectory() as tmp:
            snap = write_snapshot(tmp, ns, seq=1)
            t0 = time.process_time()
            load_snapshot(snap, Namespace(CONFIG))
            restores.append(time.process_time() - t0)
        t0 = time.process_time()
        for i in range(n):
            ns.apply(ns.prepare_rm(f"/d/f{i}"))
        rms.append(n / (time.process_time() - t0))
    print(f"{n} one-block files, best of {args.runs}:")
    print(f"  create+allocate+commit: {max(creates):,.0f} files/s")
    print(f"  rm:                     {max(rms):,.0f} files/s")
    print(f"  snapshot restore:       {min(restores) * 1000:,.0f} ms")
    ns = Namespace(CONFIG, clock=lambda: 1000.0, random_bytes=random.Random(2).randbytes)
    if not hasattr(ns, "prepare_clone"):
        print("  (no shared blocks in this checkout: clone skipped)")
        return
    h = ns.apply(ns.prepare_create("/big"))["handle"]
    ids = [b["id"] for b in ns.apply(ns.prepare_allocate(h, [REPLICAS] * 256))["blocks"]]
    ns.apply(ns.prepare_commit(h, [{"id": b, "size": 4 << 20, "checksum": 7,
                                    "replicas": REPLICAS} for b in ids]))
    clones = []
    for _ in range(args.runs):
        t0 = time.process_time()
        for i in range(200):
            ns.apply(ns.prepare_clone("/big", f"/c{i}"))
        clones.append((time.process_time() - t0) / 200)
        for i in range(200):
            ns.apply(ns.prepare_rm(f"/c{i}"))
    print(f"  clone of a 256-block (1 GiB) file: {min(clones) * 1e6:,.0f} us "
          "(then rm of the 200 copies)")


if __name__ == "__main__":
    main()
