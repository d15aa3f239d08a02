"""The MDS write-ahead log: frame codec, segment files, group commit and recovery scan.

Owns everything about ``wal-<first seq, 20 digits>.log`` files in one directory.

Frame (little-endian): ``[u32 length][u32 crc][body]`` where body is msgpack of
``{"seq": n, **record}`` (``seq`` is always the first key) and crc is CRC32C over the
4 length bytes followed by the body, so a damaged length is caught like damaged data.

Public API:
    encode_frame(body: bytes) -> bytes
    frame_at(buf, offset) -> (obj, end offset) | str reason it is bad
    read_segment(path) -> SegmentRead(records, good_end, damage)
    list_segments(directory) -> list[(first_seq, path)]
    recover(directory, after_seq=0, *, salvage=False) -> Iterator[record]
        yields every record with seq > after_seq in order. Torn tail (damage at the end
        of the LAST segment with no valid frame after it): the file is truncated to the
        last good record, fsynced, and a warning names file and offset. Any other damage
        (valid frames after it, damage in an earlier segment, a seq gap, a segment whose
        name disagrees with its first record) raises WalCorruption naming file and byte
        offset; with salvage=True the log is instead cut at the damage, later segments are
        deleted, and the loss is logged at ERROR level.
    decode_frames(frames, first) -> [record]   a shipped batch, checked seq by seq
    frames_after(directory, seq, limit) -> (first, frames, count) | None   for catch-up
    frame_crc(directory, seq) -> int | None   the CRC of record seq's frame on disk
    WriteAheadLog(directory, next_seq)
        .append(record) -> seq   encode and buffer only (no I/O)
        .sync()                  one write + one fdatasync for all buffered frames; raises
                                 on failure and refuses further use (fail-stop)
        .append_frames(frames, first, count)   buffer frames a primary shipped
        .last_batch              (first seq, bytes) of what the last sync wrote
        .rotate() -> Path        start a new segment named after the next seq
        .close(sync=True)        sync=False drops the buffer (fail-stop shutdown)
        .next_seq, .pending, .segment, .segment_bytes
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import msgpack

from broker.crc import crc32c

log = logging.getLogger(__name__)

HEADER = struct.Struct("<II")
MAX_BODY = 256 << 20  # a commit of ~4M blocks; anything larger is damage, not data
SEGMENT_RE = re.compile(r"^wal-(\d{20})\.log$")
# Every frame our encoder writes starts its body with a fixmap or map16 header then the
# key "seq": searching for this marker finds candidate frames at C speed when scanning
# past damage for "is there a valid record after it?".
_SEQ_KEY = b"\xa3seq"


class WalCorruption(OSError):
    """Damage in the log that is not a torn tail; names the file and byte offset."""

    def __init__(self, path: os.PathLike | str, offset: int, reason: str) -> None:
        super().__init__(errno.EIO, f"WAL damaged in {path} at byte {offset}: {reason}",
                         str(path))
        self.offset = offset
        self.reason = reason


class Damage(NamedTuple):
    offset: int             # where the bad frame starts (== good_end)
    reason: str
    valid_after: bool       # a well-formed frame with a valid CRC starts later in the file


class SegmentRead(NamedTuple):
    records: list[dict]
    good_end: int           # offset just after the last good frame
    damage: Damage | None


def segment_name(first_seq: int) -> str:
    return f"wal-{first_seq:020d}.log"


def list_segments(directory: os.PathLike | str) -> list[tuple[int, Path]]:
    out = []
    for entry in os.scandir(os.fspath(directory)):
        m = SEGMENT_RE.match(entry.name)
        if m:
            out.append((int(m.group(1)), Path(entry.path)))
    return sorted(out)


def fsync_dir(directory: os.PathLike | str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_frame(body: bytes) -> bytes:
    head = struct.pack("<I", len(body))
    return head + struct.pack("<I", crc32c(body, crc32c(head))) + body


def frame_at(buf: bytes | memoryview, offset: int) -> tuple[Any, int] | str:
    """Decode the frame at ``offset``: (object, end offset), or the reason it is bad."""
    if len(buf) - offset < HEADER.size:
        return "truncated frame header"
    length, crc = HEADER.unpack_from(buf, offset)
    if length > MAX_BODY:
        return f"implausible length {length}"
    end = offset + HEADER.size + length
    if end > len(buf):
        return f"truncated frame ({length}-byte body, {len(buf) - offset - 8} present)"
    body = buf[offset + HEADER.size:end]
    if crc32c(body, crc32c(buf[offset:offset + 4])) != crc:
        return "checksum mismatch"
    try:
        return msgpack.unpackb(body, raw=False), end
    except Exception as exc:  # msgpack raises several types for garbage
        return f"undecodable body ({exc.__class__.__name__})"


def _as_record(obj: Any) -> dict | None:
    if isinstance(obj, dict) and type(obj.get("seq")) is int and next(iter(obj)) == "seq":
        return obj
    return None


def _valid_frame_after(buf: bytes, start: int) -> int | None:
    """Offset of the first valid record frame starting after ``start``, if any."""
    pos = buf.find(_SEQ_KEY, start + HEADER.size)
    while pos != -1:
        # fixmap: 1 marker byte before the key; map16: 3 bytes
        for off in (pos - HEADER.size - 1, pos - HEADER.size - 3):
            if off > start:
                got = frame_at(buf, off)
                if not isinstance(got, str) and _as_record(got[0]) is not None:
                    return off
        pos = buf.find(_SEQ_KEY, pos + 1)
    return None


def read_segment(path: os.PathLike | str) -> SegmentRead:
    """Decode a segment up to its first damaged frame; reports whether valid frames
    follow the damage (which tells a torn tail from corruption)."""
    buf = Path(path).read_bytes()
    records, offset = [], 0
    while offset < len(buf):
        got = frame_at(buf, offset)
        if isinstance(got, str):
            reason = got
        elif _as_record(got[0]) is None:
            reason = "frame is not a WAL record"
        else:
            records.append(got[0])
            offset = got[1]
            continue
        return SegmentRead(records, offset,
                           Damage(offset, reason, _valid_frame_after(buf, offset) is not None))
    return SegmentRead(records, offset, None)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def recover(directory: os.PathLike | str, after_seq: int = 0, *,
            salvage: bool = False) -> Iterator[dict]:
    """Yield the records with seq > after_seq in order, repairing a torn tail (see the
    module doc). Segments wholly covered by ``after_seq`` (the next segment starts at or
    before after_seq + 1) are not read at all."""
    segments = list_segments(directory)
    while len(segments) > 1 and segments[1][0] <= after_seq + 1:
        segments.pop(0)
    prev = None  # seq of the last record seen
    for n, (first, path) in enumerate(segments):
        seg = read_segment(path)
        for i, rec in enumerate(seg.records):
            seq = rec["seq"]
            problem = _sequence_problem(seq, i, first, prev, after_seq)
            if problem:
                _give_up(path, _offset_of(path, i), problem, salvage, segments[n + 1:])
                return
            prev = seq
            if seq > after_seq:
                yield rec
        damage = seg.damage
        if damage is None:
            continue
        if n == len(segments) - 1 and not damage.valid_after:
            log.warning("WAL torn tail in %s at byte %d (%s): truncating %d bytes "
                        "(a record cut short by a crash, or damaged)", path, damage.offset,
                        damage.reason, path.stat().st_size - damage.offset)
            _truncate(path, damage.offset)
            return
        why = damage.reason + (" and valid records follow it" if damage.valid_after
                               else " in a segment that is not the last")
        _give_up(path, damage.offset, why, salvage, segments[n + 1:])
        return


def _sequence_problem(seq: int, index: int, first: int, prev: int | None,
                      after_seq: int) -> str | None:
    if index == 0 and seq != first:
        return f"first record has seq {seq} but the segment is named for {first}"
    if prev is not None and seq != prev + 1:
        return f"seq {seq} follows seq {prev}"
    if prev is None and seq > after_seq + 1:
        return f"records {after_seq + 1}..{seq - 1} are missing"
    return None


def _offset_of(path: Path, index: int) -> int:
    """Byte offset of the index-th frame (only used to report damage)."""
    buf, offset = Path(path).read_bytes(), 0
    for _ in range(index):
        found = frame_at(buf, offset)
        if isinstance(found, str):   # not expected: the scan read these frames whole
            break
        offset = found[1]
    return offset


def _give_up(path: Path, offset: int, reason: str, salvage: bool,
             later: list[tuple[int, Path]]) -> None:
    """Raise WalCorruption, or under salvage cut the log at the damage, drop the later
    segments and say so loudly."""
    if not salvage:
        raise WalCorruption(path, offset, reason)
    dropped = [p for _, p in later]
    lost = sum(p.stat().st_size for p in dropped) + path.stat().st_size - offset
    log.error("WAL SALVAGE: damage in %s at byte %d (%s); DISCARDING %d bytes: the rest of "
              "this segment and %d later segment(s) %s", path, offset, reason, lost,
              len(dropped), [p.name for p in dropped])
    if offset == 0:
        dropped.append(path)  # nothing of it survives; its name would claim a wrong seq
    else:
        _truncate(path, offset)
    for p in dropped:
        p.unlink()
    fsync_dir(path.parent)


def decode_frames(frames: bytes | memoryview, first: int) -> list[dict]:
    """The records of a run of frames that must hold seqs first, first+1, ... (a shipped
    batch); ValueError naming the problem for anything else."""
    out: list[dict] = []
    offset = 0
    while offset < len(frames):
        got = frame_at(frames, offset)
        if isinstance(got, str):
            raise ValueError(f"frame at byte {offset}: {got}")
        rec = _as_record(got[0])
        if rec is None or rec["seq"] != first + len(out):
            raise ValueError(f"frame at byte {offset} is not record seq {first + len(out)}")
        out.append(rec)
        offset = got[1]
    return out


def frames_after(directory: os.PathLike | str, seq: int,
                 limit: int = 8 << 20) -> tuple[int, bytes, int] | None:
    """The raw frames of the records after `seq` from the segments on disk, about `limit`
    bytes of them: (first seq, frames, count); (seq + 1, b"", 0) when there are none;
    None when the log no longer reaches back to seq + 1 (pruned by a checkpoint)."""
    segs = list_segments(directory)
    if not segs or segs[0][0] > seq + 1:
        return None if segs or seq > 0 else (seq + 1, b"", 0)
    start = max(i for i, (first, _) in enumerate(segs) if first <= seq + 1)
    parts: list[bytes] = []
    count, size = 0, 0
    for _, path in segs[start:]:
        buf = path.read_bytes()
        offset = 0
        while offset < len(buf) and size < limit:
            got = frame_at(buf, offset)
            if isinstance(got, str):
                break           # the tail a writer is still appending: stop there
            rec = _as_record(got[0])
            if rec is None:
                break
            if rec["seq"] > seq:
                if rec["seq"] != seq + 1 + count:
                    return None     # a gap: not a contiguous history
                parts.append(buf[offset:got[1]])
                count += 1
                size += got[1] - offset
            offset = got[1]
        if size >= limit:
            break
    return seq + 1, b"".join(parts), count


def truncate_after(directory: os.PathLike | str, seq: int) -> int:
    """Cut the log on disk back to record `seq`: later segments removed, the one holding
    `seq` cut just after its frame, durably (file fsync, then the directory). For a
    standby whose tail past `seq` was a deposed leader's, never acknowledged
    (mds/replication.py `truncate`). Returns the number of records dropped; ValueError,
    changing nothing, when the segments do not hold record `seq` (nothing to cut at)."""
    segments = list_segments(directory)
    holder = [(first, path) for first, path in segments if first <= seq]
    if not holder:
        raise ValueError(f"the log holds no record {seq} (it starts later)")
    first, path = holder[-1]
    buf = path.read_bytes()
    offset, cut = 0, None
    while offset < len(buf):
        got = frame_at(buf, offset)
        if isinstance(got, str):
            break
        rec, offset = got
        if isinstance(rec, dict) and rec.get("seq") == seq:
            cut = offset
            break
    if cut is None:
        raise ValueError(f"record {seq} is not in {path.name}")
    dropped = 0
    for later_first, later in segments:
        if later_first > seq:
            dropped += len(read_segment(later).records)
    dropped += len(read_segment(path).records) - (seq - first + 1)
    # newest first and durably before the cut: a crash in between leaves a prefix
    for later_first, later in reversed(segments):
        if later_first > seq:
            later.unlink()
    fsync_dir(directory)
    _truncate(path, cut)
    return dropped


def frame_crc(directory: os.PathLike | str, seq: int) -> int | None:
    """The CRC of the frame of record `seq` in the segments on disk (it covers the whole
    record): what a primary and its standby compare to know they share a history. None
    when the log does not hold it (before the first segment, or pruned)."""
    got = frames_after(directory, seq - 1, limit=1) if seq > 0 else None
    if not got or not got[2]:
        return None
    return HEADER.unpack_from(got[1], 0)[1]


class WriteAheadLog:
    """Appends records to the newest segment; durable only after ``sync()`` returns."""

    segment: Path        # set by _open_segment (in __init__, or it raises)

    def __init__(self, directory: os.PathLike | str, next_seq: int) -> None:
        self.directory = Path(directory)
        self.next_seq = next_seq
        self._buffer: list[bytes] = []
        self._buffered = 0           # records in the buffer (a shipped chunk holds many)
        # (first seq, bytes) of the frames the last sync() wrote: what a primary ships to
        # its standby (mds/replication.py)
        self.last_batch: tuple[int, bytes] = (next_seq, b"")
        self._packer = msgpack.Packer(use_bin_type=True)
        self._failed: BaseException | None = None
        self._fd = -1
        self.segment_bytes = 0
        self._open_segment()

    def _open_segment(self) -> None:
        path = self.directory / segment_name(self.next_seq)
        existing = list_segments(self.directory)
        if existing and existing[-1][0] > self.next_seq:
            raise WalCorruption(existing[-1][1], 0,
                                f"segment is newer than the next seq {self.next_seq}")
        if path.exists() and path.stat().st_size:
            raise WalCorruption(path, 0, f"segment for seq {self.next_seq} already has data")
        created = not path.exists()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if created:
            os.fsync(self._fd)
            fsync_dir(self.directory)  # the new name must survive a crash
        self.segment, self.segment_bytes = path, 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def _ensure_usable(self) -> None:
        if self._failed is not None:
            raise OSError(errno.EIO, f"WAL unusable after an earlier failure: "
                                     f"{self._failed!r}", str(self.segment))

    def append(self, record: Mapping[str, Any]) -> int:
        """Encode and buffer ``record`` under the next seq; returns that seq. No I/O."""
        self._ensure_usable()
        seq = self.next_seq
        if "seq" in record:  # a record read back from the log: its old seq must not win
            record = {k: v for k, v in record.items() if k != "seq"}
        frame = encode_frame(self._packer.pack({"seq": seq, **record}))
        if len(frame) - HEADER.size > MAX_BODY:
            raise OSError(errno.EFBIG, f"WAL record of {len(frame)} bytes is too large")
        self._buffer.append(frame)
        self._buffered += 1
        self.next_seq = seq + 1
        return seq

    def sync(self, written: Callable[[int, bytes], None] | None = None) -> int:
        """Write every buffered frame with one write and one fdatasync; bytes written.
        `written(first seq, frames)`, when given, is called between the write and the
        fdatasync (a primary sends the batch to its standby then: both fsyncs overlap);
        it must not raise."""
        self._ensure_usable()
        if not self._buffer:
            return 0
        data = b"".join(self._buffer)
        first = self.next_seq - self._buffered
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if written is not None:
                written(first, data)
            os.fdatasync(self._fd)
        except BaseException as exc:
            # after a failed fsync the page cache state is unknown: never retry (fail-stop)
            self._failed = exc
            log.critical("WAL write/fsync to %s failed: %r", self.segment, exc)
            raise
        self._buffer.clear()
        self._buffered = 0
        self.last_batch = (first, data)
        self.segment_bytes += len(data)
        return len(data)

    def append_frames(self, frames: bytes, first: int, count: int) -> None:
        """Buffer `count` already-encoded frames holding seqs first..first+count-1 (a
        standby writing what its primary shipped, checked by the caller). No I/O."""
        self._ensure_usable()
        if first != self.next_seq:
            raise ValueError(f"frames start at seq {first}, the log at {self.next_seq}")
        self._buffer.append(frames)
        self._buffered += count
        self.next_seq = first + count

    def rotate(self) -> Path:
        """Sync, then continue in a new segment named after the next seq (no-op when the
        current segment is still empty)."""
        self.sync()
        if self.segment_bytes == 0 and self.segment == self.directory / segment_name(
                self.next_seq):
            return self.segment
        os.close(self._fd)
        self._fd = -1
        self._open_segment()
        return self.segment

    def close(self, sync: bool = True) -> None:
        """Close the segment; ``sync=False`` drops buffered records (fail-stop path)."""
        if self._fd >= 0:
            try:
                if sync and self._failed is None:
                    self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1
