"""Namespace snapshots: the whole namespace (tree, drafts, deletion queue, replica-set
table) at a WAL seq, streamed to ``snapshot-<seq, 20 digits>.msgpack``.

File layout: a sequence of frames in the WAL frame format (``[u32 len][u32 CRC32C]
[msgpack body]``, see mds/wal.py), so every chunk is checksummed and none is large:
    {"format": "aegisfs-mds-snapshot", "version": 5, "seq": S, "created": t}
    {"k": "state", ...}                       Namespace.export_state() (names table,
                                              root attributes)
    {"k": "tree", "d": [...], "f": [...]}      Namespace.export_tree() flattened, ~4096
                                              entries a frame: dirs, then files
    {"k": "link", "e": [...]}                 hard links' later names (version 5): dir
                                              no., name, first name's dir no. and name
    {"k": "atime", "e"|"d": [...]}            own access times (version 4)
    {"k": "del", "node": n, "ids": [...]}      deletion queue, chunked
    {"k": "ops", "e": [[opid, wall, answer]]}  recent client operations' answers, chunked
                                              (mds/opids.py), oldest first
    {"k": "end", "frames": n, "counts": {...}} trailer: a file without it is truncated
Write: tmp file -> fsync -> rename -> fsync directory. Any damage or a count that does
not add up raises SnapshotCorrupt (an OSError naming file and byte offset). Version 1
(before owners and modes) is still read: its entries get the superuser as owner and
group, 0o755 / 0o644, ctime = mtime. Version 3 adds the tree quotas' limits to the state
frame (``quotas``: [[path, bytes, files]]); version 2 has none, and an MDS that reads only
1 and 2 refuses a version 3 file rather than lose the quotas. A newer version raises SnapshotVersionError, which
recovery never takes for damage: it stops rather than fall back past the file.

Public API:
    snapshot_name(seq) -> str, list_snapshots(directory) -> list[(seq, Path)]
    write_snapshot(directory, ns, seq, *, clock=time.time) -> Path
    load_snapshot(path, ns) -> header dict   (``ns`` must be a fresh Namespace)
"""
from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import re
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import msgpack

from broker.crc import crc32c
from mds.namespace import Namespace
from mds.wal import HEADER, MAX_BODY, encode_frame, fsync_dir

log = logging.getLogger(__name__)

FORMAT = "aegisfs-mds-snapshot"
# version 4 adds "atime" frames (own access times: Tree.atimes, dir_atimes); version 5
# directories' inode numbers (an eighth field of each, and dir_seq in the state frame)
# and "link" frames (the later names of hard-linked files)
VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})\.msgpack$")
ENTRIES_PER_FRAME = 4096
IDS_PER_FRAME = 65536


class SnapshotVersionError(OSError):
    """A snapshot written by a newer AegisFS: never damage, never skipped."""

    def __init__(self, path: os.PathLike | str, version: object) -> None:
        super().__init__(errno.EPROTONOSUPPORT, (
            f"snapshot {path} has format version {version!r}; this MDS reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: run the AegisFS that wrote it, or a "
            "newer one"), str(path))
        self.version = version


class SnapshotCorrupt(OSError):
    def __init__(self, path: os.PathLike | str, offset: int, reason: str) -> None:
        super().__init__(errno.EIO, f"snapshot {path} is damaged at byte {offset}: {reason}",
                         str(path))
        self.offset = offset


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # creating millions of long-lived objects would trigger full collections that walk
    # the whole heap again and again: ~40% of the load time at 1M files
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.msgpack"


def list_snapshots(directory: os.PathLike | str) -> list[tuple[int, Path]]:
    out = []
    for entry in os.scandir(os.fspath(directory)):
        m = SNAPSHOT_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), Path(entry.path)))
    return sorted(out)


def write_snapshot(directory: os.PathLike | str, ns: Namespace, seq: int, *,
                   clock: Callable[[], float] = time.time) -> Path:
    """Stream ``ns`` (whose last applied record is ``seq``) to a durable snapshot."""
    directory = Path(directory)
    final = directory / snapshot_name(seq)
    # per process: a checkpoint child orphaned by a killed MDS may still be writing the
    # same seq's tmp file when the restarted MDS checkpoints
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    packer = msgpack.Packer(use_bin_type=True)
    started = time.monotonic()
    frames = 0
    try:
        with _gc_paused(), open(tmp, "wb", buffering=1 << 20) as f:
            def emit(obj: dict) -> None:
                nonlocal frames
                f.write(encode_frame(packer.pack(obj)))
                frames += 1

            atimes, dir_atimes = ns.tree.atimes, ns.tree.dir_atime_paths()
            emit({"format": FORMAT, "version": VERSION, "seq": seq, "created": clock()})
            state = ns.export_state()
            emit({"k": "state", "state": state})
            # flat lists (one msgpack array per frame, not one per entry): fewer objects
            # to build on load; a frame's directories are restored before its files
            dirs: list = []
            files: list = []
            links: list = []        # hard links' later names: after every directory
            for entry in ns.export_tree():
                (dirs, files, links)[entry[0]].extend(entry[1:])
                if len(files) + len(dirs) >= ENTRIES_PER_FRAME * 4:
                    emit({"k": "tree", "d": dirs, "f": files})
                    dirs, files = [], []
            if dirs or files:
                emit({"k": "tree", "d": dirs, "f": files})
            for i in range(0, len(links), ENTRIES_PER_FRAME * 4):
                emit({"k": "link", "e": links[i:i + ENTRIES_PER_FRAME * 4]})
            # files' (inode id, atime) under "e", directories' (path, atime) under "d"
            for key, pairs in (("e", list(atimes.items())), ("d", dir_atimes)):
                for i in range(0, len(pairs), ENTRIES_PER_FRAME):
                    emit({"k": "atime", key: [v for pair in pairs[i:i + ENTRIES_PER_FRAME]
                                              for v in pair]})
            for node, queued in ns.pending_deletes.items():
                ids = list(queued)
                for i in range(0, len(ids), IDS_PER_FRAME):
                    emit({"k": "del", "node": node, "ids": ids[i:i + IDS_PER_FRAME]})
            answers = ns.opids.export()   # retried client operations (mds/opids.py)
            for i in range(0, len(answers), ENTRIES_PER_FRAME):
                emit({"k": "ops", "e": answers[i:i + ENTRIES_PER_FRAME]})
            emit({"k": "end", "frames": frames + 1, "counts": state["counts"]})
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("snapshot %s written: %d files, %d frames, %.1f MB in %.2f s", final.name,
             state["counts"]["files"], frames, final.stat().st_size / 1e6,
             time.monotonic() - started)
    return final


def _frames(f: BinaryIO, path: Path) -> Iterator[tuple[int, dict]]:
    offset = 0
    while True:
        head = f.read(HEADER.size)
        if not head:
            return
        if len(head) < HEADER.size:
            raise SnapshotCorrupt(path, offset, "truncated frame header")
        length, crc = HEADER.unpack(head)
        if length > MAX_BODY:
            raise SnapshotCorrupt(path, offset, f"implausible frame length {length}")
        body = f.read(length)
        if len(body) < length:
            raise SnapshotCorrupt(path, offset, "truncated frame")
        if crc32c(body, crc32c(head[:4])) != crc:
            raise SnapshotCorrupt(path, offset, "checksum mismatch")
        try:
            # tuples, not lists: block-id arrays then become Inode.bids without a copy
            obj = msgpack.unpackb(body, raw=False, use_list=False)
        except Exception as exc:
            raise SnapshotCorrupt(path, offset, f"undecodable frame: {exc!r}") from None
        if not isinstance(obj, dict):
            raise SnapshotCorrupt(path, offset, "frame is not a map")
        yield offset, obj
        offset += HEADER.size + length


def load_snapshot(path: os.PathLike | str, ns: Namespace) -> dict:
    """Fill the fresh ``ns`` from a snapshot; returns its header (``seq`` included)."""
    path = Path(path)
    m = SNAPSHOT_RE.match(path.name)
    started = time.monotonic()
    with _gc_paused(), open(path, "rb", buffering=1 << 20) as f:
        frames = _frames(f, path)
        offset, header = next(frames, (0, None))
        if header is None or header.get("format") != FORMAT:
            raise SnapshotCorrupt(path, 0, f"not an AegisFS snapshot: {header!r:.200}")
        version = header.get("version")
        if type(version) is int and version > VERSION:
            raise SnapshotVersionError(path, version)
        if type(version) is not int or version not in READABLE_VERSIONS:
            raise SnapshotCorrupt(path, 0, f"bad snapshot version: {header!r:.200}")
        legacy = version == 1
        if m and int(m.group(1)) != header.get("seq"):
            raise SnapshotCorrupt(path, 0, f"header seq {header.get('seq')} != file name")
        state, count, end = None, 1, None
        for offset, obj in frames:
            count += 1
            kind = obj.get("k")
            try:
                if kind == "tree" and state is not None:
                    ns.restore_dirs(obj["d"], legacy, ids=version >= 5)
                    ns.restore_files(obj["f"], legacy)
                elif kind == "link" and version >= 5:
                    ns.restore_links(obj["e"])
                elif kind == "atime" and version >= 4:
                    ns.restore_atimes(obj.get("e", ()), obj.get("d", ()))
                elif kind == "del":
                    ns.restore_deletes(obj["node"], obj["ids"])
                elif kind == "ops":
                    ns.opids.restore(obj["e"])
                elif kind == "state" and state is None:
                    state = obj["state"]
                    ns.restore_state(state)
                elif kind == "end":
                    end = obj
                    break
                else:
                    raise ValueError(f"unexpected frame kind {kind!r}")
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                raise SnapshotCorrupt(path, offset, f"bad {kind} frame: {exc!r}") from None
        if end is None or state is None:
            raise SnapshotCorrupt(path, offset, "truncated: no trailer")
        if f.read(1):
            raise SnapshotCorrupt(path, offset, "data after the trailer")
    try:
        ns.finish_restore()
    except OSError as exc:       # a quota on a directory the snapshot does not hold
        raise SnapshotCorrupt(path, offset, f"bad quota in the state frame: {exc}") from None
    have = {k: ns.counts()[k] for k in ("files", "dirs", "blocks", "bytes")}
    if end.get("frames") != count or end.get("counts") != have or state["counts"] != have:
        raise SnapshotCorrupt(path, offset, f"counts do not add up: trailer {end!r:.200}, "
                                            f"loaded {have} from {count} frames")
    log.info("snapshot %s loaded: %d files, %d dirs in %.2f s", path.name, have["files"],
             have["dirs"], time.monotonic() - started)
    return header
