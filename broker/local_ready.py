"""When a local cluster is ready: every worker role answers through every running
broker and the MDS sees every DataNode up; a mount is mounted. The part of
broker.local_cluster.Cluster that waits (a mixin: it uses the Cluster's roles and keys).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import config
from broker.limits import MDS_SERVICE, datanode_service

if TYPE_CHECKING:
    from broker.curve import CurveKeys
    from broker.local_roles import Role


class Readiness:
    """Waiting for the roles to serve, mixed into Cluster."""

    if TYPE_CHECKING:    # what this part uses of the Cluster
        roles: dict[str, Role]
        mount_dir: str | None
        broker: str
        broker_ports: dict[str, int]
        node_ids: list[str]

        @property
        def curve(self) -> CurveKeys | None: ...

    def _wait_mounted(self, timeout: float) -> None:
        role, path = self.roles["mount"], str(Path(self.mount_dir or "").resolve())
        deadline = time.monotonic() + timeout
        while not os.path.ismount(path):
            if not role.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the mount at {path} did not start; see {role.log_path}")
            time.sleep(0.05)

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
