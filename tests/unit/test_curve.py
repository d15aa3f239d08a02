"""Tests for broker/curve.py without sockets: which domain admits which key, the User-Id a
key gets, how a client finds its key, and the errors for keys that may not be used."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from broker import curve
from broker.callers import caller_of, CLIENT, WORKER
from broker.keys import KeyStore, load_secret
from broker.userid import parse_user_id


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    ks = KeyStore(tmp_path / "keys")
    ks.ensure_cluster(["dn1", "dn2"])
    ks.add_user("alice")
    return ks


def public(path: Path) -> bytes:
    return load_secret(path)[0]


def test_each_domain_admits_only_its_kind_of_key(store):
    adm = curve.Admission(KeyStore(store.dir))
    user = public(store.user_key_path("alice"))
    member = public(store.member_key_path("dn.dn1"))
    broker = public(store.member_key_path("broker"))
    stranger = b"x" * 40
    table = {"client": (True, False), "worker": (False, True), "events_in": (False, True),
             "events_out": (True, True), "data": (True, True), "other": (False, False)}
    for domain, (for_user, for_member) in table.items():
        assert adm.admit(domain, user) is for_user, domain
        assert adm.admit(domain, member) is for_member, domain
        assert adm.admit(domain, broker) is False      # nothing connects as the broker
        assert adm.admit(domain, stranger) is False


def test_the_user_id_names_the_user_or_member_and_the_key(store):
    from zmq.utils import z85
    adm = curve.Admission(KeyStore(store.dir))
    raw = z85.decode(public(store.user_key_path("alice")))
    uid = adm.user_id_for(raw)
    assert uid == f"u:alice:{public(store.user_key_path('alice')).decode()}"
    assert parse_user_id(uid) == ("u", "alice")
    assert caller_of(CLIENT, uid) == ("client", "alice")
    dn = adm.user_id_for(z85.decode(public(store.member_key_path("dn.dn2"))))
    assert caller_of(WORKER, dn, "dn.dn2") == ("datanode", "dn2")


def test_a_user_added_or_removed_is_seen_at_the_next_handshake(store):
    adm = curve.Admission(KeyStore(store.dir))
    other = KeyStore(store.dir)             # `aegisfs user add/rm` in another process
    path = other.add_user("bob")
    bob = public(path)
    assert adm.admit("client", bob)
    other.remove_user("bob")
    assert not adm.admit("client", bob)
    assert adm.user_id_for(b"\0" * 32).startswith("x:")   # unknown: matches no registry id


def test_admission_remembers_who_it_let_onto_the_event_endpoints(store):
    """The broker cuts event connections when one of these keys leaves the registry: a user
    added and removed within the broker's one-second registry look never appears in the
    broker's own view, only here."""
    adm = curve.Admission(KeyStore(store.dir))
    alice = public(store.user_key_path("alice"))
    member = public(store.member_key_path("dn.dn1"))
    assert adm.admit("client", alice) and adm.admit("data", alice)
    assert adm.take_event_keys() == set()           # requests are checked one by one
    assert adm.admit("events_out", alice) and adm.admit("events_in", member)
    assert not adm.admit("events_out", b"x" * 40)   # refused: nothing to cut
    assert adm.take_event_keys() == {alice, member}
    assert adm.take_event_keys() == set()           # taken: the broker gives back...
    adm.give_back_event_keys({alice})               # ...the ones still registered
    assert adm.take_event_keys() == {alice}


def test_a_datanode_admits_what_the_broker_does_from_the_brokers_ids(store):
    """The data endpoint's view (datanode.dataplane.AdmittedKeys, filled from the broker's
    `registry` answer) gives every key the User-Id the broker would."""
    from zmq.utils import z85
    from datanode.dataplane import AdmittedKeys
    ids = curve.registered_ids(store)
    view = AdmittedKeys()
    view.update({"digest": "d", "ids": sorted(ids)})
    broker, node = curve.Admission(KeyStore(store.dir)), curve.Admission(view)
    for path in (store.user_key_path("alice"), store.member_key_path("dn.dn1"),
                 store.member_key_path("mds")):
        raw = z85.decode(public(path))
        assert node.admit("data", raw)
        assert node.user_id_for(raw) == broker.user_id_for(raw)
        assert node.user_id_for(raw) in view.ids
    assert not node.admit("data", public(store.member_key_path("broker")))


def test_registered_ids_follow_the_registry(store):
    ids = curve.registered_ids(store)
    assert {parse_user_id(i) for i in ids} == {("u", "admin"), ("u", "alice"), ("m", "mds"),
                                               ("m", "dn.dn1"), ("m", "dn.dn2")}
    store.remove_user("alice")
    assert ("u", "alice") not in {parse_user_id(i) for i in curve.registered_ids(store)}


def test_a_client_finds_its_key_flag_then_env_then_config_then_local_admin(store, tmp_path,
                                                                         monkeypatch):
    sec = {"mode": "on", "keys": str(store.dir), "key": ""}
    admin = store.dir / "users" / "admin.key_secret"
    alice = store.user_key_path("alice")
    assert curve.client_key_file(None, sec, {}) == admin
    assert curve.client_key_file(None, {**sec, "key": str(alice)}, {}) == alice
    assert curve.client_key_file(None, sec, {"AEGISFS_KEY": "/e"}) == Path("/e")
    assert curve.client_key_file("/f", sec, {"AEGISFS_KEY": "/e"}) == Path("/f")
    assert curve.client_key_file(store.dir, sec, {}) == admin     # a keys directory
    assert curve.client_key_file(None, {**sec, "keys": str(tmp_path / "none")}, {}) is None
    assert curve.client_keys(None, {**sec, "mode": "off"}, {}) is None
    with pytest.raises(FileNotFoundError, match="no user key: give --key FILE"):
        curve.client_keys(None, {**sec, "keys": str(tmp_path / "none")}, {})


def test_a_user_key_file_alone_is_enough_to_connect(store, tmp_path):
    """It names the broker's public key, so a copy anywhere works without broker.key."""
    copy = tmp_path / "mine.key"
    copy.write_bytes(store.user_key_path("alice").read_bytes())
    os.chmod(copy, 0o600)
    keys = curve.CurveKeys.load(copy)
    assert keys.server == store.broker_public() and keys.public == public(copy)


def test_member_keys_come_from_the_keys_directory(store):
    keys = curve.member_keys({"mode": "on", "keys": str(store.dir)}, "dn.dn1")
    assert keys.public == public(store.member_key_path("dn.dn1"))
    assert keys.server == store.broker_public()
    assert curve.member_keys({"mode": "off"}, "mds") is None


def test_a_key_others_can_read_is_refused_with_the_fix(store):
    path = store.user_key_path("alice")
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError) as info:
        curve.CurveKeys.load(path)
    assert info.value.errno == errno.EACCES and f"chmod 600 {path}" in str(info.value)


def test_a_missing_key_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="key file not found: .*nope"):
        curve.CurveKeys.load(tmp_path / "nope")


def test_mode_is_on_or_off(caplog):
    assert curve.enabled({}) and curve.enabled({"mode": "ON"})
    with pytest.raises(ValueError, match="must be"):
        curve.enabled({"mode": "maybe"})
    with caplog.at_level("WARNING"):
        assert curve.warn_if_off({"mode": "off"}, "mds") is False
    assert "SECURITY IS OFF" in caplog.text
