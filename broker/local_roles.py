"""What each role of a local cluster runs: `Role` (a child process, its argv and log),
the one-member etcd of --ha (`etcd_argv`), and `RoleDefinitions`, the part of
broker.local_cluster.Cluster that turns its settings into every role's command line
(a mixin: it uses the Cluster's fields).
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent       # the source tree: viz/app.py is there


ETCD = "/usr/bin/etcd"      # Debian's etcd-server


def etcd_argv(data_dir: Path, client_port: int, peer_port: int, name: str = "aegisfs") -> list[str]:
    """A one-member etcd on loopback, its data in `data_dir` (for run_cluster --ha and
    the tests)."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [ETCD, "--name", name, "--data-dir", str(data_dir),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr"]


@dataclass
class Role:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    log_file: Any = None
    stopping: bool = False        # stopped on purpose (stop_role, kill): not restarted
    log_start: int = 0            # the log's size when this run began

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RoleDefinitions:
    """The roles' command lines, mixed into Cluster."""

    if TYPE_CHECKING:    # what this part uses of the Cluster
        data_dir: Path
        base_port: int
        config_path: str | None
        heartbeat: float | None
        replication: int | None
        viz: bool
        viz_port: int
        s3_port: int | None
        mount_dir: str | None
        extra: dict[str, list[str]]
        roles: dict[str, Role]
        security: bool
        metrics_port: int | None
        brokers: int
        etcd_port: int | None
        standby_port: int | None
        broker_ports: dict[str, int]
        endpoints: dict[str, str]
        broker: str
        node_ids: list[str]
        keys_dir: Path

        @property
        def etcd_url(self) -> str: ...

        @property
        def key(self) -> Path | None: ...

    def _common(self, base_port: int | None = None) -> list[str]:
        args = ["--base-port", str(base_port or self.base_port)]
        if self.config_path:
            args += ["--config", self.config_path]
        if self.security:
            args += ["--security", "on", "--keys", str(self.keys_dir)]
        else:
            args += ["--security", "off"]
        return args

    def _define(self) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        py = sys.executable
        hb = ["--heartbeat-interval", str(self.heartbeat)] if self.heartbeat else []
        specs: dict[str, list[str]] = {}
        if self.etcd_port:       # first: the MDS waits for its leadership there
            specs["etcd"] = etcd_argv(self.data_dir / "etcd", self.etcd_port, self.etcd_port + 1)
        for name, port in self.broker_ports.items():
            specs[name] = [py, "-m", "broker", *self._common(port), *hb]
        # several brokers: the explicit endpoint lists win over those --base-port derives
        reach = ["--broker-worker", self.endpoints["worker"],
                 "--events", self.endpoints["events_in"]] if self.brokers > 1 else []
        mds = [py, "-m", "mds", *self._common(), *reach,
               "--data-dir", str(self.data_dir / "mds"), *hb]
        if self.etcd_port:
            mds += ["--etcd", self.etcd_url]
        if self.replication:
            mds += ["--replication", str(self.replication)]
        if self.standby_port and self.etcd_port:
            # symmetric: both start as standbys and campaign; the one that wins leads and
            # ships to the other's endpoint ("mds" on standby_port + 1, "mds-standby" on
            # standby_port); a deposed one exits 77 and comes back as the standby
            own = {"mds": self.standby_port + 1, "mds-standby": self.standby_port}
            for name, peer in (("mds", "mds-standby"), ("mds-standby", "mds")):
                argv = mds if name == "mds" else [
                    *mds[:mds.index("--data-dir")], "--data-dir",
                    str(self.data_dir / "mds-standby"), *mds[mds.index("--data-dir") + 2:]]
                specs[name] = argv + [
                    "--standby", "--ha-name", name,
                    "--standby-endpoint", f"tcp://127.0.0.1:{own[name]}",
                    "--ha-peer", f"tcp://127.0.0.1:{own[peer]}"]
        elif self.standby_port:     # no etcd: a passive standby, never taking over
            endpoint = f"tcp://127.0.0.1:{self.standby_port}"
            mds += ["--standby-endpoint", endpoint]
            specs["mds-standby"] = [py, "-m", "mds", *self._common(), "--standby",
                                    "--standby-endpoint", endpoint, "--data-dir",
                                    str(self.data_dir / "mds-standby"), *hb]
        specs.setdefault("mds", mds)
        for node in self.node_ids:
            specs[node] = [py, "-m", "datanode", *self._common(), *reach,
                           *(["--broker-client", self.broker] if reach else []), "--id", node,
                           "--data-dir", str(self.data_dir / "dn" / node), *hb]
        if self.viz:
            specs["viz"] = [py, "-m", "streamlit", "run", str(ROOT / "viz" / "app.py"),
                            "--server.address", "127.0.0.1", "--server.port", str(self.viz_port),
                            "--server.headless", "true", "--browser.gatherUsageStats", "false",
                            "--client.toolbarMode", "viewer",
                            "--", "--broker", self.broker, "--events", self.endpoints["events_out"],
                            *(["--key", str(self.key)] if self.security else ["--security", "off"])]
        if self.s3_port:
            specs["s3"] = [py, "-m", "client.s3.server", "--port", str(self.s3_port),
                           "--broker", self.broker, "--keys-dir", str(self.data_dir / "keys"),
                           *(["--key", str(self.key)] if self.security else [])]
        if self.metrics_port:
            # the second MDS (HA) after the others: it serves metrics as a standby too
            for i, name in enumerate(["broker", "mds", *self.node_ids,
                                      *list(self.broker_ports)[1:],
                                      *(["mds-standby"] if "mds-standby" in specs else [])]):
                specs[name] += ["--metrics-port", str(self.metrics_port + i)]
        if self.mount_dir:
            Path(self.mount_dir).mkdir(parents=True, exist_ok=True)
            specs["mount"] = [py, "-m", "client.cli", "--broker", self.broker,
                              *(["--key", str(self.key)] if self.security else []),
                              "mount", "-f", str(Path(self.mount_dir).resolve())]
        for name, argv in specs.items():
            argv = argv + self.extra.get(name, [])
            self.roles[name] = Role(name, argv, logs / f"{name}.log")
