"""AegisClient's writing verbs: put, write_bytes and put_many. A part of
``client.api.AegisClient`` (a mixin: its methods run on the client and use its thread's
Mux, window, timeout and suspects); blocks are written by streams.py (BlockWriter, and
put_small for a file of one block), small files in batches by batch.py, local sources
read by localio.py.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable

from . import localio
from .api_args import Outcome, PathLike, ProgressFn, Source, _about, _abs, _batch_size, _outcomes
from .blocks import Suspects
from .smallfiles import SMALL_MAX, put_small
from .streams import BlockWriter

if TYPE_CHECKING:
    from .mux import Mux
# batch.py (put_many) is imported where it is used: a one-file call, like each `aegisfs`
# command, starts faster without it.


class WriteVerbs:
    """Storing files in the cluster, mixed into AegisClient."""

    if TYPE_CHECKING:    # what this part uses of the AegisClient
        window: int
        timeout: float
        suspects: Suspects
        put_batch: int
        small_puts: int

        def _io(self) -> Mux: ...

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
