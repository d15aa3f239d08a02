"""What people read: human sizes and times, error wording, JSON output, the status and fsck
tables, and the progress bar. Shared by the CLI and the visualizer (viz/), so both say
"1.5 KiB" and format times the same way; the formatting helpers are pure.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any, Callable, Iterator

import click

from mds.perms import format_mode

DATE_TIME = "%Y-%m-%d %H:%M:%S"
CLOCK = "%H:%M:%S"
FSCK_LISTS = ("missing", "under_replicated", "corrupt", "orphans")


# ---------------------------------------------------------------------------------------
# Pure formatting

def human(n: float) -> str:
    """A byte count for people: "0 B", "1023 B", "1.5 KiB" ... "3.0 TiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def when(ts: Any, fmt: str = DATE_TIME, missing: str = "-") -> str:
    """A unix time in local time, or `missing` when it is not a usable time."""
    try:
        return datetime.fromtimestamp(float(ts)).strftime(fmt)
    except (TypeError, ValueError, OverflowError, OSError):
        return missing


def describe(exc: OSError) -> str:
    """'<path>: <reason>' from an OSError, without the '[Errno N]' noise."""
    reason = exc.strerror or str(exc) or exc.__class__.__name__
    if exc.filename is not None and str(exc.filename) not in reason:
        reason = f"{exc.filename}: {reason}"
    return reason


def count(v: Any) -> Any:
    """Health entries are counts from `status` and lists from `fsck`: show a number."""
    return len(v) if isinstance(v, (list, tuple, dict)) else v


def stat_lines(info: dict, path: str) -> Iterator[str]:
    """`stat`: size, type, mtime; for a file also replication, block size and one row per
    block (index, id, size, CRC32C, replicas)."""
    yield f"path:        {info.get('path', path)}"
    yield f"type:        {info.get('type')}"
    yield f"size:        {info.get('size', 0)} bytes ({human(info.get('size', 0))})"
    yield f"mtime:       {when(info.get('mtime'))}"
    if "mode" in info:
        yield f"ctime:       {when(info.get('ctime'))}"
        yield f"mode:        {mode_text(info)}"
        yield f"owner:       {info.get('owner')}"
        yield f"group:       {info.get('group')}"
    if info.get("type") != "file":
        if "entries" in info:
            yield f"entries:     {info['entries']}"
        return
    blocks = info.get("blocks") or []
    yield f"replication: {info.get('replication')}"
    yield f"block size:  {info.get('block_size')} bytes ({human(info.get('block_size', 0))})"
    if "blocks" not in info:
        yield "blocks:      (not shown: no read permission)"
        return
    yield f"blocks:      {len(blocks)}"
    for i, b in enumerate(blocks):
        replicas = ",".join(b.get("replicas") or []) or "(none)"
        yield (f"  {i:>4}  {b['id']}  {b['size']:>10}  crc32c {b['checksum']:08x}  "
               f"{replicas}")


def mode_text(info: dict) -> str:
    """`0644 (-rw-r--r--)` for stat."""
    mode = int(info.get("mode") or 0)
    return f"{mode:04o} ({format_mode(mode, is_dir=info.get('type') == 'dir')})"


def ls_line(e: dict, long: bool) -> str:
    """One `ls` entry: its name (directories end with '/'); with long, the mode string,
    owner, group, replication, size and mtime before it (as ls -l)."""
    name = e["name"] + ("/" if e.get("type") == "dir" else "")
    if not long:
        return name
    is_dir = e.get("type") == "dir"
    kind = (format_mode(int(e["mode"]), is_dir=is_dir) if "mode" in e
            else "d" if is_dir else "-")
    repl = e.get("replication")
    return (f"{kind} {e.get('owner', '-'):<8} {e.get('group', '-'):<8} "
            f"{repl if repl is not None else '-':>3} {e.get('size', 0):>12}  "
            f"{when(e.get('mtime'))}  {name}")


def drain_text(node: dict) -> str:
    """"draining (12 blocks left)", "drained", or "-" for a node in service."""
    state, left = node.get("drain"), node.get("drain_left")
    if not state:
        return "-"
    return f"{state} ({left} blocks left)" if state == "draining" and left else state


def node_lines(nodes: list) -> Iterator[str]:
    """The DataNode table of `status` and `node ls`."""
    yield (f"{'NODE':<12} {'STATE':<6} {'CAPACITY':>11} {'USED':>11} {'BLOCKS':>8}  DRAIN")
    for n in nodes:
        yield (f"{n.get('id', '?'):<12} {n.get('state', '?'):<6} "
               f"{human(n.get('capacity') or 0):>11} {human(n.get('used') or 0):>11} "
               f"{n.get('blocks', 0):>8}  {drain_text(n)}")


def status_lines(info: dict) -> Iterator[str]:
    """The `status` table: one row per DataNode, a totals line, the health line."""
    nodes = info.get("nodes") or []
    yield from node_lines(nodes)
    up = sum(1 for n in nodes if n.get("state") == "up")
    yield (f"datanodes: {up} up / {len(nodes)}   files: {info.get('files', '?')}   "
           f"dirs: {info.get('dirs', '?')}   blocks: {info.get('blocks', '?')}")
    health = info.get("health")
    if isinstance(health, dict):
        yield "health: " + "   ".join(f"{k.replace('_', ' ')}: {count(v)}"
                                      for k, v in health.items())
    elif health is not None:
        yield f"health: {health}"
    brokers = info.get("brokers")
    if isinstance(brokers, list) and brokers:
        up = sum(1 for b in brokers if isinstance(b, dict) and b.get("up"))
        yield f"brokers: {up} up / {len(brokers)}   " + "   ".join(
            f"{b.get('endpoint', '?')} {'up' if b.get('up') else 'unreachable'}"
            for b in brokers if isinstance(b, dict))
    ha = info.get("ha")
    if isinstance(ha, dict):     # an MDS with leadership from etcd (mds/election.py)
        line = (f"mds: {ha.get('state', '?')}   epoch: {ha.get('epoch') or '-'}   "
                f"lease left: {ha.get('lease_left', '?')} s")
        if ha.get("etcd_error"):
            line += f"   etcd: {ha['etcd_error']}"
        if ha.get("alone_mark"):    # no standby may take over (mds/election.py)
            line += "   ran-alone mark set"
        yield line
        sb = ha.get("standby")
        if isinstance(sb, dict):    # synchronous WAL shipping (mds/replication.py)
            line = f"standby: {sb.get('state', '?')}   at seq {sb.get('acked_seq', '?')}"
            if sb.get("state") != "in_sync":
                line += (f" for {sb.get('for', '?')} s ({sb.get('reason') or '-'}): the "
                         "active runs alone")
            if sb.get("takeover"):     # the standby's own word (mds/standby.py)
                line += f"; standby: {sb['takeover']}"
            yield line


def leadership_lines(etcd: str, leader: str | None, mark: dict | None,
                     error: str | None = None) -> list[str]:
    """Why no MDS answers, from etcd itself (read before asking the MDS, which may not be
    there): `leader` the leader key's value (None: nobody leads), `mark` the ran-alone mark
    ({name, epoch, since, last}; {} when unreadable), `error` why etcd did not answer.
    Empty when an MDS leads and no mark is set: nothing to explain."""
    if error is not None:
        return [f"ha: {error}: no MDS can lead until etcd answers"]
    if mark is None:
        return [] if leader else [f"ha: no MDS leads (etcd {etcd}): an election is under "
                                  "way, or no MDS is running"]
    who = mark.get("name") or "the MDS that wrote it"
    alone = (f"{who} acknowledged writes without its standby from seq "
             f"{mark.get('since', '?')} (epoch {mark.get('epoch', '?')})" if mark
             else "a ran-alone mark is set but unreadable")
    if leader:
        return [f"ha: {leader} leads; {alone}: no other MDS may take over until its "
                "standby is in sync again"]
    return [f"ha: no MDS leads (etcd {etcd}): {alone}, and only an MDS holding those "
            f"writes may lead: start {who} again",
            f"ha: if its disk is lost for good, `python -m mds --etcd {etcd} "
            "--drop-alone-mark` lets a standby lead without those writes"]


def role_lines(roles: dict) -> Iterator[str]:
    """The supervised roles of a local cluster: state, pid, restarts, the last exit."""
    width = max([8, *(len(str(name)) for name in roles)])    # mds-standby is 11
    for name, r in sorted(roles.items()):
        if not isinstance(r, dict):
            continue
        line = f"role {name:<{width}} {r.get('state', '?'):<10} pid {r.get('pid') or '-':<8}"
        line += f" restarts {r.get('restarts', 0)}"
        if r.get("last_exit"):
            at = r.get("last_exit_at")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "?"
            line += f"   last: {name} stopped: {r['last_exit']} at {when}"
        yield line


def fsck_lines(report: dict, healthy: bool) -> Iterator[str]:
    """The `fsck` report: the verdict, each problem list (first 10 items), other counts."""
    yield "HEALTHY" if healthy else "UNHEALTHY"
    for key in FSCK_LISTS:
        items = report.get(key)
        if items is None:
            continue
        yield f"  {key.replace('_', '-'):<17} {count(items)}"
        if isinstance(items, (list, tuple)):
            for item in items[:10]:
                yield f"      {item if not isinstance(item, dict) else _brief(item)}"
            if len(items) > 10:
                yield f"      ... {len(items) - 10} more"
    for key, value in report.items():
        if key != "healthy" and key not in FSCK_LISTS:
            yield f"  {key.replace('_', '-'):<17} {count(value)}"


def _brief(item: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in item.items())


# ---------------------------------------------------------------------------------------
# Terminal output

def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


class Progress:
    """A progress bar with rate and ETA on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._done = 0
        self._t0 = time.monotonic()

    def __enter__(self) -> Callable[[int, int | None], None] | None:
        return self.update if self.enabled else None

    def update(self, done: int, total: int | None) -> None:
        if self._bar is None:
            # click's own ETA appears only after a second of samples; ours is there at once
            self._bar = click.progressbar(length=total or None, label=self.label,
                                          file=sys.stderr, show_eta=False, show_percent=True,
                                          item_show_func=lambda s: s)
            self._bar.__enter__()
        rate = done / max(1e-6, time.monotonic() - self._t0)
        info = f"{human(rate)}/s"
        if total and rate > 0:
            left = int(max(0, total - done) / rate)
            info += f"  ETA {left // 3600:d}:{left // 60 % 60:02d}:{left % 60:02d}"
        self._bar.update(done - self._done, info)
        self._done = done

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
