"""Before/after figures of two commits in one run: bench/put_get.py and bench/mds.py of each
ref, alternated A B A B so that a machine loaded by others weighs on both alike.

    python bench/compare_refs.py                        # 002ba2c (before issue 12) vs HEAD
    python bench/compare_refs.py --base 002ba2c --head HEAD --rounds 3 --bench mds

Each ref is checked out into a temporary detached worktree (removed at the end) and run
with this interpreter, PYTHONPATH pointing at that worktree (so an editable install of
another checkout is not what runs). Security is off on both sides (the base has none).
Each bench's table is parsed into named figures; printed per figure: the base and head
medians over the rounds and the geometric mean of the per-round head/base ratios (> 1:
head is faster; latencies are not compared). A script that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# small enough for a few rounds of both benches in minutes on a shared 2-core machine
PUT_GET_ARGS = ["--size-mib", "256", "--small-files", "200", "--batched-files", "2000"]
MDS_ARGS = ["--files", "10000", "--seconds", "3", "--runs", "1"]

_PUT_ROW = re.compile(r"^(\S.*?)\s+(\d+)\s+\d+ MiB\s+[\d.]+\s+\d+\s+([\d.]+)$")
_SMALL_ROW = re.compile(r"^\s+(\S.*?)\s+1 client\s+([\d,]+)\s+8 clients\s+([\d,]+)"
                        r"(?:\s+\(best of \d+\))?$")
_MDS_ROW = re.compile(r"^(\S.*?)\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+$")
_SIZE_ROW = re.compile(r"^\s*([\d,]+)\s+(\d+)\s+[\d.]+\s")


def parse_put_get(out: str) -> dict[str, float]:
    """{figure: value} from put_get's table: MB/s rows, the same over the raw baseline
    measured in that run (steadier under others' load), and the small-file files/s."""
    figures: dict[str, float] = {}
    section = "create"
    for line in out.splitlines():
        if "reading them back" in line:
            section = "read"
        if m := _SMALL_ROW.match(line):
            label = " ".join(m.group(1).split())
            figures[f"{section} {label} x1 files/s"] = float(m.group(2).replace(",", ""))
            figures[f"{section} {label} x8 files/s"] = float(m.group(3).replace(",", ""))
        elif m := _PUT_ROW.match(line):
            figures[f"{' '.join(m.group(1).split())} MB/s"] = float(m.group(2))
            figures[f"{' '.join(m.group(1).split())} x raw"] = float(m.group(3))
    return figures


def parse_mds(out: str) -> dict[str, float]:
    """{figure: ops/s} from mds.py's tables: the empty namespace's throughput, and the
    8-client create rate by namespace size (times, lower-is-better, are left out)."""
    figures: dict[str, float] = {}
    table = ""
    for line in out.splitlines():
        if line.startswith("throughput on an empty namespace"):
            table = "empty"
        elif line.startswith("by namespace size"):
            table = "size"
        elif not line.strip() or line.startswith("("):
            table = ""
        elif table == "empty" and (m := _MDS_ROW.match(line)):
            figures[f"{' '.join(m.group(1).split())} x{m.group(2)} ops/s"] = float(m.group(3))
        elif table == "size" and (m := _SIZE_ROW.match(line)) and m.group(1) != "0":
            figures[f"create x8 with {m.group(1)} files ops/s"] = float(m.group(2))
    return figures


BENCHES = {"put_get": ("bench/put_get.py", PUT_GET_ARGS, parse_put_get),
           "mds": ("bench/mds.py", MDS_ARGS, parse_mds)}


def checkout(ref: str, parent: Path) -> Path:
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.strip()
    where = parent / commit[:10]
    subprocess.run(["git", "worktree", "add", "--detach", str(where), commit], cwd=ROOT,
                   check=True, capture_output=True)
    return where


def run_bench(tree: Path, name: str, log: Path) -> dict[str, float]:
    script, args, parse = BENCHES[name]
    cmd = [sys.executable, script, *args]
    help_text = subprocess.run([sys.executable, script, "--help"], cwd=tree,
                               capture_output=True, text=True).stdout
    if name == "put_get" and "--security" in help_text:
        cmd += ["--security", "off"]        # the base predates security
    if name == "put_get" and "--small-rounds" in help_text:
        cmd += ["--small-rounds", "1"]      # one round each, as the base measures
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    log.write_text(out.stdout + "\n--- stderr ---\n" + out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"{name} at {tree.name} failed (exit {out.returncode}); see {log}")
    figures = parse(out.stdout)
    if not figures:
        raise SystemExit(f"{name} at {tree.name}: no figures found in its output; see {log}")
    print(f"  {name} @ {tree.name}: {len(figures)} figures in {time.monotonic() - started:.0f}s",
          flush=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="002ba2c", help="the 'before' ref (A)")
    ap.add_argument("--head", default="HEAD", help="the 'after' ref (B)")
    ap.add_argument("--rounds", type=int, default=2, help="A B pairs per bench")
    ap.add_argument("--bench", choices=[*BENCHES, "all"], default="all")
    ap.add_argument("--logs", default=None, help="keep each run's output here")
    args = ap.parse_args()
    names = list(BENCHES) if args.bench == "all" else [args.bench]
    with tempfile.TemporaryDirectory(prefix="aegis-compare-") as tmp:
        parent = Path(tmp)
        logs = Path(args.logs) if args.logs else parent / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        trees: list[Path] = []
        try:
            base = checkout(args.base, parent)
            trees.append(base)
            head = checkout(args.head, parent)
            trees.append(head)
            print(f"A = {args.base} ({base.name}), B = {args.head} ({head.name}); "
                  f"{args.rounds} rounds A B; load average {os.getloadavg()[0]:.1f}", flush=True)
            runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {}
            for name in names:
                for r in range(args.rounds):
                    a = run_bench(base, name, logs / f"{name}.A{r}.txt")
                    b = run_bench(head, name, logs / f"{name}.B{r}.txt")
                    runs.setdefault(name, []).append((a, b))
            report(runs)
            print(f"(load average at the end: {os.getloadavg()[0]:.1f}; logs in {logs})")
        finally:
            for tree in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                               capture_output=True)


def report(runs: dict[str, list[tuple[dict[str, float], dict[str, float]]]]) -> None:
    print(f"\n{'figure':<50}{'A median':>10}{'B median':>10}{'B/A':>7}  per round")
    for name, pairs in runs.items():
        print(f"{name}:")
        keys = [k for k in pairs[0][0] if all(k in a and k in b for a, b in pairs)]
        for key in keys:
            ratios = [b[key] / a[key] for a, b in pairs if a[key] > 0]
            if not ratios:
                continue
            gmean = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) \
                if all(x > 0 for x in ratios) else 0.0
            a_med = statistics.median(a[key] for a, _ in pairs)
            b_med = statistics.median(b[key] for _, b in pairs)
            rounds = " ".join(f"{x:.2f}" for x in ratios)
            print(f"  {key:<48}{a_med:>10.4g}{b_med:>10.4g}{gmean:>7.2f}  {rounds}")
        missing = sorted(set(pairs[0][0]) ^ set(pairs[0][1]))
        if missing:
            print(f"  (only on one side, not compared: {', '.join(missing)})")


if __name__ == "__main__":
    main()
