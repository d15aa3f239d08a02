"""DOT text for one file's layout: the file, its blocks in order (size, short checksum),
and the DataNodes holding each replica, coloured by health.

Pure string building; the page hands the result to `st.graphviz_chart`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from .state import human_bytes, plural, short_checksum, short_id

MAX_BLOCKS = 16          # a 1 GiB file has 256 blocks: past this the graph is unreadable

COLOR_OK = "#e3f2e1"
COLOR_UNDER = "#ffe0b2"      # fewer replicas than the file's replication factor
COLOR_MISSING = "#ffcdd2"    # no replica at all
COLOR_NODE_UP = "#e1ecf7"
COLOR_NODE_DOWN = "#d9d9d9"


def quote(text: Any) -> str:
    """A DOT double-quoted string; names come from users, so escape everything that could
    end the string or the statement."""
    s = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + s.replace("\r", "").replace("\n", "\\n") + '"'


def _label(*lines: str) -> str:
    return quote("\n".join(lines))


def _replica_ids(replicas: Any) -> list[str]:
    """Replica lists hold node ids; accept {"node"/"id": ...} maps too, in case they grow."""
    out = []
    for r in replicas or ():
        if isinstance(r, Mapping):
            r = r.get("node", r.get("id"))
        if r is not None:
            out.append(str(r))
    return out


def file_dot(stat: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]] = (),
             max_blocks: int = MAX_BLOCKS) -> str:
    """DOT for `stat` (the `stat` result: path, size, replication, blocks). `nodes` (the
    `status` nodes: id, state) colours DataNodes that are not up."""
    states = {str(n.get("id")): str(n.get("state", "?")) for n in nodes}
    blocks = list(stat.get("blocks") or [])
    replication = stat.get("replication")
    shown, hidden = blocks[:max_blocks], blocks[max_blocks:]

    out = ["digraph aegisfs {",
           # ordering=out keeps the blocks in file order, top to bottom.
           '  graph [rankdir=LR, ordering=out, bgcolor="transparent", nodesep=0.25, '
           'ranksep=0.6];',
           '  node [fontname="Helvetica", fontsize=12, style=filled, penwidth=0.8];',
           '  edge [color="#7a7a7a", arrowsize=0.6];']
    parts = [human_bytes(int(stat.get("size") or 0)), plural(len(blocks), "block")]
    if replication is not None:
        parts.append(f"R={replication}")
    out.append(f'  file [shape=note, fillcolor="#fff8e1", '
               f'label={_label(str(stat.get("path", "?")), " · ".join(parts))}];')

    holders: set[str] = set()
    edges: list[str] = []
    for i, block in enumerate(shown):
        replicas = _replica_ids(block.get("replicas"))
        holders.update(replicas)
        live = [r for r in replicas if states.get(r, "up") == "up"]
        if not live:
            color = COLOR_MISSING
        elif isinstance(replication, int) and len(live) < replication:
            color = COLOR_UNDER
        else:
            color = COLOR_OK
        name = quote(f"b{i}")
        label = _label(f"#{i} {short_id(block.get('id', '?'))}",
                       human_bytes(int(block.get("size") or 0)),
                       "crc " + short_checksum(block.get("checksum", "")))
        out.append(f'  {name} [shape=box, style="rounded,filled", fillcolor="{color}", '
                   f"label={label}];")
        edges.append(f"  file -> {name};")
        edges.extend(f"  {name} -> {quote('dn:' + r)};" for r in replicas)
    if hidden:
        size = sum(int(b.get("size") or 0) for b in hidden)
        label = _label("… " + plural(len(hidden), "more block"), human_bytes(size))
        out.append(f'  more [shape=box, style="dashed", fillcolor="white", label={label}];')
        edges.append("  file -> more;")

    for node in sorted(holders):
        state = states.get(node, "unknown" if states else "")
        fill = COLOR_NODE_UP if state in ("up", "") else COLOR_NODE_DOWN
        lines = [node] + ([state] if state else [])
        out.append(f"  {quote('dn:' + node)} [shape=cylinder, fillcolor=\"{fill}\", "
                   f"label={_label(*lines)}];")
    out.extend(edges)
    out.append("}")
    return "\n".join(out) + "\n"
