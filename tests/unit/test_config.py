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
    assert flags["client"] == "tcp://127.0.0.1:6000"
    assert flags["worker"] == "tcp://127.0.0.1:1"                  # explicit beats derived
    assert flags["events_in"] == "tcp://127.0.0.1:6002"            # None means not given
    assert flags["heartbeat_interval"] == 0.5
    assert config.broker_flags(None, worker=None) == {}
