"""AegisClient's reading verbs: get, get_many, read_bytes (cat), read_info, iter_range
and open. A part of ``client.api.AegisClient`` (a mixin: its methods run on the client
and use its thread's Mux, window, timeout and suspects); blocks are read by reading.py,
small files in batches by batch.py, local files written by localio.py.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, TypeVar,
                    overload)

from . import localio
from .api_args import Outcome, PathLike, ProgressFn, Source, _about, _abs, _batch_size, _outcomes
from .blocks import Piece, Suspects, pieces_for_range
from .reading import BlockReader

if TYPE_CHECKING:
    from .files import ReadFile, WriteFile
    from .mux import Mux
    from .streams import BlockWriter
# batch.py (get_many) and files.py (open) are imported where they are used: a one-file
# call, like each `aegisfs` command, starts faster without them.

log = logging.getLogger(__name__)
T = TypeVar("T")


class ReadVerbs:
    """Reading files out of the cluster, mixed into AegisClient."""

    if TYPE_CHECKING:    # what this part uses of the AegisClient
        window: int
        timeout: float
        suspects: Suspects
        get_batch: int

        def _io(self) -> Mux: ...
        def _mds(self, about: str | None, op: str, **fields: Any) -> dict: ...
        def _writer(self, path: str, replication: int | None, block_size: int | None,
                    parents: bool, size_hint: int | None = None,
                    progress: Callable[[int], None] | None = None,
                    exclusive: bool = False) -> BlockWriter: ...

    def _file_info(self, path: str) -> dict:
        # read: the MDS answers EACCES (not a reply without blocks) when we may not read
        info = self._mds(path, "stat", path=path, read=True)
        info["path"] = path
        if info.get("type") != "file":
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not isinstance(info.get("blocks"), list):
            raise OSError(errno.EPROTO, f"{path}: the MDS's stat reply has no block list")
        return info

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

    def read_info(self, remote: PathLike, *, blocks: bool = True) -> dict:
        """What reading `remote` needs, in one MDS round trip: its stat (type, size, mtime,
        mode, owner, ...) and, for a file, its block list with read capabilities (ids as
        raw bytes). PermissionError when the caller may not read the file; a directory
        comes back as its stat with an empty block list. For iter_range; the capabilities
        are bearer tokens for this process's readers, not for display (stat leaves them
        out). blocks=False: the stat and the permission check only (no block list, no
        capabilities signed: an S3 HEAD)."""
        p = _abs(remote)
        info = self._mds(p, "stat", path=p, read=True) if blocks else \
            self._mds(p, "stat", path=p, read=True, blocks=False)
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


def _block_ids(info: dict) -> list:
    return [bytes(b["id"]) for b in info["blocks"]]
