"""MDS benchmark: durable creates/s and stats/s through the broker with 1 and 8 client
processes, the create rate with 0, 100k and 1M files already in the namespace, and the
restart time and RSS of the MDS at the largest size.

    python bench/mds.py [--files 1000000] [--seconds 5] [--window 4] [--runs 3]
    python bench/mds.py --ha [--seconds 5] [--runs 3]     # the HA column only
    python bench/mds.py --failover 20 [--lease-ttl 5]       # failover times only

A "create" is a 0-byte file: `create` then `commit`, both fsynced before their replies
(the file is durable when the commit reply arrives). Each client process keeps `window`
files in flight. Stats hit random files created in the same run. Each figure is the
median of --runs runs (the disk's fsync latency has a long tail on small VMs).

Prefill: the namespace (`--files` files, 1,000 per directory, each with one 1 KiB block on
two replicas, like a real small file) is built in this process through the Namespace
prepare/apply API and written as a snapshot (mds.snapshot.write_snapshot) into the MDS
data directory before the MDS starts, so the MDS loads it exactly as after a checkpoint.
The cluster has no DataNodes and the MDS stays in safe mode, so the prefilled blocks
(whose DataNodes never report) cause no repair work: the figures are the metadata path.
Restart time = SIGTERM stop, start, until the first `ping` answers (process start and
recovery: snapshot load + WAL replay of the benchmark's own records). RSS by psutil.

Failover (--failover N): etcd, a broker, two symmetric MDS (`--standby --etcd`: the winner
leads and ships its WAL to the other) and two DataNodes, security on, the default lease TTL
unless --lease-ttl. One client writes 1 KiB files one after another (each acknowledged
write durable on both MDS and two DataNodes); N times the active MDS is SIGKILLed once the
standby is in sync, and the failover time is from the kill to the next acknowledged write
(lease expiry + the standby's campaign + safe mode until the DataNodes heartbeat + the
client's retry backoff; the first write begun after the kill, acknowledged); the killed MDS is started again (what run_cluster.py's supervisor
does) and becomes the new standby. At the end every acknowledged file is read back; the
client must have seen no error.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from broker.client import Client  # noqa: E402
from mds.namespace import Namespace, NamespaceConfig  # noqa: E402
from mds.snapshot import write_snapshot  # noqa: E402
from run_cluster import Cluster, free_base_port  # noqa: E402

PER_DIR = 1000
MiB = 1024 * 1024
GOAL_RATIO = 0.75          # create rate at size N vs empty
GOAL_RESTART = 10.0        # seconds
GOAL_RSS = 1024 * MiB


# -- prefill --------------------------------------------------------------------------------

def prefill(mds_dir: Path, files: int) -> tuple[float, int]:
    """Write a snapshot holding `files` committed files; (seconds, snapshot bytes)."""
    started = time.monotonic()
    gc.disable()   # millions of long-lived objects: generational GC would rescan them all
    try:
        ns = Namespace(NamespaceConfig(replication=2, block_size=4 * MiB))
        seq = 0

        def do(rec: dict) -> dict:
            nonlocal seq
            seq += 1
            return ns.apply(rec)

        do(ns.prepare_mkdir("/pre"))
        crc, replicas = 0x1234ABCD, ["dn1", "dn2"]
        for i in range(files):
            d, f = divmod(i, PER_DIR)
            if f == 0:
                do(ns.prepare_mkdir(f"/pre/d{d}"))
            handle = do(ns.prepare_create(f"/pre/d{d}/f{f}", handle=f"h{i}"))["handle"]
            bid = do(ns.prepare_allocate(handle, [replicas]))["blocks"][0]["id"]
            do(ns.prepare_commit(handle, [{"id": bid, "size": 1024, "checksum": crc,
                                           "replicas": replicas}]))
        path = write_snapshot(mds_dir, ns, seq)
        del ns
    finally:
        gc.enable()
        gc.collect()
    return time.monotonic() - started, path.stat().st_size


# -- client processes -------------------------------------------------------------------

def _creates(c: Client, prefix: str, deadline: float, window: int) -> list[float]:
    c.call("mds", {"op": "mkdir", "path": prefix, "parents": True})
    inflight: dict[int, tuple[str, float]] = {}   # rid -> (stage, start)
    latencies: list[float] = []
    n = 0
    while True:
        while len(inflight) < window and time.perf_counter() < deadline:
            rid = c.send("mds", {"op": "create", "path": f"{prefix}/f{n}"})
            inflight[rid] = ("create", time.perf_counter())
            n += 1
        if not inflight:
            return latencies
        reply = c.wait_any(30)
        if reply is None:
            raise TimeoutError("no reply from the MDS in 30 s")
        stage, start = inflight.pop(reply.rid)
        reply.unwrap()
        if stage == "create":
            rid = c.send("mds", {"op": "commit", "handle": reply.result["handle"], "blocks": []})
            inflight[rid] = ("commit", start)
        else:
            latencies.append(time.perf_counter() - start)


def _stats(c: Client, targets: list[tuple[str, int]], deadline: float,
           window: int) -> list[float]:
    rng = random.Random(os.getpid())
    inflight: dict[int, float] = {}
    latencies: list[float] = []
    while True:
        while len(inflight) < window and time.perf_counter() < deadline:
            prefix, count = rng.choice(targets)
            rid = c.send("mds", {"op": "stat", "path": f"{prefix}/f{rng.randrange(count)}"})
            inflight[rid] = time.perf_counter()
        if not inflight:
            return latencies
        reply = c.wait_any(30)
        if reply is None:
            raise TimeoutError("no reply from the MDS in 30 s")
        start = inflight.pop(reply.rid)
        reply.unwrap()
        latencies.append(time.perf_counter() - start)


def client_main(endpoint: str, mode: str, arg, seconds: float, window: int,
                barrier, results) -> None:
    try:
        with Client(endpoint, timeout=30, max_in_flight=window + 1) as c:
            c.call("mds", {"op": "ping"})
            barrier.wait()
            deadline = time.perf_counter() + seconds
            if mode == "create":
                lat = _creates(c, arg, deadline, window)
            else:
                lat = _stats(c, arg, deadline, window)
            results.put((mode, arg if mode == "create" else None, len(lat), sorted(lat)))
    except BaseException as exc:
        results.put(("error", repr(exc), 0, []))
        raise


def run_clients(endpoint: str, mode: str, clients: int, args: list, seconds: float,
                window: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=client_main, args=(endpoint, mode, args[i], seconds, window,
                                                   barrier, results)) for i in range(clients)]
    for p in procs:
        p.start()
    barrier.wait(60)
    started = time.perf_counter()
    got = [results.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(30)
    errors = [g[1] for g in got if g[0] == "error"]
    if errors:
        raise RuntimeError(f"client failed: {errors[0]}")
    lat = sorted(x for g in got for x in g[3])
    total = sum(g[2] for g in got)
    return {"rate": total / elapsed, "count": total,
            "p50": statistics.median(lat) * 1e3 if lat else 0.0,
            "p99": lat[int(len(lat) * 0.99)] * 1e3 if lat else 0.0,
            "created": [(g[1], g[2]) for g in got if g[0] == "create"]}


# -- one cluster per namespace size ----------------------------------------------------------

def wait_ping(cluster: Cluster, timeout: float = 600.0) -> float:
    started = time.monotonic()
    with Client(cluster.broker, timeout=1, connect_timeout=1) as c:
        while True:
            if not cluster.roles["mds"].alive():
                raise RuntimeError(f"MDS exited; see {cluster.roles['mds'].log_path}")
            try:
                c.call("mds", {"op": "ping"})
                return time.monotonic() - started
            except (ConnectionError, TimeoutError):
                if time.monotonic() - started > timeout:
                    raise
                time.sleep(0.01)


def recovered_seconds(log_path: Path) -> float | None:
    found = re.findall(r"metadata recovered in ([0-9.]+)s", log_path.read_text(errors="replace"))
    return float(found[-1]) if found else None


def measure(root: Path, prefill_files: int, args, full: bool) -> dict:
    out: dict = {"files": prefill_files}
    data = root / f"n{prefill_files}"
    (data / "mds").mkdir(parents=True)
    if prefill_files:
        secs, size = prefill(data / "mds", prefill_files)
        out["prefill_s"], out["snapshot_mib"] = secs, size / MiB
        print(f"  prefill {prefill_files:,} files: {secs:.1f}s, snapshot {size / MiB:.0f} MiB",
              flush=True)
    # security off: this measures the MDS, comparable with the earlier figures
    cluster = Cluster(data, free_base_port(), datanodes=0, security=False,
                      extra={"mds": ["--safemode-timeout", "1e9"]})
    try:
        t0 = time.monotonic()
        cluster.start(timeout=600)
        wait_ping(cluster)
        out["first_start_s"] = time.monotonic() - t0
        ep = cluster.broker
        s, w = args.seconds, args.window
        tag = f"/bench/n{prefill_files}"
        created: list[tuple[str, int]] = []

        def median_of_runs(key: str, mode: str, clients: int, make_args) -> None:
            runs = []
            for run in range(args.runs):
                r = run_clients(ep, mode, clients, make_args(run), s, w)
                created.extend(r["created"])
                runs.append(r)
            runs.sort(key=lambda r: r["rate"])
            out[key] = runs[len(runs) // 2]
            rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
            print(f"  {mode} x{clients} clients: {rates} /s", flush=True)

        median_of_runs("create8", "create", 8,
                       lambda run: [f"{tag}/c8-{run}-{i}" for i in range(8)])
        if full:
            median_of_runs("create1", "create", 1, lambda run: [f"{tag}/c1-{run}"])
            targets = [t for t in created if t[1]]
            median_of_runs("stat1", "stat", 1, lambda run: [targets])
            median_of_runs("stat8", "stat", 8, lambda run: [targets] * 8)
        pid = cluster.roles["mds"].pid
        out["rss_before"] = psutil.Process(pid).memory_info().rss
        assert cluster.stop_role("mds") == 0
        cluster.start_role("mds")
        t0 = time.monotonic()
        out["restart_s"] = wait_ping(cluster)
        out["recovery_s"] = recovered_seconds(cluster.roles["mds"].log_path)
        time.sleep(0.5)
        out["rss"] = psutil.Process(cluster.roles["mds"].pid).memory_info().rss
        with Client(ep, timeout=30) as c:
            st = c.call("mds", {"op": "status"}).result
        want = prefill_files + sum(n for _, n in created)
        if st["files"] != want:
            raise SystemExit(f"after restart the MDS holds {st['files']} files, expected {want}")
        out["files_after"] = st["files"]
        print(f"  restart {out['restart_s']:.2f}s (recovery {out['recovery_s']}s), "
              f"RSS {out['rss'] / MiB:.0f} MiB, {st['files']:,} files", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
    return out


def measure_ha(root: Path, args) -> dict:
    """The HA column: durable creates/s with 8 clients on an empty namespace, without and
    with a synchronous standby (mds/replication.py: each batch fsynced on both), one
    cluster each, in the same run."""
    out: dict = {}
    for standby in (False, True):
        data = root / f"ha-{'on' if standby else 'off'}"
        (data / "mds").mkdir(parents=True)
        cluster = Cluster(data, free_base_port(), datanodes=0, security=False,
                          standby_port=free_base_port(span=1) if standby else None,
                          extra={"mds": ["--safemode-timeout", "1e9"]})
        try:
            cluster.start(timeout=600)
            wait_ping(cluster)
            if standby:
                with Client(cluster.broker, timeout=5) as c:
                    deadline = time.monotonic() + 30
                    while c.call("mds", {"op": "status"}).result["ha"]["standby"][
                            "state"] != "in_sync":
                        if time.monotonic() > deadline:
                            raise SystemExit("the standby never got in sync")
                        time.sleep(0.1)
            runs = []
            for run in range(args.runs):
                runs.append(run_clients(cluster.broker, "create", 8,
                                        [f"/bench/ha{run}-{i}" for i in range(8)],
                                        args.seconds, args.window))
            runs.sort(key=lambda r: r["rate"])
            key = "on" if standby else "off"
            out[key] = runs[len(runs) // 2]
            rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
            print(f"  standby {key}: creates x8 clients: {rates} /s", flush=True)
            if standby:
                with Client(cluster.broker, timeout=5) as c:
                    st = c.call("mds", {"op": "status"}).result["ha"]["standby"]
                if st["state"] != "in_sync":
                    raise SystemExit(f"the standby fell out of sync during the run: {st}")
        finally:
            cluster.stop()
            shutil.rmtree(data, ignore_errors=True)
    return out


def main_ha(args, root: Path) -> None:
    print(f"MDS HA benchmark: {args.seconds:g}s per figure, window {args.window}, "
          f"{args.runs} runs, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
          flush=True)
    try:
        r = measure_ha(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = r["on"]["rate"] / r["off"]["rate"]
    print("\nHA column: durable creates (0-byte files, create+commit), 8 clients, empty namespace")
    print(f"{'standby':<28}{'creates/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for key, name in (("off", "off"), ("on", "synchronous (both fsync)")):
        print(f"{name:<28}{r[key]['rate']:>10.0f}{r[key]['p50']:>9.2f}{r[key]['p99']:>9.2f}")
    print(f"on / off = {ratio:.2f} (goal >= 0.70: {'met' if ratio >= 0.7 else 'MISSED'}); "
          "failover times: python bench/mds.py --failover N")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")


def _leading_role(cluster: Cluster) -> str:
    from mds.etcd import Gateway
    held = Gateway(cluster.etcd_url).get(b"/aegisfs/mds/leader")
    return held.value.decode() if held else ""


def _ha_status(cluster: Cluster) -> dict:
    from client import AegisClient
    with AegisClient(cluster.broker, key=cluster.key, timeout=2, retry_deadline=10) as fs:
        return fs.status()["ha"]


def main_failover(args, root: Path) -> None:
    """Failover times under a writing client (module docstring)."""
    import logging
    import threading
    from client import AegisClient
    # the client's "waiting for the metadata server" notices: one pair per failover
    logging.getLogger("client.api").setLevel(logging.ERROR)
    print(f"MDS failover benchmark: {args.failover} SIGKILLs of the active, lease TTL "
          f"{args.lease_ttl}s, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    cluster = Cluster(root / "c", free_base_port(), datanodes=2,
                      etcd_port=free_base_port(span=2), standby_port=free_base_port(span=2),
                      env={"AEGISFS_HA_LEASE_TTL": str(args.lease_ttl)})
    acked: list[tuple[float, float, str, bytes]] = []     # (start, acknowledged, path, data)
    errors: list[BaseException] = []
    halt = threading.Event()

    def write_loop() -> None:
        try:
            with AegisClient(cluster.broker, key=cluster.key) as fs:
                i = 0
                while not halt.is_set():
                    path, data = f"/failover/f{i}", os.urandom(1024)
                    start = time.monotonic()
                    fs.write_bytes(path, data)
                    acked.append((start, time.monotonic(), path, data))
                    i += 1
        except BaseException as exc:     # an error the client saw: the run failed
            errors.append(exc)

    def until(pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if errors:
                raise SystemExit(f"the client saw an error: {errors[0]!r}")
            if time.monotonic() > end:
                raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.05)

    def standby_in_sync() -> bool:
        try:
            st = _ha_status(cluster)
        except OSError:
            return False
        # and the ran-alone mark cleared: until then no standby may take over
        return st["state"] == "active" and not st.get("alone_mark") and \
            (st.get("standby") or {}).get("state") == "in_sync"

    times: list[float] = []
    writer = threading.Thread(target=write_loop, daemon=True)
    try:
        cluster.start(timeout=120)
        until(standby_in_sync, 120, "the standby in sync")
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            fs.mkdir("/failover")
        writer.start()
        for n in range(args.failover):
            until(standby_in_sync, 120, "the standby in sync")
            before = len(acked)
            until(lambda: len(acked) >= before + 5, 60, "writes before the kill")
            victim = _leading_role(cluster)
            count = len(acked)
            cluster.kill(victim)                      # SIGKILL by PID
            killed = time.monotonic()
            # the first write begun after the kill: one in flight at the kill may have been
            # answered just before it (the one thread waits for it before the next)
            until(lambda: len(acked) > count and acked[-1][0] > killed, 120,
                  "a write through the new active")
            first = next(end for start, end, _, _ in acked[count:] if start > killed)
            times.append(first - killed)
            print(f"  failover {n + 1}: {victim} killed, {_leading_role(cluster)} leads; "
                  f"first write {times[-1]:.2f}s after the kill", flush=True)
            cluster.start_role(victim)               # it comes back as the standby
        halt.set()
        writer.join(60)
        if errors:
            raise SystemExit(f"the client saw an error: {errors[0]!r}")
        with AegisClient(cluster.broker, key=cluster.key) as fs:
            lost = [path for _, _, path, data in acked if fs.read_bytes(path) != data]
        if lost:
            raise SystemExit(f"{len(lost)} acknowledged files read back wrong: {lost[:5]}")
    finally:
        halt.set()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]   # noqa: E731
    print(f"\nfailover (SIGKILL of the active -> next acknowledged write), {len(times)} "
          f"failovers, lease TTL {args.lease_ttl}s:")
    print(f"  min {times[0]:.2f}s  median {q(0.5):.2f}s  p90 {q(0.9):.2f}s  "
          f"max {times[-1]:.2f}s   (goal <= 10 s each: "
          f"{'met' if times[-1] <= 10 else 'MISSED'})")
    print(f"  {len(acked)} writes acknowledged, 0 client errors, every one read back exactly")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1_000_000,
                    help="largest prefill (the middle one is a tenth of it)")
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    ap.add_argument("--window", type=int, default=4, help="files in flight per client")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median shown)")
    ap.add_argument("--dir", help="work directory (default: a temporary one)")
    ap.add_argument("--ha", action="store_true", help="only the HA column: creates/s with "
                    "8 clients without and with a synchronous standby MDS")
    ap.add_argument("--failover", type=int, metavar="N", help="only the failover times: "
                    "SIGKILL the active MDS N times under a writing client")
    ap.add_argument("--lease-ttl", type=int, default=5,
                    help="[ha] lease_ttl for --failover (seconds) [5, the default]")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="aegis-bench-mds-", dir=args.dir))
    if args.failover:
        main_failover(args, root)
        return
    if args.ha:
        main_ha(args, root)
        return
    sizes = [0, args.files // 10, args.files]
    print(f"MDS benchmark: prefill sizes {sizes}, {args.seconds:g}s per figure, window "
          f"{args.window}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"work dir {root}", flush=True)
    results = []
    try:
        for n in sizes:
            print(f"namespace with {n:,} files:", flush=True)
            results.append(measure(root, n, args, full=n == 0))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = results[0]
    print("\nthroughput on an empty namespace (0-byte files, create+commit = 2 fsynced records)")
    print(f"{'operation':<24}{'clients':>8}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for key, name, clients in (("create1", "durable create", 1), ("create8", "durable create", 8),
                               ("stat1", "stat", 1), ("stat8", "stat", 8)):
        r = base[key]
        print(f"{name:<24}{clients:>8}{r['rate']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}")
    print("\nby namespace size (8 clients)")
    print(f"{'files before':>13}{'creates/s':>11}{'vs empty':>10}{'p99 ms':>8}{'prefill s':>11}"
          f"{'restart s':>11}{'recovery s':>12}{'RSS MiB run/restarted':>23}")
    for r in results:
        ratio = r["create8"]["rate"] / base["create8"]["rate"]
        rss = f"{r['rss_before'] / MiB:.0f} / {r['rss'] / MiB:.0f}"
        print(f"{r['files']:>13,}{r['create8']['rate']:>11.0f}{ratio:>10.2f}"
              f"{r['create8']['p99']:>8.1f}{r.get('prefill_s', 0):>11.1f}"
              f"{r['restart_s']:>11.2f}{(r['recovery_s'] or 0):>12.2f}{rss:>23}")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    big = results[-1]
    ratio = min(r["create8"]["rate"] for r in results[1:]) / base["create8"]["rate"]
    print(f"\ngoals at {big['files']:,} files: create rate within 25% of empty: "
          f"{'met' if ratio >= GOAL_RATIO else 'MISSED'} (worst {ratio:.2f}); restart "
          f"{big['restart_s']:.2f}s <= {GOAL_RESTART:g}s: "
          f"{'met' if big['restart_s'] <= GOAL_RESTART else 'MISSED'}; RSS "
          f"{big['rss'] / MiB:.0f} MiB <= 1024 MiB: "
          f"{'met' if big['rss'] <= GOAL_RSS else 'MISSED'}")


if __name__ == "__main__":
    main()
