"""Start a local AegisFS cluster: the broker, the MDS and N DataNodes (and the viz on request).

    python run_cluster.py                 # 3 DataNodes, data in ./data, broker on :5550
    python run_cluster.py --reset --datanodes 5 --base-port 7000 --viz
    python run_cluster.py --ha            # + etcd (P+4, P+5) and a standby MDS: both MDS
                                          # campaign (standby endpoints P+6, P+7), the
                                          # winner leads, the other is its standby
    python run_cluster.py --brokers 2     # brokers on P and P+4 (with --ha, etcd moves to P+8)

Each role runs as a child process (`sys.executable -m <role>`) logging to
<data-dir>/logs/<role>.log. Security is on unless --insecure: the first start creates the
cluster's keys in <data-dir>/keys (broker, MDS, one per DataNode, the user "admin"). The
script prints one line with `ready`, the broker endpoint and the admin key file once every
role has registered, then supervises the children (--no-supervise: only watches them): a
child that exits unexpectedly is reported loudly with the reason (signal, or exit code and
the last line it logged) and started again with backoff (broker/supervise.py); the state,
restarts and reasons are in <data-dir>/supervisor.json, which `aegisfs status` shows.
Ctrl-C or SIGTERM stops them all. The `Cluster` class is also what the integration tests
use to run real clusters on free ports (with security on, unless security=False).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from broker import config
from broker.limits import MDS_SERVICE, datanode_service
from broker.keys import ADMIN, KeyStore
from broker.supervise import Supervisor, exit_reason, last_line, write_state

ROOT = Path(__file__).resolve().parent


# "LO-HI": take ports only from LO..HI-1. Several test runners on one host (pytest-xdist
# workers, tests/conftest.py) each get a range of their own below the kernel's ephemeral
# range, so neither another runner's probe nor an outgoing connection can take a port
# between the moment it is found free and the moment a role binds it.
PORTS_ENV = "AEGISFS_PORTS"
_cursor: dict[str, int] = {}


def _ports_free(base: int, span: int, host: str) -> bool:
    held = []
    try:
        for port in range(base, base + span):
            t = socket.socket()
            held.append(t)
            t.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for t in held:
            t.close()


def _free_in_range(window: str, span: int, host: str) -> int:
    try:
        lo, hi = (int(p) for p in window.split("-"))
    except ValueError:
        raise RuntimeError(f"{PORTS_ENV}={window!r}: expected LO-HI, e.g. 20000-23000") from None
    if not 0 < lo < hi - span <= 65536:
        raise RuntimeError(f"{PORTS_ENV}={window!r}: no room for {span} ports")
    # a random start: child processes that inherit the range do not all begin at LO
    base = _cursor.get(window) or lo + int.from_bytes(os.urandom(2), "big") % (hi - lo - span)
    for _ in range(hi - lo):
        if base + span > hi:
            base = lo
        if _ports_free(base, span, host):
            _cursor[window] = base + span
            return base
        base += 1
    raise RuntimeError(f"no {span} free ports in a row in {PORTS_ENV}={window}")


def free_base_port(span: int = 4, host: str = "127.0.0.1") -> int:
    """A port P such that P..P+span-1 are all free on `host` right now (within
    $AEGISFS_PORTS when it is set)."""
    window = os.environ.get(PORTS_ENV)
    if window:
        return _free_in_range(window, span, host)
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + span < 65000 and _ports_free(base, span, host):
            return base
    raise RuntimeError("no free block of ports found")


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


@dataclass
class Cluster:
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

    # -- role definitions ----------------------------------------------------------------

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
            for i, name in enumerate(["broker", "mds", *self.node_ids,
                                      *list(self.broker_ports)[1:]]):
                specs[name] += ["--metrics-port", str(self.metrics_port + i)]
        if self.mount_dir:
            Path(self.mount_dir).mkdir(parents=True, exist_ok=True)
            specs["mount"] = [py, "-m", "client.cli", "--broker", self.broker,
                              *(["--key", str(self.key)] if self.security else []),
                              "mount", "-f", str(Path(self.mount_dir).resolve())]
        for name, argv in specs.items():
            argv = argv + self.extra.get(name, [])
            self.roles[name] = Role(name, argv, logs / f"{name}.log")

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

    def _wait_mounted(self, timeout: float) -> None:
        role, path = self.roles["mount"], str(Path(self.mount_dir or "").resolve())
        deadline = time.monotonic() + timeout
        while not os.path.ismount(path):
            if not role.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the mount at {path} did not start; see {role.log_path}")
            time.sleep(0.05)

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
            write_state(self.data_dir, roles)
        except OSError as exc:    # a full disk must not stop the supervision itself
            print(f"run_cluster: cannot write the supervisor state: {exc}", file=sys.stderr)

    def services(self, timeout: float = 1.0) -> dict[str, int]:
        from broker.client import Client
        with Client(self.broker, timeout=timeout, connect_timeout=timeout,
                    curve=self.curve) as c:
            return c.call("broker", {"op": "services"}).result["services"]

    def wait_ready(self, timeout: float = 30.0, roles: list[str] | None = None) -> None:
        """Until every worker role answers a request through the broker.

        Answering, not merely registered: after a kill -9 the broker may still list the
        dead predecessor until its heartbeats run out.
        """
        names = [r for r in (roles or self.roles)
                 if r not in ("viz", "s3", "mount", "etcd", "mds-standby")
                 and r not in self.broker_ports]
        probes = {r: (MDS_SERVICE, {"op": "ping"}) if r == "mds" else
                  (datanode_service(r), {"op": "info"})
                  for r in names}
        deadline = time.monotonic() + timeout
        # through every broker that runs: a worker is ready once each one routes to it
        through = [config.endpoints_for_base_port(port)["client"]
                   for name, port in self.broker_ports.items()
                   if name in self.roles and self.roles[name].alive()] or [self.broker]
        for endpoint in through[1:]:
            self._wait_answering(endpoint, probes, deadline)
        self._wait_answering(through[0], probes, deadline, nodes_up=True)

    def _wait_answering(self, endpoint: str, probes: dict, deadline: float,
                        nodes_up: bool = False) -> None:
        from broker.client import Client
        timeout = deadline - time.monotonic()
        last: Any = None
        with Client(endpoint, timeout=2.0, connect_timeout=1.0, curve=self.curve) as client:
            for name, (service, probe) in probes.items():
                while True:
                    role = self.roles[name]
                    if role.proc is not None and not role.alive():
                        raise RuntimeError(f"{name} exited with code {role.proc.returncode}; "
                                           f"see {role.log_path}")
                    try:
                        client.call(service, probe)
                        break
                    except OSError as exc:
                        last = exc
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster not ready after {timeout:.0f}s: {name} "
                                           f"did not answer through {endpoint} ({last})")
                    time.sleep(0.1)
            # The MDS places blocks only on DataNodes it has heard from: ready means it
            # sees every running DataNode up.
            nodes = {n for n in self.node_ids if self.roles.get(n) and self.roles[n].alive()}
            while nodes_up and "mds" in self.roles and self.roles["mds"].alive() and nodes:
                try:
                    status = client.call(MDS_SERVICE, {"op": "status"}).result
                    if nodes <= {n["id"] for n in status["nodes"] if n["state"] == "up"}:
                        break
                except OSError as exc:
                    last = exc
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster not ready after {timeout:.0f}s: the MDS does "
                                       f"not see every DataNode up ({last})")
                time.sleep(0.1)

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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--datanodes", "-n", default=3, show_default=True, help="Number of DataNodes.")
@click.option("--data-dir", default="data", show_default=True,
              help="Root data directory (a subdirectory per role, logs in <dir>/logs).")
@click.option("--base-port", default=config.DEFAULT_BASE_PORT, show_default=True,
              help="Broker client endpoint tcp://127.0.0.1:P; P+1..P+3 for workers and events.")
@click.option("--brokers", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Number of brokers, on base ports P, P+4, ...; every other role "
                   "connects to all of them ([broker] endpoints).")
@click.option("--reset", is_flag=True, help="Wipe the data directory first.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default configs/cluster.toml).")
@click.option("--replication", type=int, help="Default replication factor R.")
@click.option("--viz", is_flag=True, help="Also start the Streamlit visualizer.")
@click.option("--viz-port", default=8501, show_default=True)
@click.option("--insecure", is_flag=True,
              help="Security off: no CURVE, every client is admin. For benchmarks only.")
@click.option("--s3", "s3_port", type=int, metavar="PORT",
              help="Also run the S3 gateway on 127.0.0.1:PORT (see docs/s3.md).")
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="Restart a role that exits unexpectedly (with backoff).")
@click.option("--metrics-port", type=int, metavar="PORT",
              help="Prometheus metrics: the broker on 127.0.0.1:PORT, the MDS on PORT+1, "
                   "DataNode i on PORT+1+i.")
@click.option("--mount", "mount_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Also mount the cluster at DIR (FUSE; see docs/mount.md).")
@click.option("--ha", is_flag=True, help="Also run etcd (from the etcd-server package, data "
              "in <data-dir>/etcd, client port Q, peer port Q+1, where Q = P + 4 x brokers); "
              "two MDS campaign for the leader lease there: the one leading ships its WAL "
              "synchronously to the other (standby endpoints Q+3 for mds, Q+2 for "
              "mds-standby, data in <data-dir>/mds-standby), which takes over when the "
              "leader's lease lapses; a deposed one exits 77 and is restarted as the "
              "standby (see docs/architecture.md, HA).")
def main(datanodes: int, data_dir: str, base_port: int, brokers: int, reset: bool,
         config_path: str | None,
         replication: int | None, viz: bool, viz_port: int, insecure: bool,
         s3_port: int | None, supervise: bool, metrics_port: int | None,
         mount_dir: str | None, ha: bool) -> None:
    """Run a local AegisFS cluster until Ctrl-C.

    The first start creates the cluster's keys in <data-dir>/keys; the aegisfs CLI run
    from the same directory finds the admin key there by itself.

    Example: python run_cluster.py --reset --datanodes 3
    """
    root = Path(data_dir).resolve()
    if reset and root.exists():
        shutil.rmtree(root)
        click.echo(f"reset: removed {root}")
    root.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, base_port, datanodes, config_path=config_path,
                      replication=replication, viz=viz, viz_port=viz_port,
                      security=not insecure, s3_port=s3_port, supervise=supervise,
                      metrics_port=metrics_port, mount_dir=mount_dir, brokers=brokers,
                      etcd_port=base_port + 4 * brokers if ha else None,
                      standby_port=base_port + 4 * brokers + 2 if ha else None)
    if ha and not Path(ETCD).exists():
        click.echo(f"error: --ha needs {ETCD}: apt-get install etcd-server", err=True)
        sys.exit(1)
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    which = "broker" if brokers == 1 else f"{brokers} brokers"
    click.echo(f"starting {'etcd, ' if ha else ''}{which}, mds"
               f"{', a standby mds' if ha else ''} and {datanodes} DataNodes; "
               f"logs in {root / 'logs'} (Ctrl-C to stop)")
    if insecure:
        click.echo("WARNING: security is OFF (--insecure): no CURVE, no authentication, "
                   "every client is admin", err=True)
    try:
        made = cluster.ensure_keys()
        if made:
            click.echo(f"keys created in {cluster.keys_dir}: {', '.join(made)}")
        cluster.start()
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        cluster.stop()
        sys.exit(1)
    extra = f", viz http://127.0.0.1:{viz_port}" if viz else ""
    extra += f", s3 http://127.0.0.1:{s3_port}" if s3_port else ""
    extra += f", mounted at {Path(mount_dir).resolve()}" if mount_dir else ""
    key = f" key {cluster.key}" if cluster.key else " (security off)"
    click.echo(f"ready: broker{'s' if brokers > 1 else ''} {cluster.broker}{extra}{key}")
    sys.stdout.flush()
    status = 0
    cluster.write_status()
    try:
        while not stopping:
            if cluster.supervise_turn(report=lambda line: click.echo(line, err=True)):
                status = 1
            time.sleep(0.2)
    finally:
        click.echo("stopping cluster...")
        cluster.stop()
        click.echo("stopped")
    sys.exit(status)


if __name__ == "__main__":
    main()
