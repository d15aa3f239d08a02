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


def test_broker_endpoints_list_becomes_each_endpoint_list(tmp_path):
    """[broker] endpoints names each broker by its client endpoint; the four endpoint keys
    become comma-joined lists in the same order (worker P+1, events P+2 / P+3)."""
    toml = tmp_path / "c.toml"
    toml.write_text('[broker]\nendpoints = ["tcp://127.0.0.1:6000", "tcp://[::1]:6010"]\n')
    b = config.load(toml, environ={})["broker"]
    assert b["client"] == "tcp://127.0.0.1:6000,tcp://[::1]:6010"
    assert b["worker"] == "tcp://127.0.0.1:6001,tcp://[::1]:6011"
    assert b["events_in"] == "tcp://127.0.0.1:6002,tcp://[::1]:6012"
    assert b["events_out"] == "tcp://127.0.0.1:6003,tcp://[::1]:6013"
    assert config.endpoint_list(b["worker"]) == ["tcp://127.0.0.1:6001", "tcp://[::1]:6011"]


def test_broker_endpoints_from_the_environment_and_what_wins_over_them(tmp_path):
    env = {"AEGISFS_BROKER_ENDPOINTS": "tcp://127.0.0.1:6000, tcp://127.0.0.1:6004"}
    b = config.load(environ=env)["broker"]
    assert b["endpoints"] == ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6004"]
    assert b["worker"] == "tcp://127.0.0.1:6001,tcp://127.0.0.1:6005"
    # the short alias (clients) and an endpoint's own variable win over the list
    b = config.load(environ={**env, "AEGISFS_BROKER": "tcp://127.0.0.1:9",
                             "AEGISFS_BROKER_EVENTS_OUT": "tcp://127.0.0.1:8"})["broker"]
    assert b["client"] == "tcp://127.0.0.1:9" and b["events_out"] == "tcp://127.0.0.1:8"
    assert b["worker"] == "tcp://127.0.0.1:6001,tcp://127.0.0.1:6005"
    # a role's --base-port (one broker) and explicit flags win too
    b = config.load(overrides={"broker": config.broker_flags(7000)}, environ=env)["broker"]
    assert b["worker"] == "tcp://127.0.0.1:7001"
    flags = config.broker_flags(7000, worker="tcp://127.0.0.1:1,tcp://127.0.0.1:2")
    assert config.load(overrides={"broker": flags}, environ=env)["broker"]["worker"] == \
        "tcp://127.0.0.1:1,tcp://127.0.0.1:2"


def test_one_broker_is_unchanged_and_a_comma_list_is_several():
    assert config.endpoint_list("tcp://127.0.0.1:5550") == ["tcp://127.0.0.1:5550"]
    assert config.endpoint_list(" tcp://a:1 ,tcp://b:2,") == ["tcp://a:1", "tcp://b:2"]
    assert config.endpoint_list(["tcp://a:1"]) == ["tcp://a:1"]
    with pytest.raises(config.ConfigError):
        config.endpoint_list(" , ")
    b = config.load(environ={})["broker"]
    assert b["endpoints"] == [] and b["client"] == "tcp://127.0.0.1:5550"


def test_bad_broker_endpoints_are_a_config_error(tmp_path):
    toml = tmp_path / "c.toml"
    for bad in ('"tcp://127.0.0.1:6000"', '["ipc:///tmp/x"]', '["tcp://h:port"]', "[1]"):
        toml.write_text(f"[broker]\nendpoints = {bad}\n")
        if bad.startswith('"'):     # a plain string is a list of one
            assert config.load(toml, environ={})["broker"]["worker"] == "tcp://127.0.0.1:6001"
            continue
        with pytest.raises(config.ConfigError):
            config.load(toml, environ={})


def test_a_broker_process_refuses_a_list_of_endpoints():
    config.one_broker(config.load(environ={})["broker"])
    b = config.load(environ={"AEGISFS_BROKER_ENDPOINTS": "tcp://a:1,tcp://b:5"})["broker"]
    with pytest.raises(config.ConfigError, match="several brokers"):
        config.one_broker(b)
