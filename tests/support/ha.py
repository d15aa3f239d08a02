"""What the HA fault tests ask of a running cluster: its MDS's `ha` status, and whether
its standby could take over now."""
from __future__ import annotations

from client import AegisClient


def status(cluster, deadline: float = 0) -> dict:
    """The active MDS's `status()`, retrying through a failover for `deadline` s."""
    with AegisClient(cluster.broker, key=cluster.key, retry_deadline=deadline,
                     timeout=2) as fs:
        return fs.status()


def ha_status(cluster, deadline: float = 0) -> dict:
    """The active MDS's `status()["ha"]`, retrying through a failover for `deadline` s."""
    return status(cluster, deadline)["ha"]


def standby_in_sync(cluster, deadline: float = 5) -> bool:
    """True when a kill of the active now would be taken over: an active MDS, its standby
    in sync, and the ran-alone mark cleared (while it is set no standby may lead)."""
    try:
        return _in_sync(ha_status(cluster, deadline))
    except OSError:
        return False


def _in_sync(ha: dict) -> bool:
    return ha["state"] == "active" and not ha.get("alone_mark") and \
        (ha.get("standby") or {}).get("state") == "in_sync"


def settled(cluster, deadline: float = 5) -> bool:
    """`standby_in_sync` and nothing left that the active would still write a record for:
    no drafts and no block pools (a closing client ends its pools with a request nobody
    waits for). A stop of both MDS then leaves their logs equal; a record written while
    they are being stopped may reach only the active (not acknowledged to anyone)."""
    try:
        st = status(cluster, deadline)
    except OSError:
        return False
    return _in_sync(st["ha"]) and not st["drafts"] and not st.get("pools")
