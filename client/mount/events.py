"""Cache invalidation from the cluster's event feed: the MDS publishes file.* and dir.*
events (commit, delete, rename, attr, create); a thread of the mount drops the paths
they name from its attribute cache, so a change made elsewhere shows at once instead of
after attr_timeout (the kernel's own cache still lasts its timeout)."""
from __future__ import annotations

import logging
import re
import threading
from typing import Any

from broker.config import endpoint_list
from broker.events import Subscriber

from .cache import AttrCache, KnownDirs, OwnChanges

log = logging.getLogger(__name__)


def events_endpoint(client_endpoint: str) -> str | None:
    """The broker's XPUB endpoint: the client endpoint's port + 3 (docs/architecture.md);
    for several brokers (comma-separated), each one's, in the same order."""
    out = []
    for each in endpoint_list(client_endpoint):
        m = re.fullmatch(r"(tcp://.+):(\d+)", each)
        if m is None:
            return None
        out.append(f"{m.group(1)}:{int(m.group(2)) + 3}")
    return ",".join(out)


def paths_of(body: dict) -> list[str]:
    return [p for p in (body.get("path"), body.get("src"), body.get("dst"))
            if isinstance(p, str) and p.startswith("/")]


class Invalidator(threading.Thread):
    def __init__(self, endpoint: str, curve: Any, cache: AttrCache,
                 own: OwnChanges | None = None, known: KnownDirs | None = None) -> None:
        super().__init__(name="aegisfs-mount-events", daemon=True)
        self.endpoint, self.curve, self.cache = endpoint, curve, cache
        self.own = own or OwnChanges()
        self.known = known or KnownDirs(0)
        self.stopping = threading.Event()

    def run(self) -> None:
        sub = Subscriber(self.endpoint, ["file.", "dir."], curve=self.curve)
        try:
            while not self.stopping.is_set():
                event = sub.recv(timeout=0.5)
                if event is None:
                    continue
                self.apply(event.topic, event.body)
        except Exception:           # the cache times still bound staleness
            log.exception("event feed lost; attributes now expire by time only")
        finally:
            sub.close()

    def apply(self, topic: str, body: dict) -> None:
        for path in paths_of(body):      # names that exist now (KnownDirs: a superset)
            if topic not in ("file.commit", "file.attr", "dir.attr", "dir.create"):
                self.known.drop_below(path)          # a directory removed or moved
            self.known.add(path)
        if topic in ("file.commit", "file.attr") and body.get("path") in self.own:
            self.cache.drop_entry(body["path"])      # ours: the parent is up to date
            return
        for path in paths_of(body):
            self.cache.drop_tree(path)

    def stop(self) -> None:
        self.stopping.set()
