"""End-to-end throughput of AegisFS beside a raw baseline, measured in the same run.

    python bench/put_get.py                      # 1 GiB put/get at R=1 and R=2, 4 KiB creates
    python bench/put_get.py --size-mib 256 --small-files 200
    python bench/put_get.py --security on        # only the CURVE cluster (default: both)

Starts its own cluster (run_cluster.Cluster: broker, MDS, 3 DataNodes) on free ports in a
temporary directory. Every client runs in a child process of its own, which reports its
wall time and peak RSS (getrusage). The raw baseline (bench/raw_path.py) is the minimal
same-shaped path: a client DEALER -> a C `zmq.proxy` relay -> single-threaded sink
processes writing each block tmp, fsync, DONTNEED, rename, fsync dir (as
bench/raw_disk.py's raw_put) - no MDS, no checksums, no placement. With --security both
(the default) the big put/get also runs on a second cluster with CURVE on (rows marked "CURVE"), and the small files too; the
clients find the cluster's key through AEGISFS_KEY. Both clusters stay up, and the
small-file rounds (--small-rounds, 3) alternate between them, best round of each shown, so
the secure/insecure ratios compare figures taken minutes, not a whole run, apart. R=2 runs twice per cluster: "relay"
(every payload through the broker, [client] direct = false) and "direct" (to the
DataNodes' data endpoints). Per-process CPU seconds (/proc) show where the work goes.
Prints a table; benchmarks are scripts, not tests.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.raw_path import (BLOCK, WINDOW, MiB, raw_small_files, role_raw_client,  # noqa: E402
                            role_relay, role_sink)


# ---------------------------------------------------------------------------------------
# Child roles: each prints one JSON line {seconds, rss_mib, ...} and exits.

def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB on Linux


class _Timed:
    """Wall time and process CPU (all threads, zmq's I/O thread included) of a block."""

    def __enter__(self) -> "_Timed":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def result(self, **extra: object) -> dict:
        return {"seconds": self.wall, "cpu": self.cpu, **extra}


def role_put(broker: str, src: str, remote: str, replication: int) -> dict:
    from client import AegisClient
    with AegisClient(broker, timeout=60) as fs, _Timed() as t:
        fs.put(src, remote, replication=replication)
    return t.result()


def role_get(broker: str, remote: str, dst: str) -> dict:
    from client import AegisClient
    with AegisClient(broker, timeout=60) as fs, _Timed() as t:
        fs.get(remote, dst)
    return t.result()


def role_small(broker: str, prefix: str, count: int, replication: int, mode: str) -> dict:
    """`count` 4 KiB files: one write_bytes each ("single"), or put_many ("batched")."""
    from client import AegisClient
    data = os.urandom(4096)
    with AegisClient(broker, timeout=60) as fs:
        fs.mkdir(prefix, parents=True)
        start = time.time()
        if mode == "batched":
            out = fs.put_many([(data, f"{prefix}/f{i:06d}") for i in range(count)],
                              replication=replication)
            assert len(out) == count
        else:
            for i in range(count):
                fs.write_bytes(f"{prefix}/f{i:06d}", data, replication=replication)
        end = time.time()
        # then read them all back (verified), the same way: get_many or one read_bytes each
        sinks = [io.BytesIO() for _ in range(count)]
        if mode == "batched":
            fs.get_many([(f"{prefix}/f{i:06d}", sinks[i]) for i in range(count)])
        else:
            for i in range(count):
                sinks[i].write(fs.read_bytes(f"{prefix}/f{i:06d}"))
        assert all(s.getvalue() == data for s in sinks)
        return {"start": start, "end": end, "count": count, "read_start": end,
                "read_end": time.time()}


ROLES = {"put": role_put, "get": role_get, "small": role_small, "raw-client": role_raw_client}


# ---------------------------------------------------------------------------------------
# The driver

CHILD_ENV: dict[str, str] = {}    # the security settings of the cluster being measured


def role_cpu(cluster: object) -> dict[str, float]:
    """CPU seconds (user + system, all threads) each cluster process has used so far, from
    /proc/<pid>/stat: where the work of a put or get goes besides the client."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, role in cluster.roles.items():   # type: ignore[attr-defined]
        try:
            with open(f"/proc/{role.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_split(before: dict[str, float], after: dict[str, float],
              client: float) -> tuple[str, float]:
    """One line of CPU seconds per process kind during one transfer, and their total."""
    used = {k: after.get(k, 0.0) - v for k, v in before.items()}
    dns = sum(v for k, v in used.items() if k.startswith("dn"))
    total = client + sum(used.values())
    return (f"client {client:5.1f}  broker {used.get('broker', 0.0):5.1f}  "
            f"mds {used.get('mds', 0.0):4.1f}  datanodes {dns:5.1f}  total {total:5.1f} "
            f"CPU-s", total)


def child(role: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", role, *map(str, args)],
                            stdout=subprocess.PIPE, cwd=str(ROOT), text=True,
                            env={**os.environ, **CHILD_ENV})


def run_child(role: str, *args: object) -> dict:
    proc = child(role, *args)
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{role} failed ({proc.returncode}): {out}")
    return json.loads(out.strip().splitlines()[-1])


def make_source(path: Path, size: int) -> None:
    rnd = random.Random(7)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rnd.randbytes(n))
            left -= n


def raw_baseline(tmp: Path, src: Path, replication: int) -> dict[str, float]:
    """MB/s of the raw path: put with `replication` sinks, and get (one copy read)."""
    from run_cluster import free_base_port
    port = free_base_port(2)
    front, back = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"
    procs = [child("relay", front, back)]
    try:
        procs[0].stdout.readline()
        sink_dir = tmp / f"raw-r{replication}"
        for r in range(replication):
            (sink_dir / str(r)).mkdir(parents=True)
            procs.append(child("sink", back, sink_dir / str(r)))
            procs[-1].stdout.readline()
        time.sleep(0.2)     # both sinks connected before the round-robin starts
        size = src.stat().st_size
        put = run_child("raw-client", front, "put", src, replication)
        out = {"put": size / put["seconds"] / 1e6}
        if replication == 1:
            get = run_child("raw-client", front, "get", src, replication)
            out["get"] = size / get["seconds"] / 1e6
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp / f"raw-r{replication}", ignore_errors=True)


def small_files(broker: str, clients: int, per_client: int, tag: str,
                mode: str) -> tuple[float, float]:
    """(creates/s, reads/s) of `clients` processes writing, then reading, their files."""
    procs = [child("small", broker, f"/small-{tag}/c{i}", per_client, 2, mode)
             for i in range(clients)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise RuntimeError(f"small-file client failed: {out}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    count = sum(r["count"] for r in results)
    write = max(r["end"] for r in results) - min(r["start"] for r in results)
    read = max(r["read_end"] for r in results) - min(r["read_start"] for r in results)
    return count / write, count / read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024,
                    help="file size for put/get (0: only the small-file figures)")
    ap.add_argument("--small-files", type=int, default=400,
                    help="4 KiB files written one by one with 1 client (8 clients make "
                         "1/4 as many each)")
    ap.add_argument("--batched-files", type=int, default=8000,
                    help="4 KiB files written with put_many by 1 client (8 clients make "
                         "1/4 as many each)")
    ap.add_argument("--small-rounds", type=int, default=3,
                    help="rounds of the small-file figures; with --security both the rounds "
                         "alternate between the two clusters (off, on, off, on ...) so a "
                         "burst of load hits both alike; the best round of each is shown")
    ap.add_argument("--dir", default=None, help="scratch parent dir (default $TMPDIR)")
    ap.add_argument("--security", choices=["on", "off", "both"], default="both",
                    help="measure with CURVE on, off (the small files too), or both")
    ap.add_argument("--role", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        role, rest = args.role[0], args.role[1:]
        if role == "sink":
            return role_sink(*rest)
        if role == "relay":
            return role_relay(*rest)
        conv = [int(a) if a.isdigit() else a for a in rest]
        result = ROLES[role](*conv)
        result["rss_mib"] = _peak_rss_mib()
        print(json.dumps(result), flush=True)
        return

    from run_cluster import Cluster, free_base_port
    tmp = Path(tempfile.mkdtemp(prefix="aegisfs-bench-", dir=args.dir))
    size = args.size_mib * MiB
    rows: list[tuple] = []
    splits: list[str] = []
    speeds: dict[tuple[bool, int, bool], tuple[float, float]] = {}
    cpus: dict[tuple[bool, int, bool], tuple[float, float]] = {}
    try:
        src = tmp / "source.bin"
        raw = {}
        if size:
            make_source(src, size)
            raw = {r: raw_baseline(tmp, src, r) for r in (1, 2)}
        raw_small = raw_small_files(tmp)
        small: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        modes = {"on": [True], "off": [False], "both": [False, True]}[args.security]
        clusters: dict[bool, object] = {}
        try:
            for secure in modes:
                clusters[secure] = cluster = Cluster(
                    tmp / f"cluster-{'on' if secure else 'off'}", free_base_port(),
                    datanodes=3, security=secure).start()
                _use(cluster, secure)
                tag = " CURVE" if secure else ""
                # R=2 through the broker (relay) and to the data endpoints (direct), in the
                # same run; R=1 direct only, and only without CURVE when both are measured
                plan = [(2, False), (2, True)]
                if not (secure and len(modes) > 1):
                    plan.insert(0, (1, True))
                _wait_nodes(cluster.broker, 3, cluster.key)
                for r, direct in plan if size else ():
                    CHILD_ENV["AEGISFS_CLIENT_DIRECT"] = "1" if direct else "0"
                    way = (" direct" if direct else " relay") if r == 2 else ""
                    cpu0 = role_cpu(cluster)
                    put = run_child("put", cluster.broker, src, f"/bench/r{r}{way}.bin", r)
                    cpu1 = role_cpu(cluster)
                    get = run_child("get", cluster.broker, f"/bench/r{r}{way}.bin",
                                    tmp / "out.bin")
                    cpu2 = role_cpu(cluster)
                    os.unlink(tmp / "out.bin")
                    name = f"R={r}{way}{tag}"
                    put_line, put_cpu = cpu_split(cpu0, cpu1, put["cpu"])
                    get_line, get_cpu = cpu_split(cpu1, cpu2, get["cpu"])
                    splits += [f"put {name}: {put_line}", f"get {name}: {get_line}"]
                    cpus[(secure, r, direct)] = (put_cpu, get_cpu)
                    p_mbs, g_mbs = size / put["seconds"] / 1e6, size / get["seconds"] / 1e6
                    speeds[(secure, r, direct)] = (p_mbs, g_mbs)
                    gib = size / 2**30
                    rows.append((f"put {name}", p_mbs, put["rss_mib"], put["cpu"] / gib,
                                 raw[r]["put"]))
                    rows.append((f"get {name}", g_mbs, get["rss_mib"], get["cpu"] / gib,
                                 raw[1]["get"]))
                CHILD_ENV.pop("AEGISFS_CLIENT_DIRECT", None)
            # the small files: rounds alternate between the clusters, best round kept
            for rnd in range(max(1, args.small_rounds)):
                for secure, cluster in clusters.items():
                    _use(cluster, secure)
                    for mode, n in (("single", args.small_files),
                                    ("batched", args.batched_files)):
                        one = small_files(cluster.broker, 1, n, f"{mode}-one-{rnd}", mode)
                        eight = small_files(cluster.broker, 8, max(1, n // 4),
                                            f"{mode}-eight-{rnd}", mode)
                        small.setdefault((mode, secure), []).append((one, eight))
        finally:
            for cluster in clusters.values():
                cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if rows:
        print_table(args.size_mib, rows)
        print(f"\nwhere the CPU went (user + system seconds, all threads; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end):")
        for line in splits:
            print("  " + line)
        for direct in (False, True):
            on, off = speeds.get((True, 2, direct)), speeds.get((False, 2, direct))
            if on and off:
                print(f"secure / insecure at R=2, {'direct' if direct else 'relay '}: "
                      f"put {on[0] / off[0]:.2f}x  get {on[1] / off[1]:.2f}x  (MB/s)")
            on, off = cpus.get((True, 2, direct)), cpus.get((False, 2, direct))
            if on and off:
                # what the ratio would be if the cores were ours alone and the work
                # CPU-bound: insecure CPU-s / secure CPU-s for the same bytes
                print(f"  CPU-bound bound, {'direct' if direct else 'relay '}: "
                      f"put {off[0] / on[0]:.2f}x  get {off[1] / on[1]:.2f}x  "
                      f"(insecure / secure CPU-s, all processes)")
    print("\n4 KiB files, R=2, durable creates/s (each file acknowledged only once its data "
          "is synced on 2 DataNodes and its metadata in the MDS log):")
    # column 0 of each figure pair is the writes, column 1 the reads back
    for col, labels in ((0, ("one write_bytes per file", "put_many, 64 files per batch")),
                        (1, ("one read_bytes per file", "get_many, 256 files per batch"))):
        if col:
            print("  reading them back, verified, files/s:")
        for secure in sorted({k[1] for k in small}):
            tag = " CURVE" if secure else ""
            for mode, label in zip(("single", "batched"), labels):
                one, eight = _best(small[(mode, secure)], col)
                print(f"  {label + tag:36} 1 client {one:8,.0f}   8 clients {eight:8,.0f}"
                      f"   (best of {len(small[(mode, secure)])})")
    for mode in ("single", "batched"):
        if (mode, True) in small and (mode, False) in small:
            on, off = _best(small[(mode, True)], 0), _best(small[(mode, False)], 0)
            print(f"  secure / insecure creates, {mode}: 1 client {on[0] / off[0]:.2f}x"
                  f"   8 clients {on[1] / off[1]:.2f}x   (best round of each)")
    print(f"  raw disk, one file per block (tmp, fsync, rename, fsync dir), 1 process, "
          f"1 copy: {raw_small:,.0f} files/s")


def _use(cluster: object, secure: bool) -> None:
    """Point the next child processes at this cluster's security settings."""
    CHILD_ENV.clear()
    CHILD_ENV.update({"AEGISFS_SECURITY_MODE": "on", "AEGISFS_KEY": str(cluster.key)}
                     if secure else {"AEGISFS_SECURITY_MODE": "off"})


def _best(rounds: list[tuple[tuple[float, float], tuple[float, float]]],
          col: int) -> tuple[float, float]:
    """The best 1-client and the best 8-client figure (column 0 writes, 1 reads) over the
    rounds."""
    return max(r[0][col] for r in rounds), max(r[1][col] for r in rounds)


def print_table(size_mib: int, rows: list[tuple]) -> None:
    print(f"\nAegisFS put/get of {size_mib} MiB, {BLOCK // MiB} MiB blocks, window "
          f"{WINDOW}, 3 DataNodes, {os.cpu_count()} cores")
    print(f"{'':16} {'MB/s':>8} {'client peak RSS':>16} {'client CPU-s/GiB':>17} "
          f"{'raw MB/s':>9} {'ratio':>6}")
    for name, mbs, rss, cpu, base in rows:
        print(f"{name:16} {mbs:8.0f} {rss:12.0f} MiB {cpu:17.2f} {base:9.0f} {mbs / base:6.2f}")
    print("raw: client -> zmq.proxy -> single-threaded sinks (tmp, writev, fsync, DONTNEED, "
          "rename, fsync dir);\n     the DataNodes overlap two writer threads, so a ratio "
          "above 1 is possible when fsync latency dominates.")


def _wait_nodes(broker: str, count: int, key: Path | None, timeout: float = 30.0) -> None:
    from client import AegisClient
    deadline = time.monotonic() + timeout
    cfg = {"security": {"mode": "on" if key else "off"}}
    with AegisClient(broker, timeout=2, connect_timeout=2, key=key, config=cfg) as fs:
        while time.monotonic() < deadline:
            try:
                st = fs.status()
                if sum(n["state"] == "up" for n in st["nodes"]) >= count and not st.get("safe_mode"):
                    return
            except OSError:
                pass
            time.sleep(0.2)
    raise TimeoutError("DataNodes did not come up")


if __name__ == "__main__":
    main()
