"""Service "broker", answered by the broker itself (ping, whoami, registry, services),
declared like any other service (broker/service.py); broker.routing.Router runs it for
requests addressed to "broker".
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from . import protocol as P
from .service import EVERYONE, Context, Str, operation

if TYPE_CHECKING:
    from .routing import Router


def registry_digest(ids: frozenset[str]) -> str:
    """A short name for one view of the registry (the `registry` op's `since`)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:32]


class _BrokerOps:
    """Service "broker", answered by the broker itself."""

    def __init__(self, router: Router) -> None:
        self.router = router

    @operation(callers=EVERYONE)
    def ping(self, h: dict, payload: list, ctx: Context) -> dict:
        """Liveness of the broker: {"pong": true}."""
        return {"pong": True}

    @operation(callers=EVERYONE)
    def whoami(self, h: dict, payload: list, ctx: Context) -> dict:
        """Who the broker says the caller is: {"user": id, "class": caller class} (a user's
        name for clients; "admin" for every client when security is off)."""
        return {"user": ctx.caller_id, "class": ctx.caller_class}

    @operation({"since?": Str(64)}, callers=frozenset({P.CALLER_DATANODE}))
    def registry(self, h: dict, payload: list, ctx: Context) -> dict:
        """The User-Ids the key registry admits now, for a DataNode's data endpoint to
        admit the same keys (datanode/dataplane.py) -> {digest, ids: [User-Id]}, or only
        {digest} when it equals `since` (nothing changed); {secure: false} with security
        off. The broker stays the one holder of the registry."""
        ids = self.router.registry
        if ids is None:
            return {"secure": False}
        digest = registry_digest(ids)
        if h.get("since") == digest:
            return {"secure": True, "digest": digest}
        return {"secure": True, "digest": digest, "ids": sorted(ids)}

    @operation(callers=EVERYONE)
    def services(self, h: dict, payload: list, ctx: Context) -> dict:
        """Live workers per service: {"services": {name: count}} (services with none are
        left out)."""
        return {"services": {s.name: len(s.workers)
                             for s in self.router.services.values() if s.workers}}
