"""AegisClient against real clusters: byte-identical round trips at the edge sizes and at
100 MiB, atomic overwrite under a concurrent reader, blocks freed after rm/overwrite, a
DataNode SIGKILLed mid-put, and clear errors."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import time

import pytest

from broker.client import BrokerUnavailable
from client import AegisClient
from run_cluster import free_base_port

from .conftest import LEASE, make_png, make_wav

SMALL_BS = 64 * 1024
MiB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def write_random(path, size: int, seed: int = 0) -> str:
    """A file of `size` pseudo-random bytes (cheap to make, incompressible); its sha256."""
    rnd = __import__("random").Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rnd.randbytes(min(left, 4 * MiB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def node_blocks(fs: AegisClient) -> dict[str, int]:
    return {n["id"]: n["blocks"] for n in fs.status()["nodes"]}


def replica_count(fs: AegisClient, path: str = "/") -> int:
    """Replicas the namespace says exist, over every file under `path`."""
    total = 0
    for entry in fs.ls(path, detail=True):
        child = path.rstrip("/") + "/" + entry["name"]
        if entry["type"] == "dir":
            total += replica_count(fs, child)
        else:
            total += sum(len(b["replicas"]) for b in fs.stat(child)["blocks"])
    return total


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- round trips ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, SMALL_BS - 1, SMALL_BS, SMALL_BS + 1, 3 * SMALL_BS + 7])
def test_round_trip_edge_sizes(fs, tmp_path, size):
    src = tmp_path / "src.bin"
    digest = write_random(src, size, seed=size)
    remote = f"/edge/{size}.bin"
    result = fs.put(src, remote, block_size=SMALL_BS)
    assert result["size"] == size
    info = fs.stat(remote)
    assert info["type"] == "file" and info["size"] == size and info["block_size"] == SMALL_BS
    assert [b["size"] for b in info["blocks"]] == (
        [SMALL_BS] * (size // SMALL_BS) + ([size % SMALL_BS] if size % SMALL_BS else []))
    assert all(len(b["replicas"]) == 2 and len(b["id"]) == 32 for b in info["blocks"])
    out = tmp_path / "out.bin"
    assert fs.get(remote, out) == size
    assert file_sha(out) == digest
    assert sha(fs.read_bytes(remote)) == digest


def test_round_trip_100mib_default_block_size(fs, tmp_path):
    src, out = tmp_path / "big.bin", tmp_path / "big.out"
    digest = write_random(src, 100 * MiB, seed=100)
    seen = []
    fs.put(src, "/big/100mib.bin", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (100 * MiB, 100 * MiB) and len(seen) == 25
    info = fs.stat("/big/100mib.bin")
    assert info["size"] == 100 * MiB and len(info["blocks"]) == 25
    assert fs.get("/big/100mib.bin", out) == 100 * MiB
    assert file_sha(out) == digest


def test_text_png_and_wav_round_trip(fs, tmp_path):
    text = "Hello AegisFS! — ünïcödé\r\nline two\x00 after a NUL\n".encode("utf-8")
    png = make_png()
    wav = make_wav(tmp_path / "tone.wav")
    assert png.startswith(b"\x89PNG") and wav.startswith(b"RIFF")
    for name, data in (("text.txt", text), ("image.png", png), ("tone.wav", wav)):
        fs.write_bytes(f"/media/{name}", data)
        assert sha(fs.read_bytes(f"/media/{name}")) == sha(data)
        buf = io.BytesIO()
        fs.get(f"/media/{name}", buf)
        assert buf.getvalue() == data
    assert sorted(fs.ls("/media")) == ["image.png", "text.txt", "tone.wav"]


def test_range_reads_fetch_only_what_is_asked(fs):
    data = os.urandom(5 * SMALL_BS + 123)
    fs.write_bytes("/ranges.bin", data, block_size=SMALL_BS)
    for off, length in [(0, 1), (SMALL_BS - 3, 6), (2 * SMALL_BS, SMALL_BS), (17, 3 * SMALL_BS),
                        (len(data) - 5, 100), (len(data), 10), (0, None), (4 * SMALL_BS, None)]:
        end = None if length is None else off + length
        assert fs.read_bytes("/ranges.bin", off, length) == data[off:end], (off, length)


def test_open_streams_both_ways(fs):
    data = os.urandom(4 * SMALL_BS + 99)
    with fs.open("/stream.bin", "wb", block_size=SMALL_BS) as f:
        for i in range(0, len(data), 10_000):
            f.write(data[i:i + 10_000])
        assert not fs.exists("/stream.bin")         # invisible until close
    with fs.open("/stream.bin", "rb") as f:
        assert f.read(5) == data[:5]
        f.seek(2 * SMALL_BS - 1)
        assert f.read(3) == data[2 * SMALL_BS - 1:2 * SMALL_BS + 2]
        f.seek(-7, os.SEEK_END)
        assert f.read() == data[-7:]
        f.seek(0)
        assert f.read() == data
    # an exception inside the with block drops the new version, the old one stays
    with pytest.raises(RuntimeError):
        with fs.open("/stream.bin", "wb", block_size=SMALL_BS) as f:
            f.write(b"partial" * 50_000)
            raise RuntimeError("interrupted")
    assert fs.read_bytes("/stream.bin") == data


def test_slow_write_outlives_its_lease_by_renewing(fs):
    """The shared cluster's MDS drops drafts unrenewed for LEASE (3 s). The first 9 blocks
    go fast (the stream has then allocated 16 block ids: 1+1+2+4+8), the next 6 slowly, so
    for over twice the lease only `renew` keeps the draft alive."""
    chunk = os.urandom(SMALL_BS)
    with fs.open("/slow.bin", "wb", block_size=SMALL_BS) as f:
        for _ in range(9):
            f.write(chunk)
        t0 = time.monotonic()
        for _ in range(6):
            time.sleep(1.1)
            f.write(chunk)
        assert time.monotonic() - t0 > 2 * LEASE
    assert fs.read_bytes("/slow.bin") == chunk * 15


def test_namespace_verbs(fs):
    fs.mkdir("/ns/a/b", parents=True)
    fs.mkdir("/ns/a/b", parents=True)                 # -p: no error when it exists
    with pytest.raises(FileExistsError):
        fs.mkdir("/ns/a")
    fs.write_bytes("/ns/a/b/f.txt", b"12345")
    assert fs.isdir("/ns/a") and fs.isfile("/ns/a/b/f.txt") and not fs.exists("/ns/nope")
    assert fs.du("/ns") == {"bytes": 5, "files": 1, "dirs": 3}
    assert fs.mv("/ns/a/b/f.txt", "/ns") == "/ns/f.txt"
    assert fs.read_bytes("/ns/f.txt") == b"12345"
    with pytest.raises(OSError) as exc:
        fs.rm("/ns/a")                                  # not empty
    assert exc.value.errno == errno.ENOTEMPTY
    fs.rm("/ns", recursive=True)
    assert not fs.exists("/ns")


# -- errors -----------------------------------------------------------------------------

def test_errors_are_oserror_subclasses_naming_the_path(fs, tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        fs.get("/no/such/file", tmp_path / "x")
    assert "/no/such/file" in str(exc.value)
    assert not list(tmp_path.iterdir())                 # no partial local file left behind
    fs.write_bytes("/plain", b"x")
    with pytest.raises(NotADirectoryError) as exc:
        fs.write_bytes("/plain/child", b"y")
    assert "/plain" in str(exc.value)
    with pytest.raises(FileNotFoundError) as exc:
        fs.ls("/missing-dir")
    assert "/missing-dir" in str(exc.value)
    with pytest.raises(IsADirectoryError):
        fs.read_bytes("/")


def test_cluster_down_is_broker_unavailable():
    with AegisClient(f"tcp://127.0.0.1:{free_base_port()}", timeout=2,
                     connect_timeout=1) as fs:
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable) as exc:
            fs.ls("/")
        assert time.monotonic() - t0 < 5
        assert "broker" in str(exc.value)


# -- concurrency and space ---------------------------------------------------------------

def test_overwrite_is_atomic_for_a_concurrent_reader(cluster, fs):
    versions = [bytes([i]) * (2 * SMALL_BS) for i in range(1, 13)]   # 2 blocks each
    known = {v: i for i, v in enumerate(versions)}
    fs.write_bytes("/atomic.bin", versions[0], block_size=SMALL_BS)
    stop, seen, bad = threading.Event(), set(), []

    def reader() -> None:
        with AegisClient(cluster.broker, timeout=30) as mine:
            while not stop.is_set():
                data = mine.read_bytes("/atomic.bin")
                if data in known:
                    seen.add(known[data])
                else:
                    bad.append(data[:8] + data[-8:])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in versions[1:]:
            fs.write_bytes("/atomic.bin", v, block_size=SMALL_BS)
            time.sleep(0.15)        # let heartbeats delete the old blocks under the reader
    finally:
        stop.set()
        t.join(30)
    assert not bad, f"torn reads: {bad[:3]}"
    assert len(seen) >= 3           # the reader really overlapped several versions
    assert fs.read_bytes("/atomic.bin") == versions[-1]


def test_rm_and_overwrite_free_blocks_on_the_datanodes(fresh_cluster, tmp_path):
    with AegisClient(fresh_cluster.broker, timeout=30) as fs:
        base = sum(node_blocks(fs).values())
        fs.write_bytes("/space.bin", os.urandom(3 * SMALL_BS), block_size=SMALL_BS,
                       replication=2)
        assert wait_for(lambda: sum(node_blocks(fs).values()) == base + 6), node_blocks(fs)
        old = {b["id"] for b in fs.stat("/space.bin")["blocks"]}
        fs.write_bytes("/space.bin", os.urandom(2 * SMALL_BS), block_size=SMALL_BS,
                       replication=2)
        assert not old & {b["id"] for b in fs.stat("/space.bin")["blocks"]}
        # the 6 old replicas are deleted, the 4 new ones stay
        assert wait_for(lambda: sum(node_blocks(fs).values()) == base + 4), node_blocks(fs)
        fs.rm("/space.bin")
        assert wait_for(lambda: sum(node_blocks(fs).values()) == base), node_blocks(fs)


def test_put_survives_a_datanode_sigkill(fresh_cluster, tmp_path):
    src, out = tmp_path / "200mib.bin", tmp_path / "200mib.out"
    size = 200 * MiB
    digest = write_random(src, size, seed=200)
    killed = []

    def progress(done: int, total: int | None) -> None:
        if not killed and done >= size // 4:
            fresh_cluster.kill("dn2")                   # SIGKILL, mid-put
            killed.append(done)

    with AegisClient(fresh_cluster.broker, timeout=30) as fs:
        fs.put(src, "/survivor.bin", replication=2, progress=progress)
        assert killed and killed[0] < size
        assert not fresh_cluster.roles["dn2"].alive()
        info = fs.stat("/survivor.bin")
        assert info["size"] == size and len(info["blocks"]) == 50
        assert all(b["replicas"] for b in info["blocks"])
        late = info["blocks"][-10:]                      # written well after the kill
        assert all("dn2" not in b["replicas"] and len(b["replicas"]) == 2 for b in late)
        # read back while dn2 stays down: blocks listing dn2 come from the other replica
        assert fs.get("/survivor.bin", out) == size
        assert file_sha(out) == digest
        assert not fresh_cluster.roles["dn2"].alive()
