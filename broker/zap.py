"""The broker's ZAP thread: pyzmq's zmq.auth authenticator with curve.Admission's per-domain
decisions and User-Ids. Apart from curve.py because zmq.auth imports asyncio, which costs
every client process tens of milliseconds at start for a thread only the broker runs.
"""
from __future__ import annotations

import logging

import zmq
from zmq.auth.thread import ThreadAuthenticator

from .curve import DOMAINS, Admission, KeyView

log = logging.getLogger("broker.curve")     # the name these messages always had


class _Domain:
    """pyzmq's credentials provider interface: callback(domain, z85 key) -> bool."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            return self.admission.admit(domain, key)
        except Exception:   # never let a lookup error leave a handshake unanswered
            log.exception("ZAP check failed; refusing the key")
            return False


class KeyAuthenticator(ThreadAuthenticator):
    """zmq.auth's ZAP thread with our per-domain callbacks and User-Id mapping."""

    def __init__(self, context: zmq.Context, store: KeyView,
                 domains: tuple[str, ...] = DOMAINS) -> None:
        super().__init__(context, log=logging.getLogger("broker.zap"))
        self.admission = Admission(store)
        self.domains = domains      # a DataNode's data endpoint: ("data",)

    def start(self) -> None:
        super().start()
        provider = _Domain(self.admission)
        for domain in self.domains:
            self.configure_curve_callback(domain, provider)

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.admission.user_id_for(client_public_key)
