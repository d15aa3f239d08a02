"""Owners and modes through a real cluster: `aegisfs chmod/chown/chgrp` (octal, symbolic,
-R), `ls -l`, `stat` and their --json, and AegisClient.chmod/chown. Until the broker
stamps users from CURVE keys every client is the superuser "admin", so the refusals of
other users are tested through the service layer (tests/unit/test_mds_ops.py) and the
real client on the in-process cluster (tests/unit/test_posix_inprocess.py)."""
from __future__ import annotations

import json

from client import AegisClient

from .conftest import run_cli
from .test_cli import ok


def test_cli_chmod_chown_chgrp_and_ls_l(cluster):
    cli = lambda *a: run_cli(cluster, *a)   # noqa: E731
    ok(cli("mkdir", "-m", "750", "/px"))
    ok(cli("write", "/px/a.txt", "hello"))
    ok(cli("mkdir", "-p", "/px/tree/sub"))
    ok(cli("write", "/px/tree/sub/deep.txt", "deep"))
    listing = ok(cli("ls", "-l", "/px")).decode().splitlines()
    assert listing[0].split()[:3] == ["-rw-r--r--", "admin", "admin"] and \
        listing[0].endswith("a.txt")
    assert listing[1].split()[:3] == ["drwxr-xr-x", "admin", "admin"]
    top = json.loads(ok(cli("stat", "/px", "--json")))
    assert (top["mode"], top["owner"], top["group"]) == (0o750, "admin", "admin")

    ok(cli("chmod", "640", "/px/a.txt"))
    ok(cli("chmod", "u+x,g-r,o+w", "/px/a.txt"))
    info = json.loads(ok(cli("stat", "/px/a.txt", "--json")))
    assert info["mode"] == 0o702 and {"ctime", "atime", "blocks"} <= set(info)
    assert "mode:        0702 (-rwx----w-)" in ok(cli("stat", "/px/a.txt")).decode()

    ok(cli("chown", "alice:staff", "/px/a.txt"))
    ok(cli("chgrp", "devs", "/px"))
    (entry,) = json.loads(ok(cli("ls", "/px/a.txt", "--json")))
    assert (entry["owner"], entry["group"], entry["mode"]) == ("alice", "staff", 0o702)
    assert json.loads(ok(cli("stat", "/px", "--json")))["group"] == "devs"

    # -R: the tree itself and everything below, symbolic modes per entry
    ok(cli("chmod", "-R", "go-rx", "/px/tree"))
    ok(cli("chown", "-R", "bob:", "/px/tree"))
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        got = {p: (e["mode"], e["owner"]) for p, e in fs.walk("/px/tree")}
    assert got == {"/px/tree": (0o700, "bob"), "/px/tree/sub": (0o700, "bob"),
                   "/px/tree/sub/deep.txt": (0o600, "bob")}
    # the data is untouched and still readable (by the superuser)
    assert ok(cli("read", "/px/tree/sub/deep.txt")) == b"deep"

    # errors: a missing path fails alone (exit 1), a bad mode is a usage error (exit 2)
    proc = cli("chmod", "600", "/px/nope", "/px/a.txt")
    assert proc.returncode == 1 and proc.stderr.decode().splitlines() == [
        "aegisfs: chmod: No such file or directory: /px/nope", "aegisfs: chmod: 1 of 2 failed"]
    assert json.loads(ok(cli("stat", "/px/a.txt", "--json")))["mode"] == 0o600
    proc = cli("chmod", "u+y", "/px/a.txt")
    assert proc.returncode == 2 and b"invalid mode" in proc.stderr
    proc = cli("chown", "a:b:c", "/px/a.txt")
    assert proc.returncode == 2


def test_api_chmod_chown_and_mkdir_mode(cluster):
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        fs.mkdir("/api-px", mode=0o700)
        fs.write_bytes("/api-px/f", b"data")
        assert fs.chmod("/api-px/f", 0o4751) == {"path": "/api-px/f", "type": "file",
                                                  "mode": 0o4751, "owner": "admin",
                                                  "group": "admin"}
        assert fs.chown("/api-px", "carol", "carol")["owner"] == "carol"
        assert fs.chown("/api-px", group="ops")["group"] == "ops"
        st = fs.stat("/api-px")
        assert (st["mode"], st["owner"], st["group"]) == (0o700, "carol", "ops")
        # a replaced file keeps its owner and mode (the O_TRUNC rule)
        fs.write_bytes("/api-px/f", b"new data")
        st = fs.stat("/api-px/f")
        assert (st["mode"], st["size"]) == (0o4751, 8)
        assert fs.read_bytes("/api-px/f") == b"new data"
