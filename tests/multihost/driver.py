"""Client-side workloads for the multi-host tests, run on the client host (inside its
network namespace) by the harness; every result is one JSON line on stdout, flushed, so a
test reading a background run sees each acknowledged write as soon as it happened.

    driver.py --broker EP puts --prefix /p --count 50 --size 300000 [--seed 1]
    driver.py --broker EP verify MANIFEST      (a JSON file: path -> sha256)
    driver.py --broker EP blockmap
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from client import AegisClient  # noqa: E402


def emit(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def puts(fs: AegisClient, args: argparse.Namespace) -> None:
    """Write `count` files one after another; report each outcome and how long it took."""
    rng = random.Random(args.seed)
    for i in range(args.count):
        data = rng.randbytes(args.size)
        path = f"{args.prefix}/f{i:04d}"
        started = time.monotonic()
        try:
            fs.write_bytes(path, data)
            emit(path=path, sha=hashlib.sha256(data).hexdigest(), ok=True,
                 seconds=time.monotonic() - started, at=time.time())
        except OSError as exc:
            emit(path=path, ok=False, error=f"{type(exc).__name__}: {exc}",
                 seconds=time.monotonic() - started, at=time.time())
        if args.interval:
            time.sleep(args.interval)


def verify(fs: AegisClient, args: argparse.Namespace) -> None:
    manifest = json.loads(Path(args.manifest).read_text())
    for path, digest in sorted(manifest.items()):
        try:
            got = hashlib.sha256(fs.read_bytes(path)).hexdigest()
            emit(path=path, ok=got == digest, error=None if got == digest else "differs")
        except OSError as exc:
            emit(path=path, ok=False, error=f"{type(exc).__name__}: {exc}")


def blockmap(fs: AegisClient, args: argparse.Namespace) -> None:
    blocks: dict[str, list[str]] = {}
    files: dict[str, list[str]] = {}
    todo = ["/"]
    while todo:
        top = todo.pop()
        for entry in fs.ls(top, detail=True):
            path = f"{top.rstrip('/')}/{entry['name']}"
            if entry["type"] == "dir":
                todo.append(path)
                continue
            files[path] = []
            for b in fs.stat(path)["blocks"]:
                blocks[b["id"]] = b["replicas"]
                files[path].append(b["id"])
    emit(blocks=blocks, files=files)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--timeout", type=float, default=10.0)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("puts")
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.0)
    v = sub.add_parser("verify")
    v.add_argument("manifest")
    sub.add_parser("blockmap")
    args = parser.parse_args()
    with AegisClient(args.broker, timeout=args.timeout, connect_timeout=args.timeout) as fs:
        {"puts": puts, "verify": verify, "blockmap": blockmap}[args.cmd](fs, args)


if __name__ == "__main__":
    main()
