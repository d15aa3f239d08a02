"""Network namespaces as hosts: one namespace per host, each joined by a veth pair to a
bridge inside a hub namespace of its own, so nothing is added to the machine's own network.
Partitions (link down, one-way nftables drops) and rate limits (tc tbf) act on one host.

Names carry a per-run prefix (`amh<pid>-`): a crashed run leaves nothing the next run trips
on, and `clean_stale()` removes what runs whose process is gone left behind.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

PREFIX = "amh"                       # every namespace of these tests starts with it
SUBNET = "198.18.0"                  # RFC 2544 benchmarking range: never routed anywhere
_RUN = re.compile(rf"{PREFIX}(\d+)-")


class NetError(RuntimeError):
    """An ip/nft/tc command failed: the message names the command and its stderr."""


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise NetError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
    return out


def ensure_tools() -> None:
    """iproute2 and nftables, installed with apt-get when missing (as CI does)."""
    missing = [pkg for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"),
                                     ("tc", "iproute2"))
               if shutil.which(tool) is None]
    if missing and shutil.which("apt-get"):
        log.warning("installing %s with apt-get", " ".join(sorted(set(missing))))
        subprocess.run(["apt-get", "install", "-y", "-q", *sorted(set(missing))],
                       capture_output=True, timeout=600)


def why_unavailable() -> str | None:
    """None when this machine can make network namespaces, else the reason it cannot."""
    ensure_tools()
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed and could not be installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    out = run("ip", "netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"cannot create a network namespace: {out.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def clean_stale() -> list[str]:
    """Delete namespaces of earlier runs whose process no longer exists."""
    removed = []
    for name in list_namespaces():
        m = _RUN.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_inside(name)
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    if removed:
        log.warning("removed stale namespaces %s", removed)
    return removed


def list_namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_inside(ns: str) -> None:
    """SIGKILL what still runs in namespace `ns` (a crashed run's roles), by PID."""
    out = run("ip", "netns", "pids", ns, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Host:
    name: str
    ns: str            # the namespace
    addr: str          # its address on the bridge
    port: str          # its veth end in the hub namespace (the switch port)


@dataclass
class Network:
    """Hosts on one bridge. Call `close()` (idempotent) to remove all of it."""

    run_id: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    _hub: str = ""

    def __post_init__(self) -> None:
        self._hub = self.run_id + "hub"
        if self._hub in list_namespaces():    # this process's own earlier network
            self._remove_all()
        run("ip", "netns", "add", self._hub)
        self._ip(self._hub, "link", "add", "br0", "type", "bridge")
        self._ip(self._hub, "link", "set", "br0", "up")

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        run("ip", "-n", ns, *args)

    def add_host(self, name: str, last_octet: int) -> Host:
        ns = self.run_id + name
        port = f"p{name}"[:15]
        addr = f"{SUBNET}.{last_octet}"
        run("ip", "netns", "add", ns)
        # created inside the hub: the machine's own namespace never sees these links
        self._ip(self._hub, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
        self._ip(self._hub, "link", "set", port, "master", "br0", "up")
        self._ip(ns, "link", "set", "lo", "up")
        self._ip(ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        self._ip(ns, "link", "set", "eth0", "up")
        host = self.hosts[name] = Host(name, ns, addr, port)
        return host

    # -- processes -------------------------------------------------------------------------

    def spawn(self, host: str, argv: Sequence[str], *, log_path: Path | None = None,
              env: dict | None = None, cwd: str | None = None,
              stdout: int | None = None) -> subprocess.Popen:
        """Run argv inside `host`'s namespace (ip netns exec execs it: same PID)."""
        out = open(log_path, "ab") if log_path else stdout
        proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[host].ns, *argv],
                                stdout=out, stderr=subprocess.STDOUT if log_path else None,
                                env=env, cwd=cwd)
        if log_path:
            out.close()                     # the child holds its own descriptor
        self.procs.append(proc)
        return proc

    def exec(self, host: str, argv: Sequence[str], *, timeout: float, env: dict | None = None,
             input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run argv in `host` to completion (killed by PID at the timeout)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[host].ns, *argv],
                                stdin=subprocess.PIPE if input is not None else None,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.procs.append(proc)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise TimeoutError(f"{' '.join(argv[:6])} ... in {host} still running after "
                               f"{timeout} s; stderr: {err.decode(errors='replace')[-500:]}")
        finally:
            self.procs.remove(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    @staticmethod
    def stop_proc(proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    # -- faults ----------------------------------------------------------------------------

    def link(self, host: str, up: bool) -> None:
        """Cut (or restore) `host`'s cable at the switch: a full partition."""
        self._ip(self._hub, "link", "set", self.hosts[host].port, "up" if up else "down")

    def one_way(self, host: str, drop: str | None) -> None:
        """nftables inside `host`: drop "in" (it can send, not receive), "out" (it can
        receive, not send), or None to remove the rule."""
        ns = self.hosts[host].ns
        run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "amh", check=False)
        if drop is None:
            return
        hook, match = {"in": ("input", "iifname"), "out": ("output", "oifname")}[drop]
        rules = (f"table inet amh {{\n chain c {{\n  type filter hook {hook} priority 0;\n"
                 f"  policy accept;\n  {match} \"eth0\" drop\n }}\n}}\n")
        out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules,
                             capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise NetError(f"nft in {ns}: {out.stderr.strip()}")

    def rate_limit(self, host: str, rate: str | None) -> None:
        """tc tbf on both ends of `host`'s link (rate e.g. "100mbit"), None to remove."""
        ends = [(self._hub, self.hosts[host].port), (self.hosts[host].ns, "eth0")]
        for ns, dev in ends:
            run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
                check=False)
            if rate:
                run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
                    "tbf", "rate", rate, "burst", "256kb", "latency", "100ms")

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop_proc(proc, grace=3.0)
        self.procs.clear()
        self._remove_all()

    def _remove_all(self) -> None:
        names = [n for n in list_namespaces() if n.startswith(self.run_id)]
        for ns in names:
            _kill_inside(ns)        # anything a test started there and lost track of
        deadline = time.monotonic() + 5
        for ns in names:
            while run("ip", "netns", "del", ns, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    log.error("could not delete namespace %s", ns)
                    break
                time.sleep(0.1)
        self.hosts.clear()
