"""`aegisfs node drain` on a real cluster: a drained DataNode holds nothing the others
need, so killing it leaves every block at R and every file readable."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from tests.support.harness import Harness


def aegisfs(h: Harness, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    key = ["--key", str(h.cluster.key)] if h.cluster.key else []    # the admin's key
    return subprocess.run([sys.executable, "-m", "client.cli", "--broker", h.broker, *key,
                           "--timeout", "10", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path, datanodes=4, mds_flags=["--delete-grace", "0.5"])
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def test_drain_then_remove_leaves_nothing_under_replicated(h):
    expected = h.write_files(30, random.Random(7))
    on_dn4 = [b for b in h.block_map().values() if "dn4" in b["replicas"]]
    assert on_dn4, "placement put nothing on dn4: the test would prove nothing"

    done = aegisfs(h, "node", "drain", "dn4", "--wait", "--max-wait", "60")
    assert done.returncode == 0, done.stderr
    assert "dn4: drained after" in done.stdout

    nodes = {n["id"]: n for n in json.loads(aegisfs(h, "node", "ls", "--json").stdout)}
    assert nodes["dn4"]["drain"] == "drained" and nodes["dn1"]["drain"] is None
    assert all("dn4" not in b["replicas"] for b in h.block_map().values())
    h.fs.write_bytes("/after-drain", b"x" * 200_000)       # new blocks avoid it
    assert all("dn4" not in b["replicas"] for b in h.fs.stat("/after-drain")["blocks"])

    h.kill("dn4")
    h.wait_until("dn4 down", lambda: "dn4" not in h.up_nodes(), 15)
    assert h.fsck()["healthy"], h.fsck()
    assert h.problems(check_disk=True) == []
    assert h.verify(expected) == []


def test_drain_of_an_unknown_node_is_a_clear_error(h):
    out = aegisfs(h, "node", "drain", "dn9")
    assert out.returncode == 1
    assert "dn9" in out.stderr and "registered" in out.stderr
