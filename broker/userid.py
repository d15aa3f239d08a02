"""The User-Id ZeroMQ carries on every message of a CURVE connection: its two kinds and its
parser. Shared by callers.py (which turns it into the caller) and curve.py (which makes it),
and small so that clients loading curve.py do not load the routing core.
"""
from __future__ import annotations

USER_KEY, MEMBER_KEY = "u", "m"    # the kinds of User-Id (broker/curve.py makes them)


def parse_user_id(uid: str) -> tuple[str, str] | None:
    """(kind, name) of a User-Id "u:<user>:<key>" / "m:<service>:<key>", else None.
    Names never hold ':' (keys.USER_NAME, keys.NODE_ID), so the first two split cleanly."""
    kind, sep, rest = uid.partition(":")
    name, sep2, _key = rest.partition(":")
    if not (sep and sep2 and name) or kind not in (USER_KEY, MEMBER_KEY):
        return None
    return kind, name
