"""AegisFS client: the `AegisClient` Python API and the `aegisfs` command line (cli.py).

    from client import AegisClient
    with AegisClient("tcp://127.0.0.1:5550") as fs:
        fs.put("local.bin", "/uploads/local.bin")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.client import BrokerUnavailable

    from .api import AegisClient

__all__ = ["AegisClient", "BrokerUnavailable", "__version__"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: `aegisfs --help` and the modules under client/ that do not talk
    # to a cluster need not pay for zmq and the API at start (PEP 562).
    if name == "AegisClient":
        from .api import AegisClient
        return AegisClient
    if name == "BrokerUnavailable":
        from broker.client import BrokerUnavailable
        return BrokerUnavailable
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("aegisfs")
    except Exception:       # running from a checkout that is not installed
        return "0.1.0"
