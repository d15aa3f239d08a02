"""The fault tests' cluster: a run_cluster.Cluster with short timings, a client, and the
checks healing is judged by (fsck, replica counts, the DataNodes' disks against the block
map). bench/chaos.py and tests/fault/ share it.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from client import AegisClient
from datanode import packformat
from run_cluster import Cluster, free_base_port
from tests.support.wait import wait_for

ROOT_DIR = Path(__file__).resolve().parents[2]
HEARTBEAT = 0.3
BLOCK_SIZE = 64 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Harness:
    """A `run_cluster.Cluster` with short timings, a client, and views of what is on disk.

    `mds_flags` / `dn_flags` are extra command-line flags for the MDS / every DataNode.
    """

    def __init__(self, root: Path, *, datanodes: int = 3, replication: int = 2,
                 block_size: int = BLOCK_SIZE, mds_flags: Iterable[str] = (),
                 dn_flags: Iterable[str] = (), heartbeat: float = HEARTBEAT) -> None:
        self.root = Path(root)
        extra = {"mds": ["--block-size", str(block_size), *mds_flags]}
        for i in range(datanodes):
            extra[f"dn{i + 1}"] = list(dn_flags)
        self.cluster = Cluster(self.root, free_base_port(), datanodes, heartbeat=heartbeat,
                               replication=replication, extra=extra)
        self.replication = replication
        self.block_size = block_size
        self.fs: AegisClient | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Harness":
        self.cluster.start(timeout)
        self.fs = AegisClient(self.cluster.broker, timeout=10.0, connect_timeout=2.0,
                              key=self.cluster.key)
        self.wait_serving(timeout)
        return self

    def stop(self) -> None:
        if self.fs is not None:
            self.fs.close()
        self.cluster.stop()

    def __enter__(self) -> "Harness":
        # `with Harness(...).start() as h` must not start a second cluster over the first
        # (whose processes nothing would then stop)
        return self if self.fs is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def nodes(self) -> list[str]:
        return list(self.cluster.node_ids)

    @property
    def broker(self) -> str:
        return self.cluster.broker

    def kill(self, role: str) -> None:
        """SIGKILL by PID."""
        self.cluster.kill(role)

    def start_role(self, role: str, timeout: float = 30.0) -> None:
        self.cluster.start_role(role)
        self.cluster.wait_ready(timeout, [role])

    def alive(self, role: str) -> bool:
        return self.cluster.roles[role].alive()

    # -- views ---------------------------------------------------------------------------

    def status(self) -> dict:
        return self.fs.status()

    def fsck(self, repair: bool = False) -> dict:
        return self.fs.fsck(repair=repair)

    def up_nodes(self) -> set[str]:
        return {n["id"] for n in self.status()["nodes"] if n["state"] == "up"}

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float,
                   interval: float = 0.2, log: Callable[[str], None] | None = None) -> float:
        """Poll `check` until it returns a truthy value (or empty Problems); returns the
        seconds it took. An OSError from `check` (a role restarting) counts as not yet;
        `log` hears the last answer every few seconds."""
        start = time.monotonic()
        wait_for(check, timeout, interval, what, retry=(OSError,), done=_done, log=log)
        return time.monotonic() - start

    def wait_serving(self, timeout: float = 30.0) -> float:
        """Until the MDS is out of safe mode and sees every running DataNode up."""
        def ready() -> bool:
            st = self.status()
            up = {n["id"] for n in st["nodes"] if n["state"] == "up"}
            running = {n for n in self.nodes if self.alive(n)}
            return not st["safe_mode"] and running <= up
        return self.wait_until("serving", ready, timeout)

    def blk_path(self, node: str, block: str) -> Path:
        """The file of a big block (small ones live in pack files: see block_bytes)."""
        return self.root / "dn" / node / "blocks" / block[:2] / f"{block}.blk"

    def block_bytes(self, node: str, block: str) -> tuple[Path, int]:
        """(file, offset) where a stored block's data starts on a DataNode's disk."""
        path = self.blk_path(node, block)
        if path.exists():
            return path, 0
        found = packformat.inspect(self.root / "dn" / node / "packs").get(block)
        if found is None:
            raise FileNotFoundError(f"block {block} is not on {node}'s disk")
        return Path(found[0]), found[1]

    def disk_blocks(self, nodes: Iterable[str] | None = None) -> set[tuple[str, str]]:
        """(node, block hex) of every block on the DataNodes' disks (files and packs)."""
        out = set()
        for node in self.nodes if nodes is None else nodes:
            root = self.root / "dn" / node
            for path in (root / "blocks").glob("*/*.blk"):
                out.add((node, path.stem))
            if (root / "packs").is_dir():
                out.update((node, bid) for bid in packformat.inspect(root / "packs"))
        return out

    def files(self, top: str = "/") -> list[str]:
        out, stack = [], [top]
        while stack:
            d = stack.pop()
            for e in self.fs.ls(d, detail=True):
                p = d.rstrip("/") + "/" + e["name"]
                (stack.append if e["type"] == "dir" else out.append)(p)
        return sorted(out)

    def block_map(self, top: str = "/") -> dict[str, dict]:
        """block hex -> {path, size, checksum, replicas} from a stat of every file."""
        out = {}
        for path in self.files(top):
            for b in self.fs.stat(path)["blocks"]:
                out[b["id"]] = {**b, "path": path}
        return out

    def problems(self, top: str = "/", check_disk: bool = True) -> "Problems":
        """What keeps the cluster from being healed: fsck, replica counts, disk vs map."""
        out = Problems()
        fsck = self.fsck()
        if not fsck["healthy"]:
            out.append("fsck: " + json.dumps({k: (len(v) if isinstance(v, list) else v)
                                             for k, v in fsck.items()
                                             if k in ("missing", "under_replicated",
                                                      "corrupt", "orphans", "safe_mode")}))
        up = self.up_nodes()
        bmap = self.block_map(top)
        bad = [f"{b['path']} block {bid}: replicas {b['replicas']}"
               for bid, b in bmap.items()
               if len(b["replicas"]) != self.replication or not set(b["replicas"]) <= up]
        if bad:
            out.append(f"{len(bad)} blocks without {self.replication} replicas on up nodes "
                       f"{sorted(up)}: {bad[:3]}")
        if check_disk:     # the disks of running DataNodes against the block map
            running = [n for n in self.nodes if self.alive(n)]
            wanted = {(n, bid) for bid, b in bmap.items() for n in b["replicas"]
                      if n in running}
            on_disk = self.disk_blocks(running)
            if wanted - on_disk:
                out.append(f"{len(wanted - on_disk)} replicas in the block map are not on "
                           f"disk: {sorted(wanted - on_disk)[:3]}")
            if on_disk - wanted:
                out.append(f"{len(on_disk - wanted)} block files on disk are in no file "
                           f"(orphans): {sorted(on_disk - wanted)[:3]}")
        return out

    def wait_healed(self, timeout: float, top: str = "/", check_disk: bool = True,
                    log: Callable[[str], None] | None = None) -> float:
        return self.wait_until("healed", lambda: self.problems(top, check_disk), timeout,
                               interval=0.5, log=log)

    def write_files(self, count: int, rng: random.Random, prefix: str = "/data",
                    max_blocks: int = 3) -> dict[str, str]:
        """`count` files of 0..max_blocks blocks of random bytes; path -> sha256."""
        out = {}
        for i in range(count):
            size = rng.choice([rng.randrange(1, 4096),
                               rng.randrange(1, max_blocks * self.block_size + 1)])
            data = rng.randbytes(size)
            path = f"{prefix}/f{i:04d}"
            self.fs.write_bytes(path, data)
            out[path] = sha(data)
        return out

    def verify(self, expected: dict[str, str]) -> list[str]:
        """Paths whose content differs from their sha256 (or cannot be read)."""
        bad = []
        for path, digest in expected.items():
            try:
                if sha(self.fs.read_bytes(path)) != digest:
                    bad.append(f"{path}: content differs")
            except OSError as exc:
                bad.append(f"{path}: {exc}")
        return bad


class Problems(list):
    """A list of problems: empty means fine (wait_until treats it as done)."""


def _done(answer: Any) -> bool:
    return not answer if isinstance(answer, Problems) else bool(answer)
