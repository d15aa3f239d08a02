"""Local-file I/O of the client: source sizes and full reads, small whole sources, and
downloads that appear only complete (temporary file, sync, rename)."""
from __future__ import annotations

import errno
import io
import os

import pytest

from client import localio


def test_read_full_and_known_size():
    src = io.BytesIO(b"abcdefghij")
    src.read(3)
    assert localio.known_size(src) == 7
    buf = memoryview(bytearray(4))
    assert localio.read_full(src, buf) == 4 and bytes(buf) == b"defg"
    assert localio.read_full(src, buf) == 3 and bytes(buf[:3]) == b"hij"

    class Pipe:                                   # no readinto, no seek, short reads
        def __init__(self):
            self.chunks = [b"ab", b"c", b"", b"x"]

        def read(self, n):
            return self.chunks.pop(0)[:n]

    assert localio.known_size(Pipe()) is None
    buf = memoryview(bytearray(8))
    assert localio.read_full(Pipe(), buf) == 3 and bytes(buf[:3]) == b"abc"


def test_atomic_file_appears_only_on_commit(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    target = tmp_path / "out"
    f = localio.AtomicFile(target)
    f.write(memoryview(b"old-old"))
    f.restart()
    f.write(memoryview(b"new"))
    assert not target.exists()
    f.commit()
    assert target.read_bytes() == b"new"
    assert len(synced) == 2                        # the file, then its directory
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_syncs_behind_the_writer_and_reports_a_failed_sync(tmp_path, monkeypatch):
    """Every SYNC_EVERY bytes the data is synced in another thread while writes go on; a
    sync that fails makes the next write fail and no target ever appears."""
    import threading
    release, started, threads = threading.Event(), threading.Event(), []

    def slow_sync(fd):
        threads.append(threading.get_ident())
        started.set()
        assert release.wait(10)
    monkeypatch.setattr(os, "fdatasync", slow_sync)
    target = tmp_path / "out"
    f = localio.AtomicFile(target)
    f.SYNC_EVERY = 4
    f.write(memoryview(b"abcd"))                  # starts a sync, which blocks
    assert started.wait(10)
    f.write(memoryview(b"ef"))                    # not behind it
    release.set()
    f.write(memoryview(b"gh"))                    # waits for the first, starts a second
    f.commit()
    assert target.read_bytes() == b"abcdefgh"
    assert len(threads) == 2 and threading.get_ident() not in threads

    def failing_sync(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", failing_sync)
    g = localio.AtomicFile(tmp_path / "other")
    g.SYNC_EVERY = 2
    g.write(memoryview(b"xy"))
    with pytest.raises(OSError) as failed:
        g.write(memoryview(b"z"))
        g.commit()
    assert failed.value.errno == errno.EIO
    g.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_discard_leaves_nothing(tmp_path):
    f = localio.AtomicFile(tmp_path / "out")
    f.write(memoryview(b"partial"))
    f.discard()
    f.discard()                                    # twice is harmless
    assert list(tmp_path.iterdir()) == []


def test_write_local_renames_into_place_and_owes_a_sync(tmp_path):
    assert localio.write_local(tmp_path / "a", b"abc") is True
    assert (tmp_path / "a").read_bytes() == b"abc"
    out = io.BytesIO()
    assert localio.write_local(out, b"xyz") is False and out.getvalue() == b"xyz"
    with pytest.raises(FileNotFoundError):
        localio.write_local(tmp_path / "missing" / "a", b"abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
