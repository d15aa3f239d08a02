"""AegisFS as an fsspec file system (protocol ``aegisfs``): pandas, pyarrow, dask and
anything else that opens ``aegisfs://host:port/path`` URLs goes through this, over one
AegisClient per instance (which keeps a broker socket per thread).

    import fsspec
    fs = fsspec.filesystem("aegisfs", broker="tcp://127.0.0.1:5550")
    pd.read_parquet("aegisfs://127.0.0.1:5550/data/x.parquet")

The primitives are native: ls/info from the MDS, byte ranges read only the blocks they
touch, writes stream blocks as the buffer fills and commit atomically on close ("xb" and
pipe_file(mode="create") refuse an existing file, checked again at the commit), mv is one
MDS rename, cp_file one server-side copy (shared blocks, no byte moves), rm -r one MDS
request, many paths in cat/pipe travel in batches.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
from datetime import datetime, timezone
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.utils import stringify_path

from .api import AegisClient

PROTOCOL = "aegisfs"
DEFAULT_PORT = 5550
_GLOB = set("*?[")


def _dir_type(kind: str) -> str:
    return "directory" if kind == "dir" else "file"


class AegisFile(io.BufferedReader):
    """A file opened "rb": buffered reads over the client's block reader, plus the
    attributes fsspec's callers look for (path, size, fs)."""

    def __init__(self, fs: "AegisFileSystem", path: str, raw: Any, buffer_size: int) -> None:
        super().__init__(raw, buffer_size=buffer_size)
        self.fs, self.path, self.size = fs, path, raw.size

    @property
    def loc(self) -> int:
        return self.tell()


class AegisFileSystem(AbstractFileSystem):
    """fsspec over AegisClient. Storage options: `broker` (tcp://HOST:PORT; else the
    URL's host:port, else AEGISFS_BROKER / configs/cluster.toml), `timeout`, and any other
    AegisClient keyword (e.g. `key` once security is configured)."""

    protocol = (PROTOCOL,)
    root_marker = "/"
    cachable = True

    def __init__(self, broker: str | None = None, *, timeout: float = 30.0,
                 replication: int | None = None, block_size: int | None = None,
                 read_buffer: int = 4 * 1024 * 1024, client: AegisClient | None = None,
                 **kwargs: Any) -> None:
        fsspec_opts = {k: kwargs.pop(k) for k in list(kwargs)
                       if k in ("skip_instance_cache", "use_listings_cache",
                                "listings_expiry_time", "max_paths", "asynchronous", "loop")}
        super().__init__(**fsspec_opts)
        self.broker = broker
        self.replication, self.block_size = replication, block_size
        self.read_buffer = read_buffer
        self.client = client or AegisClient(broker, timeout=timeout, **kwargs)

    # -- URLs ----------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith(PROTOCOL + "://"):
            path = path[len(PROTOCOL) + 3:]
            if not path.startswith("/"):          # aegisfs://host:port/path
                path = "/" + path.partition("/")[2]
        elif path.startswith(PROTOCOL + ":"):
            path = path[len(PROTOCOL) + 1:]
        path = "/" + "/".join(p for p in path.split("/") if p and p != ".")
        return path

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict:
        if not path.startswith(PROTOCOL + "://"):
            return {}
        host = path[len(PROTOCOL) + 3:].partition("/")[0]
        if not host:
            return {}
        if ":" not in host.rsplit("]", 1)[-1]:
            host = f"{host}:{DEFAULT_PORT}"
        return {"broker": f"tcp://{host}"}

    def unstrip_protocol(self, name: str) -> str:
        return f"{PROTOCOL}://{self._strip_protocol(name)}"

    # -- listing -------------------------------------------------------------------------

    def _entry(self, path: str, e: dict) -> dict:
        out = {"name": path, "size": e.get("size", 0) if e["type"] != "dir" else 0,
               "type": _dir_type(e["type"]), "mtime": e.get("mtime")}
        for key in ("replication", "block_size", "mode", "owner", "group", "ctime"):
            if key in e:
                out[key] = e[key]
        return out

    def info(self, path: Any, **kwargs: Any) -> dict:
        p = self._strip_protocol(path)
        st = self.client.stat(p)
        out = self._entry(p, st)
        if st["type"] == "file":
            out["blocks"] = len(st.get("blocks") or [])
        return out

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list:
        p = self._strip_protocol(path)
        entries = self.client.ls(p, detail=True)
        base = os.path.basename(p)
        if (len(entries) == 1 and entries[0]["name"] == base and entries[0]["type"] == "file"
                and self.client.stat(p, blocks=False)["type"] == "file"):
            out = [self._entry(p, entries[0])]        # a file lists itself
        else:
            prefix = p.rstrip("/")
            out = [self._entry(f"{prefix}/{e['name']}", e) for e in entries]
        return out if detail else [e["name"] for e in out]

    def exists(self, path: Any, **kwargs: Any) -> bool:
        return self.client.exists(self._strip_protocol(path))

    def isdir(self, path: Any) -> bool:
        return self.client.isdir(self._strip_protocol(path))

    def isfile(self, path: Any) -> bool:
        return self.client.isfile(self._strip_protocol(path))

    # -- directories ---------------------------------------------------------------------

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if self.client.exists(p):
            raise FileExistsError(errno.EEXIST, "File exists", p)
        self.client.mkdir(p, parents=create_parents)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        p = self._strip_protocol(path)
        if self.client.exists(p):
            if not exist_ok or not self.client.isdir(p):
                raise FileExistsError(errno.EEXIST, "File exists", p)
            return
        self.client.mkdir(p, parents=True)

    def rmdir(self, path: Any) -> None:
        p = self._strip_protocol(path)
        if not self.client.isdir(p):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", p)
        self.client.rm(p)

    # -- removing and moving -------------------------------------------------------------

    def rm_file(self, path: Any) -> None:
        self.client.rm(self._strip_protocol(path))

    def _rm(self, path: Any) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        if isinstance(path, str) and maxdepth is None and not _GLOB & set(path):
            self.client.rm(self._strip_protocol(path), recursive=recursive)   # one request
            self.invalidate_cache()
            return
        super().rm(path, recursive=recursive, maxdepth=maxdepth)

    def mv(self, path1: Any, path2: Any, recursive: bool = False,
           maxdepth: int | None = None, **kwargs: Any) -> None:
        if (isinstance(path1, str) and isinstance(path2, str) and maxdepth is None
                and not _GLOB & set(path1)):
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if self.client.isdir(src) and not recursive:
                raise IsADirectoryError(errno.EISDIR, "moving a directory needs recursive",
                                        src)
            self.client.mv(src, dst)          # one MDS rename, whatever the size
            self.invalidate_cache()
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.client.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        # one MDS request that moves no bytes: the copy shares the source's blocks (and
        # keeps its replication); missing parents are made as put would make them
        try:
            self.client.copy(src, dst)
        except FileNotFoundError:
            parent = self._parent(dst)
            if not self.client.exists(src) or self.client.exists(parent):
                raise
            self.makedirs(parent, exist_ok=True)
            self.client.copy(src, dst)

    # -- bytes ---------------------------------------------------------------------------

    def _range(self, path: str, start: int | None, end: int | None) -> tuple[int, int | None]:
        if (start is not None and start < 0) or (end is not None and end < 0):
            size = self.client.stat(path, blocks=False)["size"]
            start = size + start if start is not None and start < 0 else start
            end = size + end if end is not None and end < 0 else end
        start = max(0, start or 0)
        if end is None:
            return start, None
        return start, max(0, end - start)

    def cat_file(self, path: Any, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        p = self._strip_protocol(path)
        offset, length = self._range(p, start, end)
        return self.client.read_bytes(p, offset, length)

    def pipe_file(self, path: Any, value: bytes, mode: str = "overwrite",
                  **kwargs: Any) -> None:
        if mode not in ("overwrite", "create"):
            raise ValueError(f"pipe_file mode must be 'overwrite' or 'create', not {mode!r}")
        self.client.write_bytes(self._strip_protocol(path), value,
                                replication=self.replication, block_size=self.block_size,
                                exclusive=mode == "create")
        self.invalidate_cache()

    def cat(self, path: Any, recursive: bool = False, on_error: str = "raise",
            **kwargs: Any) -> Any:
        paths = self.expand_path(path, recursive=recursive)
        single = (isinstance(path, str) and len(paths) == 1 and not _GLOB & set(path)
                  and not recursive)
        if single:
            return self.cat_file(paths[0], **kwargs)
        files = [p for p in paths if not self.client.isdir(p)] if recursive else paths
        bufs = [io.BytesIO() for _ in files]
        outcomes = self.client.get_many(list(zip(files, bufs)), errors="return")
        out: dict[str, Any] = {}
        for p, buf, outcome in zip(files, bufs, outcomes):
            if isinstance(outcome, OSError):
                if on_error == "raise":
                    raise outcome
                if on_error == "return":
                    out[p] = outcome
                continue
            out[p] = buf.getvalue()
        return out

    def pipe(self, path: Any, value: Any = None, **kwargs: Any) -> None:
        items = path if isinstance(path, dict) else {path: value}
        if len(items) == 1:
            (p, v), = items.items()
            return self.pipe_file(p, v, **kwargs)
        self.client.put_many([(bytes(v), self._strip_protocol(p)) for p, v in items.items()])
        self.invalidate_cache()

    # -- files ---------------------------------------------------------------------------

    def _open(self, path: Any, mode: str = "rb", block_size: int | None = None,
              autocommit: bool = True, cache_options: dict | None = None,
              **kwargs: Any) -> Any:
        p = self._strip_protocol(path)
        if not autocommit:
            raise NotImplementedError("AegisFS commits each file on close; fsspec "
                                      "transactions (autocommit=False) are not supported")
        if "a" in mode or "+" in mode:
            raise NotImplementedError(f"mode {mode!r}: appending and updating need "
                                      "copy-on-write blocks, not supported yet")
        if "r" in mode:
            raw = self.client.open(p, "rb")
            return AegisFile(self, p, raw, block_size or self.read_buffer)
        writer = self.client.open(p, "xb" if "x" in mode else "wb",
                                  replication=self.replication, block_size=self.block_size)
        # fsspec callers read f.path (AbstractBufferedFile has it); WriteFile is the
        # client's own file type and has no such attribute, so it is added to this one
        # instance, which only fsspec callers see.
        writer.path = p  # type: ignore[attr-defined]
        return writer

    def put_file(self, lpath: Any, rpath: Any, callback: Callback = DEFAULT_CALLBACK,
                 mode: str = "overwrite", **kwargs: Any) -> None:
        r = self._strip_protocol(rpath)
        if os.path.isdir(lpath):
            self.makedirs(r, exist_ok=True)
            return

        def progress(done: int, total: int | None) -> None:
            if total is not None:
                callback.set_size(total)
            callback.absolute_update(done)

        self.client.put(lpath, r, replication=self.replication, block_size=self.block_size,
                        progress=progress, exclusive=mode == "create")
        self.invalidate_cache()

    def get_file(self, rpath: Any, lpath: Any, callback: Callback = DEFAULT_CALLBACK,
                 outfile: Any = None, **kwargs: Any) -> None:
        r = self._strip_protocol(rpath)
        if self.client.isdir(r):
            os.makedirs(lpath, exist_ok=True)
            return
        info = self.client.stat(r, blocks=False)     # client.get reads its own stat
        callback.set_size(info["size"])
        if outfile is None and isinstance(lpath, (str, os.PathLike)):
            parent = os.path.dirname(os.fspath(lpath))
            if parent:
                os.makedirs(parent, exist_ok=True)     # as fsspec's own get_file does

        def progress(done: int, total: int | None) -> None:
            callback.absolute_update(done)

        self.client.get(r, outfile if outfile is not None else lpath, progress=progress)

    # -- metadata ------------------------------------------------------------------------

    def modified(self, path: Any) -> datetime:
        return datetime.fromtimestamp(self.client.stat(self._strip_protocol(path),
                                                      blocks=False)["mtime"],
                                      tz=timezone.utc)

    def created(self, path: Any) -> datetime:
        # no birth time: a file's version is created by its commit, which sets mtime
        return self.modified(path)

    def ukey(self, path: Any) -> str:
        """Changes with every new version: the hash of the block ids and checksums."""
        st = self.client.stat(self._strip_protocol(path))
        h = hashlib.sha256(str(st.get("size")).encode())
        for b in st.get("blocks") or []:
            h.update(f"{b['id']}:{b['checksum']}:{b['size']};".encode())
        return h.hexdigest()

    def checksum(self, path: Any) -> int:
        return int(self.ukey(path)[:16], 16)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.dircache.clear()


def _register() -> None:
    """For `fsspec.filesystem("aegisfs")` without the entry point (e.g. a source tree)."""
    import fsspec
    fsspec.register_implementation(PROTOCOL, AegisFileSystem, clobber=True)

