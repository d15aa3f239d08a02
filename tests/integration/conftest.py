"""Real clusters for the integration tests (tests/support/cluster.py: on free ports in a
temporary directory, ready when the MDS sees every DataNode), always stopped in a finally;
helpers for the CLI and media tests. ``start_cluster`` is importable from here too."""
from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import wave
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from client import AegisClient
from run_cluster import Cluster
from tests.support.cluster import start_cluster

ROOT = Path(__file__).resolve().parents[2]
LEASE = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    """One 3-DataNode cluster shared by the non-destructive tests of a module. Its drafts
    live only LEASE seconds unrenewed, so any write longer than that proves renewal."""
    c = start_cluster(tmp_path_factory.mktemp("cluster"),
                      extra={"mds": ["--lease", str(LEASE)]})
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(tmp_path) -> Iterator[Cluster]:
    """A cluster of its own, for tests that kill or stop processes."""
    c = start_cluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def fs(cluster) -> Iterator[AegisClient]:
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as client:
        yield client


def run_cli(target: Cluster | str, *args: str, input: bytes | None = None,
            cwd: Path | None = None, timeout: float = 60.0,
            key: Path | str | None = None) -> subprocess.CompletedProcess:
    """`python -m client.cli --broker <broker> [--key <key>] args...` with bytes
    stdout/stderr. `target` is a Cluster (its broker, and its admin key unless `key`) or
    a broker endpoint (then the CLI finds its key itself, unless `key`)."""
    broker = target if isinstance(target, str) else target.broker
    if key is None and not isinstance(target, str):
        key = target.key
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("AEGISFS_BROKER", "AEGISFS_KEY"):
        env.pop(name, None)
    keyarg = ["--key", str(key)] if key else []
    return subprocess.run([sys.executable, "-m", "client.cli", "--broker", broker, *keyarg,
                           *args],
                          input=input, capture_output=True, cwd=str(cwd or ROOT), env=env,
                          timeout=timeout)


def make_png(width: int = 64, height: int = 48) -> bytes:
    """A valid RGB PNG built with zlib + struct (no PIL): a colour gradient."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + b"".join(bytes((x * 4 % 256, y * 5 % 256, (x * y) % 256))
                                     for x in range(width))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))


def make_wav(path: Path, seconds: float = 0.5, rate: int = 22050) -> bytes:
    """A mono 16-bit 440 Hz tone written with the stdlib `wave` module; returns its bytes."""
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path.read_bytes()
