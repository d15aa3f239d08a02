"""Durable small-block writes: pack log (group commit) against one file per block.

Prints durable 4 KiB puts/s through BlockStore, in a temporary dir on the real disk:
  (a) put_many in batches of 64 (one append + one fdatasync per batch)
  (b) 8 threads calling put() concurrently (their fdatasyncs shared by group commit)
  (c) the block-file path (small_max=0) for the same blocks: 1 thread, and 8 threads
Every put is durable when it returns (fsync=True). Run: python bench/packs.py [--blocks N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datanode.blockid import new_block_id  # noqa: E402
from datanode.store import BlockStore  # noqa: E402

SIZE = 4096


def _blocks(n: int) -> list[tuple[str, bytes]]:
    return [(new_block_id(), os.urandom(SIZE)) for _ in range(n)]


def batched(store: BlockStore, blocks: list[tuple[str, bytes]], batch: int = 64) -> None:
    for i in range(0, len(blocks), batch):
        for out in store.put_many([(bid, [data], None) for bid, data in blocks[i:i + batch]]):
            if isinstance(out, BaseException):
                raise out


def threaded(store: BlockStore, blocks: list[tuple[str, bytes]], threads: int = 8) -> None:
    errors: list[BaseException] = []

    def work(part: list[tuple[str, bytes]]) -> None:
        try:
            for bid, data in part:
                store.put(bid, [data])
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(blocks[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def single(store: BlockStore, blocks: list[tuple[str, bytes]]) -> None:
    for bid, data in blocks:
        store.put(bid, [data])


def measure(base: Path, name: str, n: int, small_max: int,
            run: Callable[[BlockStore, list[tuple[str, bytes]]], None]) -> float:
    root = base / name
    blocks = _blocks(n)
    with BlockStore(root, small_max=small_max) as store:
        t0 = time.perf_counter()
        run(store, blocks)
        elapsed = time.perf_counter() - t0
        assert store.usage().blocks == n
        for bid, data in blocks[:: max(1, n // 100)]:  # spot check: durable and readable
            assert store.get(bid) == data
    shutil.rmtree(root)
    rate = n / elapsed
    print(f"{name:<34} {n:>7} blocks  {elapsed:7.2f} s  {rate:>9,.0f} puts/s", flush=True)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=20_000, help="blocks per pack run")
    ap.add_argument("--file-blocks", type=int, default=2_000, help="blocks per file-path run")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir in /tmp)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="aegis-packs-bench-", dir=args.dir))
    try:
        print(f"durable {SIZE} B puts, fsync on, in {base}")
        a = measure(base, "(a) packs: put_many x64", args.blocks, 128 * 1024, batched)
        b = measure(base, "(b) packs: 8 threads x put", args.blocks, 128 * 1024, threaded)
        c1 = measure(base, "(c) files: 1 thread x put", args.file_blocks, 0, single)
        c8 = measure(base, "(c) files: 8 threads x put", args.file_blocks, 0, threaded)
        print(f"speed-up over files (8 threads): put_many {a / c8:.1f}x, "
              f"threaded put {b / c8:.1f}x; over 1 thread: {a / c1:.1f}x, {b / c1:.1f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
