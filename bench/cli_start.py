"""Wall time of one `aegisfs` CLI call (start, imports, connect, request, exit), beside the
bare interpreter start (`python -c pass`) measured in the same run.

    python bench/cli_start.py              # starts its own cluster (security on) in a tmp dir
    python bench/cli_start.py -n 40 --importtime
    python bench/cli_start.py --compare /tmp/base   # beside another checkout (git archive)

Each command runs N times in turn (interleaved, so a burst of load hits them all alike);
prints median and p90 wall and the median CPU (user+sys, steadier than wall on a busy
machine) per command in ms. --compare DIR runs every command also from the checkout in
DIR (as `python -m client.cli` with PYTHONPATH=DIR, and so does this checkout then).
--importtime adds the slowest imports of `import client.cli` (min of 5 runs).

The calls run with bytecode caching on, as an installed package has it (.pyc files):
PYTHONDONTWRITEBYTECODE, if set here, is dropped for them; --no-bytecode keeps it, and
then every call compiles every module it imports from source.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cli() -> list[str]:
    """The console script beside this interpreter (what users run), else `-m client.cli`."""
    script = Path(sys.executable).with_name("aegisfs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "client.cli"]


Command = tuple[list[str], Path]          # argv, the checkout it runs from


def commands(cli: list[str], where: Path = ROOT, label: str = "") -> dict[str, Command]:
    verbs = {
        "--help": ["--help"],
        "write": ["write", "/bench/cli/hello", "x" * 4096],
        "read": ["read", "/bench/cli/hello"],
        "stat": ["stat", "/bench/cli/hello"],
        "ls": ["ls", "/bench/cli"],
    }
    return {f"aegisfs {verb}{label}": ([*cli, *args], where) for verb, args in verbs.items()}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(cmds: dict[str, Command], n: int,
            env: dict[str, str]) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (walls, cpus) in seconds."""
    out: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cmds}
    for _ in range(n):
        for name, (argv, where) in cmds.items():
            run_env = {**env, "PYTHONPATH": str(where)}
            cpu, t = _children_cpu(), time.perf_counter()
            proc = subprocess.run(argv, env=run_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, cwd=str(where))
            out[name][0].append(time.perf_counter() - t)
            out[name][1].append(_children_cpu() - cpu)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed ({proc.returncode}): "
                                 f"{proc.stderr.decode(errors='replace')}")
    return out


def importtime(runs: int, top: int) -> list[tuple[float, str]]:
    """(ms, module) of the slowest cumulative imports of client.cli, min over runs."""
    best: dict[str, int] = {}
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import client.cli"],
                             capture_output=True, text=True, cwd=str(ROOT)).stderr
        for line in err.splitlines()[1:]:
            parts = line.split("|")
            if len(parts) == 3:
                name, cum = parts[2].rstrip(), int(parts[1])
                best[name] = min(best.get(name, cum), cum)
    return sorted(((us / 1000, name) for name, us in best.items()), reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="runs per command [20]")
    ap.add_argument("--importtime", action="store_true", help="also the slowest imports")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE (compile every module every call)")
    ap.add_argument("--compare", type=Path, metavar="DIR",
                    help="also run every command from the checkout in DIR")
    args = ap.parse_args()

    from run_cluster import Cluster, free_base_port
    tmp = Path(tempfile.mkdtemp(prefix="aegis-cli-bench-"))
    cluster = Cluster(tmp / "cluster", free_base_port(), datanodes=2, replication=2)
    try:
        cluster.start()
        env = {**os.environ, "AEGISFS_BROKER": cluster.broker,
               "AEGISFS_KEY": str(cluster.key)}
        if not args.no_bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        module = [sys.executable, "-m", "client.cli"]
        cmds: dict[str, Command] = {"python -c pass": ([sys.executable, "-c", "pass"], ROOT)}
        if args.compare:
            cmds.update(commands(module, ROOT, " (this)"))
            cmds.update(commands(module, args.compare.resolve(), " (compare)"))
        else:
            cmds.update(commands(_cli()))
        subprocess.run([*_cli(), "mkdir", "-p", "/bench/cli"], env=env, check=True,
                       cwd=str(ROOT), stdout=subprocess.DEVNULL)
        measure(cmds, 1, env)                       # warm the page cache and .pyc files
        load = os.getloadavg()[0]
        results = measure(cmds, args.n, env)
        print(f"{'command':<26} {'median ms':>10} {'p90 ms':>8} {'cpu ms':>7}   ({args.n} "
              f"runs each, {os.cpu_count()} cores, load {load:.1f}-{os.getloadavg()[0]:.1f})")
        for name, (w, c) in results.items():
            w.sort()
            p90 = w[min(len(w) - 1, int(round(0.9 * (len(w) - 1))))]
            print(f"{name:<26} {statistics.median(w) * 1000:>10.1f} {p90 * 1000:>8.1f} "
                  f"{statistics.median(c) * 1000:>7.1f}")
        if args.importtime:
            print("\nslowest imports of client.cli (cumulative ms, min of 5 runs):")
            for ms, name in importtime(5, 25):
                print(f"{ms:8.1f}  {name}")
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
