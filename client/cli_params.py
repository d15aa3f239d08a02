"""The `aegisfs` parameter types: sizes (64K, 4M), octal modes, remote paths (completed
from the cluster) and local paths, shared by the commands of cli.py and its cli_*.py
modules.
"""
from __future__ import annotations

import re
from typing import Any

import click

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)?\s*$", re.IGNORECASE)


class SizeType(click.ParamType):
    """A byte count: 1048576, 64K, 4M, 4MiB, 1G."""
    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size (examples: 65536, 64K, 4M)", param, ctx)
        n = int(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")
        if n <= 0:
            self.fail("size must be positive", param, ctx)
        return n


class OctalMode(click.ParamType):
    """An octal mode: 755, 0700, 1777."""
    name = "octal"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        from .modes import ModeError, parse_mode
        try:
            mode = parse_mode(str(value))
        except ModeError:
            mode = None
        if mode is None or mode.absolute is None:
            self.fail(f"{value!r} is not an octal mode (examples: 755, 0700)", param, ctx)
        return mode.absolute


class RemotePath(click.ParamType):
    """A path in AegisFS; shell completion asks the cluster for names (quietly)."""
    name = "path"

    def shell_complete(self, ctx: click.Context, param: Any, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        from .api import AegisClient
        parent, _, stem = (incomplete or "/").rpartition("/")
        parent = parent or "/"
        try:
            root = ctx.find_root().params
            with AegisClient(root.get("broker"), timeout=1.0, connect_timeout=1.0,
                             key=root.get("key")) as fs:
                entries = fs.ls(parent, detail=True)
        except Exception:       # completion must never print an error
            return []
        base = parent.rstrip("/")
        return [CompletionItem(f"{base}/{e['name']}" + ("/" if e["type"] == "dir" else ""),
                               type="plain")
                for e in entries if e["name"].startswith(stem)]


REMOTE = RemotePath()
OCTAL_MODE = OctalMode()
LOCAL_IN = click.Path(allow_dash=True)      # a missing file is reported like any error
LOCAL_OUT = click.Path(allow_dash=True)
