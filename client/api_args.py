"""The conventions of AegisClient's arguments and results, shared by its parts (api.py,
api_read.py, api_write.py, api_cluster.py): remote paths, errors that name the path,
block ids shown as hex, the outcomes of many-file calls and their batch size.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, BinaryIO, Callable, Iterator

from broker.limits import MAX_BATCH

from .streams import name_error

PathLike = str | os.PathLike
Source = PathLike | BinaryIO
ProgressFn = Callable[[int, "int | None"], None]     # (bytes done, total or None)
Outcome = dict | OSError


def _abs(path: Any) -> str:
    """Remote paths are absolute; a relative one is taken from the root (no cwd here)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise OSError(errno.EINVAL, f"invalid path {path!r}")
    return path if path.startswith("/") else "/" + path


@contextlib.contextmanager
def _about(path: str | None) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise name_error(exc, path)


def hexify(value: Any) -> Any:
    """Block ids travel as 16 raw bytes; users and JSON see 32 hex characters."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: hexify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hexify(v) for v in value]
    return value


def _outcomes(out: list[Outcome], errors: str) -> list[Outcome]:
    """put_many / get_many results: returned, or with errors="raise" the first failure."""
    failed = [o for o in out if isinstance(o, OSError)]
    if failed and errors == "raise":
        first = failed[0]
        if len(failed) > 1:
            first.add_note(f"{len(failed) - 1} more of {len(out)} files failed too")
        raise first
    return out


def _batch_size(n: Any) -> int:
    """Files per batch: at least 1, at most what one MDS `batch` request may carry."""
    return max(1, min(int(n), MAX_BATCH))
