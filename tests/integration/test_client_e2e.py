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
from tests.support.caps import cap_for
from tests.support.wait import wait_for

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


def test_a_file_replaced_while_open_stays_readable_then_is_estale(cluster, fs):
    old = os.urandom(4 * SMALL_BS)
    fs.write_bytes("/open.bin", old, block_size=SMALL_BS, replication=2)
    old_blocks = fs.stat("/open.bin")["blocks"]
    with fs.open("/open.bin", "rb") as f:
        assert f.read(10) == old[:10]
        fs.write_bytes("/open.bin", b"the new version")
        f.seek(SMALL_BS)        # a fresh fetch, after the overwrite queued the old deletes
        assert f.read(SMALL_BS) == old[SMALL_BS:2 * SMALL_BS]    # within the delete grace

        def gone(block: dict) -> bool:
            for node in block["replicas"]:
                try:
                    bid = bytes.fromhex(block["id"])
                    fs._io().call(f"dn.{node}", {"op": "stat_block", "id": bid,
                                                 "cap": cap_for(cluster.data_dir, bid)})
                    return False
                except FileNotFoundError:
                    pass
            return True

        assert wait_for(lambda: gone(old_blocks[3]), 20)
        f.seek(3 * SMALL_BS)
        with pytest.raises(OSError) as info:
            f.read()
        assert info.value.errno == errno.ESTALE and "/open.bin" in str(info.value)
    assert fs.read_bytes("/open.bin") == b"the new version"


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
                     connect_timeout=1, config={"security": {"mode": "off"}}) as fs:
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
        with AegisClient(cluster.broker, timeout=30, key=cluster.key) as mine:
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
    with AegisClient(fresh_cluster.broker, timeout=30, key=fresh_cluster.key) as fs:
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

    with AegisClient(fresh_cluster.broker, timeout=30, key=fresh_cluster.key) as fs:
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


# -- many small files -------------------------------------------------------------------

def test_put_many_round_trips_small_multi_block_and_streamed_files(fs, tmp_path):
    rnd = __import__("random").Random(5)
    expect: dict[str, bytes] = {}
    items: list = []
    sizes = [0, 1, 100, 4096, SMALL_BS - 1, SMALL_BS, SMALL_BS + 1, 300_000]
    for i in range(120):
        data = rnd.randbytes(sizes[i % len(sizes)])
        path = f"/many/d{i % 4}/f{i}"
        expect[path] = data
        items.append((data, path))
    big = tmp_path / "big.bin"                     # over the batching limit: streamed
    big_digest = write_random(big, 2 * MiB + 3, seed=9)
    items.append((str(big), "/many/big.bin"))
    (tmp_path / "small.txt").write_bytes(b"hello from disk")
    items.append((tmp_path / "small.txt", "/many/small.txt"))
    items.append((io.BytesIO(b"from a file object"), "/many/fobj"))
    expect["/many/small.txt"] = b"hello from disk"
    expect["/many/fobj"] = b"from a file object"
    seen = []
    out = fs.put_many(items, block_size=SMALL_BS, replication=2,
                      progress=lambda files, nbytes: seen.append((files, nbytes)))
    assert all(isinstance(o, dict) for o in out), [o for o in out if isinstance(o, OSError)]
    assert [o["path"] for o in out] == [p for _, p in items]
    assert seen[-1][0] == len(items)
    assert seen[-1][1] == sum(map(len, expect.values())) + 2 * MiB + 3
    for path, data in expect.items():
        assert fs.read_bytes(path) == data, path
        info = fs.stat(path)
        assert info["size"] == len(data)
        assert len(info["blocks"]) == -(-len(data) // SMALL_BS)
        assert all(len(b["replicas"]) == 2 for b in info["blocks"]), path
    fs.get("/many/big.bin", tmp_path / "big.out")
    assert file_sha(tmp_path / "big.out") == big_digest
    # a second put_many of the same paths replaces each file atomically
    out = fs.put_many([(b"v2" + p.encode(), p) for p in expect])
    assert all(fs.read_bytes(p) == b"v2" + p.encode() for p in expect)


def test_put_many_reports_each_failure_and_stores_the_rest(fs, tmp_path):
    fs.write_bytes("/pm/file", b"x")
    items = [(b"a", "/pm/ok1"), (b"b", "/pm/file/under"), (b"c", "/pm/ok2"),
             (b"d", ""), (tmp_path / "missing.txt", "/pm/ok3"), (b"e" * 5000, "/pm/ok4")]
    out = fs.put_many(items, errors="return")
    assert out[0] == {"path": "/pm/ok1", "size": 1} and out[2]["size"] == 1
    assert isinstance(out[1], NotADirectoryError) and "/pm/file/under" in str(out[1])
    assert out[3].errno == errno.EINVAL
    assert isinstance(out[4], FileNotFoundError) and "missing.txt" in str(out[4])
    assert out[5]["size"] == 5000 and fs.read_bytes("/pm/ok4") == b"e" * 5000
    fs.rm("/pm/ok1")
    with pytest.raises(NotADirectoryError) as info:      # default: raise, after trying all
        fs.put_many(items)
    assert "2 more of 6 files failed" in "".join(getattr(info.value, "__notes__", []))
    assert fs.read_bytes("/pm/ok1") == b"a"
    with pytest.raises(ValueError):
        fs.put_many(items, errors="ignore")


def test_put_many_survives_a_datanode_sigkill_and_rm_frees_pack_blocks(fresh_cluster):
    rnd = __import__("random").Random(11)
    files = {f"/swarm/{i // 100}/f{i}": rnd.randbytes(rnd.randrange(0, 8192))
             for i in range(1200)}
    killed = []

    def progress(done: int, nbytes: int) -> None:
        if not killed and done >= 200:
            fresh_cluster.kill("dn3")                   # SIGKILL, between batches
            killed.append(done)

    with AegisClient(fresh_cluster.broker, timeout=30, key=fresh_cluster.key) as fs:
        base = sum(node_blocks(fs).values())
        out = fs.put_many([(d, p) for p, d in files.items()], replication=2, progress=progress)
        assert killed and killed[0] < len(files)
        assert not fresh_cluster.roles["dn3"].alive()
        assert [o["path"] for o in out] == list(files)
        late = list(files)[-300:]                        # written well after the kill
        for path in late:
            replicas = [r for b in fs.stat(path)["blocks"] for r in b["replicas"]]
            assert "dn3" not in replicas and (len(replicas) == 2 or not files[path])
        for path, data in files.items():                # read back while dn3 stays down
            assert fs.read_bytes(path) == data, path
        # the small blocks live in pack files; deleting them gives the counts back
        fresh_cluster.start_role("dn3")
        wait_for(lambda: sum(n["state"] == "up" for n in fs.status()["nodes"]) == 3, 30)
        fs.rm("/swarm", recursive=True)
        # ~2,400 replicas go through the delete queue, grace and the nodes' reports:
        # the bound is generous for a loaded machine, and a failure names the counts
        wait_for(lambda: node_blocks(fs), 60, what=f"back to {base} blocks on the nodes",
                 done=lambda counts: sum(counts.values()) == base)


def test_get_many_small_big_missing_and_file_objects(fs, tmp_path):
    rnd = __import__("random").Random(8)
    files = {f"/gm/f{i}": rnd.randbytes(rnd.choice([0, 1, 4096, SMALL_BS + 5])) for i in range(40)}
    files["/gm/big"] = rnd.randbytes(3 * MiB)
    fs.put_many([(d, p) for p, d in files.items()], block_size=SMALL_BS)
    sink = io.BytesIO()
    items = [(p, tmp_path / p.rsplit("/", 1)[1]) for p in files]
    items += [("/gm/missing", tmp_path / "missing"), ("/gm", tmp_path / "dir"),
              ("/gm/f3", sink)]
    seen = []
    out = fs.get_many(items, errors="return", progress=lambda n, b: seen.append((n, b)))
    for (p, local), o in zip(items[:len(files)], out):
        assert o == {"path": p, "size": len(files[p])}
        assert local.read_bytes() == files[p]
    assert isinstance(out[-3], FileNotFoundError) and "/gm/missing" in str(out[-3])
    assert isinstance(out[-2], IsADirectoryError)
    assert sink.getvalue() == files["/gm/f3"]
    assert seen[-1] == (len(items), sum(map(len, files.values())) + len(files["/gm/f3"]))
    assert not (tmp_path / "missing").exists() and not list(tmp_path.glob(".*.part"))
    with pytest.raises(FileNotFoundError):
        fs.get_many(items)


def test_closing_the_client_ends_its_block_pool_at_once(cluster):
    """A short-lived client (a CLI call) must not hold its pool's spare blocks against the
    user's allocation limit until the lease ends: close() ends the pool without waiting
    for the answer. The MDS would keep the pool LEASE (3 s) after its last use; it is
    gone within 1 s of close."""
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as fs:
        wait_for(lambda: fs.status().get("pools", 0) == 0, timeout=LEASE * 5,
                 what="earlier tests' pools to end")
    fs = AegisClient(cluster.broker, timeout=30.0, key=cluster.key)
    fs.write_bytes("/pool-close/one", b"x" * 4000)
    assert fs.small_puts == 1
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as watcher:
        assert watcher.status().get("pools", 0) == 1
        fs.close()
        closed = time.monotonic()
        wait_for(lambda: watcher.status().get("pools", 0) == 0, timeout=1.0,
                 what="the closed client's pool to end")
        assert time.monotonic() - closed < LEASE / 2
        assert watcher.read_bytes("/pool-close/one") == b"x" * 4000


def test_small_files_go_through_a_block_pool_and_the_pool_ends(cluster):
    """Issue 19 on a real cluster (CURVE on): one-block files are put_small requests,
    read back exactly with R replicas each; once the client is gone its pool's lease
    ends and nothing is left reserved or in a draft."""
    files = {f"/pool/f{i}": os.urandom(n) for i, n in enumerate([0, 1, 4096, 70_000] * 5)}
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as fs:
        for path, data in files.items():
            fs.write_bytes(path, data)
        assert fs.small_puts == len(files)
        assert fs.status().get("pools", 0) >= 1
        for path, data in files.items():
            assert fs.read_bytes(path) == data
            assert all(len(b["replicas"]) == 2 for b in fs.stat(path)["blocks"])
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as fs:
        wait_for(lambda: fs.status().get("pools", 0) == 0 and fs.status()["drafts"] == 0,
                 timeout=LEASE * 5, what="the pool to expire")
        assert sorted(fs.ls("/pool")) == sorted(p.rsplit("/", 1)[1] for p in files)
