"""AegisClient: the Python API of AegisFS - POSIX-like verbs over the MDS and DataNodes.

Here: the connection (one broker socket per thread), the config defaults and the
namespace verbs, one MDS request each. Its parts: reading (get, get_many, read_bytes,
open) in api_read.py, writing (put, write_bytes, put_many) in api_write.py, quotas,
status, fsck and drain in api_cluster.py; the argument conventions in api_args.py.
Errors are OSError subclasses whose message names the path. Defaults (timeouts, window,
batch sizes) come from the [client] config section; replication and block size, when not
given, are the cluster's (the MDS's create reply).
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, cast

import zmq

from broker import config as broker_config
from broker import curve
from broker.client import Client
from broker.limits import MAX_BATCH, MDS_SERVICE

from .api_args import Outcome, PathLike, _about, _abs, _batch_size, hexify
from .api_cluster import ClusterVerbs
from .api_read import ReadVerbs
from .api_write import WriteVerbs
from .blocks import Suspects
from .direct import DIRECT_CONNECT, Links
from .mux import Mux
from .retry import Notice, Retrier, RetryPolicy
from .streams import name_error
# batch.py (set_attrs) is imported where it is used: a one-file call, like each `aegisfs`
# command, starts faster without it.

log = logging.getLogger(__name__)


def _log_wait(state: str, exc: OSError | None) -> None:
    if state == "waiting":
        log.warning("waiting for the metadata server (%s)", exc)
    else:
        log.warning("the metadata server answers again")


def _end(mux: Mux) -> None:
    """End a thread's link: release its block pools (fire and forget), close its socket."""
    for pool in mux.pools.values():
        pool.release()
    mux.pools.clear()
    mux.rpc.close()


class AegisClient(ReadVerbs, WriteVerbs, ClusterVerbs):
    """A connection to an AegisFS cluster through its broker.

        with AegisClient() as fs:               # $AEGISFS_BROKER, else configs/cluster.toml
            fs.put("photo.png", "/uploads/photo.png")
            data = fs.read_bytes("/uploads/photo.png", offset=0, length=100)

    `key`: the user's secret key file (or a keys directory: its admin key); else
    $AEGISFS_KEY, else [security] key, else data/keys/users/admin.key_secret of a local
    cluster (broker.curve.client_key_file). A missing or unusable key is reported at the
    first request. Safe to share between threads: each thread gets its own broker socket.
    `direct` (default [client] direct, true): block payloads go straight to the DataNodes'
    data endpoints, falling back to the broker (client/direct.py); false: all through
    the broker.
    """

    def __init__(self, broker: str | None = None, *, timeout: float | None = None,
                 window: int | None = None, config: Mapping | PathLike | None = None,
                 connect_timeout: float | None = None, key: PathLike | None = None,
                 transport: Callable[[], Client] | None = None,
                 retry_deadline: float | None = None,
                 on_wait: Notice | None = None, direct: bool | None = None) -> None:
        # transport: makes each thread's Client-like connection instead of a broker socket
        # (tests/support/inprocess.py serves the real services in one process through it)
        self._transport = transport
        cfg = config if isinstance(config, Mapping) else broker_config.load(config)
        security = {**broker_config.DEFAULTS["security"], **cfg.get("security", {})}
        self._curve: curve.CurveKeys | None = None
        self._key_error: OSError | None = None
        try:
            self._curve = curve.client_keys(key, security)
        except (OSError, ValueError) as exc:   # raised where a request would be made
            self._key_error = exc if isinstance(exc, OSError) else \
                PermissionError(errno.EACCES, str(exc))
        # a partial mapping (tests, embedders) falls back to the built-in [client] defaults
        client_cfg = {**broker_config.DEFAULTS["client"], **cfg.get("client", {})}
        self.broker = (broker or os.environ.get("AEGISFS_BROKER")
                       or cfg["broker"]["client"])
        self.timeout = float(timeout if timeout is not None else client_cfg["timeout"])
        self.window = int(window if window is not None else client_cfg["window"])
        if self.window < 1:
            raise ValueError("window must be at least 1")
        self.connect_timeout = float(connect_timeout if connect_timeout is not None
                                     else client_cfg["connect_timeout"])
        # MDS requests ride through restarts until this deadline (client/retry.py);
        # on_wait(state, error) hears "waiting" once per wait and "back" when it ends
        deadline = float(retry_deadline if retry_deadline is not None
                         else client_cfg["retry_deadline"])
        self.retrier = Retrier(RetryPolicy(deadline=deadline),
                               notice=on_wait or _log_wait)
        self.direct = bool(client_cfg["direct"] if direct is None else direct)
        self.put_batch = _batch_size(client_cfg["put_batch"])
        self.get_batch = _batch_size(client_cfg["get_batch"])
        self.suspects = Suspects()
        self.small_puts = 0      # files written through a block pool (put_small)
        self._local = threading.local()
        self._lock = threading.Lock()
        # every thread's broker link: (thread, its Mux); a zmq socket is used and closed
        # by the thread that made it (closing it under a thread inside a call aborts)
        self._links: list[tuple[threading.Thread, Mux]] = []
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------

    def _io(self) -> Mux:
        mux = getattr(self._local, "mux", None)
        if self._closed:
            if mux is not None:        # close() left this thread's link to this thread
                self._local.mux = None
                _end(mux)
            raise ValueError("AegisClient is closed")
        if mux is None:
            mux = self._local.mux = Mux(self._connect(), keep_buffers=self.window,
                                        retry=self.retrier)
            with self._lock:
                self._links.append((threading.current_thread(), mux))
        return mux

    def _connect(self) -> Client:
        """A new link to the cluster for one thread: the broker Client, inside Links
        when block payloads go to the DataNodes' data endpoints (client/direct.py)."""
        try:
            rpc = self._transport() if self._transport else Client(
                self.broker, timeout=self.timeout, max_in_flight=4096,
                connect_timeout=self.connect_timeout, curve=self._curve)
            if self.direct and not self._transport:
                # Links has the interface of Client that Mux uses (it forwards to the
                # broker what no direct link takes); typed as one for Mux
                rpc = cast(Client, Links(rpc, curve=self._curve, timeout=self.timeout,
                           connect_timeout=min(DIRECT_CONNECT, self.connect_timeout)))
        except (zmq.ZMQError, broker_config.ConfigError) as exc:
            raise OSError(errno.EINVAL, f"invalid broker endpoint {self.broker!r} "
                          f"({exc}); expected e.g. tcp://127.0.0.1:5550") from None
        if self._key_error is not None and not self._transport:   # after the endpoint
            rpc.close()
            raise self._key_error
        return rpc

    def _mds(self, about: str | None, op: str, **fields: Any) -> dict:
        """One MDS request; an error names `about` (the path) if it does not already."""
        with _about(about):
            return self._io().call(MDS_SERVICE, {"op": op, **fields}).result

    @property
    def key_file(self) -> str | None:
        """The key file this client connects with (None with security off)."""
        return self._curve.source if self._curve else None

    def whoami(self) -> dict:
        """Who the broker says we are: {"user": name, "class": "client"} (the broker's own
        service; "admin" for everyone when the cluster runs with security off)."""
        return self._io().call("broker", {"op": "whoami"}).result

    def close(self) -> None:
        """Close the broker sockets; later calls raise ValueError. The links of this
        thread and of threads that have ended close now; a thread still running (perhaps
        inside a call) closes its own at its next call, which raises, so that no socket
        is closed under a thread using it. Block pools still open are ended with a
        request nobody waits for, so a short-lived process does not hold its spare
        blocks against the user's allocation limit for a lease."""
        self._closed = True
        me = threading.current_thread()
        ending: list[Mux] = []
        with self._lock:
            left = []
            for thread, mux in self._links:
                if thread is not me and thread.is_alive():
                    left.append((thread, mux))
                else:
                    ending.append(mux)
            self._links = left
        for mux in ending:
            _end(mux)
        self._local.mux = None

    def __enter__(self) -> "AegisClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- namespace -----------------------------------------------------------------------

    def ls(self, path: PathLike = "/", detail: bool = False) -> list:
        """Names in a directory, sorted (a file lists itself); with detail, the entries
        as dicts: name, type ("file"/"dir"), size, mtime, mode (the 12 permission bits),
        owner, group, ctime, atime. Listing a directory needs read permission on it."""
        p = _abs(path)
        entries = self._mds(p, "ls", path=p)["entries"]
        return entries if detail else [e["name"] for e in entries]

    def stat(self, path: PathLike, *, blocks: bool = True) -> dict:
        """path, type, size, mtime, mode, owner, group, ctime, atime; for files also
        replication, block_size and blocks [{id (hex), size, checksum, replicas}] (left
        out when the caller may not read the file, or asks blocks=False: then the MDS
        neither builds the list nor signs capabilities, which a big file makes costly)."""
        p = _abs(path)
        info = self._mds(p, "stat", path=p) if blocks else \
            self._mds(p, "stat", path=p, blocks=False)
        # read capabilities are bearer tokens for the readers here, not for display
        info.pop("cap_ttl", None)
        info.pop("endpoints", None)
        for b in info.get("blocks") or ():
            if isinstance(b, dict):
                b.pop("cap", None)
        return hexify(info)

    def exists(self, path: PathLike) -> bool:
        try:
            self.stat(path, blocks=False)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def isdir(self, path: PathLike) -> bool:
        try:
            return self.stat(path, blocks=False).get("type") == "dir"
        except (FileNotFoundError, NotADirectoryError):
            return False

    def isfile(self, path: PathLike) -> bool:
        try:
            return self.stat(path, blocks=False).get("type") == "file"
        except (FileNotFoundError, NotADirectoryError):
            return False

    def mkdir(self, path: PathLike, parents: bool = False, mode: int | None = None) -> None:
        """Create a directory; with parents, missing ancestors too and no error if it exists.
        It is the caller's, with `mode` (default 0o777) less the umask 0o022."""
        p = _abs(path)
        fields: dict[str, Any] = {"path": p, "parents": parents}
        if mode is not None:
            fields["mode"] = mode
        try:
            self._mds(p, "mkdir", **fields)
        except FileExistsError:
            if not (parents and self.isdir(p)):
                raise

    def rm(self, path: PathLike, recursive: bool = False) -> None:
        """Remove a file, or a directory (non-empty ones only with recursive). The blocks
        are deleted from the DataNodes in the background."""
        p = _abs(path)
        self._mds(p, "rm", path=p, recursive=recursive)

    def mv(self, src: PathLike, dst: PathLike) -> str:
        """Rename src to dst (into dst when it is a directory); returns the final path."""
        s, d = _abs(src), _abs(dst)
        return self._mds(f"{s} -> {d}", "mv", src=s, dst=d).get("path", d)

    def link(self, src: PathLike, dst: PathLike) -> int:
        """Make ``dst`` a hard link: another name of file src (exactly dst, not into a
        directory), sharing everything with it; returns the file's link count. A
        directory is PermissionError (EPERM), an existing dst FileExistsError."""
        s, d = _abs(src), _abs(dst)
        return int(self._mds(f"{s} -> {d}", "link", src=s, dst=d)["nlink"])

    def copy(self, src: PathLike, dst: PathLike, exclusive: bool = False) -> str:
        """Server-side copy of a file (into dst when it is a directory); returns the final
        path. One MDS request: the copy shares the source's blocks, no byte moves, and
        removing either leaves the other whole. A directory is IsADirectoryError;
        `exclusive` refuses an existing destination (FileExistsError)."""
        s, d = _abs(src), _abs(dst)
        return self._mds(f"{s} -> {d}", "copy", src=s, dst=d,
                         exclusive=exclusive).get("path", d)

    def compose(self, dst: PathLike, sources: Sequence[PathLike | tuple[PathLike, int, int]],
                exclusive: bool = False, replication: int | None = None,
                parents: bool = False) -> dict:
        """Make file dst from whole blocks of existing files, in order, without moving a
        byte: each source is a path (all its blocks) or (path, first block, block count).
        One stat per source and one create + commit (atomic: dst appears complete or not
        at all). A source replaced between the stat and the commit fails it with
        FileNotFoundError. Returns {path, size}."""
        d = _abs(dst)
        blocks: list[dict] = []
        first_replication = None
        for src in sources:
            path, first, count = ((src, 0, None) if not isinstance(src, tuple) else
                                  (src[0], int(src[1]), int(src[2])))
            info = self._file_info(_abs(path))
            have = info["blocks"]
            first_replication = first_replication or info.get("replication")
            take = have[first:] if count is None else have[first:first + count]
            if first < 0 or (count is not None and (count < 0 or len(take) != count)):
                raise ValueError(f"{info['path']} has {len(have)} blocks, not "
                                 f"{first}..{first + (count or 0)}")
            blocks += [{"id": b["id"], "size": b["size"], "checksum": b["checksum"],
                        "from": info["path"]} for b in take]
        create: dict[str, Any] = {"path": d, "parents": parents}
        repl = replication or first_replication
        if repl:
            create["replication"] = int(repl)
        if exclusive:
            create["exclusive"] = True
        handle = self._mds(d, "create", **create)["handle"]
        try:
            out = self._mds(d, "commit", handle=handle, blocks=blocks, exclusive=exclusive)
        except BaseException:
            try:
                self._mds(d, "abort", handle=handle)
            except OSError:
                pass        # the lease drops it anyway
            raise
        return {"path": out.get("path", d), "size": out.get("size", 0)}

    def chmod(self, path: PathLike, mode: int) -> dict:
        """Set the 12 mode bits (e.g. 0o640) of a file or directory; the owner's right
        (or the superuser's). Returns {path, type, mode, owner, group}."""
        p = _abs(path)
        return self._mds(p, "chmod", path=p, mode=mode)

    def chown(self, path: PathLike, owner: str | None = None,
              group: str | None = None) -> dict:
        """Change the owner (superuser only) and/or the group (the owner, to a group it is
        in) of a file or directory. Returns {path, type, mode, owner, group}."""
        p = _abs(path)
        fields = {k: v for k, v in (("owner", owner), ("group", group)) if v is not None}
        return self._mds(p, "chown", path=p, **fields)

    def set_attrs(self, changes: Iterable[tuple[PathLike, Mapping[str, Any]]]) -> list[Outcome]:
        """Many chmod/chown changes in MDS batches: each item is (path, {"mode": m}) or
        (path, {"owner"?: o, "group"?: g}); returns each one's result or OSError, in order."""
        ops = []
        for path, change in changes:
            verb = "chmod" if "mode" in change else "chown"
            ops.append({"op": verb, "path": _abs(path),
                        **{k: v for k, v in change.items() if v is not None}})
        out: list[Outcome] = []
        for i in range(0, len(ops), MAX_BATCH):
            chunk = ops[i:i + MAX_BATCH]
            from .batch import mds_batch
            for op, got in zip(chunk, mds_batch(self._io(), chunk)):
                out.append(name_error(got, op["path"]) if isinstance(got, OSError) else got)
        return out

    def walk(self, path: PathLike,
             onerror: Callable[[OSError], None] | None = None) -> Iterator[tuple[str, dict]]:
        """(path, entry) of `path` itself and everything below it, parents before their
        entries; an entry has type, mode, owner, group (as ls). A directory that cannot
        be listed is passed to `onerror` (default: raise) and skipped."""
        top = _abs(path)
        info = self.stat(top)
        yield top, info
        stack = [top] if info.get("type") == "dir" else []
        while stack:
            d = stack.pop()
            try:
                entries = self.ls(d, detail=True)
            except OSError as exc:
                if onerror is None:
                    raise
                onerror(exc)
                continue
            for e in entries:
                child = d.rstrip("/") + "/" + e["name"]
                yield child, e
                if e.get("type") == "dir":
                    stack.append(child)

    def du(self, path: PathLike = "/") -> dict:
        """bytes, files and dirs under a path (inclusive)."""
        p = _abs(path)
        return self._mds(p, "du", path=p)
