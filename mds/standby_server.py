"""The standby's side of WAL shipping (the wire and the theory are in mds/replication.py):
`handle` answers hello and append, `truncate` cuts a deposed term's tail, `seed` takes the
active's snapshot in chunks and `put_seed_in_place` makes it the directory's state;
`StandbyServer` is the socket (a ROUTER, CURVE with the MDS key only). Everything but
StandbyServer is pure: a store and a header in, an answer out.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, cast

import msgpack
import zmq

from .metastore import MetaStore
from .namespace import Namespace, NamespaceConfig
from .replication import _pack
from .snapshot import SnapshotCorrupt, list_snapshots, load_snapshot, snapshot_name
from .store_ha import StaleEpoch
from .wal import frame_crc, fsync_dir, list_segments


def handle(store: MetaStore, header: Any, frames: bytes | None,
           on_ring: Callable[[Any], None] | None = None) -> dict:
    """The standby's answer to one request (every outcome an answer, never an exception)."""
    n = header.get("n") if isinstance(header, dict) else None
    base = {"n": n}
    try:
        op = header.get("op") if isinstance(header, dict) else None
        if op == "append":
            first, epoch = header.get("first"), header.get("epoch")
            if type(first) is not int or type(epoch) is not int or frames is None:
                raise ValueError("append needs int first and epoch and one frames part")
            if epoch < store.epoch:
                raise StaleEpoch(epoch, store.epoch, "the standby")
            store.replicate(first, frames, defer=True)   # replayed after the answer
            if "ring" in header and on_ring is not None:
                on_ring(header["ring"])
        elif op == "hello":
            # the CRC of our last record: the primary checks we share its history
            base["crc"] = frame_crc(store.dir, store.last_seq)
        else:
            raise ValueError(f"unknown op {op!r}")
    except (ValueError, OSError) as exc:
        base["err"] = str(exc)
    return {**base, "last": store.last_seq, "epoch": store.epoch}


def truncate(store: MetaStore, header: dict,
             reopen: Callable[[int], MetaStore] | None) -> tuple[dict, MetaStore]:
    """The standby's side of `truncate`: cut its tail past `seq` after checking it is a
    lower term's tail the active does not hold; (answer, the store now). Every refusal is
    an answer that changes nothing. `reopen(seq)` closes the store, cuts the WAL
    (wal.truncate_after) and opens it again."""
    base: dict = {"n": header.get("n")}
    seq, crc, epoch = header.get("seq"), header.get("crc"), header.get("epoch")
    try:
        if type(seq) is not int or type(crc) is not int or type(epoch) is not int:
            raise ValueError("truncate needs int seq, crc and epoch")
        if reopen is None:
            raise ValueError("this standby cannot cut its log")
        if epoch <= store.epoch:
            raise ValueError(f"truncate from epoch {epoch}: this standby has seen "
                             f"epoch {store.epoch}")
        if not 0 < seq < store.last_seq:
            raise ValueError(f"nothing to cut at seq {seq} (last {store.last_seq})")
        if frame_crc(store.dir, seq) != crc:
            raise ValueError(f"record {seq} differs from the active's: another history")
        covered = [s for s, _ in list_snapshots(store.dir) if s > seq]
        if covered:
            raise ValueError(f"a checkpoint at seq {covered[-1]} covers past {seq}")
        store = reopen(seq)
        base["crc"] = frame_crc(store.dir, store.last_seq)
    except (ValueError, OSError) as exc:
        base["err"] = str(exc)
    return {**base, "last": store.last_seq, "epoch": store.epoch}, store


def seed(store: MetaStore, header: dict, data: bytes | None,
         install: Callable[[int, Path], MetaStore] | None) -> tuple[dict, MetaStore]:
    """The standby's side of `seed`: write the chunk at `offset` of snapshot `seq` into
    <dir>/seed/; with the last chunk, check the snapshot loads and `install(seq, path)`
    (close, replace our log and snapshots by it, reopen). (answer, the store now); every
    refusal an answer that changes nothing of the store."""
    base: dict = {"n": header.get("n")}
    fields = [header.get(k) for k in ("seq", "offset", "size", "epoch")]
    try:
        if not all(type(v) is int for v in fields) or data is None:
            raise ValueError("seed needs int seq, offset, size, epoch and one data part")
        seq, offset, size, epoch = cast("list[int]", fields)
        if install is None:
            raise ValueError("this standby cannot be seeded")
        if epoch < store.epoch:
            raise StaleEpoch(epoch, store.epoch, "the standby")
        if seq <= store.last_seq:
            raise ValueError(f"seed at seq {seq}: this standby is at {store.last_seq}")
        if not 0 <= offset <= size or offset + len(data) > size:
            raise ValueError(f"seed chunk {offset}+{len(data)} outside {size} bytes")
        folder = store.dir / "seed"
        folder.mkdir(exist_ok=True)
        path = folder / snapshot_name(seq)
        with open(path, "r+b" if offset and path.exists() else "wb") as f:
            if f.seek(0, 2) < offset:
                raise ValueError(f"seed chunk at {offset}: only {f.tell()} bytes so far")
            f.seek(offset)
            f.write(data)
            f.truncate()
            if offset + len(data) == size:
                f.flush()
                os.fsync(f.fileno())
        if offset + len(data) == size:
            load_snapshot(path, Namespace(NamespaceConfig()))   # whole and readable
            store = install(seq, path)
        base["seeded"] = offset + len(data)
    except (ValueError, OSError, SnapshotCorrupt) as exc:
        base["err"] = str(exc)
    return {**base, "last": store.last_seq, "epoch": store.epoch}, store


def put_seed_in_place(folder: Path, path: Path) -> None:
    """A checked seed snapshot becomes the directory's state (its store closed): renamed
    in (newer than anything there, so recovery picks it), the directory fsynced, then the
    older segments and snapshots removed and the directory fsynced again."""
    os.replace(path, folder / path.name)
    fsync_dir(folder)
    for _, old in list_segments(folder) + list_snapshots(folder):
        if old.name != path.name:
            old.unlink()
    fsync_dir(folder)


class StandbyServer:
    """The standby's socket: a ROUTER answering `handle` (CURVE server with the MDS key,
    its ZAP admitting that key only, when `curve` is given)."""

    def __init__(self, store: MetaStore, bind: str, curve: Any = None,
                 info: Callable[[], dict] | None = None,
                 reopen: Callable[[int], MetaStore] | None = None,
                 on_ring: Callable[[Any], None] | None = None,
                 install: Callable[[int, Path], MetaStore] | None = None) -> None:
        self.store, self.info = store, info
        self.install = install   # replace our state by a seed snapshot and reopen
        self.reopen = reopen     # cut the log after a seq and open the store again
        self.on_ring = on_ring   # the active's capability ring, to keep as ours
        self.ctx = zmq.Context()
        self.auth = None
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        if curve is not None:
            from broker.curve import secure_server
            from broker.zap import KeyAuthenticator
            self.auth = KeyAuthenticator(self.ctx, _OnlyKey(curve.public, "mds"),
                                         domains=("worker",))
            self.auth.start()
            secure_server(self.sock, curve.public, curve.secret, "worker")
        self.sock.bind(bind)

    def serve(self, timeout: float) -> bool:
        """Answer what arrives within `timeout` seconds; whether anything did."""
        if not self.sock.poll(int(timeout * 1000)):
            return False
        parts = self.sock.recv_multipart()
        if len(parts) < 2:
            return True
        try:
            header = msgpack.unpackb(parts[1], raw=False)
        except Exception:
            header = None
        frames = parts[2] if len(parts) > 2 else None
        if isinstance(header, dict) and header.get("op") == "truncate":
            answer, self.store = truncate(self.store, header, self.reopen)
        elif isinstance(header, dict) and header.get("op") == "seed":
            answer, self.store = seed(self.store, header, frames, self.install)
        else:
            answer = handle(self.store, header, frames, self.on_ring)
        if self.info is not None and isinstance(header, dict) and header.get("op") == "hello":
            answer.update(self.info())
        self.sock.send_multipart([parts[0], _pack(answer)])
        self.store.apply_replicated()        # durable and answered: now into memory
        return True

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.ctx.term()


class _OnlyKey:
    """A curve.KeyView knowing one member key (the MDS's): nobody else gets in."""

    def __init__(self, public_z85: bytes, service: str) -> None:
        from zmq.utils import z85
        self.key, self.service = z85.decode(public_z85), service

    def reload_if_changed(self) -> bool:
        return False

    def member_for(self, public_key: object) -> str | None:
        key = public_key
        if isinstance(key, (bytes, bytearray)) and len(key) == 40:
            from zmq.utils import z85
            key = z85.decode(key)
        return self.service if key == self.key else None

    def user_for(self, public_key: object) -> str | None:
        return None
