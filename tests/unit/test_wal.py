from __future__ import annotations

import logging
import os
import random
import shutil
import struct
from pathlib import Path

import msgpack
import pytest

from mds import wal
from mds.wal import WalCorruption, WriteAheadLog, encode_frame, frame_at, read_segment, recover


def record(i: int) -> dict:
    # bytes, nested lists and floats: what namespace records carry
    return {"op": "commit", "handle": f"h{i}", "mtime": 1000.0 + i,
            "blocks": [[bytes([i % 256]) * 16, 4096, i * 7, ["n1", "n2"]]]}


def build(directory: Path, counts: list[int]) -> list[int]:
    """Segments with the given numbers of records; returns each record's byte offset
    within its segment (in seq order)."""
    log = WriteAheadLog(directory, 1)
    offsets = []
    for n, count in enumerate(counts):
        if n:
            log.rotate()
        pos = 0
        for _ in range(count):
            offsets.append(pos)
            seq = log.append(record(log.next_seq))
            pos += len(log._buffer[-1])
            assert seq == log.next_seq - 1
        log.sync()
    log.close()
    return offsets


def seqs(records: list[dict]) -> list[int]:
    return [r["seq"] for r in records]


# ---------------------------------------------------------------- codec


def test_frame_roundtrip_and_layout() -> None:
    body = msgpack.packb({"seq": 1, "op": "x"})
    frame = encode_frame(body)
    length, crc = struct.unpack_from("<II", frame)
    assert length == len(body) and frame[8:] == body
    assert frame_at(frame, 0) == ({"seq": 1, "op": "x"}, len(frame))
    assert frame_at(frame + frame, len(frame)) == ({"seq": 1, "op": "x"}, 2 * len(frame))


def test_frame_damage_is_detected() -> None:
    frame = encode_frame(msgpack.packb({"seq": 1, "op": "x" * 40}))
    assert frame_at(frame[:5], 0) == "truncated frame header"
    assert frame_at(frame[:-1], 0).startswith("truncated frame")
    for i in range(len(frame)):
        for bit in range(8):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            assert isinstance(frame_at(bytes(bad), 0), str), (i, bit)
    # the CRC covers the length too: a shorter length with its body is still caught
    shorter = struct.pack("<I", len(frame) - 9) + frame[4:-1]
    assert frame_at(shorter, 0) == "checksum mismatch"
    assert frame_at(struct.pack("<II", 1 << 30, 0), 0).startswith("implausible length")


# ---------------------------------------------------------------- writer


def test_append_buffers_and_sync_is_one_write_and_one_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog(tmp_path, 1)
    seg = tmp_path / "wal-00000000000000000001.log"
    assert log.segment == seg and seg.exists()
    assert [log.append(record(i)) for i in range(50)] == list(range(1, 51))
    assert seg.stat().st_size == 0 and log.pending == 50
    calls = {"write": 0, "fdatasync": 0}
    real_write, real_sync = os.write, os.fdatasync

    def counting_write(fd: int, data: bytes) -> int:
        calls["write"] += 1
        return real_write(fd, data)

    def counting_sync(fd: int) -> None:
        calls["fdatasync"] += 1
        real_sync(fd)
    monkeypatch.setattr(wal.os, "write", counting_write)
    monkeypatch.setattr(wal.os, "fdatasync", counting_sync)
    written = log.sync()
    assert calls == {"write": 1, "fdatasync": 1}
    assert written == seg.stat().st_size > 0 and log.pending == 0
    assert log.sync() == 0 and calls["write"] == 1  # nothing buffered: no I/O
    log.close()
    records, end, damage = read_segment(seg)
    assert seqs(records) == list(range(1, 51)) and end == written and damage is None
    assert records[3] == {"seq": 4, **record(3)}


def test_rotate_names_segments_after_the_next_seq(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, 1)
    for i in range(3):
        log.append(record(i))
    new = log.rotate()
    assert new.name == "wal-00000000000000000004.log"
    assert log.rotate() == new  # still empty: no new segment
    log.append(record(4))
    log.close()
    assert [(f, p.name) for f, p in wal.list_segments(tmp_path)] == [
        (1, "wal-00000000000000000001.log"), (4, "wal-00000000000000000004.log")]
    assert seqs(list(recover(tmp_path))) == [1, 2, 3, 4]


def test_failed_fsync_is_fail_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = WriteAheadLog(tmp_path, 1)
    log.append(record(1))

    def broken(fd: int) -> None:
        raise OSError(5, "I/O error")
    monkeypatch.setattr(wal.os, "fdatasync", broken)
    with pytest.raises(OSError):
        log.sync()
    monkeypatch.undo()
    with pytest.raises(OSError, match="unusable"):
        log.append(record(2))
    with pytest.raises(OSError, match="unusable"):
        log.sync()
    log.close()


def test_a_stale_seq_in_a_record_is_replaced(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, 7)
    assert log.append({"seq": 2, "op": "x"}) == 7
    log.close()
    assert list(recover(tmp_path, 6)) == [{"seq": 7, "op": "x"}]


def test_unencodable_record_changes_nothing(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, 1)
    with pytest.raises(TypeError):
        log.append({"op": "x", "bad": object()})
    assert log.next_seq == 1 and log.pending == 0
    log.close()


def test_writer_refuses_to_start_behind_existing_segments(tmp_path: Path) -> None:
    build(tmp_path, [3, 2])
    with pytest.raises(WalCorruption):
        WriteAheadLog(tmp_path, 2)


# ---------------------------------------------------------------- recovery


def test_recover_across_segments_and_after_seq(tmp_path: Path) -> None:
    build(tmp_path, [5, 5, 5])
    assert seqs(list(recover(tmp_path))) == list(range(1, 16))
    assert seqs(list(recover(tmp_path, 7))) == list(range(8, 16))
    # a segment wholly covered by after_seq is not even read
    (tmp_path / "wal-00000000000000000001.log").write_bytes(b"garbage" * 10)
    assert seqs(list(recover(tmp_path, 5))) == list(range(6, 16))
    assert list(recover(tmp_path, 15)) == []


def test_empty_directory_and_empty_segment(tmp_path: Path) -> None:
    assert list(recover(tmp_path)) == []
    WriteAheadLog(tmp_path, 1).close()
    assert list(recover(tmp_path)) == []


def test_torn_tail_random_truncations_and_bit_flips(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    offsets = build(src, [6, 6])
    last = src / "wal-00000000000000000007.log"
    data = last.read_bytes()
    start = offsets[-1]  # the last record of the last segment
    rng = random.Random(20240601)
    cases = ([("cut", rng.randrange(start + 1, len(data))) for _ in range(120)]
             + [("flip", rng.randrange(start, len(data))) for _ in range(120)]
             + [("zeros", rng.randrange(1, 64)) for _ in range(10)])
    for n, (kind, pos) in enumerate(cases):
        work = tmp_path / f"case{n}"
        shutil.copytree(src, work)
        seg = work / last.name
        if kind == "cut":
            seg.write_bytes(data[:pos])
        elif kind == "flip":
            bad = bytearray(data)
            bad[pos] ^= 1 << rng.randrange(8)
            seg.write_bytes(bytes(bad))
        else:  # a crash that extended the file with zeros but lost the data
            seg.write_bytes(data[:start] + b"\0" * pos)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mds.wal"):
            got = seqs(list(recover(work)))
        assert got == list(range(1, 12)), (kind, pos)
        assert seg.stat().st_size == start, (kind, pos)  # cut at the last good record
        assert any("torn tail" in r.getMessage() and str(seg) in r.getMessage()
                   and f"byte {start}" in r.getMessage() for r in caplog.records)
        # and the repaired log reads back cleanly, with nothing left to repair
        assert seqs(list(recover(work))) == list(range(1, 12))
        shutil.rmtree(work)


def test_bit_flip_in_a_middle_record_is_corruption(tmp_path: Path) -> None:
    offsets = build(tmp_path, [4, 8])
    seg = tmp_path / "wal-00000000000000000005.log"
    data = seg.read_bytes()
    rng = random.Random(5)
    for _ in range(40):
        victim = rng.randrange(4, 11)  # seq 5..11 sits in the last segment; 12 is last
        lo, hi = offsets[victim], offsets[victim + 1]
        bad = bytearray(data)
        bad[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        seg.write_bytes(bytes(bad))
        with pytest.raises(WalCorruption) as info:
            list(recover(tmp_path))
        assert info.value.offset == lo and info.value.filename == str(seg)
        assert str(seg) in str(info.value) and f"byte {lo}" in str(info.value)
        assert seg.read_bytes() == bytes(bad)  # nothing was cut without salvage
    seg.write_bytes(data)


def test_salvage_keeps_the_prefix_and_drops_later_segments(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    offsets = build(tmp_path, [4, 4, 4])
    seg = tmp_path / "wal-00000000000000000005.log"
    bad = bytearray(seg.read_bytes())
    bad[offsets[6] + 10] ^= 0x40  # seq 7, in the middle segment
    seg.write_bytes(bytes(bad))
    with pytest.raises(WalCorruption):
        list(recover(tmp_path))
    with caplog.at_level(logging.ERROR, logger="mds.wal"):
        assert seqs(list(recover(tmp_path, salvage=True))) == [1, 2, 3, 4, 5, 6]
    assert "SALVAGE" in caplog.text and str(seg) in caplog.text
    assert seg.stat().st_size == offsets[6]
    assert [p.name for _, p in wal.list_segments(tmp_path)] == [
        "wal-00000000000000000001.log", "wal-00000000000000000005.log"]
    assert seqs(list(recover(tmp_path))) == [1, 2, 3, 4, 5, 6]


def test_torn_end_of_a_segment_that_is_not_the_last_is_corruption(tmp_path: Path) -> None:
    offsets = build(tmp_path, [4, 4])
    first = tmp_path / "wal-00000000000000000001.log"
    first.write_bytes(first.read_bytes()[:-3])
    with pytest.raises(WalCorruption) as info:
        list(recover(tmp_path))
    assert info.value.offset == offsets[3] and "not the last" in str(info.value)
    assert seqs(list(recover(tmp_path, salvage=True))) == [1, 2, 3]
    assert len(wal.list_segments(tmp_path)) == 1


def test_sequence_gaps_are_corruption(tmp_path: Path) -> None:
    build(tmp_path, [3, 3])
    (tmp_path / "wal-00000000000000000004.log").rename(tmp_path / "wal-00000000000000000005.log")
    with pytest.raises(WalCorruption, match="named for 5"):
        list(recover(tmp_path))
    # a missing middle segment
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    build(tmp_path, [3, 3, 3])
    (tmp_path / "wal-00000000000000000004.log").unlink()
    with pytest.raises(WalCorruption, match="follows seq 3"):
        list(recover(tmp_path))
    assert seqs(list(recover(tmp_path, salvage=True))) == [1, 2, 3]
    assert len(wal.list_segments(tmp_path)) == 1
    # a log that starts later than the caller's state
    with pytest.raises(WalCorruption, match="missing"):
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        build(tmp_path, [3, 3])
        (tmp_path / "wal-00000000000000000001.log").unlink()
        list(recover(tmp_path, 1))
