"""AegisClient: the Python API of AegisFS - POSIX-like verbs over the MDS and DataNodes.

Namespace verbs are one MDS request each; put / get / read_bytes / open stream blocks
through streams.py and reading.py, put_many / get_many batch small files through
batch.py, and local files are read and written by localio.py. Errors are OSError
subclasses whose message names the path. Defaults (timeouts, window, batch sizes) come
from the [client] config section; replication and block size, when not given, are the
cluster's (the MDS's create reply).
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import threading
from typing import (TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Literal,
                    Mapping, Sequence, TypeVar, cast, overload)

import zmq

from broker import config as broker_config
from broker import curve
from broker.client import Client
from broker.limits import MAX_BATCH, MDS_SERVICE

from . import localio
from .direct import DIRECT_CONNECT, Links
from .blocks import Piece, Suspects, pieces_for_range
from .retry import Notice, Retrier, RetryPolicy
from .mux import Mux
from .reading import BlockReader
from .streams import SMALL_MAX, BlockWriter, name_error, put_small

if TYPE_CHECKING:
    from .files import ReadFile, WriteFile
# batch.py (put_many, get_many, set_attrs) and files.py (open) are imported where they are
# used: a one-file call, like each `aegisfs` command, starts faster without them.

log = logging.getLogger(__name__)
T = TypeVar("T")

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


def _log_wait(state: str, exc: OSError | None) -> None:
    if state == "waiting":
        log.warning("waiting for the metadata server (%s)", exc)
    else:
        log.warning("the metadata server answers again")


def hexify(value: Any) -> Any:
    """Block ids travel as 16 raw bytes; users and JSON see 32 hex characters."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: hexify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hexify(v) for v in value]
    return value


class AegisClient:
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
        self._clients: list[Client] = []
        self._muxes: list[Mux] = []
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------

    def _io(self) -> Mux:
        mux = getattr(self._local, "mux", None)
        if mux is None:
            if self._closed:
                raise ValueError("AegisClient is closed")
            try:
                rpc = self._transport() if self._transport else Client(
                    self.broker, timeout=self.timeout, max_in_flight=4096,
                    connect_timeout=self.connect_timeout, curve=self._curve)
                if self.direct and not self._transport:
                    # block payloads to the DataNodes' data endpoints (client/direct.py)
                    # Links has the interface of Client that Mux uses (it forwards to
                    # the broker what no direct link takes); typed as one for Mux
                    rpc = cast(Client, Links(rpc, curve=self._curve, timeout=self.timeout,
                               connect_timeout=min(DIRECT_CONNECT, self.connect_timeout)))
            except (zmq.ZMQError, broker_config.ConfigError) as exc:
                raise OSError(errno.EINVAL, f"invalid broker endpoint {self.broker!r} "
                              f"({exc}); expected e.g. tcp://127.0.0.1:5550") from None
            if self._key_error is not None and not self._transport:   # after the endpoint
                rpc.close()
                raise self._key_error
            mux = self._local.mux = Mux(rpc, keep_buffers=self.window, retry=self.retrier)
            with self._lock:
                self._clients.append(rpc)
                self._muxes.append(mux)
        return mux

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
        """Close the broker sockets (of every thread: call when all are done). Block pools
        still open are ended with a request nobody waits for, so a short-lived process
        does not hold its spare blocks against the user's allocation limit for a lease."""
        self._closed = True
        with self._lock:
            clients, self._clients = self._clients, []
            muxes, self._muxes = self._muxes, []
        for mux in muxes:
            for pool in mux.pools.values():
                pool.release()
            mux.pools.clear()
        for rpc in clients:
            rpc.close()
        self._local = threading.local()

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

    def _file_info(self, path: str) -> dict:
        # read: the MDS answers EACCES (not a reply without blocks) when we may not read
        info = self._mds(path, "stat", path=path, read=True)
        info["path"] = path
        if info.get("type") != "file":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not isinstance(info.get("blocks"), list):
            raise OSError(errno.EPROTO, f"{path}: the MDS's stat reply has no block list")
        return info

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

    def quota_set(self, path: PathLike, *, max_bytes: int | None = None,
                  max_files: int | None = None) -> dict:
        """Limit the tree under directory `path` (superuser only); see quota_get."""
        p = _abs(path)
        limits = {k: v for k, v in (("bytes", max_bytes), ("files", max_files))
                  if v is not None}
        return self._mds(p, "quota_set", path=p, **limits)

    def quota_clear(self, path: PathLike) -> dict:
        """Remove the quota of directory `path` (superuser only)."""
        p = _abs(path)
        return self._mds(p, "quota_clear", path=p)

    def quota_get(self, path: PathLike) -> list[dict]:
        """The quotas that apply in directory `path`, root first: [{path, max_bytes,
        max_files, bytes, files}] (a limit None: none; files counts every entry)."""
        p = _abs(path)
        return self._mds(p, "quota_get", path=p)["quotas"]

    def quota_ls(self) -> list[dict]:
        """Every quota on a directory you may read, by path (as quota_get)."""
        return self._mds(None, "quota_ls")["quotas"]

    def status(self) -> dict:
        """The cluster: nodes [{id, state, capacity, used, blocks, last_seen}], counts, health."""
        return hexify(self._mds(None, "status"))

    def brokers(self, timeout: float = 1.0) -> list[dict]:
        """Each broker this client is configured with and whether it answers now:
        [{endpoint, up, error?}] (the broker's own `ping`, over a short connection of
        its own per broker, so a dead one costs at most `timeout`)."""
        if self._transport:
            return []
        if self._key_error is not None:
            raise self._key_error
        try:
            endpoints = broker_config.endpoint_list(self.broker)
        except broker_config.ConfigError as exc:
            raise OSError(errno.EINVAL, str(exc)) from None
        out = []
        for endpoint in endpoints:
            entry: dict[str, Any] = {"endpoint": endpoint, "up": False}
            try:
                with Client(endpoint, timeout=timeout, connect_timeout=timeout,
                            curve=self._curve) as c:
                    c.call("broker", {"op": "ping"})
                entry["up"] = True
            except (OSError, zmq.ZMQError) as exc:
                entry["error"] = str(exc)
            out.append(entry)
        return out

    def fsck(self, repair: bool = False) -> dict:
        """Check every block (missing, under-replicated, corrupt, orphans); `healthy`."""
        return hexify(self._mds(None, "fsck", repair=repair))

    def drain(self, node: str, cancel: bool = False) -> dict:
        """Start emptying DataNode `node` (or stop, with cancel): its blocks are copied
        elsewhere, then dropped from it -> {node, drain: "draining"/"drained"/None,
        drain_left: blocks still there (None until counted)}. Call again to follow it."""
        return self._mds(node, "drain", node=node, cancel=cancel)

    # -- writing -------------------------------------------------------------------------

    def _writer(self, path: str, replication: int | None, block_size: int | None,
                parents: bool, size_hint: int | None = None,
                progress: Callable[[int], None] | None = None,
                exclusive: bool = False) -> BlockWriter:
        with _about(path):
            return BlockWriter.create(self._io(), path, replication=replication,
                                      block_size=block_size, parents=parents,
                                      exclusive=exclusive,
                                      window=self.window, size_hint=size_hint,
                                      progress=progress, suspects=self.suspects,
                                      timeout=self.timeout)

    def put(self, src: Source, remote: PathLike, replication: int | None = None,
            block_size: int | None = None, progress: ProgressFn | None = None,
            parents: bool = True, exclusive: bool = False) -> dict:
        """Store a local file (path or binary file object) at `remote`, replacing any old
        version atomically. Missing parent directories are created unless parents=False.
        progress(done, total) is called as blocks are stored. With exclusive=True it fails
        with FileExistsError instead of replacing anything. Returns {path, size}."""
        p = _abs(remote)
        with contextlib.ExitStack() as stack:
            f: BinaryIO | io.RawIOBase   # all localio.read_full needs is readinto
            if isinstance(src, (str, os.PathLike)):
                f = stack.enter_context(open(src, "rb", buffering=0))
            else:
                f = src
            total = localio.known_size(f)
            if total is not None and total <= SMALL_MAX:
                # a small file: one block put to every target, then one MDS request
                head = bytearray(total + 1)
                n = localio.read_full(f, memoryview(head))
                if n <= total:
                    data = memoryview(head)[:n]
                    with _about(p):
                        done_small = put_small(
                            self._io(), p, data, replication=replication,
                            block_size=block_size, parents=parents, exclusive=exclusive,
                            suspects=self.suspects, timeout=self.timeout)
                    if done_small is not None:
                        self.small_puts += 1
                        if progress:
                            progress(n, total)
                        return done_small
                    f = io.BytesIO(data)      # the streaming writer takes it from here
                else:                          # it grew since its size was read
                    f = _Chain(memoryview(head)[:n], f)
                total = n if n <= total else None
            done = [0]

            advance: Callable[[int], None] | None = None
            if progress:
                report = progress

                def advance(n: int) -> None:
                    done[0] += n
                    report(done[0], total)

            w = self._writer(p, replication, block_size, parents, total, advance,
                             exclusive=exclusive)
            with _about(p):
                try:
                    while True:
                        buf = w.buffer()
                        n = localio.read_full(f, buf)
                        if n:
                            w.submit(n)
                        if n < buf.nbytes:
                            break
                    return w.commit()
                except BaseException:
                    w.abort()
                    raise

    def write_bytes(self, remote: PathLike, data: bytes | bytearray | memoryview,
                    replication: int | None = None, block_size: int | None = None,
                    parents: bool = True, exclusive: bool = False) -> dict:
        """Store `data` at `remote` (replacing it atomically, or with exclusive=True only
        if nothing is there). Returns {path, size}."""
        return self.put(io.BytesIO(data), remote, replication=replication,
                        block_size=block_size, parents=parents, exclusive=exclusive)

    def put_many(self, items: Iterable[tuple[Source | bytes, PathLike]], *,
                 replication: int | None = None, block_size: int | None = None,
                 parents: bool = True, errors: str = "raise",
                 progress: Callable[[int, int], None] | None = None,
                 batch: int | None = None) -> list[Outcome]:
        """Store many files: each item is (source, remote) with source a local path, a
        binary file object or bytes. Small files (up to 1 MiB) travel in batches - one MDS
        round trip creates a batch, one request per DataNode stores its blocks with one
        shared sync, one round trip commits - which is many times faster than one `put`
        each; bigger files go through `put`. Every file is durable and replaced atomically,
        as with `put`, and succeeds or fails on its own.

        Returns one outcome per item, in order: {path, size} or the OSError of that file.
        errors="raise" (default) raises the first failure once every item has been tried
        (the others stay stored); errors="return" leaves the OSErrors in the list.
        progress(files settled, bytes stored) is called as files are settled. `batch` files
        travel together (default [client] put_batch; at most the MDS's MAX_BATCH).
        """
        from .batch import BATCH_BYTES, SMALL_FILE_MAX, SmallFiles
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        batch = self.put_batch if batch is None else _batch_size(batch)
        writer = SmallFiles(self._io(), replication=replication, block_size=block_size,
                            parents=parents, timeout=self.timeout, suspects=self.suspects,
                            window=self.window)
        out: list[Outcome | None] = []
        pending: list[tuple[int, str, Any]] = []
        tally = [0, 0, 0]          # files settled, bytes stored, bytes pending

        def settle(i: int, outcome: Outcome) -> None:
            out[i] = outcome
            tally[0] += 1
            if isinstance(outcome, dict):
                tally[1] += int(outcome.get("size") or 0)
            if progress:
                progress(tally[0], tally[1])

        def flush() -> None:
            if pending:
                results = writer.write([(p, data) for _, p, data in pending])
                for (i, _, _), outcome in zip(pending, results):
                    settle(i, outcome)
                pending.clear()
                tally[2] = 0

        for src, remote in items:
            i = len(out)
            out.append(None)
            try:
                p = _abs(remote)
                data = localio.small_source(src, SMALL_FILE_MAX)
            except OSError as exc:
                settle(i, exc)
                continue
            if data is None:           # too big to batch: its own streaming put
                flush()                # keeps the order of writes to the same path
                if isinstance(src, (bytes, bytearray, memoryview)):
                    src = io.BytesIO(src)
                try:
                    outcome: Outcome = self.put(src, p, replication=replication,
                                                block_size=block_size, parents=parents)
                except OSError as exc:
                    outcome = exc
                settle(i, outcome)
                continue
            pending.append((i, p, data))
            tally[2] += len(data)
            if len(pending) >= batch or tally[2] >= BATCH_BYTES:
                flush()
        flush()
        return _outcomes(out, errors)  # type: ignore[arg-type]

    # -- reading -------------------------------------------------------------------------

    def _reader(self, info: dict, pieces: list[Piece]) -> BlockReader:
        path = info["path"]

        def refresh(index: int) -> list[dict]:
            return self._mds(path, "stat", path=path, caps_from=index).get("blocks") or []

        return BlockReader(self._io(), path, info["blocks"], pieces, window=self.window,
                           suspects=self.suspects, timeout=self.timeout, refresh=refresh)

    def _consistent(self, path: str, read: Callable[[dict], T],
                    can_retry: Callable[[], bool] = lambda: True) -> T:
        """read(info) of the file's current version. When the file is replaced while we
        read, the MDS deletes the old blocks and they go missing under us; then the new
        version is read instead (up to 3 tries), so a reader sees one whole version."""
        info = self._file_info(path)
        for attempt in range(3):
            try:
                return read(info)
            except OSError as exc:
                if exc.errno != errno.EIO or attempt == 2 or not can_retry():
                    raise
                fresh = self._file_info(path)
                if _block_ids(fresh) == _block_ids(info):
                    raise
                log.info("%s was replaced while being read; reading the new version", path)
                info = fresh
        raise AssertionError("unreachable")

    def get(self, remote: PathLike, dst: Source, progress: ProgressFn | None = None) -> int:
        """Copy `remote` into a local path (written to a temporary file, renamed into place
        when complete) or a binary file object. Returns the number of bytes."""
        p = _abs(remote)
        with _about(p):
            if not isinstance(dst, (str, os.PathLike)):
                start = localio.tell(dst)
                written = [0]

                def to_object(info: dict) -> int:
                    if start is not None and written[0]:
                        dst.seek(start)
                        dst.truncate()
                    return self._copy_out(info, dst, progress, written)

                return self._consistent(p, to_object,
                                        lambda: start is not None or not written[0])
            out = localio.AtomicFile(dst)
            try:
                def to_file(info: dict) -> int:
                    out.restart()
                    return self._copy_out(info, out, progress, [0])

                n = self._consistent(p, to_file)
                out.commit()                # synced: the data is on disk before the rename
            except BaseException:
                out.discard()
                raise
            return n

    def get_many(self, items: Iterable[tuple[PathLike, Source]], *, errors: str = "raise",
                 progress: Callable[[int, int], None] | None = None,
                 batch: int | None = None) -> list[Outcome]:
        """Copy many files out: each item is (remote, local) with local a path or a binary
        file object. Small files are fetched in batches - one MDS round trip for a batch's
        block lists, their blocks through one window of requests - and bigger ones stream
        through `get`. A local path is written beside itself and renamed into place when
        complete; the files written are synced to disk together, once, before returning.

        Returns one outcome per item, in order: {path, size} or the OSError of that file;
        errors and progress(files settled, bytes read) work as in put_many; `batch` files
        are looked up together (default [client] get_batch; at most the MDS's MAX_BATCH).
        """
        from .batch import BIG, READ_WINDOW, SmallReads
        if errors not in ("raise", "return"):
            raise ValueError("errors must be 'raise' or 'return'")
        reads = SmallReads(self._io(), timeout=self.timeout, suspects=self.suspects,
                           window=max(self.window, READ_WINDOW))
        items = list(items)
        out: list[Outcome] = []
        tally = [0, 0]
        unsynced = False
        batch = self.get_batch if batch is None else _batch_size(batch)
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            paths: list[str | OSError] = []
            for remote, _ in chunk:
                try:
                    paths.append(_abs(remote))
                except OSError as exc:
                    paths.append(exc)
            valid = [p for p in paths if isinstance(p, str)]
            fetched = iter(reads.read(valid)) if valid else iter(())
            for p, (_, local) in zip(paths, chunk):
                try:
                    if isinstance(p, OSError):
                        raise p
                    data = next(fetched)
                    if data is BIG or (isinstance(data, OSError) and data.errno == errno.EIO):
                        # streamed, or fetched again: it may have been replaced meanwhile
                        outcome: Outcome = {"path": p, "size": self.get(p, local)}
                    elif isinstance(data, OSError):
                        raise data
                    else:
                        unsynced |= localio.write_local(local, data)
                        outcome = {"path": p, "size": len(data)}
                except OSError as exc:
                    outcome = exc
                out.append(outcome)
                tally[0] += 1
                tally[1] += outcome["size"] if isinstance(outcome, dict) else 0
                if progress:
                    progress(tally[0], tally[1])
        if unsynced:
            localio.sync_all()      # one flush for every small file written, not one each
        return _outcomes(out, errors)

    def _copy_out(self, info: dict, out: localio.Sink, progress: ProgressFn | None,
                  written: list[int]) -> int:
        total = int(info["size"])
        pieces = [Piece(i, 0, int(b["size"]), True) for i, b in enumerate(info["blocks"])]
        done = 0
        for data in self._reader(info, pieces):
            view = data
            while view.nbytes:          # a raw file may write short
                n = out.write(view)
                if n is None:
                    raise BlockingIOError(errno.EAGAIN, "output is not ready")
                view = view[n:]
                written[0] += n
            done += data.nbytes
            if progress:
                progress(done, total)
        return done

    def read_bytes(self, remote: PathLike, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes [offset, offset+length) of a file (to its end when length is None);
        only the blocks (and parts of blocks) in the range are fetched."""
        p = _abs(remote)

        def read(info: dict) -> bytes:
            sizes = [int(b["size"]) for b in info["blocks"]]
            return b"".join(self._reader(info, pieces_for_range(sizes, offset, length)))

        with _about(p):
            return self._consistent(p, read)

    cat = read_bytes

    def read_info(self, remote: PathLike) -> dict:
        """What reading `remote` needs, in one MDS round trip: its stat (type, size, mtime,
        mode, owner, ...) and, for a file, its block list with read capabilities (ids as
        raw bytes). PermissionError when the caller may not read the file; a directory
        comes back as its stat with an empty block list. For iter_range; the capabilities
        are bearer tokens for this process's readers, not for display (stat leaves them
        out)."""
        p = _abs(remote)
        info = self._mds(p, "stat", path=p, read=True)
        info["path"] = p
        return info

    def iter_range(self, info: dict, offset: int = 0,
                   length: int | None = None) -> Iterator[memoryview]:
        """The verified bytes [offset, offset+length) of the file `info` (read_info's
        reply, from any thread) as they arrive, in order: memoryviews of the blocks or of
        their parts, only the blocks in the range fetched, at most `window` in flight
        (memory bounded, whatever the length). No retry once a byte was yielded: a file
        replaced meanwhile ends the iteration with an OSError."""
        if info.get("type") != "file" or not isinstance(info.get("blocks"), list):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", info.get("path"))
        sizes = [int(b["size"]) for b in info["blocks"]]
        pieces = pieces_for_range(sizes, offset, length)
        with _about(info["path"]):
            yield from self._reader(info, pieces)

    @overload
    def open(self, remote: PathLike, mode: Literal["rb", "br"] = "rb", *,
             replication: int | None = None, block_size: int | None = None,
             parents: bool = True) -> ReadFile: ...
    @overload
    def open(self, remote: PathLike, mode: Literal["wb", "bw", "xb", "bx"], *,
             replication: int | None = None, block_size: int | None = None,
             parents: bool = True) -> WriteFile: ...
    @overload
    def open(self, remote: PathLike, mode: str = "rb", *, replication: int | None = None,
             block_size: int | None = None, parents: bool = True) -> ReadFile | WriteFile: ...

    def open(self, remote: PathLike, mode: str = "rb", *, replication: int | None = None,
             block_size: int | None = None, parents: bool = True) -> ReadFile | WriteFile:
        """A streaming binary file object. "rb": read, seek, tell. "wb": blocks go out as
        the buffer fills; close() commits atomically, an exception in a `with` block or
        abort() drops the draft. "xb": as "wb", but FileExistsError if the file exists
        (at open, and again at the commit, which cannot race)."""
        from .files import ReadFile, WriteFile
        p = _abs(remote)
        if mode in ("rb", "br"):
            with _about(p):
                info = self._file_info(p)
                return ReadFile(self._io(), info, window=self.window, suspects=self.suspects,
                                timeout=self.timeout)
        if mode in ("wb", "bw", "xb", "bx"):
            return WriteFile(self._writer(p, replication, block_size, parents,
                                          exclusive="x" in mode))
        raise ValueError(f"mode {mode!r} is not supported (use 'rb', 'wb' or 'xb')")


def _outcomes(out: list[Outcome], errors: str) -> list[Outcome]:
    """put_many / get_many results: returned, or with errors="raise" the first failure."""
    failed = [o for o in out if isinstance(o, OSError)]
    if failed and errors == "raise":
        first = failed[0]
        if len(failed) > 1:
            first.add_note(f"{len(failed) - 1} more of {len(out)} files failed too")
        raise first
    return out


class _Chain(io.RawIOBase):
    """The bytes already read from a source, then the rest of the source."""

    def __init__(self, head: memoryview, rest: Any) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head.nbytes:
            n = min(len(b), self._head.nbytes)
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return localio.read_full(self._rest, memoryview(b).cast("B"))


def _batch_size(n: Any) -> int:
    """Files per batch: at least 1, at most what one MDS `batch` request may carry."""
    return max(1, min(int(n), MAX_BATCH))


def _block_ids(info: dict) -> list:
    return [bytes(b["id"]) for b in info["blocks"]]
