"""AegisClient's verbs about the cluster rather than a file: tree quotas, status, the
brokers' liveness, fsck and draining a DataNode. A part of ``client.api.AegisClient``
(a mixin: its methods run on the client and use its MDS requests and broker settings).
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Callable

import zmq

from broker import config as broker_config
from broker import curve
from broker.client import Client

from .api_args import PathLike, _abs, hexify


class ClusterVerbs:
    """Quotas, status, brokers, fsck and drain, mixed into AegisClient."""

    if TYPE_CHECKING:    # what this part uses of the AegisClient
        broker: str
        _transport: Callable[[], Client] | None
        _curve: curve.CurveKeys | None
        _key_error: OSError | None

        def _mds(self, about: str | None, op: str, **fields: Any) -> dict: ...

    def quota_set(self, path: PathLike, *, max_bytes: int | None = None,
                  max_files: int | None = None) -> dict:
        """Limit the tree under directory `path` (superuser only); see quota_get."""
        p = _abs(path)
        limits = {k: v for k, v in (("bytes", max_bytes), ("files", max_files))
                  if v is not None}
        return self._mds(p, "quota_set", path=p, **limits)

    def quota_clear(self, path: PathLike) -> dict:
        """Remove the quota of directory `path` (superuser only)."""
        p = _abs(path)
        return self._mds(p, "quota_clear", path=p)

    def quota_get(self, path: PathLike) -> list[dict]:
        """The quotas that apply in directory `path`, root first: [{path, max_bytes,
        max_files, bytes, files}] (a limit None: none; files counts every entry)."""
        p = _abs(path)
        return self._mds(p, "quota_get", path=p)["quotas"]

    def quota_ls(self) -> list[dict]:
        """Every quota on a directory you may read, by path (as quota_get)."""
        return self._mds(None, "quota_ls")["quotas"]

    def status(self) -> dict:
        """The cluster: nodes [{id, state, capacity, used, blocks, last_seen}], counts, health."""
        return hexify(self._mds(None, "status"))

    def brokers(self, timeout: float = 1.0) -> list[dict]:
        """Each broker this client is configured with and whether it answers now:
        [{endpoint, up, error?}] (the broker's own `ping`, over a short connection of
        its own per broker, so a dead one costs at most `timeout`)."""
        if self._transport:
            return []
        if self._key_error is not None:
            raise self._key_error
        try:
            endpoints = broker_config.endpoint_list(self.broker)
        except broker_config.ConfigError as exc:
            raise OSError(errno.EINVAL, str(exc)) from None
        out = []
        for endpoint in endpoints:
            entry: dict[str, Any] = {"endpoint": endpoint, "up": False}
            try:
                with Client(endpoint, timeout=timeout, connect_timeout=timeout,
                            curve=self._curve) as c:
                    c.call("broker", {"op": "ping"})
                entry["up"] = True
            except (OSError, zmq.ZMQError) as exc:
                entry["error"] = str(exc)
            out.append(entry)
        return out

    def fsck(self, repair: bool = False) -> dict:
        """Check every block (missing, under-replicated, corrupt, orphans); `healthy`."""
        return hexify(self._mds(None, "fsck", repair=repair))

    def drain(self, node: str, cancel: bool = False) -> dict:
        """Start emptying DataNode `node` (or stop, with cancel): its blocks are copied
        elsewhere, then dropped from it -> {node, drain: "draining"/"drained"/None,
        drain_left: blocks still there (None until counted)}. Call again to follow it."""
        return self._mds(node, "drain", node=node, cancel=cancel)
