"""Configuration precedence: defaults < TOML < AEGISFS_* environment < flags."""
from __future__ import annotations

import pytest

from broker import config


def test_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[broker]\nclient = "tcp://127.0.0.1:7000"\nhwm = 5\n'
                    '[mds]\nreplication = 3\n')
    env = {"AEGISFS_BROKER_HWM": "9", "AEGISFS_MDS_LEASE": "2.5"}
    cfg = config.load(toml, {"mds": {"replication": 1, "block_size": None}}, environ=env)
    assert cfg["broker"]["client"] == "tcp://127.0.0.1:7000"      # TOML over default
    assert cfg["broker"]["hwm"] == 9                               # env over TOML, typed
    assert cfg["mds"]["lease"] == 2.5
    assert cfg["mds"]["replication"] == 1                          # flag over TOML
    assert cfg["mds"]["block_size"] == config.DEFAULTS["mds"]["block_size"]   # None ignored


def test_short_broker_alias_wins():
    env = {"AEGISFS_BROKER": "tcp://127.0.0.1:9", "AEGISFS_BROKER_CLIENT": "tcp://127.0.0.1:8"}
    assert config.load(environ=env)["broker"]["client"] == "tcp://127.0.0.1:9"


def test_bad_values_are_clear_errors(tmp_path):
    with pytest.raises(config.ConfigError, match="AEGISFS_BROKER_HWM"):
        config.load(environ={"AEGISFS_BROKER_HWM": "lots"})
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker\n")
    with pytest.raises(config.ConfigError, match="bad.toml"):
        config.load(bad, environ={})


def test_base_port_and_explicit_flags():
    assert config.endpoints_for_base_port(6000) == {
        "client": "tcp://127.0.0.1:6000", "worker": "tcp://127.0.0.1:6001",
        "events_in": "tcp://127.0.0.1:6002", "events_out": "tcp://127.0.0.1:6003"}
    flags = config.broker_flags(6000, worker="tcp://127.0.0.1:1", events_in=None,
                                heartbeat_interval=0.5)
    b = config.load(overrides={"broker": flags}, environ={})["broker"]
    assert b["client"] == "tcp://127.0.0.1:6000"
    assert b["worker"] == "tcp://127.0.0.1:1"                      # explicit beats derived
    assert b["events_in"] == "tcp://127.0.0.1:6002"                # None means not given
    assert b["heartbeat_interval"] == 0.5
    assert "base_port" not in b
    assert config.broker_flags(None, worker=None) == {}


def test_base_port_uses_the_broker_host(tmp_path):
    """The connecting roles reach the broker at [broker] host: file < env < --broker-host."""
    toml = tmp_path / "c.toml"
    toml.write_text('[broker]\nhost = "198.18.0.1"\n')
    flags = config.broker_flags(7000)
    b = config.load(toml, {"broker": flags}, environ={})["broker"]
    assert b["worker"] == "tcp://198.18.0.1:7001"
    assert b["events_out"] == "tcp://198.18.0.1:7003"
    b = config.load(toml, {"broker": flags}, environ={"AEGISFS_BROKER_HOST": "198.18.0.2"})
    assert b["broker"]["client"] == "tcp://198.18.0.2:7000"
    b = config.load(toml, {"broker": config.broker_flags(7000, host="::1")}, environ={})
    assert b["broker"]["client"] == "tcp://[::1]:7000"
    # without a base port the explicit endpoints stay what they are
    b = config.load(toml, environ={})["broker"]
    assert b["client"] == config.DEFAULTS["broker"]["client"]


def test_defaults_stay_on_loopback():
    b = config.load(environ={})["broker"]
    assert b["bind"] == b["host"] == "127.0.0.1"
    assert all(b[name].startswith("tcp://127.0.0.1:") for name in config.ENDPOINTS)


def test_bind_endpoint():
    assert config.bind_endpoint("tcp://198.18.0.1:5550", "0.0.0.0") == "tcp://0.0.0.0:5550"
    assert config.bind_endpoint("tcp://127.0.0.1:5551", "198.18.0.1") == "tcp://198.18.0.1:5551"
    assert config.bind_endpoint("tcp://127.0.0.1:5551", "::") == "tcp://[::]:5551"
    assert config.bind_endpoint("tcp://127.0.0.1:5551", "") == "tcp://127.0.0.1:5551"
    assert config.bind_endpoint("ipc:///tmp/x", "0.0.0.0") == "ipc:///tmp/x"
    with pytest.raises(config.ConfigError, match="no port"):
        config.bind_endpoint("tcp://somewhere", "0.0.0.0")
