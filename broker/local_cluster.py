"""A local AegisFS cluster as child processes: `Cluster` (roles on one base port and one
data directory; keys, start/stop/kill/restart by PID, supervision turns and the state
file). What run_cluster.py runs and what the tests and bench/ use; the roles' command
lines are in broker/local_roles.py, the waiting for readiness in broker/local_ready.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import config
from broker.keys import ADMIN, KeyStore
from broker.local_ready import Readiness
from broker.local_roles import ROOT, Role, RoleDefinitions
from broker.supervise import Supervisor, exit_reason, last_line, write_state


@dataclass
class Cluster(RoleDefinitions, Readiness):
    """A set of role processes sharing one base port and one data directory."""

    data_dir: Path
    base_port: int
    datanodes: int = 3
    config_path: str | None = None
    heartbeat: float | None = None        # seconds; tests use short ones
    replication: int | None = None
    viz: bool = False
    viz_port: int = 8501
    s3_port: int | None = None            # also run the S3 gateway (client/s3) on this port
    mount_dir: str | None = None          # also mount the cluster there (aegisfs mount -f)
    extra: dict[str, list[str]] = field(default_factory=dict)   # role name -> extra flags
    env: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    security: bool = True                 # CURVE on every socket; False for benchmarks
    # restart roles that exit unexpectedly (supervise_turn). Off in tests: they kill -9
    # roles on purpose through kill()/stop_role(), which supervision would never undo
    # anyway, but a test decides itself when a role comes back.
    supervise: bool = False
    # Prometheus metrics: the broker on this port, the MDS on +1, DataNode i on +1+i
    # (brokers 2..N after the DataNodes)
    metrics_port: int | None = None
    # brokers on consecutive base ports P, P+4, ...; every other role connects to all
    brokers: int = 1
    # run etcd (client port etcd_port, peer port +1, data in <data_dir>/etcd) as a role and
    # let the MDS lead only while it holds the leader lease there ([ha]); None = no etcd
    etcd_port: int | None = None
    # run a standby MDS ("mds-standby", data in <data_dir>/mds-standby) taking the active's
    # WAL batches on this port (synchronous shipping, [ha] standby); None = no standby
    standby_port: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.brokers < 1:
            raise ValueError("at least one broker")
        # "broker" (base port P), then "broker2" (P+4), ...: the first keeps its old name
        self.broker_ports = {("broker" if i == 0 else f"broker{i + 1}"): self.base_port + 4 * i
                             for i in range(self.brokers)}
        self.endpoints = config.brokers_endpoints(
            config.endpoints_for_base_port(port)["client"] for port in self.broker_ports.values())
        # every broker's client endpoint, comma-separated (one broker: just its endpoint)
        self.broker = self.endpoints["client"]
        self.node_ids = [f"dn{i + 1}" for i in range(self.datanodes)]
        self.keys_dir = self.data_dir / "keys"
        self.supervisor = Supervisor()

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    # -- keys ----------------------------------------------------------------------------

    @property
    def key(self) -> Path | None:
        """The admin user's key file (None with security off): what clients pass as key=."""
        return self.keys_dir / "users" / f"{ADMIN}.key_secret" if self.security else None

    @property
    def curve(self):
        """The admin user's CURVE keys for broker.client.Client(curve=...), or None."""
        from broker.curve import CurveKeys
        return CurveKeys.load(self.key) if self.security else None

    def member_curve(self, service: str):
        """CURVE keys of member `service` ("mds", "dn.<id>"; a DataNode id that has no key
        yet gets one), for tests acting as a member; None with security off."""
        from broker.curve import CurveKeys
        if not self.security:
            return None
        store = KeyStore(self.keys_dir)
        path = store.member_key_path(service)
        if not path.exists():
            store.add_node(service[3:])
        return CurveKeys.load(path, self.keys_dir / "broker.key")

    def ensure_keys(self) -> list[str]:
        """Create what is missing of the cluster's keys (idempotent); returns what was made."""
        return KeyStore(self.keys_dir).ensure_cluster(self.node_ids) if self.security else []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "Cluster":
        self.ensure_keys()
        self._define()
        # with HA the standby starts once "mds" leads: the first to campaign wins
        later = ("mount", "mds-standby") if self.etcd_port else ("mount",)
        for name in self.roles:
            if name not in later:
                self.start_role(name)
        self.wait_ready(timeout)
        if "mds-standby" in self.roles and "mds-standby" in later:
            self.start_role("mds-standby")
        if "mount" in self.roles:          # it needs a serving MDS to start
            self.start_role("mount")
            self._wait_mounted(timeout)
        return self

    def start_role(self, name: str) -> Role:
        role = self.roles[name]
        if role.alive():
            return role
        role.log_file = open(role.log_path, "ab")
        role.log_start, role.stopping = role.log_file.tell(), False
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        role.proc = subprocess.Popen(role.argv, stdout=role.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(ROOT), env=env)
        self.supervisor.started(name, time.monotonic())
        return role

    def supervise_turn(self, report: Any = None) -> list[str]:
        """One look at the children: each that exited unexpectedly gets its reason
        recorded (and passed to `report`) and a restart time; each whose time has come is
        started. Writes the state file when anything changed; returns the roles that
        exited in this turn."""
        now, changed, died = time.monotonic(), False, []
        for role in self.roles.values():
            if role.proc is None or role.alive() or role.stopping:
                continue
            code = role.proc.returncode
            reason = exit_reason(code, last_line(role.log_path, role.log_start))
            pid = role.pid
            role.proc = None
            if role.log_file:
                role.log_file.close()
                role.log_file = None
            died.append(role.name)
            changed = True
            if self.supervise:
                delay = self.supervisor.exited(role.name, now, time.time(), reason)
                if report:
                    report(f"ERROR: {role.name} (pid {pid}) died: {role.name} stopped: "
                           f"{reason}; see {role.log_path}; restarting in {delay:g}s")
            elif report:
                report(f"ERROR: {role.name} (pid {pid}) died with exit code {code} "
                       f"({reason}); see {role.log_path}")
        for name in self.supervisor.due(now):
            if self.roles[name].proc is None:
                self.start_role(name)
                changed = True
        if changed:
            self.write_status()
        return died

    def write_status(self) -> None:
        """<data-dir>/supervisor.json: each role's pid, state, restarts, last exit."""
        states = self.supervisor.snapshot()
        roles = {}
        for name, role in self.roles.items():
            st = states.get(name, {})
            roles[name] = {"pid": role.pid if role.alive() else None,
                           "state": "up" if role.alive() else
                           "restarting" if st.get("next_start") is not None else "down",
                           "restarts": st.get("restarts", 0),
                           "last_exit": st.get("last_exit"),
                           "last_exit_at": st.get("last_exit_at")}
        try:
            write_state(self.data_dir, roles, {"etcd": self.etcd_url} if self.etcd_port
                        else None)
        except OSError as exc:    # a full disk must not stop the supervision itself
            print(f"run_cluster: cannot write the supervisor state: {exc}", file=sys.stderr)

    def stop_role(self, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Stop one role by PID (SIGKILL after `timeout`); returns its exit code."""
        role = self.roles[name]
        if role.proc is None:
            return None
        role.stopping = True
        if role.alive():
            role.proc.send_signal(sig)
            try:
                role.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()
        if role.log_file:
            role.log_file.close()
            role.log_file = None
        return role.proc.returncode

    def kill(self, name: str) -> None:
        self.stop_role(name, signal.SIGKILL)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        self.stop_role(name)
        self.start_role(name)
        if name not in ("viz", "mount", "etcd", "mds-standby") and name not in self.broker_ports:
            self.wait_ready(timeout, [name])

    def stop(self) -> None:
        # Workers first so they can say goodbye to a live broker; the broker last.
        # the mount first: its unmount still reaches the cluster
        # the standby after the active (its last batches still ship); etcd after the MDS:
        # a stopping leader still resigns its lease there
        late = ("mount", "etcd", "mds-standby")
        order = (["mount"] + [n for n in self.roles if n not in late and n not in self.broker_ports]
                 + ["mds-standby"] + list(self.broker_ports) + ["etcd"])
        if self.etcd_port:
            # both HA MDS at once: one stopped after the other would hand over to it first
            for name in ("mds", "mds-standby"):
                role = self.roles.get(name)
                if role is not None and role.proc is not None and role.alive():
                    role.stopping = True
                    role.proc.send_signal(signal.SIGTERM)
        for name in order:
            if name in self.roles:
                self.stop_role(name)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
