"""AegisFS client: the `AegisClient` Python API and the `aegisfs` command line (cli.py).

    from client import AegisClient
    with AegisClient("tcp://127.0.0.1:5550") as fs:
        fs.put("local.bin", "/uploads/local.bin")
"""
from __future__ import annotations

from broker.client import BrokerUnavailable

from .api import AegisClient

__all__ = ["AegisClient", "BrokerUnavailable", "__version__"]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("aegisfs")
    except Exception:       # running from a checkout that is not installed
        return "0.1.0"


__version__ = _version()
