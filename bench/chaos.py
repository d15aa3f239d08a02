"""Chaos run: a mixed workload against a real cluster while random roles (MDS, DataNodes,
broker) are SIGKILLed and restarted; every acknowledged write is kept in a ledger and
checked byte for byte once the cluster has settled.

    python bench/chaos.py --minutes 10 [--seed 7] [--writers 2] [--keep]

Prints the figures (operations, kills, ledger size, settle time, bytes re-replicated) and
exits 1 when an acknowledged write is lost or the cluster does not heal. The fault tests
(tests/fault/) run the same code for a shorter time; it lives in
tests/support/ (chaos.py: the run, harness.py: `Harness`).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

from tests.support.chaos import run_chaos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--datanodes", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="Keep the data and logs.")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)   # the client's failover warnings are expected
    root = Path(tempfile.mkdtemp(prefix="aegisfs-chaos-"))
    ok = False
    try:
        result = run_chaos(root, args.minutes * 60, seed=args.seed, writers=args.writers,
                           datanodes=args.datanodes)
        for line in result.lost[:20]:
            print("LOST", line)
        for line in result.restart_failures:
            print("RESTART FAILED", line)
        ok = result.ok
    finally:
        if args.keep or not ok:
            print(f"data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
