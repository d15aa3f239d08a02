"""Broker benchmark: AegisFS broker against a C relay (zmq.proxy), measured in the same run.

Both relays carry identical traffic between the same minimal raw-pyzmq client and echo
worker, so the difference is the relay alone:
  - 4 MiB payload frames, client -> worker (small ack back), 8 in flight: MB/s
  - 100-byte requests (one envelope frame, answered by one), 64 in flight: requests/s
Prints each figure beside the C relay's and the ratio (median of --runs).

    python bench/broker.py [--runs 3] [--mib 1024] [--requests 50000]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import zmq  # noqa: E402

from broker import config  # noqa: E402
from broker import protocol as P  # noqa: E402

SMALL = 100
BIG = 4 * 1024 * 1024


def free_base_port(span: int = 4) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span >= 65535:
            continue
        try:
            socks = []
            for p in range(base, base + span):
                t = socket.socket()
                t.bind(("127.0.0.1", p))
                socks.append(t)
            for t in socks:
                t.close()
            return base
        except OSError:
            continue


# -- relays -----------------------------------------------------------------------------

def run_c_relay(front: str, back: str) -> None:
    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    f.bind(front)
    b.bind(back)
    zmq.proxy(f, b)


def run_aegis_broker(base: int) -> None:
    from broker.server import Broker
    cfg = config.load(overrides={"broker": config.endpoints_for_base_port(base)})["broker"]
    Broker(cfg).run()


# -- workers ----------------------------------------------------------------------------

def c_worker(back: str) -> None:
    """Behind zmq.proxy's DEALER: frames arrive as [client identity, envelope, payload]."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(back)
    while True:
        m = s.recv_multipart(copy=False)
        # m = [client identity, envelope, payload?]: answer with the envelope alone
        s.send_multipart(m[:2], copy=False)


def aegis_worker(worker_ep: str) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(worker_ep)
    s.send(P.ready_envelope("echo", {"capacity": 1000}))
    while True:
        m = s.recv_multipart(copy=False)
        cmd, name, rid, header = P.unpack(m[0].bytes)
        if cmd != P.REQUEST:
            continue
        s.send(P.pack(P.REPLY, name, rid, header), copy=False)


# -- client -----------------------------------------------------------------------------

def drive(endpoint: str, size: int, count: int, window: int) -> float:
    """Send `count` requests (payload `size`) with `window` in flight; return seconds."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    # A small request is one envelope frame whose header holds the bytes; a big one is an
    # envelope plus one payload frame. Both relays carry exactly these frames.
    if size > SMALL:
        header, payload = P.encode_header({"op": "put"}), [os.urandom(size)]
    else:
        header, payload = P.encode_header({"op": "echo", "data": os.urandom(size - 20)}), []
    envs = [P.pack(P.REQUEST, b"echo", i.to_bytes(8, "big"), header) for i in range(window)]
    # warm up: the worker must be registered and the path hot
    for _ in range(50):
        s.send(envs[0])
        s.recv_multipart()
    start = time.perf_counter()
    sent = done = 0
    while done < count:
        while sent < count and sent - done < window:
            s.send_multipart([envs[sent % window], *payload], copy=False)
            sent += 1
        s.recv_multipart(copy=False)
        done += 1
    elapsed = time.perf_counter() - start
    s.close(linger=0)
    ctx.term()
    return elapsed


def measure(kind: str, size: int, count: int, window: int) -> float:
    base = free_base_port()
    eps = config.endpoints_for_base_port(base)
    if kind == "c":
        relay = mp.Process(target=run_c_relay, args=(eps["client"], eps["worker"]), daemon=True)
        worker = mp.Process(target=c_worker, args=(eps["worker"],), daemon=True)
    else:
        relay = mp.Process(target=run_aegis_broker, args=(base,), daemon=True)
        worker = mp.Process(target=aegis_worker, args=(eps["worker"],), daemon=True)
    relay.start()
    time.sleep(0.3)
    worker.start()
    time.sleep(0.5)
    try:
        return drive(eps["client"], size, count, window)
    finally:
        for p in (worker, relay):
            p.kill()
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=1024, help="MiB of 4 MiB payloads per run")
    ap.add_argument("--requests", type=int, default=30000, help="small requests per run")
    args = ap.parse_args()
    big_n = max(1, args.mib // 4)
    rows = []
    for label, size, count, window, unit in (
            ("4 MiB payloads", BIG, big_n, 8, "MB/s"),
            ("100 B requests", SMALL, args.requests, 64, "req/s")):
        figures = {}
        for kind in ("c", "aegis"):
            samples = []
            for _ in range(args.runs):
                secs = measure(kind, size, count, window)
                samples.append(count * size / secs / 1e6 if unit == "MB/s" else count / secs)
            figures[kind] = statistics.median(samples)
        rows.append((label, figures["aegis"], figures["c"], unit))
    print(f"{'workload':<16} {'AegisFS broker':>16} {'C relay':>14} {'ratio':>7}")
    for label, ours, theirs, unit in rows:
        print(f"{label:<16} {ours:>11,.0f} {unit:<5}{theirs:>9,.0f} {unit:<5}{ours / theirs:>6.2f}")


if __name__ == "__main__":
    main()
