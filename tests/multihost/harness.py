"""An AegisFS cluster with every role on its own host (network namespace): the broker, the
MDS, each DataNode and the client, reaching each other only over the bridge.

Roles run as `ip netns exec NS python -m <role> ...`, tracked by PID; the client side is the
`aegisfs` CLI or tests/multihost/driver.py run in the client's namespace. `security=True`
runs it with CURVE keys laid out as docs/deploy.md says (each host gets its own secret key
and the broker's public key); it needs the CURVE work ([security] in the config).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from broker import config
from tests.multihost.netns import Network

ROOT = Path(__file__).resolve().parents[2]
PORT = 5550                 # each host has its own port space: the default is fine
HEARTBEAT = 0.5
BROKER, MDS, CLIENT = "broker", "mds", "client"
ADDRESSES = {BROKER: 1, MDS: 2, CLIENT: 100}      # DataNodes: 11, 12, ...


def curve_available() -> bool:
    """CURVE has landed when the configuration knows a [security] section."""
    return "security" in config.DEFAULTS


class MultiHost:
    """`datanodes` DataNodes plus broker, MDS and client hosts on one bridge."""

    def __init__(self, root: Path, *, datanodes: int = 3, replication: int = 2,
                 block_size: int = 1 << 20, security: bool = True,
                 mds_flags: Iterable[str] = (), dn_flags: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.replication, self.block_size = replication, block_size
        self.security = security
        if security and not curve_available():
            raise RuntimeError("security=True needs CURVE ([security] in broker/config.py)")
        self.mds_flags, self.dn_flags = list(mds_flags), list(dn_flags)
        self.net = Network()
        self.node_ids: list[str] = []
        self.procs: dict[str, Any] = {}
        self._datanodes = datanodes

    # -- addresses ---------------------------------------------------------------------

    @property
    def broker_addr(self) -> str:
        return self.net.hosts[BROKER].addr

    @property
    def broker(self) -> str:
        return f"tcp://{self.broker_addr}:{PORT}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "MultiHost":
        for name, octet in ADDRESSES.items():
            self.net.add_host(name, octet)
        if self.security:
            self._make_keys([f"dn{i + 1}" for i in range(self._datanodes)])
        self.start_role(BROKER)
        self.start_role(MDS)
        for i in range(self._datanodes):
            self.add_datanode(f"dn{i + 1}", start=True)
        self.wait_serving(timeout)
        return self

    def close(self) -> None:
        self.net.close()

    def _env(self, role: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        for key in [k for k in env if k.startswith("AEGISFS_")]:
            del env[key]               # the machine's own settings are not this cluster's
        env.update(self._security_env(role))
        return env

    def _security_env(self, role: str) -> dict[str, str]:
        """[security] through AEGISFS_SECURITY_* (the config layer, so no flag spelling
        is assumed): off unless asked; on, each host's own key and the broker's public."""
        if not curve_available():
            return {}
        if not self.security:
            return {"AEGISFS_SECURITY_MODE": "off"}
        if role == BROKER:
            return {"AEGISFS_SECURITY_MODE": "on",
                    "AEGISFS_SECURITY_KEYS": str(self.root / "hosts" / BROKER / "keys")}
        keys = self.root / "hosts" / role / "keys"
        return {"AEGISFS_SECURITY_MODE": "on", "AEGISFS_SECURITY_KEYS": str(keys),
                "AEGISFS_SECURITY_KEY": str(next(keys.glob("**/*.key_secret"))),
                "AEGISFS_SECURITY_BROKER_KEY": str(keys / "broker.key")}

    def _make_keys(self, datanodes: list[str]) -> None:
        """The broker host keeps the whole key directory; every other host gets only its
        own secret key and the broker's public key (docs/deploy.md)."""
        from broker.keys import KeyStore
        master = self.root / "hosts" / BROKER / "keys"
        store = KeyStore(master)
        store.ensure_cluster(datanodes)
        for role, secret in [(MDS, store.member_key_path("mds")),
                             (CLIENT, store.user_key_path("admin")),
                             *[(d, store.member_key_path(f"dn.{d}")) for d in datanodes]]:
            self._give_keys(role, master, secret)

    def _give_keys(self, role: str, master: Path, secret: Path) -> None:
        dest = self.root / "hosts" / role / "keys"
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        rel = secret.relative_to(master)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copy2(secret, dest / rel)
        os.chmod(dest / rel, 0o600)
        shutil.copy2(master / "broker.key", dest / "broker.key")

    def _argv(self, role: str) -> list[str]:
        py, hb = sys.executable, ["--heartbeat-interval", str(HEARTBEAT)]
        common = ["--base-port", str(PORT)]
        if role == BROKER:
            return [py, "-m", "broker", *common, "--bind", self.net.hosts[BROKER].addr, *hb]
        connect = [*common, "--broker-host", self.broker_addr]
        if role == MDS:
            return [py, "-m", "mds", *connect, "--data-dir", str(self.root / "mds"), *hb,
                    "--replication", str(self.replication), "--block-size",
                    str(self.block_size), "--safemode-timeout", "5", "--delete-grace", "1",
                    *self.mds_flags]
        return [py, "-m", "datanode", *connect, "--id", role, "--data-dir",
                str(self.root / "dn" / role), *hb, *self.dn_flags]

    def start_role(self, role: str) -> None:
        self.procs[role] = self.net.spawn(role, self._argv(role), env=self._env(role),
                                          log_path=self.logs / f"{role}.log", cwd=str(ROOT))

    def add_datanode(self, node: str, *, start: bool = True) -> None:
        """A new host with a DataNode on it (a new id when the cluster is running)."""
        if node not in self.net.hosts:
            self.net.add_host(node, 10 + len(self.node_ids) + 1)
            self.node_ids.append(node)
            if self.security and (self.root / "hosts" / BROKER / "keys").exists() \
                    and not (self.root / "hosts" / node).exists():
                from broker.keys import KeyStore
                master = self.root / "hosts" / BROKER / "keys"
                self._give_keys(node, master, KeyStore(master).add_node(node))
        if start:
            self.start_role(node)

    def kill(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.kill()
        proc.wait(10)

    def alive(self, role: str) -> bool:
        proc = self.procs.get(role)
        return proc is not None and proc.poll() is None

    # -- the client host ---------------------------------------------------------------

    def aegisfs(self, *args: str, timeout: float = 60.0, request_timeout: float = 10.0,
                input: bytes | None = None):
        """The CLI on the client host; CompletedProcess with bytes stdout/stderr."""
        argv = [sys.executable, "-m", "client.cli", "--broker", self.broker,
                "--timeout", str(request_timeout), *args]
        return self.net.exec(CLIENT, argv, timeout=timeout, env=self._env(CLIENT),
                             input=input)

    def ok(self, *args: str, **kw) -> bytes:
        out = self.aegisfs(*args, **kw)
        assert out.returncode == 0, (f"aegisfs {' '.join(args)}: exit {out.returncode}: "
                                     f"{out.stderr.decode(errors='replace')[-2000:]}")
        return out.stdout

    def json(self, *args: str, **kw) -> Any:
        return json.loads(self.ok(*args, "--json", **kw))

    def driver(self, *args: str, timeout: float = 120.0) -> list[dict]:
        """tests/multihost/driver.py on the client host; its JSON lines."""
        argv = [sys.executable, str(Path(__file__).with_name("driver.py")),
                "--broker", self.broker, *args]
        out = self.net.exec(CLIENT, argv, timeout=timeout, env=self._env(CLIENT))
        assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def driver_bg(self, *args: str, out_path: Path):
        """The driver in the background on the client host, writing JSON lines to out_path."""
        argv = [sys.executable, str(Path(__file__).with_name("driver.py")),
                "--broker", self.broker, *args]
        with open(out_path, "wb") as fh:
            return self.net.spawn(CLIENT, argv, env=self._env(CLIENT), stdout=fh.fileno())

    # -- views -------------------------------------------------------------------------

    def status(self) -> dict:
        return self.json("status", timeout=30, request_timeout=5)

    def fsck(self) -> dict:
        out = self.aegisfs("fsck", "--json", timeout=30, request_timeout=5)
        return json.loads(out.stdout)

    def up_nodes(self) -> set[str]:
        return {n["id"] for n in self.status()["nodes"] if n["state"] == "up"}

    def wait_serving(self, timeout: float) -> None:
        def ready():
            out = self.aegisfs("status", "--json", timeout=15, request_timeout=2)
            if out.returncode != 0:
                return False
            st = json.loads(out.stdout)
            up = {n["id"] for n in st["nodes"] if n["state"] == "up"}
            return set(self.node_ids) <= up and not st.get("safe_mode")
        self.wait_until("cluster serving", ready, timeout)

    def wait_until(self, what: str, check, timeout: float, interval: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            for role, proc in self.procs.items():
                if proc.poll() is not None and role in (BROKER, MDS):
                    raise RuntimeError(f"{role} exited with {proc.returncode}; see "
                                       f"{self.logs / (role + '.log')}")
            try:
                last = check()
            except (AssertionError, OSError, TimeoutError, ValueError) as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not after {timeout} s (last: {last!r})")
            time.sleep(interval)

    def block_map(self, files: bool = False):
        """block id -> replicas over every file (one `driver blockmap` call); with files,
        also path -> [block ids]."""
        (out,) = self.driver("blockmap")
        return (out["blocks"], out["files"]) if files else out["blocks"]

    def healed(self) -> list[str]:
        """Problems keeping the cluster from healthy: fsck, blocks off R or on down nodes."""
        problems = []
        fsck = self.fsck()
        if not fsck.get("healthy"):
            problems.append("fsck: " + json.dumps({k: fsck.get(k) for k in (
                "missing", "under_replicated", "corrupt", "orphans", "safe_mode")})[:500])
        up = self.up_nodes()
        bad = {b: r for b, r in self.block_map().items()
               if len(r) != self.replication or not set(r) <= up or len(set(r)) != len(r)}
        if bad:
            problems.append(f"{len(bad)} blocks not at R={self.replication} on up nodes "
                            f"{sorted(up)}: {list(bad.items())[:3]}")
        return problems
