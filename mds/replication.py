"""Synchronous WAL shipping from the active MDS to a standby over a direct ZeroMQ socket.

The active's MetaStore calls `StandbyLink.ship(first, frames)` after each group commit's
fsync (MetaStore.on_sync), before any reply of that batch is sent: the batch's raw WAL
frames go to the standby, which checks, replays and fsyncs them (MetaStore.replicate)
and answers its new last seq. Only then does the active acknowledge its clients. If the
standby does not answer within `timeout` the active marks it gone, says so (status), and
goes on alone; between batches it probes a gone standby once a second and catches it up
from its own WAL segments (wal.frames_after) until it is in sync again. A standby whose
position the active's WAL no longer reaches (pruned by a checkpoint) needs a seed: not
built, the link says `needs_seed`.

Why a direct socket and not a broker service: a batch's round trip is on every
acknowledged write's path, and the broker would add two hops and a second serialisation
queue; the socket is CURVE with the MDS member key on both ends (the standby is a
cluster member holding that key) and its ZAP admits that key only.

Wire: DEALER (active) -> ROUTER (standby). Request [msgpack header, frames?]:
    {op: "hello", n}                     -> {n, last, epoch, crc (of record `last`'s frame),
                                             takeover (why it may not take over, or None)}
    {op: "append", n, first, epoch, ring?} -> {n, last, epoch} or {n, err, last, epoch}
    {op: "truncate", n, seq, crc, epoch} -> {n, last, epoch, crc} or {n, err, last, epoch}
    {op: "seed", n, seq, offset, size, epoch} + chunk -> {n, last, epoch, seeded} or {n, err, ...}

A standby behind what the active's WAL still holds (a checkpoint pruned the records it
lacks) is seeded: the active sends its newest snapshot in SEED_CHUNK pieces (at most
CATCH_UP_BUDGET a turn); the standby writes them to <dir>/seed/, and with the last one
checks the snapshot loads, then replaces its own log and snapshots by it (install: the
snapshot renamed in, the directory fsynced, the store reopened) and answers seq S; the
catch-up goes on from S+1. Only a standby behind the snapshot (its last seq < S, its
epoch not higher) is seeded; one whose last record this WAL still holds and finds
different is never overwritten (it stays needs_seed). With security on only a member
holding the MDS key can be at the other end at all.

A standby whose log runs past the active's history - the deposed leader restarted, holding
a batch it fsynced but whose standby (now the active) never took it, so never
acknowledged - is cut back rather than left needing a seed: (epoch, seq) names one record
(one leader per epoch), and everything before the active's own term start T came to it
from the previous leader in order, so if the standby's record T-1 has the active's CRC
and the standby's highest epoch is lower than the active's, its records from T on are
the deposed term's unacknowledged tail. The active sends `truncate` to T-1; the standby
checks the same (and that no checkpoint of its own covers past T-1), cuts its WAL
(wal.truncate_after), reopens its store from disk and answers its new position, and the
catch-up goes on from there. Any other divergence stays `needs_seed`.
`n` numbers requests so a late answer to a timed-out one is never taken for another's.
`ring` (the active's capability key ring export, mds/grants.py) rides on the first append
after it changed until one is acknowledged; the standby saves it as its own
`capability.ring`, so after a takeover the capabilities clients hold and the keys the
DataNodes verify with stay valid (without it every in-flight write failed "unknown key").

Public API:
    StandbyLink(endpoint, store, timeout, curve=None, clock=time.monotonic)
        .ship(first, frames)   never raises;  .upkeep()   between batches
        .status() -> dict      .close()
    cut_point(store, term_start, acked, their_epoch) -> (seq, crc) | None
The standby's side (handle, truncate, seed, put_seed_in_place, StandbyServer) is in
mds/standby_server.py.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import msgpack
import zmq

from .metastore import MetaStore
from .snapshot import list_snapshots
from .wal import frame_crc, frames_after

log = logging.getLogger(__name__)

CATCH_UP_CHUNK = 4 << 20       # bytes of WAL per catch-up message
CATCH_UP_BUDGET = 0.5          # seconds of catch-up per upkeep, so the loop keeps serving
SEED_CHUNK = 4 << 20           # bytes of snapshot per seed message
PROBE_EVERY = 1.0


def _pack(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def cut_point(store: MetaStore, term_start: int | None, acked: int,
              their_epoch: Any) -> tuple[int, int] | None:
    """The active's side: (seq, crc) to cut a diverged standby back to, or None (it needs
    a seed): the record before this leader's own term (`term_start`, the seq of its epoch
    record), when the standby is past it and has seen only lower epochs (module docstring)."""
    if term_start is None or type(their_epoch) is not int or their_epoch >= store.epoch \
            or acked < term_start:
        return None
    crc = frame_crc(store.dir, term_start - 1)
    return None if crc is None else (term_start - 1, crc)


class StandbyLink:
    def __init__(self, endpoint: str, store: MetaStore, timeout: float = 2.0,
                 curve: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint, self.store, self.timeout, self.curve = endpoint, store, timeout, curve
        self.clock = clock
        self.ctx: zmq.Context = zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.state = "catching_up"       # in_sync / catching_up / gone / needs_seed
        self.term_start: int | None = None   # seq of this leader's own epoch record
        self.ring: Callable[[], Any] | None = None   # the capability ring export now
        self._ring_acked: Any = None         # the export the standby last acknowledged
        self._ring_sent: Any = None
        self._seeding: tuple[int, Any, int] | None = None   # (snapshot seq, path, offset)
        self.acked = 0                   # the standby's last seq, as it last said
        self.since = clock()
        self.reason = "not connected yet"
        self.takeover: str | None = None   # what the standby last said of taking over
        self._n = 0
        self._probe_n = 0                # the hello whose answer is awaited
        self._sent: tuple[int, int | None, float] | None = None   # (first, n, deadline)
        self._next_probe = 0.0
        self._connect()

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 4
        if self.curve is not None:
            self.curve.apply(sock)
        sock.connect(self.endpoint)
        self.sock = sock

    def _send(self, header: dict, frames: bytes | None) -> int | None:
        """Send one request (never blocks); its number, or None when it could not go."""
        assert self.sock is not None
        self._n += 1
        parts = [_pack({**header, "n": self._n})] + ([frames] if frames is not None else [])
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            self.reason = f"socket: {exc}"
            self._connect()
            return None
        return self._n

    def _wait(self, n: int | None, deadline: float) -> dict | None:
        """The answer to request `n` by `deadline`, or None (the socket is then reset)."""
        assert self.sock is not None
        try:
            while n is not None:
                left = deadline - self.clock()
                if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                    if self.clock() >= deadline:
                        break
                    continue
                reply = self.sock.recv_multipart()
                try:
                    answer = msgpack.unpackb(reply[-1], raw=False)
                except Exception:
                    continue
                if isinstance(answer, dict) and answer.get("n") == n:
                    return answer
        except zmq.ZMQError as exc:
            self.reason = f"socket: {exc}"
        self._connect()      # drop what is queued: a late answer must not be read later
        return None

    def _call(self, header: dict, frames: bytes | None, timeout: float) -> dict | None:
        """One request and its answer, or None (no answer in time)."""
        deadline = self.clock() + timeout
        return self._wait(self._send(header, frames), deadline)

    def _lost(self, why: str) -> None:
        if self.state in ("in_sync", "catching_up"):
            log.warning("standby at %s gone (%s): the active continues alone",
                        self.endpoint, why)
        if self.state != "gone":
            self.since = self.clock()
        self.state, self.reason = "gone", why
        self._probe_n = 0
        self._next_probe = self.clock() + PROBE_EVERY

    def send(self, first: int, frames: bytes) -> None:
        """After the local write, before the local fdatasync (MetaStore.on_write): the
        batch goes out now, so the standby's fsync runs while ours does."""
        self._sent = None
        if self.state != "in_sync":
            return
        try:
            n = self._send(self._append(first), frames)
        except Exception as exc:      # never fail the active's flush for the standby
            n, self.reason = None, repr(exc)
        self._sent = (first, n, self.clock() + self.timeout)

    def ship(self, first: int, frames: bytes) -> None:
        """After the local fsync, before replies (MetaStore.on_sync): the standby's answer
        to the batch `send` sent (or the batch sent now), synchronously."""
        if self.state != "in_sync":
            return
        sent, self._sent = self._sent, None
        try:
            if sent is not None and sent[0] == first:
                answer = self._wait(sent[1], sent[2])
            else:
                answer = self._call(self._append(first), frames, self.timeout)
        except Exception as exc:      # never fail the active's flush for the standby
            answer = None
            self.reason = repr(exc)
        if answer is None:
            self._lost(f"no answer within {self.timeout:g}s")
        elif "err" in answer:
            self._lost(f"refused: {answer['err']}")
        else:
            self.acked = answer.get("last", self.acked)
            self._ring_acked = self._ring_sent

    def _seed(self, started: float) -> dict | None:
        """Send the next chunks of our newest snapshot (SEED_CHUNK each, CATCH_UP_BUDGET a
        turn); the standby's answer to the last one sent, or None (no answer, or no
        snapshot: the state says so)."""
        if self._seeding is None:
            snaps = list_snapshots(self.store.dir)
            if not snaps or snaps[-1][0] <= self.acked:
                self.state, self.reason = "needs_seed", f"standby at seq {self.acked}"
                return None
            seq, path = snaps[-1]
            self._seeding = (seq, path, 0)
            log.warning("standby at %s is at seq %d, which this WAL no longer holds: "
                        "seeding it with snapshot %d (%d bytes)", self.endpoint,
                        self.acked, seq, path.stat().st_size)
        self.state, self.reason = "catching_up", "seeding"
        seq, path, offset = self._seeding
        size = path.stat().st_size
        answer = None
        with open(path, "rb") as f:
            while True:
                f.seek(offset)
                data = f.read(SEED_CHUNK)
                answer = self._call({"op": "seed", "seq": seq, "offset": offset,
                                     "size": size, "epoch": self.store.epoch},
                                    data, self.timeout)
                if answer is None or "err" in answer:
                    return answer
                offset += len(data)
                self._seeding = (seq, path, offset)
                if offset >= size or self.clock() - started > CATCH_UP_BUDGET:
                    self._next_probe = 0.0
                    return answer

    def _append(self, first: int) -> dict:
        header = {"op": "append", "first": first, "epoch": self.store.epoch}
        ring = self.ring() if self.ring is not None else None
        self._ring_sent = ring
        if ring is not None and ring is not self._ring_acked:
            header["ring"] = ring
        return header

    def _probe(self) -> dict | None:
        """Without blocking the loop: a hello is sent, and its answer picked up at a later
        upkeep; resent (on a fresh socket) when none came within PROBE_EVERY."""
        assert self.sock is not None
        now = self.clock()
        if self._probe_n:
            while self.sock.poll(0):
                try:
                    answer = msgpack.unpackb(self.sock.recv_multipart()[-1], raw=False)
                except Exception:
                    continue
                if isinstance(answer, dict) and answer.get("n") == self._probe_n:
                    self._probe_n = 0
                    return answer
            if now < self._next_probe:
                return None
            self._connect()
        self._n += 1
        self._probe_n = self._n
        self._next_probe = now + PROBE_EVERY
        try:
            self.sock.send_multipart([_pack({"op": "hello", "n": self._n})], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass        # nobody there yet: the next probe tries again
        return None

    def upkeep(self) -> None:
        """Between batches (nothing buffered): probe a standby that is not in sync and,
        once it answers, catch it up (synchronously, CATCH_UP_BUDGET at most a turn)."""
        if self.state == "in_sync":
            return
        try:
            answer = self._probe()
            if answer is None:
                return
            started = self.clock()
            if isinstance(answer.get("takeover"), (str, type(None))):
                self.takeover = answer.get("takeover")
            while answer is not None and "err" not in answer:
                self.acked = answer.get("last", 0)
                if type(self.acked) is not int:
                    answer = {"err": f"bad last {self.acked!r}"}
                    break
                if answer.get("epoch", 0) > self.store.epoch:
                    answer = {"err": f"the standby has a newer epoch {answer['epoch']}"}
                    break
                if self.acked == self.store.last_seq:
                    log.info("standby at %s in sync at seq %d", self.endpoint, self.acked)
                    self.state, self.since, self.reason = "in_sync", self.clock(), ""
                    self.takeover = None    # said before: the active clears its mark now
                    return
                theirs = answer.get("crc")
                ours = frame_crc(self.store.dir, self.acked) \
                    if theirs is not None and self.acked <= self.store.last_seq else None
                diverged = self.acked > self.store.last_seq or (
                    theirs is not None and ours != theirs)
                cut = cut_point(self.store, self.term_start, self.acked,
                                answer.get("epoch")) if diverged else None
                if cut is not None:
                    answer = self._call({"op": "truncate", "seq": cut[0], "crc": cut[1],
                                         "epoch": self.store.epoch}, None, self.timeout)
                    if answer is not None and "err" in answer:
                        if self.state != "needs_seed":
                            log.error("standby at %s refused to cut its log back to seq "
                                      "%d: %s; it needs a copy of this MDS's directory",
                                      self.endpoint, cut[0], answer["err"])
                        self.state, self.reason = "needs_seed", answer["err"]
                        return
                    if answer is not None:
                        log.warning("standby at %s cut back to seq %d (its tail was a "
                                    "deposed term's, never acknowledged)", self.endpoint,
                                    answer.get("last"))
                    continue
                if self.acked > self.store.last_seq:
                    # it took a batch whose local fsync this MDS never finished (it died in
                    # it): never acknowledged, but that standby's history is not ours
                    if self.state != "needs_seed":
                        log.error("standby at %s is ahead of this MDS (seq %d > %d): it "
                                  "needs a copy of this MDS's directory", self.endpoint,
                                  self.acked, self.store.last_seq)
                    self.state, self.reason = "needs_seed", f"standby ahead at {self.acked}"
                    return
                if ours is not None and theirs != ours:
                    # another history (a data directory of another cluster or an older
                    # reset): shipping onto it would corrupt it
                    if self.state != "needs_seed":
                        log.error("standby at %s holds another history at seq %d: it needs "
                                  "a copy of this MDS's directory", self.endpoint, self.acked)
                    self.state, self.reason = "needs_seed", f"other history at {self.acked}"
                    return
                chunk = frames_after(self.store.dir, self.acked, CATCH_UP_CHUNK)
                if chunk is None:
                    # behind what this WAL holds (a checkpoint pruned it): send our newest
                    # snapshot, then the records after it
                    answer = self._seed(started)
                    if answer is None or "err" in answer or answer.get("last") != \
                            (self._seeding or (None,))[0]:
                        if answer is not None and "err" in answer:
                            log.error("standby at %s refused the seed: %s", self.endpoint,
                                      answer["err"])
                            self.state, self.reason = "needs_seed", answer["err"]
                            self._seeding = None
                        return      # more at the next upkeep, or the refusal said
                    log.warning("standby at %s seeded with snapshot %d", self.endpoint,
                                answer["last"])
                    self._seeding = None
                    continue
                if self.clock() - started > CATCH_UP_BUDGET:
                    self.state = "catching_up"
                    self._next_probe = 0.0       # go on at the next upkeep
                    return
                first, frames, _ = chunk
                answer = self._call(self._append(first), frames, self.timeout)
                if answer is not None and "err" not in answer:
                    self._ring_acked = self._ring_sent
            self._lost("no answer" if answer is None else f"refused: {answer['err']}")
        except Exception as exc:
            log.exception("catching up the standby failed")
            self._lost(repr(exc))

    def status(self) -> dict:
        return {"state": self.state, "acked_seq": self.acked, "endpoint": self.endpoint,
                "for": round(self.clock() - self.since, 1), "reason": self.reason,
                "takeover": self.takeover}

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
