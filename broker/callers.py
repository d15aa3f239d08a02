"""Who is calling the broker: the sides a message comes in on and a send goes out on
(`CLIENT`, `WORKER`, and a DataNode's `DATA` endpoint), and `caller_of`, the one place
that turns a connection's ZAP User-Id (or, with security off, the endpoint) into the
caller class and id stamped on every request; `Refused` for a key asking for more than
it may. Used by broker/routing.py and datanode/dataplane.py.
"""
from __future__ import annotations

import errno

from . import protocol as P
from .userid import MEMBER_KEY, USER_KEY, parse_user_id

CLIENT = 0   # send on the client-facing socket
WORKER = 1   # send on the worker-facing socket
DATA = 2     # a DataNode's data endpoint (datanode/dataplane.py): users and members

Send = tuple[int, bytes, list]


# With security off every client is this user: the superuser (mds.perms.SUPERUSER and
# keys.ADMIN are the same name; a unit test holds them together).
INSECURE_USER = "admin"


class Refused(PermissionError):
    """A peer asked for something its key does not allow (register or act for another
    member, a user key on the worker side): refused and logged, never a crash."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)


def _member_caller(member: str | None) -> tuple[str, str]:
    if member == P.CALLER_MDS:
        return P.CALLER_MDS, P.CALLER_MDS
    if member is not None and member.startswith("dn.") and len(member) > 3:
        return P.CALLER_DATANODE, member[3:]
    raise P.ProtocolError(f"{member!r} is not a member of the cluster (mds or dn.<id>)")


def caller_of(side: int, user: str | None = None,
              member: str | None = None) -> tuple[str, str]:
    """(caller class, caller id) of a request: the one place that decides who is calling.

    With security on, `user` is the connection's ZAP User-Id (what the broker's
    authenticator gave the CURVE key, attached by ZeroMQ to every message): on the client
    endpoint a user key is class "client" with the user's name; on the worker endpoint a
    member key is the member it was issued for ("mds", or "dn.<id>" -> "datanode" <id>),
    and `member` (what the peer declares in MEMBER or READY) must be that same member.
    Anything else raises Refused. Nothing the sender writes in a header counts.
    On a DataNode's data endpoint (`DATA`) both kinds are admitted and take the class
    they would have at the broker; nothing is declared there.
    With security off (`user` None) the endpoint is the credential: every client is
    INSECURE_USER, a member is what it declares (on the data endpoint: a client).
    """
    if user is None:
        return (P.CALLER_CLIENT, INSECURE_USER) if side != WORKER else _member_caller(member)
    who = parse_user_id(user)
    if who is None:
        raise Refused(f"unknown User-Id {user[:60]!r}")
    kind, name = who
    if side == DATA:
        return (P.CALLER_CLIENT, name) if kind == USER_KEY else _member_caller(name)
    if side == CLIENT:
        if kind != USER_KEY:
            raise Refused(f"member key of {name!r} on the client endpoint")
        return P.CALLER_CLIENT, name
    if kind != MEMBER_KEY:
        raise Refused(f"user key of {name!r} on the worker endpoint")
    if member is not None and member != name:
        raise Refused(f"the key of {name!r} may not act for {member!r}")
    return _member_caller(name)


CLIENT_CALLER = P.caller_field(*caller_of(CLIENT))
