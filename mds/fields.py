"""Checks of record fields, shared by the namespace and the block index, and the typed
OSError a refused record raises (errno plus the path, draft handle or node as filename).
"""
from __future__ import annotations

import errno
import os
from typing import Any

from mds.inode import BLOCK_ID_LEN


def error(code: int, name: object, detail: str | None = None) -> OSError:
    # OSError(code, ...) returns the matching subclass (FileNotFoundError, ...)
    return OSError(code, detail or os.strerror(code), name)


def check(cond: bool, name: object, detail: str) -> None:
    if not cond:
        raise error(errno.EINVAL, name, detail)


def is_node_list(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(n, str) and n for n in value) and len(set(value)) == len(value))


def nodes_arg(value: Any, name: object, what: str) -> list:
    # list("dn1") would quietly become ["d", "n", "1"]: insist on a real sequence
    if not isinstance(value, (list, tuple)):
        raise error(errno.EINVAL, name, f"{what} must be a list of node ids")
    return list(value)


def is_time(value: Any) -> bool:
    return type(value) is float or type(value) is int


def is_block_id(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == BLOCK_ID_LEN
