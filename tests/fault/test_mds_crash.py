"""The MDS killed with SIGKILL under load keeps every acknowledged mutation and shows nothing
half-applied; a torn WAL tail is cut at start; damage in the middle of the log stops
startup (exit code 3, file and offset named) until --salvage."""
from __future__ import annotations

import errno
import os
import random
import threading
import time
from pathlib import Path

import crc32c
import msgpack
import pytest

from broker.client import Client
from mds.wal import encode_frame, frame_at, list_segments, read_segment
from run_cluster import Cluster
from tests.support.cluster import start_cluster, wait_mds

HB = 0.3
KIB = 1024
WRITERS = 8
KILLS, SOAK_KILLS = 20, 200
# Ask-and-retry: these mean "the MDS went away", never "the request was refused".
TRANSIENT = (ConnectionResetError, ConnectionRefusedError, TimeoutError)


def tree(call, root: str) -> dict[str, tuple[str, int]]:
    """{path: ("dir", 0) | ("file", size)} of everything below `root`, by recursive ls."""
    out, stack = {}, [root]
    while stack:
        d = stack.pop()
        for e in call("ls", path=d)["entries"]:
            p = f"{d.rstrip('/')}/{e['name']}"
            out[p] = (e["type"], e["size"])
            if e["type"] == "dir":
                stack.append(p)
    return out


# -- the ledger of acknowledged mutations ----------------------------------------------------

class Gate:
    """Writers pass `checkpoint()` between mutations; `close()` returns once every live
    writer is parked there, so the checker sees a namespace nobody is changing."""

    def __init__(self, writers: int) -> None:
        self.cv = threading.Condition()
        self.open = True
        self.parked = 0
        self.alive = writers

    def checkpoint(self) -> None:
        with self.cv:
            if self.open:
                return
            self.parked += 1
            self.cv.notify_all()
            while not self.open:
                self.cv.wait()
            self.parked -= 1

    def leave(self) -> None:
        with self.cv:
            self.alive -= 1
            self.cv.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        with self.cv:
            self.open = False
            if not self.cv.wait_for(lambda: self.parked >= self.alive, timeout):
                raise AssertionError("writers did not park: one is stuck in a mutation")

    def reopen(self) -> None:
        with self.cv:
            self.open = True
            self.cv.notify_all()


class Violation(AssertionError):
    pass


class Writer(threading.Thread):
    """Random mutations in /w<i>. `model` holds the acknowledged state: {path: size} for
    files, {path: None} for directories. A mutation whose reply was lost (MDS killed) is
    retried until the MDS gives a definite answer; a retry that finds the mutation already
    done (EEXIST for mkdir, ENOENT for a commit, rm or mv) proves it was durable, since the
    MDS replies to nothing before its fsync."""

    def __init__(self, idx: int, endpoint: str, gate: Gate, seed: int, curve=None) -> None:
        super().__init__(name=f"writer-{idx}", daemon=True)
        self.root = f"/w{idx}"
        self.endpoint, self.curve = endpoint, curve
        self.gate = gate
        self.rng = random.Random(seed)
        self.model: dict[str, int | None] = {}
        self.stop = False
        self.error: BaseException | None = None
        self.n = 0
        self.stats = {"acked": 0, "retried": 0, "found_done": 0}

    # -- calls with retry ---------------------------------------------------------------

    def call(self, service: str, header: dict, payload=(), *, retry_enospc=False):
        """(result, uncertain): retried through MDS restarts; `uncertain` when an earlier
        attempt may have been carried out. A definite error is raised as (exc, uncertain)."""
        uncertain = False
        while True:
            try:
                return self.client.call(service, header, payload).result, uncertain
            except TRANSIENT as exc:
                # a refused request never reached a worker; anything else may have
                uncertain = uncertain or not isinstance(exc, ConnectionRefusedError)
                self.stats["retried"] += 1
            except OSError as exc:
                # a restarted MDS waiting for its DataNodes (EAGAIN), or none seen yet
                if not (exc.errno == errno.EAGAIN or retry_enospc and exc.errno == 28):
                    exc.uncertain = uncertain
                    raise
            time.sleep(0.02)

    def mds(self, op: str, **fields):
        return self.call("mds", {"op": op, **fields}, retry_enospc=op == "allocate")

    # -- model helpers ------------------------------------------------------------------

    def dirs(self) -> list[str]:
        return [self.root] + [p for p, s in self.model.items() if s is None]

    def files(self) -> list[str]:
        return [p for p, s in self.model.items() if s is not None]

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{self.rng.choice(self.dirs())}/{prefix}{self.n}"

    def _subtree(self, path: str) -> list[str]:
        return [p for p in self.model if p == path or p.startswith(path + "/")]

    def _ack(self, uncertain: bool) -> None:
        self.stats["acked"] += 1
        if uncertain:
            self.stats["found_done"] += 1

    # -- mutations ------------------------------------------------------------------------

    def mkdir(self) -> None:
        path = self.fresh("d")
        try:
            _, unc = self.mds("mkdir", path=path)
        except FileExistsError as exc:
            if not exc.uncertain:
                raise Violation(f"mkdir {path}: EEXIST for a path never created") from exc
            unc = True
        self.model[path] = None
        self._ack(unc)

    def write(self, path: str) -> None:
        size = self.rng.choice([0, 0, 0, self.rng.randint(1, KIB),
                                self.rng.randint(KIB + 1, 2 * KIB)])
        data = self.rng.randbytes(size)
        (draft, _) = self.mds("create", path=path, block_size=KIB, replication=2)
        handle = draft["handle"]
        blocks = []
        chunks = [data[i:i + KIB] for i in range(0, size, KIB)]
        if chunks:
            (alloc, _) = self.mds("allocate", handle=handle, count=len(chunks))
            for blk, chunk in zip(alloc["blocks"], chunks):
                crc = crc32c.crc32c(chunk)
                receipts = [self.call(f"dn.{node}", {"op": "put_block", "id": blk["id"],
                                                     "checksum": crc, "cap": cap},
                                      [chunk])[0]["receipt"]
                            for node, cap in zip(blk["nodes"], blk["caps"])]
                blocks.append({"id": blk["id"], "size": len(chunk), "checksum": crc,
                               "replicas": blk["nodes"], "receipts": receipts})
        try:
            _, unc = self.mds("commit", handle=handle, blocks=blocks)
        except FileNotFoundError as exc:
            if not exc.uncertain:
                raise Violation(f"commit {path}: draft vanished before any commit") from exc
            unc = True   # the lost reply's commit was carried out: the draft is gone
            (info, _) = self.mds("stat", path=path)
            if info["size"] != size:
                raise Violation(f"{path}: committed {size} bytes, stat says {info['size']}")
        self.model[path] = size
        self._ack(unc)

    def rm(self, path: str, recursive: bool = False) -> None:
        try:
            _, unc = self.mds("rm", path=path, recursive=recursive)
        except FileNotFoundError as exc:
            if not exc.uncertain:
                raise Violation(f"rm {path}: ENOENT for an acknowledged entry") from exc
            unc = True
        for p in self._subtree(path):
            del self.model[p]
        self._ack(unc)

    def mv(self, src: str, dst: str) -> None:
        try:
            (res, unc) = self.mds("mv", src=src, dst=dst)
            if res["path"] != dst:
                raise Violation(f"mv {src} {dst} landed at {res['path']}")
        except FileNotFoundError as exc:
            if not exc.uncertain:
                raise Violation(f"mv {src}: ENOENT for an acknowledged entry") from exc
            unc = True
        moved = {p: self.model.pop(p) for p in self._subtree(src)}
        for p in self._subtree(dst):   # a replaced file
            del self.model[p]
        for p, size in moved.items():
            self.model[dst + p[len(src):]] = size
        self._ack(unc)

    def step(self) -> None:
        files, subdirs = self.files(), self.dirs()[1:]
        r = self.rng.random()
        if r < 0.15 or (not files and r < 0.5):
            self.mkdir()
        elif r < 0.5 or not files:
            self.write(self.fresh("f"))
        elif r < 0.6:
            self.write(self.rng.choice(files))                       # overwrite
        elif r < 0.72:
            self.rm(self.rng.choice(files))
        elif r < 0.75 and subdirs:
            self.rm(self.rng.choice(subdirs), recursive=True)
        elif r < 0.9:
            self.mv(self.rng.choice(files), self.fresh("m"))
        elif r < 0.95 and len(files) > 1:
            src, dst = self.rng.sample(files, 2)                     # replace a file
            self.mv(src, dst)
        elif subdirs:
            src = self.rng.choice(subdirs)
            targets = [d for d in self.dirs() if d != src and not d.startswith(src + "/")]
            self.n += 1
            self.mv(src, f"{self.rng.choice(targets)}/r{self.n}")
        else:
            self.mkdir()

    def run(self) -> None:
        self.client = Client(self.endpoint, timeout=10, connect_timeout=2, curve=self.curve)
        try:
            try:
                self.mds("mkdir", path=self.root)
            except FileExistsError:
                pass
            while not self.stop:
                self.gate.checkpoint()
                if not self.stop:
                    self.step()
        except BaseException as exc:
            self.error = exc
        finally:
            self.gate.leave()
            self.client.close()


def check_ledgers(call, writers: list[Writer]) -> int:
    """Exact equality of every writer's subtree with its acknowledged model."""
    roots = {e["name"] for e in call("ls", path="/")["entries"]}
    assert roots <= {w.root[1:] for w in writers}, f"unexpected top-level entries {roots}"
    checked = 0
    for w in writers:
        want = {p: ("dir", 0) if s is None else ("file", s) for p, s in w.model.items()}
        got = tree(call, w.root)
        if got != want:
            lost = sorted(set(want) - set(got))[:5]
            extra = sorted(set(got) - set(want))[:5]
            wrong = sorted(p for p in set(got) & set(want) if got[p] != want[p])[:5]
            raise AssertionError(f"{w.root}: acknowledged but missing {lost}; visible but never "
                                 f"acknowledged {extra}; wrong size/type "
                                 f"{[(p, got[p], want[p]) for p in wrong]}")
        # a file's blocks add up to its committed size
        for p in [p for p, s in w.model.items() if s][:3]:
            info = call("stat", path=p)
            assert sum(b["size"] for b in info["blocks"]) == w.model[p], p
            assert len(info["blocks"]) == -(-w.model[p] // KIB), p
        checked += len(want)
    return checked


@pytest.mark.timeout(1800)   # the --soak run (200 kills) takes ~6 minutes
def test_sigkill_under_8_writers_keeps_every_acknowledged_mutation(tmp_path, soak):
    kills_wanted = SOAK_KILLS if soak else KILLS
    rng = random.Random(int(os.environ.get("AEGISFS_TEST_SEED", "20240601")))
    # checkpoints every few hundred records, so kills also land during checkpoints and
    # recovery goes through snapshot + replay
    cluster = start_cluster(tmp_path, heartbeat=HB, env={"AEGISFS_MDS_CHECKPOINT_RECORDS": "400"})
    gate = Gate(WRITERS)
    writers = [Writer(i, cluster.broker, gate, rng.randrange(1 << 30), cluster.curve) for i in range(WRITERS)]
    checker = Client(cluster.broker, timeout=10, connect_timeout=2, curve=cluster.curve)

    def call(op, **fields):
        return checker.call("mds", {"op": op, **fields}).result

    started = time.monotonic()
    kills = recovery_kills = 0
    restarts: list[float] = []
    try:
        for w in writers:
            w.start()
        while kills < kills_wanted:
            time.sleep(rng.uniform(0.02, 0.6))      # writers busy: kill at a random moment
            cluster.kill("mds")
            kills += 1
            cluster.start_role("mds")
            if rng.random() < 0.15:                 # sometimes again, during recovery
                time.sleep(rng.uniform(0.0, 0.3))
                cluster.kill("mds")
                recovery_kills += 1
                cluster.start_role("mds")
            restarts.append(wait_mds(cluster))
            gate.close()
            dead = [w for w in writers if w.error is not None]
            if dead:
                raise dead[0].error
            check_ledgers(call, writers)
            gate.reopen()
        gate.close()
        for w in writers:
            w.stop = True
        gate.reopen()
        for w in writers:
            w.join(30)
        dead = [w for w in writers if w.error is not None]
        if dead:
            raise dead[0].error
        # and a clean restart on top keeps it all too
        assert cluster.stop_role("mds") == 0
        cluster.start_role("mds")
        wait_mds(cluster)
        entries = check_ledgers(call, writers)
    finally:
        for w in writers:
            w.stop = True
        gate.reopen()
        checker.close()
        cluster.stop()
    acked = sum(w.stats["acked"] for w in writers)
    found = sum(w.stats["found_done"] for w in writers)
    retried = sum(w.stats["retried"] for w in writers)
    print(f"\n{kills} SIGKILLs (+{recovery_kills} during recovery) in "
          f"{time.monotonic() - started:.0f}s: {acked} acknowledged mutations "
          f"({found} confirmed by a retry after a lost reply, {retried} retried calls), "
          f"{entries} entries checked; restart to first ping max {max(restarts):.2f}s, "
          f"mean {sum(restarts) / len(restarts):.2f}s")
    assert acked > 20 * kills_wanted


# -- damaged logs ------------------------------------------------------------------------

def frame_offsets(path: Path) -> list[int]:
    """Start offset of every intact frame of a WAL segment, and the end of the last."""
    buf, offsets = path.read_bytes(), [0]
    while offsets[-1] < len(buf):
        got = frame_at(buf, offsets[-1])
        assert not isinstance(got, str), got
        offsets.append(got[1])
    return offsets


def last_segment(cluster: Cluster) -> Path:
    return list_segments(cluster.data_dir / "mds")[-1][1]


def mds_client(cluster: Cluster):
    client = Client(cluster.broker, timeout=10, connect_timeout=2, curve=cluster.curve)

    def call(op, **fields):
        return client.call("mds", {"op": op, **fields}).result
    return client, call


def test_torn_tail_is_cut_and_acknowledged_records_survive(tmp_path):
    cluster = start_cluster(tmp_path, datanodes=1, heartbeat=HB)
    client, call = mds_client(cluster)
    acked: dict[str, tuple[str, int]] = {}
    try:
        call("mkdir", path="/t")
        acked["/t"] = ("dir", 0)
        for i in range(30):
            call("mkdir", path=f"/t/d{i}")
            acked[f"/t/d{i}"] = ("dir", 0)
            h = call("create", path=f"/t/f{i}")["handle"]
            call("commit", handle=h, blocks=[])
            acked[f"/t/f{i}"] = ("file", 0)
        assert cluster.stop_role("mds") == 0

        # 1. garbage appended after the last record
        seg = last_segment(cluster)
        size = seg.stat().st_size
        with open(seg, "ab") as f:
            f.write(os.urandom(100))
        cluster.start_role("mds")
        wait_mds(cluster)
        assert tree(call, "/t") == {k: v for k, v in acked.items() if k != "/t"}
        assert seg.stat().st_size == size, "the torn tail was not cut"

        # 2. the first half of a record that was never acknowledged
        call("mkdir", path="/t/more")
        acked["/t/more"] = ("dir", 0)
        assert cluster.stop_role("mds") == 0
        seg = last_segment(cluster)
        next_seq = read_segment(seg).records[-1]["seq"] + 1
        ghost = encode_frame(msgpack.packb({"seq": next_seq, "op": "mkdir", "path": "/t/ghost",
                                            "parents": False, "mtime": time.time()}))
        with open(seg, "ab") as f:
            f.write(ghost[:len(ghost) // 2])
        cluster.start_role("mds")
        wait_mds(cluster)
        assert tree(call, "/t") == {k: v for k, v in acked.items() if k != "/t"}

        # 3. the last record cut in the middle: it stands for a write the crash tore
        call("mkdir", path="/t/last")
        assert cluster.stop_role("mds") == 0
        seg = last_segment(cluster)
        assert read_segment(seg).records[-1]["path"] == "/t/last"
        offsets = frame_offsets(seg)
        cut = (offsets[-2] + offsets[-1]) // 2
        os.truncate(seg, cut)
        cluster.start_role("mds")
        wait_mds(cluster)
        assert tree(call, "/t") == {k: v for k, v in acked.items() if k != "/t"}
        assert seg.stat().st_size == offsets[-2]
        # and the MDS goes on appending and recovering normally
        call("mkdir", path="/t/after")
        acked["/t/after"] = ("dir", 0)
        assert cluster.stop_role("mds") == 0
        cluster.start_role("mds")
        wait_mds(cluster)
        assert tree(call, "/t") == {k: v for k, v in acked.items() if k != "/t"}
    finally:
        client.close()
        cluster.stop()


def test_bit_flip_mid_log_refuses_start_until_salvage(tmp_path):
    cluster = start_cluster(tmp_path, datanodes=1, heartbeat=HB)
    client, call = mds_client(cluster)
    role = cluster.roles["mds"]
    try:
        call("mkdir", path="/s")
        for i in range(100):
            call("mkdir", path=f"/s/d{i:03d}")
        assert cluster.stop_role("mds") == 0
        seg = last_segment(cluster)
        records = read_segment(seg).records
        offsets = frame_offsets(seg)
        k = next(i for i, r in enumerate(records) if r.get("path") == "/s/d050")
        flip_at = (offsets[k] + offsets[k + 1]) // 2
        data = bytearray(seg.read_bytes())
        data[flip_at] ^= 0x10
        seg.write_bytes(bytes(data))

        log_start = role.log_path.stat().st_size
        cluster.start_role("mds")
        assert role.proc.wait(30) == 3
        cluster.stop_role("mds")
        log = role.log_path.read_bytes()[log_start:].decode(errors="replace")
        assert f"{seg} at byte {offsets[k]}" in log, log[-2000:]
        assert "--salvage" in log
        assert seg.read_bytes() == bytes(data), "a refused start must not change the log"

        role.argv.append("--salvage")
        try:
            cluster.start_role("mds")
            wait_mds(cluster)
        finally:
            role.argv.remove("--salvage")
        assert "WAL SALVAGE" in role.log_path.read_text(errors="replace")
        # everything before the damaged record, nothing from it on
        want = {f"/s/d{i:03d}": ("dir", 0) for i in range(50)}
        assert tree(call, "/s") == want
        assert seg.stat().st_size == offsets[k]
        # salvaged, it starts normally again and keeps new work
        call("mkdir", path="/s/new")
        want["/s/new"] = ("dir", 0)
        assert cluster.stop_role("mds") == 0
        cluster.start_role("mds")
        wait_mds(cluster)
        assert tree(call, "/s") == want
    finally:
        client.close()
        cluster.stop()
