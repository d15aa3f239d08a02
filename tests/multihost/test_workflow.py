"""The seed workflow with every role on its own host: write/read/put/get/stat/ls/rm of
binary files (0 B, 1 B, 1 MiB, 100 MiB), byte-identical; and a DataNode joining from a
new host is taken into service without restarting anything."""
from __future__ import annotations

import hashlib
import os

import pytest


def sha_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 100 << 20])
def test_put_get_stat_ls_rm_across_hosts(multihost, tmp_path, size):
    mh = multihost()
    assert mh.up_nodes() == {"dn1", "dn2", "dn3"}
    src, back = tmp_path / "src.bin", tmp_path / "back.bin"
    with open(src, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            fh.write(chunk)
            left -= len(chunk)
    mh.ok("put", str(src), "/up/file.bin", timeout=120)
    info = mh.json("stat", "/up/file.bin")
    assert info["size"] == size and info["type"] == "file"
    assert all(len(b["replicas"]) == 2 for b in info["blocks"])
    assert len(info["blocks"]) == -(-size // mh.block_size)
    listing = mh.json("ls", "-l", "/up")
    assert [e["name"] for e in listing] == ["file.bin"]
    mh.ok("get", "/up/file.bin", str(back), timeout=120)
    assert sha_file(back) == sha_file(src)
    mh.ok("rm", "/up/file.bin")
    gone = mh.aegisfs("stat", "/up/file.bin")
    assert gone.returncode == 1 and b"No such file" in gone.stderr


def test_write_and_read_text(multihost):
    mh = multihost()
    mh.ok("write", "/notes/a.txt", "across hosts")
    assert mh.ok("read", "/notes/a.txt") == b"across hosts"


def test_a_datanode_on_a_new_host_joins_without_restarts(multihost):
    mh = multihost()
    before = {role: proc.pid for role, proc in mh.procs.items()}
    mh.add_datanode("dn4")
    mh.wait_until("dn4 up", lambda: "dn4" in mh.up_nodes(), 20)
    # placement is random, weighted by free space: 40 files make missing dn4 ~ 1e-7 likely
    rows = mh.driver("puts", "--prefix", "/joined", "--count", "40", "--size", "1000")
    assert all(r["ok"] for r in rows), rows
    assert any("dn4" in replicas for replicas in mh.block_map().values())
    assert all(mh.procs[r].pid == pid and mh.alive(r) for r, pid in before.items())
    status = {n["id"]: n for n in mh.status()["nodes"]}
    assert status["dn4"]["state"] == "up" and status["dn4"]["drain"] is None
