"""Security on, through the real sockets: keys that try to register as somebody else, user
keys calling cluster-internal operations, revocation of an open connection, key file
modes, the `aegisfs user` / `whoami` round trip, and a cluster with security off."""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time

import pytest

from broker.client import Client, MemberClient
from broker.curve import CurveKeys
from broker.events import Subscriber
from client import AegisClient
from run_cluster import Cluster, free_base_port

from tests.support.wait import wait_for

from .conftest import run_cli, start_cluster


def ok(proc) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_no_key_a_user_key_or_another_nodes_key_cannot_register(cluster, processes):
    """Processes with no key, the admin user's key and dn2's member key each try to serve
    "mds" and "dn.dn1" (exclusive, which would supersede the real ones) while a client
    keeps listing and writing: every attempt is refused, every client call succeeds."""
    keys = cluster.keys_dir
    attempts = {"no key": [], "user key": ["--key", str(cluster.key)],
                "dn2's key": ["--key", str(keys / "dn" / "dn2.key_secret"),
                              "--broker-key", str(keys / "broker.key")]}
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def load() -> None:
        with AegisClient(cluster.broker, timeout=10, key=cluster.key) as fs:
            i = 0
            while not stop.is_set():
                try:
                    fs.write_bytes(f"/sec/load{i % 5}", b"x" * 1000)
                    fs.ls("/sec")
                    results["ok"] += 1
                except OSError as exc:
                    results["failed"].append(exc)
                i += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        for name, key in attempts.items():
            for service in ("mds", "dn.dn1"):
                processes.start("-m", "tests.support.echo_worker", "--endpoint",
                                cluster.endpoints["worker"], "--service", service,
                                "--name", "impostor", "--heartbeat-interval", "0.2", *key,
                                name=f"impostor-{service}")
        # and a member connection with dn2's key declaring the MDS, calling a DataNode op
        # only the MDS may call
        with MemberClient(cluster.endpoints["worker"], "mds", timeout=5, connect_timeout=2,
                          curve=cluster.member_curve("dn.dn2")) as liar:
            with pytest.raises(OSError) as info:
                liar.call("dn.dn1", {"op": "delete_block", "id": b"\1" * 16})
            assert info.value.errno == errno.EPROTO      # its declaration was refused
        time.sleep(3)      # several heartbeat rounds of the impostors
        # and the client got real work done meanwhile (counted, not timed: a loaded
        # machine makes fewer rounds in 3 s, not different ones)
        wait_for(lambda: results["ok"] >= 20 or results["failed"], 60,
                 what="20 client rounds during the attack")
    finally:
        stop.set()
        thread.join(30)
    assert results["failed"] == [] and results["ok"] >= 20, results
    assert all(p.poll() is None for p in processes.procs), "an impostor gave up early"
    services = cluster.services()
    assert services["mds"] == 1 and services["dn.dn1"] == 1, services
    # a refused worker still stops on SIGTERM (it once blocked sending to a broker that
    # had dropped its pipe, deaf to the signal)
    for proc in processes.procs:
        proc.terminate()
    for proc in processes.procs:
        proc.wait(5)
    log = (cluster.data_dir / "logs" / "broker.log").read_text()
    assert "may not act for 'mds'" in log and "may not act for 'dn.dn1'" in log
    with AegisClient(cluster.broker, timeout=10, key=cluster.key) as fs:
        assert fs.read_bytes("/sec/load0") == b"x" * 1000
        assert fs.status()["nodes"] and all(n["state"] == "up" for n in fs.status()["nodes"])


DATANODE_ONLY = [("mds", {"op": "dn_heartbeat", "node": "dn1", "capacity": 1, "used": 0,
                          "blocks": 0}),
                 ("mds", {"op": "block_report", "node": "dn1", "count": 0}),
                 ("mds", {"op": "replica_added", "node": "dn1", "block": b"\1" * 16,
                          "size": 1, "checksum": 0}),
                 ("mds", {"op": "block_corrupt", "node": "dn1", "block": b"\1" * 16})]
MDS_ONLY = [("dn.dn1", {"op": "delete_block", "id": b"\1" * 16}),
            ("dn.dn1", {"op": "copy_block", "id": b"\1" * 16, "target": "dn2"}),
            ("dn.dn1", {"op": "block_report"})]


def test_a_user_key_gets_eperm_for_cluster_internal_operations(cluster):
    with Client(cluster.broker, timeout=10, curve=cluster.curve) as c:
        for service, header in DATANODE_ONLY + MDS_ONLY:
            payload = [b"\x90"] if header["op"] == "block_report" and service == "mds" else []
            with pytest.raises(PermissionError) as info:
                c.call(service, header, payload)
            assert info.value.errno == errno.EPERM, header
            assert "client caller" in str(info.value), header
        assert c.call("mds", {"op": "ping"}).result["pong"] is True


def test_user_add_ls_whoami_rm_and_revocation_within_5_seconds(cluster, tmp_path):
    keys = ["--keys", str(cluster.keys_dir)]
    added = json.loads(ok(run_cli(cluster, "user", "add", "eve", *keys, "--json")))
    key_file = added["key_file"]
    assert added["user"] == "eve" and key_file.endswith("users/eve.key_secret")
    assert (os.stat(key_file).st_mode & 0o777) == 0o600
    listed = json.loads(ok(run_cli(cluster, "user", "ls", *keys, "--json")))
    assert {u["user"]: u["superuser"] for u in listed} == {"admin": True, "eve": False}
    assert json.loads(ok(run_cli(cluster, "whoami", "--json", key=key_file))) == \
        {"user": "eve", "class": "client"}
    assert ok(run_cli(cluster, "whoami")).strip() == b"admin"
    kept = tmp_path / "eve.key"               # a copy eve keeps after her removal
    shutil.copy(key_file, kept)
    with AegisClient(cluster.broker, timeout=5, key=kept) as fs:
        fs.ls("/")                              # connected and served as eve
        ok(run_cli(cluster, "user", "rm", "eve", *keys))
        removed = time.monotonic()
        while True:
            try:
                fs.ls("/")
            except PermissionError as exc:
                cut_off = time.monotonic() - removed
                assert exc.errno == errno.EACCES and "revoked" in str(exc)
                break
            assert time.monotonic() - removed < 5, "eve still served 5 s after user rm"
            time.sleep(0.05)
    print(f"\nrevoked user cut off {cut_off:.2f} s after `aegisfs user rm`")
    assert not os.path.exists(key_file)
    with AegisClient(cluster.broker, timeout=5, connect_timeout=3, key=kept) as fs:
        t0 = time.monotonic()
        with pytest.raises(PermissionError, match="refused the key"):
            fs.ls("/")                          # a new connection fails its handshake
        assert time.monotonic() - t0 < 2
    names = [u["user"] for u in json.loads(ok(run_cli(cluster, "user", "ls", *keys,
                                                      "--json")))]
    assert names == ["admin"]
    err = run_cli(cluster, "user", "rm", "eve", *keys)
    assert err.returncode == 1 and b"no user eve" in err.stderr


def test_a_key_file_readable_by_others_is_refused_by_the_cli(cluster, tmp_path):
    loose = tmp_path / "loose.key"
    shutil.copy(cluster.key, loose)
    os.chmod(loose, 0o644)
    proc = run_cli(cluster, "ls", "/", key=loose)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "accessible by group or others" in err and f"chmod 600 {loose}" in err
    missing = run_cli(cluster, "ls", "/", key=tmp_path / "nope.key")
    assert missing.returncode == 1 and b"key file not found" in missing.stderr


def test_every_key_file_the_cluster_made_is_private(cluster):
    secrets = list(cluster.keys_dir.rglob("*.key_secret")) + [cluster.keys_dir / "cluster.secret"]
    assert len(secrets) >= 6      # broker, mds, 3 DataNodes, admin
    for path in secrets:
        assert (path.stat().st_mode & 0o777) == 0o600, path
    assert (cluster.keys_dir.stat().st_mode & 0o777) == 0o700


def test_a_cluster_with_security_off_works_and_says_so(tmp_path):
    c = start_cluster(tmp_path / "insecure", datanodes=2, security=False)
    try:
        with AegisClient(c.broker, timeout=10, config={"security": {"mode": "off"}}) as fs:
            fs.write_bytes("/plain", b"clear")
            assert fs.read_bytes("/plain") == b"clear"
            assert fs.whoami() == {"user": "admin", "class": "client"}
        for role in ("broker", "mds", "dn1", "dn2"):
            log = (c.data_dir / "logs" / f"{role}.log").read_text()
            assert "WARNING" in log and "SECURITY IS OFF" in log, role
        assert not (c.data_dir / "keys").exists()
        # a client that expects CURVE cannot talk to it by accident
        key = tmp_path / "k"
        from broker.keys import KeyStore
        KeyStore(key).ensure_cluster([])
        with Client(c.broker, timeout=2, connect_timeout=2,
                    curve=CurveKeys.load(key / "users" / "admin.key_secret")) as cl:
            with pytest.raises(OSError):
                cl.call("broker", {"op": "ping"})
    finally:
        c.stop()


def test_a_client_without_a_key_cannot_reach_a_secure_cluster(cluster):
    with Client(cluster.broker, timeout=2, connect_timeout=2) as c:
        with pytest.raises(PermissionError, match="requires a CURVE key"):
            c.call("broker", {"op": "ping"})
    assert Cluster(cluster.data_dir, free_base_port()).key == cluster.key


def test_another_users_private_files_and_dirs_are_eacces_and_unchanged(cluster):
    """Two users made with `aegisfs user add`, through the real sockets: bob gets EACCES
    reading, writing, listing, removing and moving alice's 0600 file and 0700 directory
    (chmod: EPERM, as POSIX has it for a non-owner), and alice's tree is as it was."""
    keys = ["--keys", str(cluster.keys_dir)]
    key = {name: json.loads(ok(run_cli(cluster, "user", "add", name, *keys, "--json")))
           ["key_file"] for name in ("alice", "bob")}
    with AegisClient(cluster.broker, timeout=10, key=cluster.key) as admin:
        admin.mkdir("/home-alice")
        admin.chown("/home-alice", owner="alice", group="alice")
    with AegisClient(cluster.broker, timeout=10, key=key["alice"]) as alice, \
            AegisClient(cluster.broker, timeout=10, key=key["bob"]) as bob:
        alice.write_bytes("/home-alice/secret", b"alice's secret")
        alice.chmod("/home-alice/secret", 0o600)
        alice.mkdir("/home-alice/private", mode=0o700)
        alice.write_bytes("/home-alice/private/inner", b"inner")

        def state() -> list:
            return [alice.ls("/home-alice", detail=True),
                    alice.ls("/home-alice/private", detail=True),
                    alice.read_bytes("/home-alice/secret"),
                    alice.read_bytes("/home-alice/private/inner")]
        before = state()
        attempts = {
            "read file": lambda: bob.read_bytes("/home-alice/secret"),
            "read in dir": lambda: bob.read_bytes("/home-alice/private/inner"),
            "write file": lambda: bob.write_bytes("/home-alice/secret", b"bob was here"),
            "write in dir": lambda: bob.write_bytes("/home-alice/private/new", b"x"),
            "ls dir": lambda: bob.ls("/home-alice/private"),
            "rm file": lambda: bob.rm("/home-alice/secret"),
            "rm dir": lambda: bob.rm("/home-alice/private", recursive=True),
            "rm in dir": lambda: bob.rm("/home-alice/private/inner"),
            "mv file": lambda: bob.mv("/home-alice/secret", "/home-alice/mine"),
            "mv dir": lambda: bob.mv("/home-alice/private", "/home-alice/p2"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(PermissionError) as info:
                attempt()
            assert info.value.errno == errno.EACCES, (what, info.value)
            assert "/home-alice" in str(info.value), (what, info.value)
        for path in ("/home-alice/secret", "/home-alice/private"):
            with pytest.raises(PermissionError) as info:
                bob.chmod(path, 0o777)
            assert info.value.errno == errno.EPERM, path
        assert state() == before


def test_a_revoked_users_event_subscription_is_cut_off_within_5_seconds(cluster):
    """`aegisfs user rm` ends the user's SUB connection too (the broker restarts its event
    proxy; other subscribers reconnect and keep receiving)."""
    keys = ["--keys", str(cluster.keys_dir)]
    key = json.loads(ok(run_cli(cluster, "user", "add", "sue", *keys, "--json")))["key_file"]
    endpoint = cluster.endpoints["events_out"]
    sue = Subscriber(endpoint, ["dir."], curve=CurveKeys.load(key))
    admin = Subscriber(endpoint, ["dir."], curve=cluster.curve)
    got: dict[str, list[int]] = {"sue": [], "admin": []}
    sent: list[float] = []
    try:
        with AegisClient(cluster.broker, timeout=10, key=cluster.key) as fs:
            def publish_and_drain() -> None:
                fs.mkdir(f"/ev-{len(sent)}")
                sent.append(time.monotonic())
                for name, sub in (("sue", sue), ("admin", admin)):
                    while (ev := sub.recv(timeout=0.05)) is not None:
                        got[name].append(int(ev.body["path"].rsplit("-", 1)[1]))

            wait_for(lambda: publish_and_drain() or (got["sue"] and got["admin"]), timeout=10,
                     what="both subscribers receive events")
            ok(run_cli(cluster, "user", "rm", "sue", *keys))
            removed = time.monotonic()
            first_after = len(sent)
            # until admin has received 1 s of events that sue has not
            while not [i for i in got["admin"] if i > first_after and
                       sent[i] - sent[max(got["sue"])] > 1.0]:
                assert time.monotonic() - removed < 10, (
                    "no events for the others", f"published {len(sent)}, {first_after} before rm;"
                    f" sue's last {max(got['sue'])}; admin's after rm"
                    f" {[i for i in got['admin'] if i > first_after][:5]}..."
                    f"{[i for i in got['admin'] if i > first_after][-5:]}")
                publish_and_drain()
    finally:
        sue.close()
        admin.close()
    cut_off = sent[max(got["sue"])] - removed
    assert cut_off < 5, f"sue still received events {cut_off:.1f} s after user rm"
    print(f"\nrevoked subscriber cut off at most {max(cut_off, 0):.2f} s after `user rm`")
