"""`aegisfs status`, `fsck` and `node ls|drain`: the cluster rather than its files - the
DataNodes, the supervised roles of a local cluster, block health, and draining a node
before it is removed. Registered on the root group by cli.py.
"""
from __future__ import annotations

import click

from .cli_errors import EXIT_FAILED, Failure
from .cli_state import State, pass_state
from .output import (drain_text, emit_json, fsck_lines, leadership_lines, node_lines, role_lines,
                     status_lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def status(state: State, as_json: bool) -> None:
    """The DataNodes (up/down, capacity, used, blocks) and the replication health;
    for a cluster run by run_cluster.py here, its roles, restarts and why they stopped.
    With HA ([ha] etcd, or a local cluster run with --ha), first what etcd says when no
    MDS leads: which MDS may lead and why (the ran-alone mark), and the way out.

    \b
    Example:
      aegisfs status
    """
    # a local cluster's supervisor (run_cluster.py) says which roles restarted and why:
    # shown first, since it is what explains an MDS that does not answer
    from broker.curve import keys_dir
    from broker.supervise import read_state
    supervised = read_state(keys_dir(state.cfg.get("security", {})).parent)
    if supervised and not as_json:
        for line in role_lines(supervised["roles"]):
            click.echo(line)
    # with HA, etcd says who leads even when no MDS answers (the request below then
    # waits for one): which MDS the ran-alone mark names, and the way out
    ha = state.cfg["ha"]          # the config's, over the built-in defaults
    etcd = ha["etcd"] or ((supervised or {}).get("ha") or {}).get("etcd")
    if etcd and not as_json:
        for line in leadership(str(etcd), str(ha["key"])):
            click.echo(line, err=True)
    info = {**state.fs.status(), "brokers": state.fs.brokers()}
    if as_json:
        emit_json({**info, "roles": supervised["roles"]} if supervised else info)
        return
    for line in status_lines(info):
        click.echo(line)


def leadership(etcd: str, key: str) -> list[str]:
    """leadership_lines for the leader key and ran-alone mark etcd holds now."""
    from mds.election import read_mark
    from mds.etcd import EtcdUnavailable, Gateway
    gateway = Gateway(etcd, timeout=1.0)
    try:
        held, mark = gateway.get(key.encode()), gateway.get(key.encode() + b"/alone")
    except EtcdUnavailable as exc:
        return leadership_lines(etcd, None, None, str(exc))
    leader = held.value.decode(errors="replace") if held else None
    return leadership_lines(etcd, leader, None if mark is None else
                            (read_mark(mark.value) or {}))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--repair", is_flag=True, help="Schedule re-replication and orphan deletion.")
@pass_state
def fsck(state: State, as_json: bool, repair: bool) -> None:
    """Check every block: missing, under-replicated, corrupt and orphan blocks. Exits 1
    when the file system is not healthy.

    \b
    Example:
      aegisfs fsck --json
      aegisfs fsck --repair
    """
    report = state.fs.fsck(repair=repair)
    healthy = bool(report.get("healthy"))
    if as_json:
        emit_json({**report, "healthy": healthy})
    else:
        for line in fsck_lines(report, healthy):
            click.echo(line)
    if not healthy:
        raise click.exceptions.Exit(EXIT_FAILED)


@click.group()
def node() -> None:
    """The DataNodes: list them, drain one before removing it.

    \b
    Example:
      aegisfs node ls
      aegisfs node drain dn3 --wait
    """


@node.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_state
def node_ls(state: State, as_json: bool) -> None:
    """Every DataNode the MDS knows: up/down, usage, and drain progress.

    \b
    Example:
      aegisfs node ls
    """
    nodes = state.fs.status().get("nodes") or []
    if as_json:
        emit_json(nodes)
        return
    for line in node_lines(nodes):
        click.echo(line)


@node.command("drain")
@click.argument("node_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait, showing progress, until it is drained.")
@click.option("--max-wait", type=float, metavar="SECONDS",
              help="With --wait: give up (exit 1) after this long [default: no limit].")
@click.option("--cancel", is_flag=True, help="Stop draining: the node takes new blocks again.")
@pass_state
def node_drain(state: State, node_id: str, wait: bool, max_wait: float | None,
               cancel: bool) -> None:
    """Copy DataNode ID's blocks to the others, then drop them from it. Once drained
    it can be stopped and removed with nothing under-replicated. An MDS restart
    forgets a drain: run it again.

    \b
    Example:
      aegisfs node drain dn3 --wait && systemctl stop aegisfs-datanode@dn3
    """
    import time
    info = state.fs.drain(node_id, cancel=cancel)
    if cancel or not wait:
        click.echo(f"{node_id}: {drain_text(info) if not cancel else 'in service'}")
        return
    started, shown = time.monotonic(), None
    while info.get("drain") != "drained":
        if max_wait is not None and time.monotonic() - started > max_wait:
            raise Failure(f"node drain: {node_id} not drained after {max_wait:g} s "
                          f"({drain_text(info)})")
        text = drain_text(info)
        if text != shown:
            click.echo(f"{node_id}: {text}", err=True)
            shown = text
        time.sleep(1.0)
        # follow through status, not by asking again: a drain cancelled meanwhile stays so
        found = [n for n in state.fs.status().get("nodes") or [] if n.get("id") == node_id]
        if not found or not found[0].get("drain"):
            raise Failure(f"node drain: {node_id} is no longer draining (cancelled, or the "
                          "MDS restarted: run the drain again)")
        info = found[0]
    click.echo(f"{node_id}: drained after {time.monotonic() - started:.0f} s")
