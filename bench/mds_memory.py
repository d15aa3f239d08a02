"""MDS namespace memory: RSS of a process holding N one-block files (1,000 a directory,
two replicas each, as bench/mds.py prefills), measured after loading them from a
snapshot the way a restarted MDS does, without the broker or sockets.

    python bench/mds_memory.py [--files 1000000]

Prints the RSS before loading (interpreter and imports), after loading, and the
difference per file. Runs on any version of the namespace API that bench/mds.py runs on,
so a figure of an older commit is measured by running this file from its checkout.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from mds.metastore import MetaStore  # noqa: E402
from mds.namespace import Namespace, NamespaceConfig  # noqa: E402
from mds.snapshot import write_snapshot  # noqa: E402

MiB = 1 << 20
PER_DIR = 1000


def build(directory: Path, files: int) -> None:
    """A snapshot of `files` committed files, written by a child process so the parent's
    heap holds nothing of the build."""
    pid = os.fork()
    if pid:
        _, status = os.waitpid(pid, 0)
        if status:
            raise SystemExit(f"build failed: status {status:#x}")
        return
    gc.disable()
    ns = Namespace(NamespaceConfig(replication=2, block_size=4 * MiB))
    seq = 0

    def do(rec: dict) -> dict:
        nonlocal seq
        seq += 1
        return ns.apply(rec)

    do(ns.prepare_mkdir("/pre"))
    replicas = ["dn1", "dn2"]
    for i in range(files):
        d, f = divmod(i, PER_DIR)
        if f == 0:
            do(ns.prepare_mkdir(f"/pre/d{d}"))
        handle = do(ns.prepare_create(f"/pre/d{d}/f{f}", handle=f"h{i}"))["handle"]
        bid = do(ns.prepare_allocate(handle, [replicas]))["blocks"][0]["id"]
        do(ns.prepare_commit(handle, [{"id": bid, "size": 1024, "checksum": 0x1234ABCD,
                                       "replicas": replicas}]))
    write_snapshot(directory, ns, seq)
    os._exit(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        build(Path(tmp), args.files)
        built = time.monotonic() - started
        gc.collect()
        before = psutil.Process().memory_info().rss
        started = time.monotonic()
        store = MetaStore(tmp)
        loaded = time.monotonic() - started
        gc.collect()
        after = psutil.Process().memory_info().rss
        counts = store.ns.counts()
        store.close()
    print(f"{counts['files']:,} files, {counts['dirs']:,} dirs: built in {built:.1f} s, "
          f"loaded in {loaded:.1f} s; RSS {before / MiB:.0f} MiB before, "
          f"{after / MiB:.0f} MiB loaded ({(after - before) / max(1, counts['files']):.0f} "
          f"bytes a file)")


if __name__ == "__main__":
    main()
