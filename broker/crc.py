"""CRC32C, the checksum of every block and chunk: the `crc32c` package's C function, loaded
without running the package's __init__ (which imports importlib.metadata and argparse for
its version string and CLI - a third of a short CLI call's start-up).

    from broker.crc import crc32c       # crc32c(data, value=0) -> int, as crc32c.crc32c
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

_EXT = "crc32c._crc32c"


def _extension() -> ModuleType:
    """The compiled module; the normal import when it cannot be found beside the package
    (another layout or a newer release): slower to start, never wrong."""
    if _EXT in sys.modules:
        return sys.modules[_EXT]
    spec = importlib.util.find_spec("crc32c")          # locates, does not run __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"_crc32c{suffix}"
            if path.is_file():
                loader = importlib.machinery.ExtensionFileLoader(_EXT, str(path))
                ext_spec = importlib.util.spec_from_file_location(_EXT, path, loader=loader)
                if ext_spec is None:
                    continue
                module = importlib.util.module_from_spec(ext_spec)
                loader.exec_module(module)
                # the package, imported later, then finds this same module
                sys.modules[_EXT] = module
                return module
    return importlib.import_module(_EXT)


crc32c: Callable[..., int] = _extension().crc32c
