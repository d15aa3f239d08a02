"""Many small files at once: the write and read protocols batched across files.

Writing one small file costs three round trips (create with allocation, put_block to
each replica, commit) and an MDS fsync and a DataNode sync per step, which caps a client
at a few hundred files per second. `SmallFiles.write` runs the same protocol for a batch
of files in lock step:

  1. one MDS `batch` of creates (each with its size, so its block is allocated with it);
  2. one `put_blocks` request per DataNode, carrying every block that node is a target
     for; the node stores them with one shared sync and answers per block;
  3. replicas that failed are replaced (one MDS `batch` of replace_target) and resent,
     round by round, with the same rules as a single file (client/blocks.ReplicaWrite);
  4. one MDS `batch` of commits (and aborts for the files that could not be stored).

Each file is durable and visible when its commit is acknowledged, exactly as with `put`;
files succeed or fail one by one. A file bigger than one block (or whose first block was
not allocated with the create) is finished by an ordinary BlockWriter on the same draft.

`SmallReads.read` is the reverse: one MDS `batch` of stats, then the single blocks of the
small files fetched through one BlockReader window (replica failover, CRC checks and
bad-replica reports as for any read). Bigger files are left to the caller's `get`.
"""
from __future__ import annotations

import errno
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from broker.crc import crc32c

from broker import protocol as P
from broker.limits import MAX_PUT_MANY, MDS_SERVICE, datanode_service

from .blocks import Piece, ReplicaWrite, Suspects, put_refusal, put_spec, reason_of
from .retry import stamp_opids
from .mux import Mux
from .reading import BlockReader
from .streams import BlockWriter, draft_geometry, name_error

log = logging.getLogger(__name__)

SMALL_FILE_MAX = 1024 * 1024   # files up to this size are written in batches
BATCH_BYTES = 16 * 1024 * 1024  # bytes per batch (and per put_blocks request)

Outcome = dict | OSError
BIG = object()                 # SmallReads: this file is for the streaming reader
READ_WINDOW = 64               # small blocks in flight while reading many files


@dataclass(slots=True)
class _File:
    path: str
    data: memoryview
    checksum: int
    handle: str | None = None
    created: dict | None = None         # set when a BlockWriter must finish the file
    block: bytes | None = None
    replicas: ReplicaWrite | None = None
    result: Outcome | None = None
    caps: dict[str, bytes] = field(default_factory=dict)       # node -> write capability
    receipts: dict[str, bytes] = field(default_factory=dict)   # node -> its receipt

    def settled(self) -> Outcome:
        """The outcome once write() is through: every path sets one, so the EIO is only a
        guard against a step that forgot a file (a None would reach the caller)."""
        if self.result is None:
            return OSError(errno.EIO, f"{self.path}: the batch left this file unsettled")
        return self.result


@dataclass(slots=True)
class _Upload:
    """A file whose one block came with its create: steps 2-3 write it with put_blocks."""
    file: _File
    block: bytes
    replicas: ReplicaWrite

    @classmethod
    def of(cls, batch: list[_File]) -> list[_Upload]:
        return [cls(f, f.block, f.replicas) for f in batch
                if f.block is not None and f.replicas is not None]


class SmallFiles:
    """Writes batches of small files through one thread's Mux (see module docstring)."""

    def __init__(self, mux: Mux, *, replication: int | None = None,
                 block_size: int | None = None, parents: bool = True,
                 timeout: float | None = None, suspects: Suspects | None = None,
                 window: int = 8) -> None:
        self.mux = mux
        self.replication = replication
        self.block_size = block_size
        self.parents = parents
        self.timeout = timeout
        self.suspects = suspects or Suspects()
        self.window = window

    def write(self, files: Sequence[tuple[str, Any]],
              done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Store each (absolute path, bytes-like) and return, in order, {path, size} or the
        OSError of that file. done(i, outcome) is called as each file is settled."""
        batch = []
        for path, data in files:
            view = memoryview(data).cast("B")
            batch.append(_File(path, view, crc32c(view)))
        try:
            self._create(batch)
            self._store(_Upload.of(batch))
            self._finish_big(batch)
            self._commit(batch)
        except OSError as exc:    # the MDS itself failed us: nothing more is known
            for f in batch:
                if f.result is None:
                    f.result = name_error(exc, f.path)
        results = [f.settled() for f in batch]
        if done:
            for i, outcome in enumerate(results):
                done(i, outcome)
        return results

    # -- steps ---------------------------------------------------------------------------

    def _create_op(self, f: _File) -> dict[str, Any]:
        """The `create` of one file (a front-end adds its own fields: the mount's mode)."""
        op: dict[str, Any] = {"op": "create", "path": f.path, "parents": self.parents,
                              "size": f.data.nbytes}
        if self.replication is not None:
            op["replication"] = self.replication
        if self.block_size is not None:
            op["block_size"] = self.block_size
        return op

    def _create(self, batch: list[_File]) -> None:
        ops = [self._create_op(f) for f in batch]     # at most MAX_BATCH files a batch
        for f, res in zip(batch, mds_batch(self.mux, ops)):
            if isinstance(res, OSError):
                f.result = name_error(res, f.path)
                continue
            f.handle = res["handle"]
            if not f.data.nbytes:
                continue
            try:
                replication, block_size = draft_geometry(res)
            except OSError as exc:
                f.result = name_error(exc, f.path)
                continue
            blocks = res.get("blocks") or []
            if len(blocks) == 1 and f.data.nbytes <= block_size:
                f.block = bytes(blocks[0]["id"])
                nodes = list(blocks[0].get("nodes") or [])
                f.caps = dict(zip(nodes, blocks[0].get("caps") or []))
                f.replicas = ReplicaWrite(nodes, replication)
            else:
                f.created = res

    def _store(self, uploads: list[_Upload]) -> None:
        """Rounds of put_blocks until every block is acked by R nodes or out of options."""
        while True:
            by_node: dict[str, list[_Upload]] = defaultdict(list)
            for u in uploads:
                for node in u.replicas.take_queue():
                    by_node[node].append(u)
            if not by_node:
                break
            self._put_round(by_node)
            short = [u for u in uploads if u.replicas.wants_replacement()]
            if short:
                self._replace(short)
        for u in uploads:
            if not u.replicas.acked:
                u.file.result = OSError(errno.EIO, f"{u.file.path}: could not be stored on "
                                        f"any DataNode: {u.replicas.describe_failures()}")
            elif len(u.replicas.acked) < u.replicas.replication:
                log.warning("%s: committed with %d of %d replicas; the MDS re-replicates",
                            u.file.path, len(u.replicas.acked), u.replicas.replication)

    def _put_round(self, by_node: dict[str, list[_Upload]]) -> None:
        in_flight: dict[int, tuple[str, list[_Upload]]] = {}
        for node, uploads in by_node.items():
            for part in _chunks(uploads):
                header = {"op": "put_blocks",
                          "blocks": [put_spec(u.block, u.file.checksum, u.file.caps.get(node))
                                     for u in part]}
                rid = self.mux.send(self, datanode_service(node), header,
                                    [u.file.data for u in part], self.timeout)
                in_flight[rid] = (node, part)
        while in_flight:
            reply = self.mux.next(self, None)
            if reply is None:         # cannot happen while requests are pending; be safe
                for node, part in in_flight.values():
                    for u in part:
                        u.replicas.fail(node, "no reply")
                return
            sent = in_flight.pop(reply.rid, None)
            if sent is None:
                continue
            node, part = sent
            if reply.error is not None:
                if isinstance(reply.error, (ConnectionError, TimeoutError)):
                    self.suspects.mark(node)
                for u in part:
                    u.replicas.fail(node, reason_of(reply.error))
                continue
            results = (reply.result or {}).get("results")
            if not isinstance(results, list) or len(results) != len(part):
                for u in part:
                    u.replicas.fail(node, "malformed put_blocks reply")
                continue
            for u, item in zip(part, results):
                f = u.file
                try:
                    got = P.item_result(item)
                except OSError as exc:
                    u.replicas.fail(node, reason_of(exc))
                    continue
                refusal = put_refusal(got, f.data.nbytes, f.checksum)
                if refusal is not None:
                    u.replicas.fail(node, refusal)
                else:
                    f.receipts[node] = got.get("receipt") or b""
                    u.replicas.ack(node)

    def _replace(self, uploads: list[_Upload]) -> None:
        ops = [{"op": "replace_target", "handle": u.file.handle, "block": u.block,
                "exclude": u.replicas.exclude()} for u in uploads]
        for u, res in zip(uploads, mds_batch(self.mux, ops)):
            if isinstance(res, OSError):
                log.warning("%s: no replacement for block %s: %s", u.file.path, u.block.hex(),
                            res)
                u.replicas.tries = u.replicas.max_tries      # stop asking for this one
            elif res.get("node"):
                node = str(res["node"])
                if isinstance(res.get("cap"), bytes):
                    u.file.caps[node] = res["cap"]
                u.replicas.add(node)

    def _finish_big(self, batch: list[_File]) -> None:
        """Files the batch cannot carry (several blocks, or no block allocated yet) are
        written by a BlockWriter on their draft, one by one."""
        for f in batch:
            if f.created is None or f.result is not None:
                continue
            w = BlockWriter(self.mux, f.path, f.created, window=self.window,
                            size_hint=f.data.nbytes, suspects=self.suspects,
                            timeout=self.timeout)
            try:
                pos = 0
                while pos < f.data.nbytes:
                    buf = w.buffer()
                    n = min(buf.nbytes, f.data.nbytes - pos)
                    buf[:n] = f.data[pos:pos + n]
                    w.submit(n)
                    pos += n
                f.result = self._commit_writer(f, w)
            except OSError as exc:
                w.abort()
                f.result = name_error(exc, f.path)
            f.handle = None           # settled either way

    def _commit_writer(self, f: _File, w: BlockWriter) -> dict:
        """Commit one file _finish_big wrote (a front-end adds what goes with it)."""
        return w.commit()

    def _commit(self, batch: list[_File]) -> None:
        ops: list[dict[str, Any]] = []
        owners: list[_File] = []
        for f in batch:
            if f.handle is None:
                continue
            if f.result is not None:          # its block could not be stored
                ops.append({"op": "abort", "handle": f.handle})
            else:
                ops.append(commit_op(f))
            owners.append(f)
        if not ops:
            return
        for f, op, res in zip(owners, ops, mds_batch(self.mux, ops)):
            if op["op"] == "abort":
                if isinstance(res, OSError):
                    log.warning("%s: could not abort draft %s: %s", f.path, f.handle, res)
            elif isinstance(res, OSError):
                f.result = name_error(res, f.path)
            else:
                f.result = res


def commit_op(f: _File) -> dict[str, Any]:
    """The `commit` of a file whose one block (if any) the batch stored: the replicas
    that acknowledged it, with their receipts."""
    blocks = []
    if f.replicas is not None:
        acked = list(f.replicas.acked)
        blocks.append({"id": f.block, "size": f.data.nbytes, "checksum": f.checksum,
                       "replicas": acked, "receipts": [f.receipts.get(n, b"") for n in acked]})
    return {"op": "commit", "handle": f.handle, "blocks": blocks}


def mds_batch(mux: Mux, ops: list[dict]) -> list[Outcome]:
    """One MDS `batch` request: each op's result map or OSError, in order. Items a
    restarted MDS answers EAGAIN (still waiting for its DataNodes) are sent again, with
    the same operation ids, under the Mux's retry policy."""
    ops = stamp_opids({"op": "batch", "ops": ops})["ops"]
    out: list[Outcome] = [OSError(errno.EIO, "not sent")] * len(ops)
    todo = list(range(len(ops)))

    # under a retry policy each attempt is sent once and the one retry loop (Mux.retried)
    # covers both a lost request and its EAGAIN items: a loop inside a loop would wait
    # up to twice the deadline
    send = mux.call if mux.retry is None else mux.call_once

    def attempt() -> None:
        nonlocal todo
        sent = [ops[i] for i in todo]
        results = send(MDS_SERVICE, {"op": "batch", "ops": sent}).result.get("results")
        if not isinstance(results, list) or len(results) != len(sent):
            raise P.ProtocolError("the MDS answered a batch with a malformed result list")
        again = []
        waiting: OSError | None = None     # the first EAGAIN: what the retry policy sees
        for i, item in zip(todo, results):
            try:
                out[i] = P.item_result(item)
            except OSError as exc:
                out[i] = exc
                if exc.errno == errno.EAGAIN:
                    again.append(i)
                    waiting = waiting or exc
        todo = again
        if waiting is not None:
            raise waiting

    if mux.retry is None:
        attempt()
        return out
    try:
        mux.retried(attempt)
    except OSError as exc:
        if not (todo and exc is out[todo[0]]):   # the request failed, not its items
            raise
    return out


class SmallReads:
    """Reads batches of small files through one thread's Mux (see module docstring)."""

    def __init__(self, mux: Mux, *, timeout: float | None = None,
                 suspects: Suspects | None = None, window: int = READ_WINDOW) -> None:
        self.mux = mux
        self.timeout = timeout
        self.suspects = suspects or Suspects()
        self.window = window

    def read(self, paths: Sequence[str]) -> list[Any]:
        """For each absolute path, in order: its bytes (verified), its OSError, or BIG
        when it is not a small one-block file (read it with the streaming reader)."""
        out: list[Any] = [None] * len(paths)
        wanted: list[tuple[int, dict]] = []
        infos = mds_batch(self.mux, [{"op": "stat", "path": p} for p in paths])
        for i, (path, info) in enumerate(zip(paths, infos)):
            if isinstance(info, OSError):
                out[i] = name_error(info, path)
            elif info.get("type") != "file":
                out[i] = IsADirectoryError(errno.EISDIR, f"{path}: is a directory")
            elif not int(info.get("size") or 0):
                out[i] = b""
            elif len(info.get("blocks") or []) != 1 or int(info["size"]) > SMALL_FILE_MAX:
                out[i] = BIG
            else:
                wanted.append((i, info["blocks"][0]))
        start = 0
        while start < len(wanted):   # a block no replica can give fails its file alone
            blocks = [b for _, b in wanted[start:]]
            pieces = [Piece(j, 0, int(b["size"]), True) for j, b in enumerate(blocks)]
            first = start

            def refresh(j: int, first: int = first) -> list[dict]:
                # each block is its own file's only block: stat that file again
                path = paths[wanted[first + j][0]]
                return self.mux.call(MDS_SERVICE, {"op": "stat", "path": path}).result.get(
                    "blocks") or []

            reader = BlockReader(self.mux, "(batch)", blocks, pieces, window=self.window,
                                 suspects=self.suspects, timeout=self.timeout, refresh=refresh)
            try:
                for data in reader:
                    out[wanted[start][0]] = bytes(data)
                    start += 1
            except OSError as exc:
                i, block = wanted[start]
                why = (exc.strerror or str(exc)).split("cannot be read: ", 1)[-1]
                out[i] = OSError(exc.errno, f"{paths[i]}: block {bytes(block['id']).hex()} "
                                 f"cannot be read: {why}")
                start += 1
        return out




def _chunks(uploads: list[_Upload]) -> list[list[_Upload]]:
    """Split one node's blocks into put_blocks requests within the count and byte limits."""
    parts: list[list[_Upload]] = [[]]
    size = 0
    for u in uploads:
        nbytes = u.file.data.nbytes
        if parts[-1] and (len(parts[-1]) >= MAX_PUT_MANY or size + nbytes > BATCH_BYTES):
            parts.append([])
            size = 0
        parts[-1].append(u)
        size += nbytes
    return parts
