"""Validation and normalisation of AegisFS namespace paths.

Owns the path rules every MDS entry point applies before touching the namespace:
absolute, `/`-separated, `//` and `.` collapsed, `..` refused (never resolved), no NUL,
valid UTF-8: otherwise ``OSError(errno.EINVAL, message, path)``. A component over 255
bytes or a path over 16 KiB is ``OSError(errno.ENAMETOOLONG, ...)``, as POSIX says.

Public API:
    normalize(path) -> str           canonical form ("/" for the root, no trailing slash)
    components(path) -> list[str]    the names of a path, [] for the root
    split(path) -> (parent, name)    EINVAL for the root, which has no name
    join(parent, name) -> str        parent must already be normalised, name one component
    basename(path) -> str
    is_within(path, ancestor) -> bool  path equals ancestor or lies below it
"""
from __future__ import annotations

import errno
import logging

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255
# Above PATH_MAX (4096): through a mount, a path relative to any directory may be
# PATH_MAX long, and the MDS sees it below that directory's own path.
MAX_PATH_BYTES = 16384


def _invalid(path: object, why: str) -> OSError:
    return OSError(errno.EINVAL, f"invalid path: {why}", path)


def _too_long(path: object, why: str) -> OSError:
    return OSError(errno.ENAMETOOLONG, f"File name too long: {why}", path)


def components(path: object) -> list[str]:
    """Split a path into validated component names ([] for the root)."""
    # Fast path for the common case, a short ASCII path already in canonical form: no
    # component can then exceed the byte limits, so only the shape needs checking.
    if type(path) is str and len(path) <= MAX_NAME_BYTES and path.isascii() \
            and path[:1] == "/" and "\x00" not in path:
        names = path[1:].split("/")
        if "" not in names and "." not in names and ".." not in names:
            return names
    if not isinstance(path, str):
        raise _invalid(repr(path), "path must be a string")
    if not path.startswith("/"):
        raise _invalid(path, "path must be absolute")
    if "\x00" in path:
        raise _invalid(path, "NUL byte in path")
    try:
        total = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        # lone surrogates cannot travel over msgpack or be stored: refuse them here
        raise _invalid(path, "path is not valid UTF-8") from None
    if total > MAX_PATH_BYTES:
        raise _too_long(path, f"path longer than {MAX_PATH_BYTES} bytes")
    names = []
    for name in path.split("/"):
        if name == "" or name == ".":
            continue
        if name == "..":
            # resolving '..' would let a client reach outside a subtree it was handed
            raise _invalid(path, "'..' is not allowed")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise _too_long(path, f"component longer than {MAX_NAME_BYTES} bytes")
        names.append(name)
    return names


def normalize(path: str) -> str:
    """Return the canonical form of ``path`` or raise OSError(EINVAL)."""
    return "/" + "/".join(components(path))


def split(path: str) -> tuple[str, str]:
    """Return ``(parent, name)`` of a path; the root has no name and raises EINVAL."""
    names = components(path)
    if not names:
        raise _invalid(path, "the root has no parent")
    return "/" + "/".join(names[:-1]), names[-1]


def join(parent: str, name: str) -> str:
    """Join a normalised parent and one component name."""
    if not name or "/" in name or name in (".", ".."):
        raise _invalid(name, "not a single path component")
    return parent + name if parent == "/" else f"{parent}/{name}"


def basename(path: str) -> str:
    names = components(path)
    return names[-1] if names else ""


def is_within(path: str, ancestor: str) -> bool:
    """True when normalised ``path`` is ``ancestor`` itself or lies below it."""
    if ancestor == "/":
        return True
    return path == ancestor or path.startswith(ancestor + "/")
