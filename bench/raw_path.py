"""The raw baseline of bench/put_get.py: the minimal same-shaped path that AegisFS is measured
beside. Child roles (a sink writing each block durably, a C `zmq.proxy` relay, a windowed
client) that put_get.py starts as `--role sink|relay|raw-client`, and raw_small_files, the
per-file ceiling of the disk; no MDS, no checksums, no placement.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

MiB = 1024 * 1024
BLOCK = 4 * MiB
WINDOW = 8


def raw_small_files(tmp: Path, count: int = 400) -> float:
    """Durable 4 KiB files/s written directly, one process: tmp, write, fsync, rename,
    fsync dir - the per-file ceiling of this disk without any network or metadata."""
    d = tmp / "raw-small"
    d.mkdir()
    data = os.urandom(4096)
    dir_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for i in range(count):
            path = os.path.join(d, f"f{i:06d}")
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            os.rename(path + ".tmp", path)
            os.fsync(dir_fd)
        return count / (time.perf_counter() - t0)
    finally:
        os.close(dir_fd)
        shutil.rmtree(d, ignore_errors=True)


def role_sink(endpoint: str, directory: str) -> None:
    """Raw baseline DataNode: REP loop, durable write per block (raw_put's sequence)."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    sock.connect(endpoint)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    print("ready", flush=True)
    while True:
        frames = sock.recv_multipart(copy=False)
        op, name = frames[0].bytes, frames[1].bytes.decode()
        if op == b"stop":
            sock.send(b"bye")
            return
        path = os.path.join(directory, name)
        if op == b"put":
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.writev(fd, [f.buffer for f in frames[2:]])
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            os.rename(path + ".tmp", path)
            os.fsync(dir_fd)
            sock.send_multipart([b"ok", name.encode()])
        else:   # get
            fd = os.open(path, os.O_RDONLY)
            try:
                buf = bytearray(os.fstat(fd).st_size)
                os.preadv(fd, [buf], 0)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            sock.send(buf, copy=False)


def role_relay(front: str, back: str) -> None:
    import zmq
    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    f.bind(front)
    b.bind(back)
    print("ready", flush=True)
    zmq.proxy(f, b)


def role_raw_client(endpoint: str, op: str, src: str, replication: int) -> dict:
    """Window of WINDOW blocks in flight; R copies of each block (the relay round-robins
    them over R sinks); get reads every block back once, writing the local file."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    sock.connect(endpoint)
    size = os.path.getsize(src)
    nblocks = -(-size // BLOCK)
    t0 = time.perf_counter()
    if op == "put":
        bufs = [bytearray(BLOCK) for _ in range(WINDOW)]
        acks: dict[bytes, int] = {}          # block name -> copies still unacknowledged

        def collect() -> None:
            name = sock.recv_multipart()[2]
            acks[name] -= 1
            if not acks[name]:
                del acks[name]

        with open(src, "rb", buffering=0) as f:
            for i in range(nblocks):
                # block i reuses the buffer of block i - WINDOW: wait until it is acked
                while f"b{i - WINDOW}".encode() in acks or len(acks) >= WINDOW:
                    collect()
                view = memoryview(bufs[i % WINDOW])
                n = f.readinto(view)
                name = f"b{i}".encode()
                acks[name] = replication
                for _ in range(replication):
                    sock.send_multipart([b"", b"put", name, view[:n]], copy=False)
        while acks:
            collect()
    else:
        # the local file is written as AegisClient.get writes it: fdatasync + DONTNEED every
        # 32 MiB, fsync at the end
        fd = os.open(src + ".raw-get", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sent = done = unsynced = 0
        while done < nblocks:
            while sent < nblocks and sent - done < WINDOW:
                sock.send_multipart([b"", b"get", f"b{sent}".encode()])
                sent += 1
            frames = sock.recv_multipart(copy=False)   # one sink: replies come in order
            unsynced += os.write(fd, frames[1].buffer)
            done += 1
            if unsynced >= 32 * MiB:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                unsynced = 0
        os.fsync(fd)
        os.close(fd)
        os.unlink(src + ".raw-get")
    return {"seconds": time.perf_counter() - t0}
