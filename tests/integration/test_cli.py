"""The `aegisfs` CLI as a user runs it (`python -m client.cli` subprocesses) against real
clusters: the seed's demo verbatim, binary-safe read, JSON outputs, exit codes and
one-line errors for missing files, bad parents, unhealthy fsck and a cluster that is down."""
from __future__ import annotations

import hashlib
import json
import time

from client import AegisClient

from .conftest import make_png, make_wav, run_cli, start_cluster


def ok(proc) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def failed(proc, *needles: str, code: int | None = None) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_seed_workflow_verbatim(cluster, tmp_path):
    """The README's Example Demo, command for command (reset_fs.py is our fresh cluster)."""
    (tmp_path / "image.png").write_bytes(make_png(120, 80))
    cli = lambda *a: run_cli(cluster, *a, cwd=tmp_path)   # noqa: E731
    ok(cli("write", "/hello", "Hello AegisFS!"))
    ok(cli("put", "image.png", "/uploads/image.png"))
    stat_out = ok(cli("stat", "/uploads/image.png")).decode()
    assert "/uploads/image.png" in stat_out and "file" in stat_out
    ok(cli("get", "/uploads/image.png", "recovered.png"))
    assert (tmp_path / "recovered.png").read_bytes() == (tmp_path / "image.png").read_bytes()
    assert ok(cli("read", "/hello")) == b"Hello AegisFS!"


def test_seed_text_operations(cluster):
    ok(run_cli(cluster, "write", "/demo", "hello"))
    assert ok(run_cli(cluster, "read", "/demo")) == b"hello"
    assert "demo" in ok(run_cli(cluster, "ls")).decode().split()
    ok(run_cli(cluster, "rm", "/demo"))
    assert "demo" not in ok(run_cli(cluster, "ls")).decode().split()


def test_binary_files_round_trip_through_put_get_and_read(cluster, tmp_path):
    blob = bytes(range(256)) * 999 + b"\r\n\x00\x1a"
    files = {"blob.bin": blob, "image.png": make_png(), "tone.wav": make_wav(tmp_path / "t.wav")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        ok(run_cli(cluster, "put", "--block-size", "64K", "--replication", "2",
                   str(tmp_path / name), f"/bin/{name}"))
        assert ok(run_cli(cluster, "read", f"/bin/{name}")) == data
        ok(run_cli(cluster, "get", f"/bin/{name}", str(tmp_path / f"{name}.out")))
        assert hashlib.sha256((tmp_path / f"{name}.out").read_bytes()).digest() == \
            hashlib.sha256(data).digest()
    # stdin / stdout with '-'
    ok(run_cli(cluster, "put", "-", "/bin/stdin.bin", input=blob))
    assert ok(run_cli(cluster, "get", "/bin/stdin.bin", "-")) == blob
    # a range
    assert ok(run_cli(cluster, "read", "/bin/blob.bin", "--offset", "70000",
                      "--length", "10")) == blob[70000:70010]


def test_stat_json_fields(cluster):
    ok(run_cli(cluster, "write", "/j/file.txt", "x" * 100))
    info = json.loads(ok(run_cli(cluster, "stat", "/j/file.txt", "--json")))
    assert {"path", "type", "size", "replication", "mtime", "blocks"} <= set(info)
    assert info["path"] == "/j/file.txt" and info["type"] == "file" and info["size"] == 100
    assert info["replication"] == 2 and isinstance(info["mtime"], (int, float))
    [block] = info["blocks"]
    assert set(block) == {"id", "size", "checksum", "replicas"}
    assert len(block["id"]) == 32 and int(block["id"], 16) >= 0
    assert block["size"] == 100 and len(block["replicas"]) == 2
    with AegisClient(cluster.broker, key=cluster.key) as fs:
        assert fs.stat("/j/file.txt")["blocks"][0]["checksum"] == block["checksum"]


def test_ls_mkdir_mv_du_rm(cluster):
    b = cluster
    ok(run_cli(b, "mkdir", "-p", "/tree/a/b"))
    ok(run_cli(b, "mkdir", "-p", "/tree/a/b"))
    ok(run_cli(b, "write", "/tree/a/f1", "12345"))
    assert ok(run_cli(b, "ls", "/tree/a")).decode().split() == ["b/", "f1"]
    long = ok(run_cli(b, "ls", "-l", "/tree/a")).decode().splitlines()
    assert long[0].startswith("d") and long[1].startswith("-") and " 5 " in long[1]
    entries = json.loads(ok(run_cli(b, "ls", "--json", "/tree/a")))
    assert [(e["name"], e["type"]) for e in entries] == [("b", "dir"), ("f1", "file")]
    assert "moved /tree/a/f1 -> /tree/a/b/f1" in ok(run_cli(b, "mv", "/tree/a/f1", "/tree/a/b")).decode()
    du = json.loads(ok(run_cli(b, "du", "--json", "/tree")))
    assert (du["bytes"], du["files"], du["dirs"]) == (5, 1, 3)
    assert "5 bytes" in ok(run_cli(b, "du", "/tree")).decode()
    failed(run_cli(b, "rm", "/tree"), "/tree")              # not empty without -r
    ok(run_cli(b, "rm", "-r", "/tree"))
    failed(run_cli(b, "ls", "/tree"), "/tree", "No such file", code=1)


def test_status_and_fsck(cluster):
    status = json.loads(ok(run_cli(cluster, "status", "--json")))
    assert sorted(n["id"] for n in status["nodes"]) == ["dn1", "dn2", "dn3"]
    assert all(n["state"] == "up" and n["capacity"] > 0 for n in status["nodes"])
    assert all({"used", "blocks"} <= set(n) for n in status["nodes"])
    text = ok(run_cli(cluster, "status")).decode()
    assert "dn1" in text and "up" in text and "health" in text
    report = json.loads(ok(run_cli(cluster, "fsck", "--json")))
    assert report["healthy"] is True
    assert "HEALTHY" in ok(run_cli(cluster, "fsck")).decode()


def test_expected_errors_are_one_line_with_the_path(cluster, tmp_path):
    b = cluster
    err = failed(run_cli(b, "get", "/no/such/file", str(tmp_path / "out")), "/no/such/file",
                 "No such file", code=1)
    assert not (tmp_path / "out").exists(), err
    ok(run_cli(b, "write", "/afile", "x"))
    (tmp_path / "local.txt").write_bytes(b"data")
    failed(run_cli(b, "put", str(tmp_path / "local.txt"), "/afile/child.txt"), "/afile",
           "Not a directory", code=1)
    failed(run_cli(b, "ls", "/missing-dir"), "/missing-dir", "No such file", code=1)
    failed(run_cli(b, "read", "/"), "/", "directory", code=1)
    failed(run_cli(b, "put", str(tmp_path / "nope.txt"), "/x"), "nope.txt", "No such file",
           code=1)
    failed(run_cli(b, "stat", "/bad/../path"), "invalid", code=1)


def test_unhealthy_fsck_and_cluster_down(tmp_path):
    """R=1 data on a DataNode that dies: fsck reports it and exits 1. Then the broker
    stops: every command says the cluster cannot be reached, exit code 3, quickly."""
    cluster = start_cluster(tmp_path / "c", datanodes=1)
    try:
        b = cluster
        ok(run_cli(b, "write", "--replication", "1", "/lonely", "only copy"))
        assert json.loads(ok(run_cli(b, "fsck", "--json")))["healthy"] is True
        cluster.kill("dn1")
        deadline = time.monotonic() + 20
        while True:
            proc = run_cli(b, "fsck", "--json")
            report = json.loads(proc.stdout)
            if not report["healthy"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert proc.returncode == 1 and report["healthy"] is False
        assert report["missing"], report
        failed(run_cli(b, "read", "/lonely"), "/lonely")
        cluster.stop_role("broker")
        for args in (["ls", "/"], ["get", "/lonely", str(tmp_path / "x")], ["status"]):
            t0 = time.monotonic()
            failed(run_cli(b, "--timeout", "1", *args), "cannot reach the broker", code=3)
            assert time.monotonic() - t0 < 10
    finally:
        cluster.stop()


def test_bad_broker_endpoint_is_a_clear_error():
    failed(run_cli("not-an-endpoint", "ls", "/"), "invalid broker endpoint", "not-an-endpoint",
           code=1)


def test_put_many_sources_and_recursive_directories(cluster, tmp_path):
    tree = {"photos/a.png": make_png(32, 16), "photos/raw/b.bin": bytes(range(256)) * 40,
            "photos/raw/deep/c.txt": b"deep\n", "notes.txt": "ünïcode\n".encode()}
    for rel, data in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "photos" / "empty").mkdir()
    cli = lambda *a: run_cli(cluster, *a, cwd=tmp_path)   # noqa: E731
    out = ok(cli("put", "-r", "photos/", "notes.txt", "/backup")).decode()
    assert "stored 4 files" in out
    for rel, data in tree.items():
        assert ok(cli("read", f"/backup/{rel}")) == data, rel
    listing = json.loads(ok(cli("ls", "--json", "/backup/photos")))
    assert {e["name"] for e in listing} == {"a.png", "raw", "empty"}
    # several plain files into a directory; a directory without -r is a usage error
    ok(cli("put", "notes.txt", "photos/a.png", "/flat"))
    assert ok(cli("read", "/flat/a.png")) == tree["photos/a.png"]
    failed(cli("put", "photos", "/nope"), "photos", "-r", code=2)
    failed(cli("put", "-", "notes.txt", "/nope"), "stdin", code=2)


def test_put_many_reports_the_files_that_failed(cluster, tmp_path):
    (tmp_path / "good.txt").write_bytes(b"good")
    ok(run_cli(cluster, "write", "/blocker", "i am a file"))
    proc = run_cli(cluster, "put", "good.txt", "good.txt", "/blocker", cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "/blocker/good.txt" in err and "2 of 2 failed" in err


def test_get_recursive_restores_what_put_recursive_stored(cluster, tmp_path):
    src = tmp_path / "src"
    rnd = __import__("random").Random(3)
    tree = {f"proj/d{i % 3}/f{i}.bin": rnd.randbytes(rnd.choice([0, 1, 700, 5000]))
            for i in range(60)}
    tree["proj/big.bin"] = rnd.randbytes(1_500_000)          # streamed, not batched
    for rel, data in tree.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "proj" / "empty").mkdir()
    ok(run_cli(cluster, "put", "-r", str(src / "proj"), "/restore-me"))
    out = ok(run_cli(cluster, "get", "-r", "/restore-me/proj", str(tmp_path / "back")))
    assert f"wrote {len(tree)} files" in out.decode()
    for rel, data in tree.items():
        assert (tmp_path / "back" / rel).read_bytes() == data, rel
    assert (tmp_path / "back" / "proj" / "empty").is_dir()
    assert not list((tmp_path / "back").rglob("*.part"))
    failed(run_cli(cluster, "get", "/restore-me/proj", str(tmp_path / "x")),
           "/restore-me/proj", "-r", code=2)
    # several files into a directory; a missing one is reported, the others written
    proc = run_cli(cluster, "get", "/restore-me/proj/d0/f0.bin", "/restore-me/nope",
                   "/restore-me/proj/big.bin", str(tmp_path / "some"))
    assert proc.returncode == 1 and "/restore-me/nope" in proc.stderr.decode()
    assert (tmp_path / "some" / "big.bin").read_bytes() == tree["proj/big.bin"]
    assert (tmp_path / "some" / "f0.bin").read_bytes() == tree["proj/d0/f0.bin"]


KIB64 = 64 * 1024


def test_edge_sizes_and_100mib_round_trip_through_the_cli(cluster, tmp_path):
    """put and get as subprocesses: 0 B, 1 B, block size -1/+0/+1, three blocks + 7 bytes
    (64 KiB blocks) and 100 MiB (default 4 MiB blocks), sha256 identical."""
    rnd = __import__("random").Random(64)
    cases = {s: ("64K", rnd.randbytes(s)) for s in
             (0, 1, KIB64 - 1, KIB64, KIB64 + 1, 3 * KIB64 + 7)}
    cases[100 * 1024 * 1024] = (None, rnd.randbytes(100 * 1024 * 1024))
    for size, (block, data) in cases.items():
        src, out = tmp_path / f"{size}.in", tmp_path / f"{size}.out"
        src.write_bytes(data)
        flags = ["--block-size", block] if block else []
        ok(run_cli(cluster, "put", *flags, str(src), f"/sizes/{size}", timeout=120))
        info = json.loads(ok(run_cli(cluster, "stat", "--json", f"/sizes/{size}")))
        bs = KIB64 if block else 4 * 1024 * 1024
        assert info["size"] == size and len(info["blocks"]) == -(-size // bs)
        ok(run_cli(cluster, "get", f"/sizes/{size}", str(out), timeout=120))
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
        src.unlink()
        out.unlink()


def test_progress_bar_with_rate_and_eta_only_on_a_terminal(cluster, tmp_path):
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(48 * 1024 * 1024))
    aegisfs = Path(sys.executable).parent / "aegisfs"       # the console script
    master, slave = pty.openpty()
    proc = subprocess.run([str(aegisfs), "--broker", cluster.broker, "--key", str(cluster.key),
                           "put", str(src),
                           "/progress.bin"], stdout=subprocess.PIPE, stderr=slave, timeout=120)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:       # EIO once the writer side is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0 and b"stored /progress.bin" in proc.stdout
    text = shown.decode(errors="replace")
    assert "put /progress.bin" in text and "100%" in text, text
    assert "MiB/s" in text and "ETA 0:00:" in text, text    # a rate and an ETA
    piped = run_cli(cluster, "get", "/progress.bin", str(tmp_path / "back.bin"))
    assert ok(piped) and piped.stderr == b""            # no bar when stderr is not a terminal
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_quota_set_get_ls_clear_and_edquot(cluster, tmp_path):
    """`aegisfs quota` as an admin and a plain user see it: limits enforced with a
    one-line EDQUOT naming the tree, usage and limits in get/ls, set refused to users."""
    b = cluster
    ok(run_cli(b, "mkdir", "/q"))
    ok(run_cli(b, "write", "/q/a", "x" * 3000))
    ok(run_cli(b, "quota", "set", "/q", "--bytes", "4K", "--files", "5"))
    err = failed(run_cli(b, "write", "/q/b", "y" * 2000), "quota of /q", "4096", code=1)
    assert "quota" in err.lower()
    assert json.loads(ok(run_cli(b, "quota", "get", "/q", "--json"))) == {"quotas": [
        {"path": "/q", "max_bytes": 4096, "max_files": 5, "bytes": 3000, "files": 1}]}
    listed = ok(run_cli(b, "quota", "ls")).decode()
    assert "/q" in listed and "4.0 KiB" in listed
    key = json.loads(ok(run_cli(b, "user", "add", "quser", "--keys", str(b.keys_dir),
                                "--json")))["key_file"]
    failed(run_cli(b, "quota", "set", "/q", "--bytes", "1G", key=key), "only admin",
           code=1)
    assert b"/q" in ok(run_cli(b, "quota", "ls", key=key))     # /q is world-readable
    ok(run_cli(b, "quota", "clear", "/q"))
    ok(run_cli(b, "write", "/q/b", "y" * 2000))
    assert json.loads(ok(run_cli(b, "quota", "ls", "--json"))) == {"quotas": []}
