"""Copy-on-write edits through the mount's handles (client/mount/cow.py) on the in-process
cluster: the new version shares every untouched block (same ids), only touched blocks
move, a file changed underneath fails the flush with EIO, dirty blocks beyond the window
leave memory."""
from __future__ import annotations

import errno
import os

import pytest

from client.mount.conn import MountClient
from client.mount.cow import EDIT_PIECE
from client.mount.handles import FileHandle
from tests.support.inprocess import ADMIN, InProcessCluster

BS = 64 * 1024


@pytest.fixture
def cluster():  # type: ignore[no-untyped-def]
    with InProcessCluster(block_size=BS) as c:
        yield c


def mount_client(cluster: InProcessCluster, window: int | None = None) -> MountClient:
    return MountClient("inprocess", transport=lambda: cluster.connect(ADMIN), config={},
                       window=window)


@pytest.fixture
def fs(cluster: InProcessCluster) -> MountClient:
    m = mount_client(cluster)
    yield m
    m.close()


def opened(fs: MountClient, path: str, flags: int = os.O_RDWR) -> FileHandle:
    return FileHandle(fs, path, flags, int(fs.stat(path)["size"]), None)


def ids(fs: MountClient, path: str) -> list[bytes]:
    return [bytes(b["id"]) for b in fs._file_info(path)["blocks"]]


def traffic(cluster: InProcessCluster) -> tuple[int, int]:
    """(bytes read, bytes written) by all DataNodes so far."""
    t = [dn._traffic for dn in cluster.datanodes.values()]
    return sum(x["bytes_read"] for x in t), sum(x["bytes_written"] for x in t)


def test_a_random_write_shares_the_untouched_blocks(fs: MountClient) -> None:
    base = os.urandom(8 * BS)
    fs.write_bytes("/f", base)
    before = ids(fs, "/f")
    h = opened(fs, "/f")
    h.write(b"Z" * 100, 3 * BS + 10)
    h.write(b"Y" * 20, 3 * BS + 500)               # the same block: read once
    assert h.cow is not None and h.cow.fetched == BS
    assert h.read(20, 3 * BS + 500) == b"Y" * 20 and h.read(5, 0) == base[:5]
    assert fs.read_bytes("/f") == base             # nothing visible before the flush
    h.flush()
    h.release()
    after = ids(fs, "/f")
    assert after[:3] == before[:3] and after[4:] == before[4:] and after[3] != before[3]
    want = bytearray(base)
    want[3 * BS + 10:3 * BS + 110] = b"Z" * 100
    want[3 * BS + 500:3 * BS + 520] = b"Y" * 20
    assert fs.read_bytes("/f") == want


def test_append_rewrites_only_the_last_block(fs: MountClient) -> None:
    base = os.urandom(2 * BS + 100)
    fs.write_bytes("/f", base)
    before = ids(fs, "/f")
    h = opened(fs, "/f", os.O_WRONLY | os.O_APPEND)
    extra = os.urandom(BS + 7)
    h.write(extra, len(base))
    h.flush()
    h.release()
    after = ids(fs, "/f")
    assert after[:2] == before[:2] and after[2] != before[2] and len(after) == 4
    assert [b["size"] for b in fs._file_info("/f")["blocks"]] == [BS, BS, BS, 107]
    assert fs.read_bytes("/f") == base + extra


def test_truncate_keeps_the_whole_blocks_below_the_cut(fs: MountClient) -> None:
    base = os.urandom(5 * BS)
    fs.write_bytes("/f", base)
    before = ids(fs, "/f")
    h = opened(fs, "/f")
    h.truncate(2 * BS + 10)
    h.flush()
    after = ids(fs, "/f")
    assert after[:2] == before[:2] and after[2] != before[2] and len(after) == 3
    assert fs.read_bytes("/f") == base[:2 * BS + 10]
    h.truncate(BS)                                 # on a boundary: nothing rewritten
    h.flush()
    h.release()
    assert ids(fs, "/f") == before[:1] and fs.read_bytes("/f") == base[:BS]


def test_a_4k_write_into_64_mib_moves_one_block_then_one_piece(cluster: InProcessCluster) -> None:
    with InProcessCluster(block_size=4 << 20) as big:
        m = mount_client(big)
        try:
            base = os.urandom(1 << 20) * 64
            m.write_bytes("/big", base)
            read0, written0 = traffic(big)
            h = opened(m, "/big")
            h.write(b"x" * 4096, 40 << 20)
            h.flush()
            h.release()
            read, written = traffic(big)
            # one 4 MiB block read once and put on R=2 nodes: not 64 MiB each way
            assert read - read0 == 4 << 20
            assert written - written0 == 2 * (4 << 20)
            # the rewritten block went in 64 KiB pieces: the next edit there moves one
            sizes = [b["size"] for b in m._file_info("/big")["blocks"]]
            assert sizes == [4 << 20] * 10 + [EDIT_PIECE] * 64 + [4 << 20] * 5
            h = opened(m, "/big")
            h.write(b"y" * 4096, (40 << 20) + EDIT_PIECE * 3)
            h.flush()
            h.release()
            read2, written2 = traffic(big)
            assert (read2 - read, written2 - written) == (EDIT_PIECE, 2 * EDIT_PIECE)
            want = bytearray(base)
            want[40 << 20:(40 << 20) + 4096] = b"x" * 4096
            want[(40 << 20) + EDIT_PIECE * 3:(40 << 20) + EDIT_PIECE * 3 + 4096] = b"y" * 4096
            assert m.read_bytes("/big") == want
        finally:
            m.close()


def test_a_file_changed_underneath_fails_the_flush_with_eio(fs: MountClient) -> None:
    fs.write_bytes("/f", os.urandom(3 * BS))
    h = opened(fs, "/f")
    h.write(b"mine", 5)
    other = os.urandom(3 * BS)
    fs.write_bytes("/f", other)                    # another client's new version
    with pytest.raises(OSError) as info:
        h.flush()
    assert info.value.errno == errno.EIO and "changed" in str(info.value)
    h.release()
    assert fs.read_bytes("/f") == other            # theirs whole, nothing mixed in


def test_dirty_blocks_beyond_the_window_leave_memory(cluster: InProcessCluster) -> None:
    m = mount_client(cluster, window=2)
    try:
        base = os.urandom(10 * BS)
        m.write_bytes("/f", base)
        before = ids(m, "/f")
        h = opened(m, "/f")
        want = bytearray(base)
        for i in (1, 3, 5, 7, 3, 9):               # 3 comes back from the spill
            h.write(bytes([i]) * 50, i * BS + i)
            want[i * BS + i:i * BS + i + 50] = bytes([i]) * 50
        assert h.cow is not None
        in_memory = [s for s in h.cow.segs if s.data is not None]
        assert len(in_memory) <= 2 and sum(s.spilled for s in h.cow.segs) == 3
        assert h.read(60, 3 * BS) == bytes(want[3 * BS:3 * BS + 60])
        h.flush()
        h.release()
        after = ids(m, "/f")
        assert [i for i in range(10) if after[i] != before[i]] == [1, 3, 5, 7, 9]
        assert m.read_bytes("/f") == want
    finally:
        m.close()
