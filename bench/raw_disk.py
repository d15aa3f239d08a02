"""Raw-disk baseline for the block store: the same durable write sequence in plain Python.

`raw_put` / `raw_get` are what BlockStore.put / get are measured against; run this file to
print MB/s (and CPU-s per GiB) for both and the store/raw ratios.
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
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datanode.blockid import new_block_id  # noqa: E402
from datanode.store import BlockStore  # noqa: E402

MiB = 1024 * 1024


def raw_put(dirpath: str | os.PathLike[str], buffers: Sequence[memoryview], n: int) -> int:
    """Write n blocks of `buffers` as dirpath/<i>.blk: tmp, writev, fsync, DONTNEED, rename,
    fsync dir. Returns the bytes written. No checksums, no footer: the floor to compare with."""
    size = sum(memoryview(b).nbytes for b in buffers)
    dir_fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(n):
            tmp = os.path.join(dirpath, f"{i}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                written = os.writev(fd, buffers)
                if written != size:  # regular files do not write short unless the disk is full
                    raise OSError(f"short write {written}/{size}")
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(dirpath, f"{i}.blk"))
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size * n


def raw_get(dirpath: str | os.PathLike[str], n: int, size: int) -> int:
    """Read back the n blocks raw_put wrote: preadv into a fresh bytearray, then DONTNEED."""
    total = 0
    for i in range(n):
        fd = os.open(os.path.join(dirpath, f"{i}.blk"), os.O_RDONLY)
        try:
            buf = bytearray(size)
            total += os.preadv(fd, [buf], 0)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # as BlockStore.get does
        finally:
            os.close(fd)
    return total


def _timed(fn: Callable[[], int]) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    nbytes = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, nbytes


def _one_run(base: Path, payload: memoryview, n: int) -> dict[str, tuple[float, float, int]]:
    # Puts first, then gets, so each pair meets the same page-cache state (both puts drop
    # their pages, so the gets read from the device).
    raw_dir = base / "raw"
    raw_dir.mkdir()
    results = {}
    with BlockStore(base / "store") as store:
        ids = [new_block_id() for _ in range(n)]

        def put_all() -> int:
            return sum(store.put(bid, [payload]).size for bid in ids)

        def get_all() -> int:
            return sum(store.get(bid).nbytes for bid in ids)

        results["raw put"] = _timed(lambda: raw_put(raw_dir, [payload], n))
        results["store put"] = _timed(put_all)
        results["raw get"] = _timed(lambda: raw_get(raw_dir, n, payload.nbytes))
        results["store get"] = _timed(get_all)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=None, help="parent of the scratch dir (default: $TMPDIR)")
    ap.add_argument("--blocks", type=int, default=256)
    ap.add_argument("--block-mib", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)

    payload = memoryview(os.urandom(args.block_mib * MiB))
    runs = []
    for _ in range(args.runs):
        base = Path(tempfile.mkdtemp(prefix="aegisfs-rawdisk-", dir=args.dir))
        try:
            runs.append(_one_run(base, payload, args.blocks))
        finally:
            shutil.rmtree(base, ignore_errors=True)

    print(f"{args.blocks} x {args.block_mib} MiB blocks, median of {args.runs} run(s)")
    mbs: dict[str, float] = {}
    for name in runs[0]:
        wall = statistics.median(r[name][0] for r in runs)
        cpu = statistics.median(r[name][1] for r in runs)
        nbytes = runs[0][name][2]
        mbs[name] = nbytes / wall / 1e6
        print(f"  {name:10s} {mbs[name]:8.0f} MB/s   {cpu / (nbytes / 2**30):5.2f} CPU-s/GiB")
    print(f"  ratio put store/raw {mbs['store put'] / mbs['raw put']:.2f}")
    print(f"  ratio get store/raw {mbs['store get'] / mbs['raw get']:.2f}")


if __name__ == "__main__":
    main()
