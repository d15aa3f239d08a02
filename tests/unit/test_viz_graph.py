"""viz/graph.py: DOT for file -> blocks -> DataNodes, with sizes, short checksums, health."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from viz.graph import COLOR_MISSING, COLOR_NODE_DOWN, COLOR_OK, COLOR_UNDER, file_dot, quote

B1, B2, B3 = "11" * 16, "22" * 16, "33" * 16


def stat(blocks, replication=2, path="/data/a.bin"):
    return {"path": path, "type": "file", "size": sum(b["size"] for b in blocks),
            "replication": replication, "blocks": blocks}


def block(bid, size, checksum, replicas):
    return {"id": bid, "size": size, "checksum": checksum, "replicas": replicas}


def line_of(dot: str, name: str) -> str:
    return next(l for l in dot.splitlines() if l.strip().startswith(name + " ["))


def test_file_blocks_and_replica_edges():
    dot = file_dot(stat([block(B1, 4 << 20, 0xDEADBEEF, ["dn1", "dn2"]),
                         block(B2, 1000, 5, ["dn2", "dn3"])]),
                   [{"id": n, "state": "up"} for n in ("dn1", "dn2", "dn3")])
    assert dot.startswith("digraph aegisfs {") and dot.rstrip().endswith("}")
    assert 'label="/data/a.bin\\n4.0 MiB · 2 blocks · R=2"' in line_of(dot, "file")
    b0 = line_of(dot, '"b0"')
    assert "#0 11111111" in b0 and "4.0 MiB" in b0 and "crc deadbeef" in b0
    assert "crc 00000005" in line_of(dot, '"b1"')
    edges = set(re.findall(r'^\s+(\S+) -> (\S+);$', dot, re.M))
    assert edges == {("file", '"b0"'), ("file", '"b1"'), ('"b0"', '"dn:dn1"'),
                     ('"b0"', '"dn:dn2"'), ('"b1"', '"dn:dn2"'), ('"b1"', '"dn:dn3"')}
    # One node per DataNode, however many blocks it holds.
    assert dot.count('"dn:dn2" [') == 1
    assert COLOR_OK in b0


def test_health_colours():
    dot = file_dot(stat([block(B1, 1, 1, ["dn1", "dn2"]), block(B2, 1, 2, ["dn2"]),
                         block(B3, 1, 3, [])]),
                   [{"id": "dn1", "state": "up"}, {"id": "dn2", "state": "down"}])
    assert COLOR_UNDER in line_of(dot, '"b0"')      # one of two replicas on a down node
    assert COLOR_MISSING in line_of(dot, '"b1"')    # its only replica is down
    assert COLOR_MISSING in line_of(dot, '"b2"')    # no replica at all
    dn2 = line_of(dot, '"dn:dn2"')
    assert COLOR_NODE_DOWN in dn2 and 'label="dn2\\ndown"' in dn2


def test_many_blocks_are_summarised():
    blocks = [block(f"{i:032x}", 10, i, ["dn1"]) for i in range(30)]
    dot = file_dot(stat(blocks, replication=1), max_blocks=5)
    assert dot.count("shape=box, style=\"rounded") == 5
    assert "… 25 more blocks\\n250 B" in line_of(dot, "more")
    assert "30 blocks" in line_of(dot, "file")


def test_hostile_names_are_quoted():
    evil = '/x"]; evil [label="pwn'
    dot = file_dot(stat([block(B1, 1, 1, ['dn"1'])], path=evil + "\nsecond"))
    assert 'label="/x\\"]; evil [label=\\"pwn\\nsecond\\n' in line_of(dot, "file")
    assert '"dn:dn\\"1"' in dot
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert "\nsecond" not in dot


def test_empty_file_and_replica_maps():
    dot = file_dot({"path": "/e", "size": 0, "replication": 3, "blocks": []})
    assert "0 B · 0 blocks · R=3" in dot and "->" not in dot
    dot = file_dot(stat([block(B1, 1, 1, [{"node": "dn4"}])]))
    assert '"b0" -> "dn:dn4";' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
def test_dot_parses_with_graphviz():
    dot = file_dot(stat([block(B1, 1, 1, ["dn1", "dn2"])], path='/we"ird\\name'))
    subprocess.run(["dot", "-Tsvg"], input=dot.encode(), check=True, capture_output=True)
