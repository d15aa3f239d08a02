"""The I/O of pending.py: a batch of closed small files written with client/batch.py's
batched protocol (SmallFiles), with what a mount's new file carries: its mode and
O_EXCL in the create, and its owner and mtime in the commits' MDS batch, each file's
operations right after its own commit (one fsync for the batch, and no moment where a
committed file shows the mount user's ownership or the commit time).

SmallFiles has no per-file create fields or commit `then` operations, so this subclass
replaces its create and commit steps (the upload and replica steps are its own)."""
from __future__ import annotations

import errno
import logging
from typing import Any, Sequence

from broker.limits import MAX_BATCH

from ..batch import SmallFiles, _File, commit_op, mds_batch
from ..blocks import Suspects
from ..mux import Mux
from ..streams import BlockWriter, name_error
from .pending import PendingFile

log = logging.getLogger(__name__)


def then_ops(f: PendingFile) -> list[dict[str, Any]]:
    """The MDS operations that follow a pending file's commit in the same batch."""
    ops: list[dict[str, Any]] = []
    if f.replaces:       # a new version of an existing file keeps its mode and owner
        ops.append({"op": "chmod", "path": f.path, "mode": f.mode})
    if f.chown is not None:
        ops.append({"op": "chown", "path": f.path, "owner": f.chown[0], "group": f.chown[1]})
    times = times_op(f.path, f.mtime, f.atime)
    if times is not None:
        ops.append(times)
    return ops


def times_op(path: str, mtime: float | None, atime: float | None) -> dict[str, Any] | None:
    """The MDS utimens that sets a new file's times after its commit (None: neither was
    set; only an atime: the commit's mtime stays)."""
    if mtime is None and atime is None:
        return None
    op: dict[str, Any] = {"op": "utimens", "path": path}
    if mtime is not None:
        op["mtime"] = mtime
    else:
        op["keep_mtime"] = True
    if atime is not None:
        op["atime"] = atime
    return op


def commit_groups(groups: Sequence[list[dict]], limit: int = MAX_BATCH) -> list[list[int]]:
    """Split per-file operation groups into MDS batches of at most `limit` operations,
    never splitting a group: lists of group indexes."""
    out: list[list[int]] = [[]]
    n = 0
    for i, g in enumerate(groups):
        if out[-1] and n + len(g) > limit:
            out.append([])
            n = 0
        out[-1].append(i)
        n += len(g)
    return [b for b in out if b]


class MountBatch(SmallFiles):
    def __init__(self, mux: Mux, files: Sequence[PendingFile], *,
                 timeout: float | None = None, suspects: Suspects | None = None,
                 window: int = 8) -> None:
        super().__init__(mux, parents=False, timeout=timeout, suspects=suspects,
                         window=window)
        self.pending = {f.path: f for f in files}
        self.attr_errors: dict[str, OSError] = {}

    def run(self) -> list[OSError | None]:
        """Commit the batch: per file None (committed, whole) or its error."""
        files = list(self.pending.values())
        results = self.write([(f.path, f.data) for f in files])
        out: list[OSError | None] = []
        for f, res in zip(files, results):
            out.append(res if isinstance(res, OSError) else self.attr_errors.get(f.path))
        return out

    def _create_op(self, f: _File) -> dict[str, Any]:
        p = self.pending[f.path]
        op: dict[str, Any] = {"op": "create", "path": f.path, "parents": False,
                              "size": f.data.nbytes, "mode": p.mode, "umask": 0}
        if p.exclusive:
            op["exclusive"] = True
        return op

    def _commit_writer(self, f: _File, w: BlockWriter) -> dict:
        p = self.pending[f.path]
        w.exclusive = p.exclusive
        then = then_ops(p)
        result = w.commit(then)
        self._attr_outcomes(f.path, then, w.then)
        return result

    def _commit(self, batch: list[_File]) -> None:
        groups: list[list[dict]] = []
        owners: list[_File] = []
        for f in batch:
            if f.handle is None:
                continue
            if f.result is not None:          # its block could not be stored
                groups.append([{"op": "abort", "handle": f.handle}])
            else:
                p = self.pending[f.path]
                commit = commit_op(f)
                if p.exclusive:
                    commit["exclusive"] = True
                groups.append([commit, *then_ops(p)])
            owners.append(f)
        for part in commit_groups(groups):
            ops = [op for i in part for op in groups[i]]
            got = iter(mds_batch(self.mux, ops))
            for i in part:
                f, g = owners[i], groups[i]
                res = [next(got) for _ in g]
                if g[0]["op"] == "abort":
                    if isinstance(res[0], OSError):
                        log.warning("%s: could not abort draft %s: %s", f.path, f.handle,
                                    res[0])
                elif isinstance(res[0], OSError):
                    f.result = name_error(res[0], f.path)
                else:
                    f.result = res[0]
                    self._attr_outcomes(f.path, g[1:], res[1:])

    def _attr_outcomes(self, path: str, ops: Sequence[dict], got: Sequence[Any]) -> None:
        for op, res in zip(ops, got):
            if isinstance(res, OSError) and not (op["op"] == "chown"
                                                 and res.errno == errno.EPERM):
                self.attr_errors.setdefault(
                    path, OSError(res.errno, f"{op['op']} after the commit: {res.strerror}",
                                  path))

