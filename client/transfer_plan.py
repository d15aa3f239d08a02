"""Transfer planning for `aegisfs put` and `get`: whether a command moves one file or many,
where each file lands (cp-like destination rules), and the file lists of -r trees.

No transfers here: the plans are lists the CLI hands to put_many / get_many. Local trees
are read with os.walk, remote ones with the client's `ls`. A plan that cannot be made
raises PlanError with the message the user sees.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .output import describe

if TYPE_CHECKING:
    from .api import AegisClient

Upload = tuple[str, str, int]       # (local file, remote path, size)
Download = tuple[str, str, int]     # (remote file, local path, size)


class PlanError(Exception):
    """A transfer that cannot be planned; `usage` when the arguments are at fault."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


# ---------------------------------------------------------------------------------------
# put

def single_upload(sources: tuple[str, ...]) -> bool:
    """One file ('-' for stdin) to one remote path, rather than files into a directory."""
    return len(sources) == 1 and (sources[0] == "-" or not os.path.isdir(sources[0]))


def upload_target(fs: "AegisClient", local: str, remote: str) -> str:
    """Where a single upload lands: REMOTE itself, or REMOTE/<name> when REMOTE ends in '/'
    or is a directory (stdin has no name: always REMOTE)."""
    if local != "-" and (remote.endswith("/") or fs.isdir(remote)):
        return remote.rstrip("/") + "/" + Path(local).name
    return remote


def plan_upload(sources: tuple[str, ...], remote: str, recursive: bool,
                warn: Callable[[str], None] = lambda message: None
                ) -> tuple[list[Upload], list[str]]:
    """(local file, remote path, size) for every file to upload, and the remote
    directories that would stay empty (they are created too). warn(message) hears of the
    entries skipped (not regular files)."""
    if "-" in sources:
        raise PlanError("put: '-' (stdin) cannot be combined with other sources", usage=True)
    base = remote.rstrip("/")
    files: list[Upload] = []
    empty: list[str] = []
    for src in sources:
        name = Path(src).name or Path(os.path.abspath(src)).name
        if not os.path.isdir(src):
            files.append((src, f"{base}/{name}", _size(src)))
            continue
        if not recursive:
            raise PlanError(f"put: {src}: is a directory (use -r to upload it)", usage=True)
        for top, dirs, names in os.walk(src, onerror=_walk_error):
            dirs.sort()
            rel = os.path.relpath(top, src)
            dest = f"{base}/{name}" + ("" if rel == "." else "/" + rel.replace(os.sep, "/"))
            if not dirs and not names:
                empty.append(dest)
            for n in sorted(names):
                local = os.path.join(top, n)
                size = _size(local)
                if not os.path.isfile(local):
                    warn(f"aegisfs: put: skipping {local}: not a regular file")
                    continue
                files.append((local, f"{dest}/{n}", size))
    return files, empty


def _size(local: str) -> int:
    try:
        return os.stat(local).st_size
    except OSError as exc:
        raise PlanError(f"put: {describe(exc)}") from None


def _walk_error(exc: OSError) -> None:
    raise PlanError(f"put: {describe(exc)}")


# ---------------------------------------------------------------------------------------
# get

def remote_name(remote: str) -> str:
    """The last component of a remote path (what a download is called locally)."""
    return remote.rstrip("/").rsplit("/", 1)[-1]


def single_download(fs: "AegisClient", remotes: tuple[str, ...], recursive: bool) -> bool:
    """One remote file to one local file, rather than files into a local directory."""
    return len(remotes) == 1 and not (recursive and fs.isdir(remotes[0]))


def download_target(remote: str, local: str) -> str:
    """Where a single download lands: LOCAL, or LOCAL/<name> when LOCAL is a directory."""
    return os.path.join(local, remote_name(remote)) if os.path.isdir(local) else local


def plan_download(fs: "AegisClient", remotes: tuple[str, ...], local: str, recursive: bool
                  ) -> tuple[list[Download], list[str], list[OSError]]:
    """(remote file, local path, size) for every file to download, the local directories
    to create (parents first), and the errors of REMOTEs that cannot be looked at."""
    if local == "-":
        raise PlanError("get: several files cannot go to stdout", usage=True)
    files: list[Download] = []
    dirs = [local]
    missing: list[OSError] = []
    for remote in remotes:
        name = remote_name(remote) or "root"
        try:
            info = fs.stat(remote)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            missing.append(exc)
            continue
        if info["type"] != "dir":
            files.append((remote, os.path.join(local, name), int(info["size"])))
            continue
        if not recursive:
            raise PlanError(f"get: {remote}: is a directory (use -r to download it)",
                            usage=True)
        stack = [(remote.rstrip("/") or "/", os.path.join(local, name))]
        while stack:
            top, dest = stack.pop()
            dirs.append(dest)
            for entry in sorted(fs.ls(top, detail=True), key=lambda e: e["name"]):
                child = top.rstrip("/") + "/" + entry["name"]
                if entry["type"] == "dir":
                    stack.append((child, os.path.join(dest, entry["name"])))
                else:
                    files.append((child, os.path.join(dest, entry["name"]), int(entry["size"])))
    return files, dirs, missing
