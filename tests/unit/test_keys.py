"""Tests for broker/keys.py: key files are 0600 and refused when wider, first-start creation
is idempotent, users come and go (and a removed key maps to nobody), the registry survives a
torn write."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from broker import keys as keys_mod
from broker.keys import KeyStore, load_public, load_secret, write_file_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    ks = KeyStore(tmp_path / "keys", clock=lambda: 1000.0)
    ks.ensure_cluster(["dn1", "dn2"])
    return ks


def test_ensure_cluster_creates_the_layout(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "keys", clock=lambda: 1000.0)
    made = ks.ensure_cluster(["dn1", "dn2"])
    assert made == ["cluster secret", "broker", "mds", "dn.dn1", "dn.dn2", "user admin"]
    d = tmp_path / "keys"
    assert mode(d) == 0o700
    for secret in ("broker.key_secret", "mds.key_secret", "dn/dn1.key_secret",
                   "dn/dn2.key_secret", "users/admin.key_secret", "cluster.secret"):
        assert mode(d / secret) == 0o600, secret
    for public in ("broker.key", "mds.key", "dn/dn1.key", "users/admin.key"):
        assert mode(d / public) == 0o644
    assert len(ks.cluster_secret()) == 32
    admin = ks.users()["admin"]
    assert admin.superuser and admin.created == 1000.0
    doc = json.loads((d / "registry.json").read_text())
    assert sorted(doc["members"].values()) == ["broker", "dn.dn1", "dn.dn2", "mds"]


def test_ensure_cluster_is_idempotent(tmp_path: Path, store: KeyStore) -> None:
    d = tmp_path / "keys"
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    again = KeyStore(d)
    assert again.ensure_cluster(["dn1", "dn2"]) == []
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before
    assert again.ensure_cluster(["dn1", "dn3"]) == ["dn.dn3"]
    assert again.member_for(load_public(d / "dn/dn3.key")) == "dn.dn3"


def test_a_removed_admin_is_not_recreated_on_the_next_start(store: KeyStore) -> None:
    store.add_user("root", superuser=True)
    store.remove_user("admin")
    assert store.ensure_cluster(["dn1", "dn2"]) == []
    assert "admin" not in store.users()


def test_an_unregistered_key_file_from_a_crash_is_adopted(tmp_path: Path,
                                                         store: KeyStore) -> None:
    d = tmp_path / "keys"
    keys_mod._write_keypair(d / "dn" / "dn9.key_secret")  # crash before the registry write
    public = load_public(d / "dn/dn9.key")
    assert store.ensure_cluster(["dn9"]) == ["dn.dn9"]
    assert store.member_for(public) == "dn.dn9"


def test_members_map_by_raw_and_z85_keys(tmp_path: Path, store: KeyStore) -> None:
    d = tmp_path / "keys"
    for service, path in (("mds", "mds.key_secret"), ("dn.dn2", "dn/dn2.key_secret"),
                          ("broker", "broker.key_secret")):
        public, _ = load_secret(d / path)
        assert store.member_for(public) == service
        assert store.member_for(public.decode()) == service
        assert store.member_for(z85.decode(public)) == service  # the 32 raw bytes
        assert store.user_for(public) is None
    assert store.broker_public() == load_secret(d / "broker.key_secret")[0]
    for junk in (None, b"", b"x" * 40, "x" * 41, b"\xff" * 40, 7, z85.encode(bytes(32))):
        assert store.member_for(junk) is None and store.user_for(junk) is None


def test_key_files_are_zmq_certificates(tmp_path: Path, store: KeyStore) -> None:
    path = tmp_path / "keys" / "mds.key_secret"
    public, secret = zmq.auth.load_certificate(path)
    assert (public, secret) == load_secret(path)
    assert zmq.curve_public(secret) == public
    assert zmq.auth.load_certificate(path.with_suffix(".key")) == (public, None)


# --- permissions --------------------------------------------------------------------------

@pytest.mark.parametrize("wide", [0o640, 0o604, 0o644, 0o660, 0o602, 0o700 | 0o004])
def test_a_readable_secret_key_file_is_refused(tmp_path: Path, store: KeyStore,
                                               wide: int) -> None:
    path = tmp_path / "keys" / "users" / "admin.key_secret"
    path.chmod(wide)
    with pytest.raises(PermissionError) as info:
        load_secret(path)
    assert info.value.errno == errno.EACCES
    assert info.value.filename == str(path)
    assert f"chmod 600 {path}" in str(info.value)
    path.chmod(0o600)
    load_secret(path)


def test_a_readable_cluster_secret_is_refused(tmp_path: Path, store: KeyStore) -> None:
    path = tmp_path / "keys" / "cluster.secret"
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        store.cluster_secret()


def test_files_are_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ks = KeyStore(tmp_path / "keys")
        ks.ensure_cluster(["dn1"])
        path = ks.add_user("alice")
    finally:
        os.umask(old)
    assert mode(path) == 0o600 and mode(tmp_path / "keys" / "cluster.secret") == 0o600


def test_a_symlinked_secret_is_refused(tmp_path: Path, store: KeyStore) -> None:
    link = tmp_path / "link.key_secret"
    link.symlink_to(tmp_path / "keys" / "mds.key_secret")
    with pytest.raises(OSError) as info:
        load_secret(link)
    assert info.value.errno == errno.ELOOP


def test_a_mismatched_or_broken_certificate_is_refused(tmp_path: Path) -> None:
    a_pub, _ = zmq.curve_keypair()
    _, b_sec = zmq.curve_keypair()
    path = tmp_path / "x.key_secret"
    write_file_atomic(path, keys_mod._cert(a_pub, b_sec), 0o600)
    with pytest.raises(ValueError, match="does not belong"):
        load_secret(path)
    write_file_atomic(path, b'curve\n    public-key = "short"\n', 0o600)
    with pytest.raises(ValueError):
        load_secret(path)


# --- users --------------------------------------------------------------------------------

def test_add_list_remove_users(tmp_path: Path, store: KeyStore) -> None:
    path = store.add_user("alice")
    assert path == tmp_path / "keys" / "users" / "alice.key_secret"
    public, _ = load_secret(path)
    assert store.user_for(public) == "alice" and store.member_for(public) is None
    assert list(store.users()) == ["admin", "alice"]
    assert not store.users()["alice"].superuser
    other = KeyStore(tmp_path / "keys")  # what the broker sees after a restart
    assert other.user_for(public) == "alice"
    store.remove_user("alice")
    assert store.user_for(public) is None
    assert list(store.users()) == ["admin"]
    assert not path.exists() and not path.with_suffix(".key").exists()


def test_a_removed_users_key_stops_mapping_after_reload(tmp_path: Path, store: KeyStore) -> None:
    broker_view = KeyStore(tmp_path / "keys")
    assert broker_view.reload_if_changed() is False  # nothing changed since it loaded
    public, _ = load_secret(store.add_user("bob"))
    assert broker_view.user_for(public) is None
    assert broker_view.reload_if_changed() is True
    assert broker_view.user_for(public) == "bob"
    store.remove_user("bob")
    assert broker_view.reload_if_changed() is True
    assert broker_view.user_for(public) is None
    assert broker_view.reload_if_changed() is False


def test_adding_an_existing_user_or_node_is_refused(store: KeyStore) -> None:
    store.add_user("carol")
    with pytest.raises(FileExistsError):
        store.add_user("carol")
    with pytest.raises(FileExistsError):
        store.add_user("admin")
    with pytest.raises(FileExistsError):
        store.add_node("dn1")
    with pytest.raises(FileNotFoundError):
        store.remove_user("nobody")


BAD_NAMES = ["", "Alice", "1abc", "-x", "a" * 33, "a/b", "../admin", "a b", "a\n", "a.b",
             "é", "a\x00", ".", None, 5]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_user_names_are_refused(tmp_path: Path, store: KeyStore, name: object) -> None:
    before = sorted(p for p in (tmp_path / "keys").rglob("*"))
    with pytest.raises(ValueError, match="invalid user name"):
        store.add_user(name)  # type: ignore[arg-type]
    assert sorted(p for p in (tmp_path / "keys").rglob("*")) == before


def test_good_user_names() -> None:
    for name in ("a", "_svc", "bob-2", "x_y", "a" * 32):
        assert keys_mod.USER_NAME.fullmatch(name)


@pytest.mark.parametrize("node", ["", "DN1", "../x", "dn 1", "dn.1", "a" * 33, "-dn"])
def test_bad_node_ids_are_refused(store: KeyStore, node: str) -> None:
    with pytest.raises(ValueError, match="invalid DataNode id"):
        store.add_node(node)
    with pytest.raises(ValueError):
        store.ensure_cluster([node])


def test_add_node(tmp_path: Path, store: KeyStore) -> None:
    path = store.add_node("dn7")
    assert path == tmp_path / "keys" / "dn" / "dn7.key_secret" and mode(path) == 0o600
    assert store.member_for(load_secret(path)[0]) == "dn.dn7"


# --- torn writes and a bad registry -------------------------------------------------------

def test_registry_survives_a_crash_mid_write(tmp_path: Path, store: KeyStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    reg = tmp_path / "keys" / "registry.json"
    before = reg.read_bytes()
    real_fsync = os.fsync
    failed = []

    def failing_fsync(fd: int) -> None:
        if ".registry.json." in os.readlink(f"/proc/self/fd/{fd}"):  # the key files pass
            failed.append(fd)
            raise OSError(errno.EIO, "simulated disk failure")
        real_fsync(fd)

    monkeypatch.setattr(keys_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        store.add_user("dave")
    monkeypatch.setattr(keys_mod.os, "fsync", real_fsync)
    assert failed
    assert reg.read_bytes() == before
    assert not list((tmp_path / "keys").rglob(".*.tmp"))
    assert "dave" not in KeyStore(tmp_path / "keys").users()


def test_a_leftover_tmp_file_is_ignored_and_cleaned(tmp_path: Path, store: KeyStore) -> None:
    d = tmp_path / "keys"
    torn = d / ".registry.json.deadbeef.tmp"
    torn.write_text('{"version": 1, "memb')
    assert KeyStore(d).users().keys() == {"admin"}
    store.ensure_cluster(["dn1"])
    assert not torn.exists()


def test_a_hand_broken_registry_keeps_the_last_good_view(tmp_path: Path, store: KeyStore,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    public, _ = load_secret(store.add_user("erin"))
    reg = tmp_path / "keys" / "registry.json"
    reg.write_text("{not json")
    assert store.reload_if_changed() is False
    assert store.user_for(public) == "erin"
    assert "not reloaded" in caplog.text
    with pytest.raises(ValueError):
        KeyStore(tmp_path / "keys")


@pytest.mark.parametrize("doc", [
    [], {"version": 2, "members": {}, "users": {}}, {"version": 1, "members": [], "users": {}},
    {"version": 1, "members": {"short": "mds"}, "users": {}},
    {"version": 1, "members": {"x" * 40: "root"}, "users": {}},
    {"version": 1, "members": {}, "users": {"Bad": {}}},
    {"version": 1, "members": {}, "users": {"ok": {"public": "p", "created": 1, "superuser": 0}}},
], ids=range(7))
def test_malformed_registries_are_refused(tmp_path: Path, doc: object) -> None:
    d = tmp_path / "keys"
    d.mkdir()
    (d / "registry.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError):
        KeyStore(d)


def test_two_stores_adding_users_both_land(tmp_path: Path, store: KeyStore) -> None:
    other = KeyStore(tmp_path / "keys")
    store.add_user("fay")
    other.add_user("gus")  # re-reads under the lock: fay is kept
    assert set(KeyStore(tmp_path / "keys").users()) == {"admin", "fay", "gus"}
