"""Configuration loading: the one place that reads configs/*.toml and AEGISFS_* variables.

Precedence, lowest first: built-in defaults < TOML file < environment < explicit flags
(the caller passes flags as `overrides`). Every role calls `load()` and reads its section.
"""
from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "cluster.toml"
DEFAULT_BASE_PORT = 5550

DEFAULTS: dict[str, dict[str, Any]] = {
    "broker": {
        # where the broker listens (its four endpoints' ports, on this address) and where
        # the others reach it (with --base-port); both loopback unless configured
        "bind": "127.0.0.1",
        "host": "127.0.0.1",
        "client": "tcp://127.0.0.1:5550",
        "worker": "tcp://127.0.0.1:5551",
        "events_in": "tcp://127.0.0.1:5552",
        "events_out": "tcp://127.0.0.1:5553",
        # several brokers: each one's client endpoint tcp://HOST:P (its worker endpoint is
        # P+1, events P+2/P+3); when set, the four endpoints above become these lists
        "endpoints": [],
        "heartbeat_interval": 1.0,
        "heartbeat_liveness": 3,
        "max_message_size": 64 * 1024 * 1024 + 1024 * 1024,
        "hwm": 1000,
        "max_header_size": 8 * 1024 * 1024,
        "request_ttl": 120.0,
    },
    "mds": {
        "data_dir": "data/mds",
        "replication": 2,
        "block_size": 4 * 1024 * 1024,
        "lease": 60.0,
        "dead_after": 5.0,
        "checkpoint_records": 200_000,
        "checkpoint_bytes": 64 * 1024 * 1024,
        "user_blocks": 4096,
        "user_bytes": 16 * 1024 ** 3,
        "draft_blocks": 4096,
        "draft_bytes": 16 * 1024 ** 3,
        "cap_read_ttl": 300.0,
        "cap_write_ttl": 120.0,
        "key_rotation": 600.0,
    },
    "datanode": {
        "data_dir": "data/dn",
        "heartbeat": 1.0,
        "scrub_rate": 16 * 1024 * 1024,
        "writer_threads": 2,
        # the data endpoint clients send block payloads to directly (datanode/dataplane.py);
        # "" = the address this host uses toward the broker; port 0 = any free port
        "data_bind": "",
        "data_port": 0,
        "advertise": "",
        "data_endpoint": True,
    },
    # MDS leadership from etcd (mds/election.py); etcd "" = off, the single-MDS default
    "ha": {"etcd": "", "key": "/aegisfs/mds/leader", "lease_ttl": 5, "name": "",
           "standby": "", "standby_timeout": 2.0, "peer": ""},
    # CURVE on every broker socket (broker/curve.py). "off" is for benchmarks only.
    "security": {"mode": "on", "keys": "data/keys", "key": "", "broker_key": ""},
    "client": {"timeout": 30.0, "connect_timeout": 5.0, "window": 8, "put_batch": 64,
               "get_batch": 256, "progress": True, "retry_deadline": 60.0, "direct": True},
}

# Short aliases users reach for first; they win over the long AEGISFS_BROKER_CLIENT form.
ENV_ALIASES = {"AEGISFS_BROKER": ("broker", "client")}


class ConfigError(ValueError):
    """A configuration file or variable that cannot be used."""


ENDPOINTS = ("client", "worker", "events_in", "events_out")


def _tcp_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def endpoints_for_base_port(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The broker endpoints derived from one base port: client P, worker P+1, events P+2/P+3."""
    h = _tcp_host(host)
    return {name: f"tcp://{h}:{port + i}" for i, name in enumerate(ENDPOINTS)}


def bind_endpoint(endpoint: str, bind: str | None) -> str:
    """The address the broker binds for `endpoint`: its port on `bind` (tcp only; other
    transports, and an empty `bind`, are bound as written)."""
    if not bind or not endpoint.startswith("tcp://"):
        return endpoint
    port = endpoint.rpartition(":")[2]
    if not port.isdigit():
        raise ConfigError(f"endpoint {endpoint!r} has no port")
    return f"tcp://{_tcp_host(bind)}:{port}"


def broker_flags(base_port: int | None = None, **values: Any) -> dict[str, Any]:
    """[broker] overrides from a role's flags (None means "not given"). With `base_port`,
    `load` derives the endpoints from it and [broker] host (a `host` flag wins over the
    file and environment); endpoints given explicitly win over the derived ones."""
    flags: dict[str, Any] = {"base_port": base_port} if base_port else {}
    flags.update({k: v for k, v in values.items() if v is not None})
    return flags


def endpoint_list(value: str | Iterable[str]) -> list[str]:
    """The brokers' endpoints of one kind: a list, or a string of comma-separated
    endpoints (one endpoint is a list of one; a comma is never part of a ZeroMQ endpoint)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [item.strip() for item in items if item.strip()]
    if not out:
        raise ConfigError(f"no broker endpoint in {value!r}")
    return out


def brokers_endpoints(endpoints: Iterable[str]) -> dict[str, str]:
    """[broker] endpoints (each broker's client endpoint tcp://HOST:P) as the four
    endpoint keys, each the comma-joined list over the brokers in the same order."""
    per: dict[str, list[str]] = {name: [] for name in ENDPOINTS}
    for endpoint in endpoints:
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        if not endpoint.startswith("tcp://") or not port.isdigit() or not host:
            raise ConfigError(f"[broker] endpoints: {endpoint!r} is not tcp://HOST:PORT")
        for name, derived in endpoints_for_base_port(int(port), host.strip("[]")).items():
            per[name].append(derived)
    return {name: ",".join(values) for name, values in per.items()}


def one_broker(broker: Mapping[str, Any]) -> None:
    """A broker process binds one set of endpoints: refuse lists ([broker] endpoints is
    for the processes that connect to the brokers)."""
    for name in ENDPOINTS:
        if "," in str(broker.get(name, "")):
            raise ConfigError(f"[broker] {name} lists several brokers ({broker[name]}); "
                              "start each broker with its own --base-port (or --client, "
                              "--worker, --events-in, --events-out)")


def _coerce(value: str, like: Any, name: str) -> Any:
    if isinstance(like, list):
        return [item.strip() for item in value.split(",") if item.strip()]
    try:
        if isinstance(like, bool):
            return value.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r}: expected {type(like).__name__}") from exc
    return value


def _merge(base: dict[str, dict[str, Any]], extra: Mapping[str, Any], origin: str) -> None:
    for section, values in extra.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        base.setdefault(section, {}).update(values)


def _expand_brokers(broker: dict[str, Any], env: Mapping[str, str]) -> None:
    """[broker] endpoints (file or AEGISFS_BROKER_ENDPOINTS) replaces the four single
    endpoints, except those set by their own variable; the short alias and flags, applied
    after this, win over both."""
    listed = broker.get("endpoints") or []
    if isinstance(listed, str):
        listed = broker["endpoints"] = endpoint_list(listed)
    if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
        raise ConfigError("[broker] endpoints must be a list of tcp://HOST:PORT strings")
    if not listed:
        return
    for name, joined in brokers_endpoints(listed).items():
        if f"AEGISFS_BROKER_{name.upper()}" not in env:
            broker[name] = joined


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Return the merged configuration as {section: {key: value}}.

    `path` defaults to $AEGISFS_CONFIG or configs/cluster.toml (a missing default file is
    fine; a missing explicit one is an error). `overrides` holds flag values; None values
    are ignored so click options can be passed straight through.
    """
    env = os.environ if environ is None else environ
    cfg = copy.deepcopy(DEFAULTS)
    explicit = path is not None or "AEGISFS_CONFIG" in env
    cfg_path = Path(path or env.get("AEGISFS_CONFIG") or DEFAULT_CONFIG)
    if cfg_path.exists():
        try:
            with cfg_path.open("rb") as fh:
                _merge(cfg, tomllib.load(fh), str(cfg_path))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: {exc}") from exc
    elif explicit:
        raise ConfigError(f"config file not found: {cfg_path}")

    for section, values in cfg.items():
        for key, value in list(values.items()):
            name = f"AEGISFS_{section.upper()}_{key.upper()}"
            if name in env:
                values[key] = _coerce(env[name], value, name)
    _expand_brokers(cfg["broker"], env)
    for name, (section, key) in ENV_ALIASES.items():
        if env.get(name):
            cfg[section][key] = env[name]

    for section, flags in (overrides or {}).items():
        cfg.setdefault(section, {}).update({k: v for k, v in flags.items() if v is not None})
    broker = cfg["broker"]
    base_port = broker.pop("base_port", None)
    if base_port:
        given = (overrides or {}).get("broker", {})
        for name, endpoint in endpoints_for_base_port(int(base_port), broker["host"]).items():
            if given.get(name) is None:
                broker[name] = endpoint
    return cfg
