"""A whole AegisFS cluster in one process for tests: the real MDS handlers over a MetaStore
and the real DataNode services over BlockStores, called synchronously (no sockets, no
threads) through a transport with broker.client.Client's interface, on a FakeClock.

    with InProcessCluster() as cluster:         # dn1..dn3 up, out of safe mode, on tmpfs
        fs = cluster.client()                            # AegisClient, unchanged, on top
        fs.write_bytes("/a", b"x")
        cluster.run(6.0)                                 # time passes: heartbeats, deletes
        cluster.fail("dn2", "put_block", times=2)        # explicit fault hooks

Theory of operation. `InProcessClient.send` runs the request at once and keeps the reply
until `wait`/`wait_any` collect it, so requests are "in flight" between the two as over a
broker. Everything crosses the wire's encodings: headers are msgpack-encoded and decoded
(a tuple arrives as a list), payload frames arrive as memoryviews, outcomes become reply
headers through the protocol's one errno mapping and are parsed back, so a client sees
what it would see over sockets. Each caller is stamped with the class and id the test
chose (default: client "admin"), as the broker would. An MDS call is one loop turn of
mds/server.py: dispatch, upkeep when due (every 0.5 s of fake time), one flush (group
commit), then its events. DataNodes call out (replica_added, block_corrupt, a copy's
put_block) through the same transport as themselves; `beat()` sends each live node's
block report (when due) and heartbeat and carries out the answer, as the MDS link does.
"""
from __future__ import annotations

import errno
import itertools
import os
import random
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from broker import protocol as P
from broker.client import Reply
from broker.service import Context, Outcome
from client import AegisClient
from datanode.ops import DataNodeOps
from mds.cluster import ClusterView
from mds.metastore import MetaStore
from mds.namespace import NamespaceConfig
from mds.ops import Handlers
from mds.repair import RepairPlanner
from tests.support.clock import FakeClock

ADMIN = (P.CALLER_CLIENT, "admin")
WALL_OFFSET = 1_700_000_000.0      # wall clock = fake monotonic clock + this
UPKEEP_EVERY = 0.5                 # the MDS loop's upkeep period (min(0.5, heartbeat))
Alter = Callable[[dict, list], "tuple[dict, list]"]
_ERRNO = {ConnectionResetError: errno.ECONNRESET, ConnectionRefusedError: errno.ECONNREFUSED,
          TimeoutError: errno.ETIMEDOUT, FileNotFoundError: errno.ENOENT,
          PermissionError: errno.EPERM}


@dataclass
class Call:
    """One request as the service saw it (header decoded) and how it ended."""
    caller: tuple[str, str]
    service: str
    header: dict
    error: OSError | None = None

    @property
    def op(self) -> str:
        return str(self.header.get("op"))


@dataclass
class Fault:
    """A fault hook (see InProcessCluster.fail / .alter); `hits` lists what it caught."""
    node: str | None                  # "dn2", "mds", or None for any service
    op: str | None                    # an op name, or None for any
    times: int | None                 # requests (items) left to catch; None: no limit
    error: BaseException | None = None
    alter: Alter | None = None
    block: bytes | None = None        # only requests (put_blocks items) about this block
    match: Callable[[dict], bool] | None = None   # only requests whose header it accepts
    item: bool = False                # put_blocks: fail matching items, not the request
    after: bool = False               # delivered and applied, then the reply is lost
    hits: list = field(default_factory=list)

    def matches(self, node: str, header: Mapping) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.node is not None and self.node != node:
            return False
        if self.op is not None and self.op != header.get("op"):
            return False
        if self.match is not None and not self.match(dict(header)):
            return False
        return self.block is None or self.item or header.get("id") == self.block

    def takes_item(self, spec: Any) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        return self.block is None or (isinstance(spec, dict) and spec.get("id") == self.block)

    def spend(self, what: Any) -> None:
        self.hits.append(what)
        if self.times is not None:
            self.times -= 1


class _Events:
    """A DataNode's Publisher: events land in the cluster's list."""

    def __init__(self, sink: list, source: str) -> None:
        self.sink, self.source = sink, source

    def publish(self, topic: str, **fields: Any) -> None:
        self.sink.append((self.source, topic, fields))


class InProcessCluster:
    """An MDS and DataNodes in one process, driven by `clock` (a FakeClock)."""

    def __init__(self, root: Path | None = None, datanodes: int | Sequence[str] = 3, *,
                 replication: int = 2, block_size: int = 4 << 20, lease: float = 60.0,
                 dead_after: float = 5.0, delete_grace: float = 5.0,
                 orphan_grace: float = 60.0, small_max: int = 128 * 1024,
                 capacity: int = 1 << 40, seed: int = 0,
                 clock: FakeClock | None = None, capabilities: bool = True) -> None:
        # Without a root: a directory in memory (tmpfs), removed by close(). The MDS's
        # fdatasync per call costs 5-20 ms on a shared disk and nothing on tmpfs.
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(
            tempfile.mkdtemp(prefix="aegisfs-inprocess-", dir=_memory_dir()))
        self.clock = clock or FakeClock()
        self.events: list[tuple[str, str, dict]] = []     # (source, topic, fields)
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.down: set[str] = set()
        self._lock = threading.RLock()     # AegisClient may be used from several threads
        self._next_upkeep = 0.0
        self.datanodes: dict[str, DataNodeOps] = {}
        self._members: dict[str, InProcessClient] = {}
        self.store: MetaStore | None = None
        self._ns_config = NamespaceConfig(replication=replication, block_size=block_size,
                                          lease=lease)
        self._dead_after, self._seed = dead_after, seed
        self._orphan_grace, self._delete_grace = orphan_grace, delete_grace
        try:
            self.store = MetaStore(self.root / "mds", clock=self.wall, config=self._ns_config)
            self.view = ClusterView(dead_after=dead_after, rng=random.Random(seed))
            self.repair = RepairPlanner(self.store.ns, self.view, clock=self.clock,
                                        safemode_timeout=0.0, orphan_grace=orphan_grace,
                                        delete_grace=delete_grace)
            self.mds = Handlers(self.store, self.view, self.repair, settings=None)
            names = ([f"dn{i}" for i in range(1, datanodes + 1)]
                     if isinstance(datanodes, int) else list(datanodes))
            for name in names:
                self._members[name] = InProcessClient(self, (P.CALLER_DATANODE, name))
                self.datanodes[name] = DataNodeOps(
                    name, self.root / name, small_max=small_max, capacity=capacity,
                    fsync=False,    # a test's blocks need not survive a power cut
                    events=_Events(self.events, name),
                    client=lambda name=name: self._members[name],
                    capabilities=capabilities,     # off: hand-made requests need no cap
                    clock=lambda: self.clock.now, wall_clock=self.wall)
            self.beat()        # every node reports and heartbeats: up, out of safe mode
        except BaseException:
            self.close()
            raise

    # -- clocks and time -----------------------------------------------------------------

    def wall(self) -> float:
        return WALL_OFFSET + self.clock.now

    def beat(self, *nodes: str) -> None:
        """One MDS-link turn for each of `nodes` (default: every node not down): its block
        report when one is due, then a heartbeat whose commands (deletes, copies, report
        requests) it carries out at once. Deletions are acknowledged with the next beat."""
        for name in nodes or sorted(self.datanodes):
            if name in self.down:
                continue
            dn, member = self.datanodes[name], self._members[name]
            dn.report_if_due(member)
            dn.beat(member, timeout=5.0)

    def run(self, seconds: float, step: float = 1.0) -> None:
        """Let `seconds` of fake time pass in heartbeat steps (every live node beats after
        each step), so liveness, delete grace and repairs play out as they would."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.advance(min(step, end - self.clock.now))
            self.beat()

    # -- fault hooks ---------------------------------------------------------------------

    def fail(self, node: str | None, op: str | None = None, *, times: int | None = 1,
             error: BaseException | type[BaseException] | None = None,
             block: bytes | None = None, item: bool = False,
             match: Callable[[dict], bool] | None = None, after: bool = False) -> Fault:
        """The next `times` requests to `node` (None: any) for `op` (None: any), about
        `block` and accepted by match(header) if given, are not delivered and answered
        with `error` (default: the broker's "worker lost", ConnectionResetError). With
        `item`, put_blocks requests are delivered but their matching items each fail
        alone with `error` (default EIO), counted in `times`. With `after`, the request
        is delivered and done, and its reply lost (an MDS killed after its fsync)."""
        if error is None:
            error = (OSError(errno.EIO, "disk error (injected)") if item else
                     ConnectionResetError(errno.ECONNRESET, "worker lost (injected)"))
        elif isinstance(error, type):
            error = error(_ERRNO.get(error, errno.EIO), f"{error.__name__} (injected)")
        fault = Fault(node, op, times, error=error, block=block, item=item, match=match,
                      after=after)
        self.faults.append(fault)
        return fault

    def alter(self, node: str | None, op: str | None, fn: Alter, *,
              times: int | None = None, block: bytes | None = None) -> Fault:
        """Successful replies of `node` to `op` pass through fn(result, payload) ->
        (result, payload) first: a reply as a buggy or hostile peer could send it."""
        fault = Fault(node, op, times, alter=fn, block=block)
        self.faults.append(fault)
        return fault

    def corrupt(self, node: str, block: bytes, how: str = "flip",
                times: int | None = None) -> Fault:
        """Replica `block` on `node` comes back damaged from get_block: "flip" (first byte
        changed: a checksum mismatch) or "truncate" (one byte short). The copy on disk is
        untouched; the client is the one that must notice."""
        def damage(result: dict, payload: list) -> tuple[dict, list]:
            data = bytes(payload[0]) if payload else b""
            if how == "flip":
                data = bytes([data[0] ^ 0xFF]) + data[1:] if data else b"\xff"
            elif how == "truncate":
                data = data[:-1]
            else:
                raise ValueError(f"unknown damage {how!r}")
            return result, [data]
        return self.alter(node, "get_block", damage, times=times, block=block)

    def drop_replica(self, node: str, block: bytes) -> None:
        """Remove `block` from `node`'s disk behind the MDS's back (a lost file)."""
        self.datanodes[node].store.delete(block)

    def stop(self, node: str) -> None:
        """`node` is down: requests to it are refused as the broker refuses them (no live
        worker) and it stops heartbeating (the MDS notices after dead_after)."""
        self.down.add(node)

    def start(self, node: str) -> None:
        self.down.discard(node)

    # -- clients -------------------------------------------------------------------------

    def connect(self, caller: tuple[str, str] = ADMIN) -> "InProcessClient":
        """A Client-like connection whose requests are stamped with `caller`."""
        return InProcessClient(self, caller)

    def client(self, caller: tuple[str, str] = ADMIN, **kw: Any) -> AegisClient:
        """An AegisClient over this cluster (`kw`: timeout, window, config, ...)."""
        kw.setdefault("config", {})
        fs = AegisClient("inprocess", transport=lambda: self.connect(caller), **kw)
        # retries wait on the cluster's clock: a test's waits cost no real time
        fs.retrier.clock, fs.retrier.sleep = self.clock, self.clock.sleep
        return fs

    def restart_mds(self, checkpoint: bool = False, safemode_timeout: float = 0.0) -> None:
        """The MDS process dies (after its last flush, so nothing acknowledged is lost)
        and starts again from its data directory: snapshot + WAL replay, a new cluster
        view that has heard from no DataNode yet, safe mode. `checkpoint`: a snapshot
        is taken first, so recovery loads it instead of replaying the records.
        Safe mode lasts until every DataNode named in the namespace reported (beat()),
        or `safemode_timeout` passed."""
        with self._lock:
            assert self.store is not None
            if checkpoint:
                self.store.checkpoint_now(wait=True)
            self.store.close(checkpoint=False)
            self.store = None
            self.store = MetaStore(self.root / "mds", clock=self.wall,
                                   config=self._ns_config)
            self.view = ClusterView(dead_after=self._dead_after,
                                    rng=random.Random(self._seed))
            self.repair = RepairPlanner(self.store.ns, self.view, clock=self.clock,
                                        safemode_timeout=safemode_timeout,
                                        orphan_grace=self._orphan_grace,
                                        delete_grace=self._delete_grace)
            self.mds = Handlers(self.store, self.view, self.repair, settings=None)

    def ops(self, service: str = "mds",
            caller_class: str | None = P.CALLER_CLIENT) -> list[str]:
        """The ops of the calls to `service` by callers of `caller_class` (None: any), in
        order; a batch is shown as "batch:" and its ops' kinds, sorted."""
        out = []
        for c in self.calls:
            if c.service != service or (caller_class and c.caller[0] != caller_class):
                continue
            if c.op == "batch":
                kinds = {str(o.get("op")) for o in c.header.get("ops") or []
                         if isinstance(o, dict)}
                out.append("batch:" + "/".join(sorted(kinds)))
            else:
                out.append(c.op)
        return out

    # -- delivery ------------------------------------------------------------------------

    def deliver(self, caller: tuple[str, str], service: str, header: Mapping[str, Any],
                payload: Iterable) -> tuple[bytes, list[memoryview]]:
        """One request, as the broker and the service's loop would handle it: the reply
        header (encoded) and payload frames."""
        raw = P.encode_header(header)      # the client's own encoding error, at send
        frames = [memoryview(bytes(f)) for f in payload]
        with self._lock:
            node = service.removeprefix("dn.") if service.startswith("dn.") else service
            try:
                fields = P.decode_header(raw)
            except P.ProtocolError as exc:
                return P.error_header(P.E_PROTOCOL, str(exc)), []
            call = Call(caller, service, dict(fields))
            self.calls.append(call)
            outcome = self._route(call, node, fields, frames)
            if outcome.error is not None:
                err = outcome.error
                call.error = err if isinstance(err, OSError) else OSError(errno.EIO, str(err))
                return P.error_header(*P.exception_to_error(err)), []
            result, out = outcome.result, list(outcome.payload or ())
            for fault in self.faults:
                if fault.alter is not None and fault.matches(node, fields):
                    fault.spend(fields.get("id"))
                    result, out = fault.alter(dict(result or {}), out)
            return P.ok_header(result), [memoryview(bytes(f)) for f in out]

    def _route(self, call: Call, node: str, fields: dict, frames: list) -> Outcome:
        if node in self.down or (node != "mds" and node not in self.datanodes):
            return Outcome(error=ConnectionRefusedError(
                errno.ECONNREFUSED, f"no live worker for service {call.service!r}"))
        items: dict[int, Fault] = {}      # put_blocks items that fail alone
        for fault in self.faults:
            if fault.error is None or not fault.matches(node, fields):
                continue
            if not fault.item:
                fault.spend(fields.get("id") or fields.get("op"))
                if fault.after:
                    self._run(node, fields, frames, call.caller)
                return Outcome(error=fault.error)
            specs = fields.get("blocks")
            if fields.get("op") != "put_blocks" or not isinstance(specs, list) \
                    or len(specs) != len(frames) or not all(isinstance(x, dict) for x in specs):
                continue          # malformed: the service refuses it as a whole
            for i, spec in enumerate(specs):
                if i not in items and fault.takes_item(spec):
                    fault.spend((node, spec.get("id")))
                    items[i] = fault
        if items:
            return self._put_some(node, fields, frames, items, call)
        return self._run(node, fields, frames, call.caller)

    def _put_some(self, node: str, fields: dict, frames: list, failed: dict[int, Fault],
                  call: Call) -> Outcome:
        """A put_blocks with injected per-item failures: the other items are stored."""
        specs = fields.get("blocks") or []
        keep = [i for i in range(len(specs)) if i not in failed]
        results = {i: P.item_error(f.error) for i, f in failed.items()}
        if keep:
            sub = {**fields, "blocks": [specs[i] for i in keep]}
            out = self._run(node, sub, [frames[i] for i in keep], call.caller)
            if out.error is not None:
                return out
            for i, res in zip(keep, out.result["results"]):
                results[i] = res
        return Outcome({"results": [results[i] for i in range(len(specs))]})

    def _run(self, node: str, fields: dict, frames: list, caller: tuple[str, str]) -> Outcome:
        now, wall = self.clock.now, self.wall()
        if node != "mds":
            def sink(event: tuple[str, dict]) -> None:
                self.events.append((node, event[0], event[1]))
            return self.datanodes[node].service.run(fields, frames,
                                                    Context(now, wall, *caller, sink))
        events: list[tuple[str, dict]] = []
        outcome = self.mds.service.run(fields, frames, Context(now, wall, *caller,
                                                               events.append))
        if now >= self._next_upkeep:            # mds/server.py: upkeep, then the flush
            self._next_upkeep = now + UPKEEP_EVERY
            events.extend(self.mds.upkeep(now, wall))
        self.store.flush()
        self.events.extend(("mds", topic, f) for topic, f in events)
        self.store.poll()
        return outcome

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        try:
            for dn in self.datanodes.values():
                dn.store.close()
            self.datanodes.clear()
            if self.store is not None:
                self.store.close(checkpoint=False)
                self.store = None
        finally:
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "InProcessCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _memory_dir() -> str | None:
    """/dev/shm when it is a writable directory (Linux), else the default temp dir."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


class InProcessClient:
    """broker.client.Client's interface (send, call, wait, wait_any, in_flight, close) over
    an InProcessCluster: a request runs when sent; its reply waits to be collected."""

    def __init__(self, cluster: InProcessCluster, caller: tuple[str, str]) -> None:
        self.cluster = cluster
        self.caller = caller
        self.closed = False
        self._ids = itertools.count(1)
        self._done: dict[int, Reply] = {}
        self.sent: dict[int, dict] = {}     # rid -> header, until the reply is collected

    @property
    def in_flight(self) -> int:
        return len(self._done)

    def send(self, service: str, header: Mapping[str, Any], payload: Iterable = (),
             timeout: float | None = None) -> int:
        if self.closed:
            raise ValueError("the connection is closed")
        raw, frames = self.cluster.deliver(self.caller, service, header, payload)
        rid = next(self._ids)
        reply = Reply(rid, service, payload=frames)
        try:
            reply.result = P.parse_reply(raw)
        except OSError as exc:
            reply.error = exc
        self._done[rid] = reply
        self.sent[rid] = dict(header)
        return rid

    def call(self, service: str, header: Mapping[str, Any], payload: Iterable = (),
             timeout: float | None = None) -> Reply:
        return self.wait(self.send(service, header, payload, timeout))

    def wait(self, rid: int, timeout: float | None = None) -> Reply:
        if rid not in self._done:
            raise KeyError(f"request {rid} is not outstanding")
        self.sent.pop(rid, None)
        return self._done.pop(rid).unwrap()

    def wait_any(self, timeout: float | None = None) -> Reply | None:
        if not self._done:
            return None
        rid = next(iter(self._done))
        self.sent.pop(rid, None)
        return self._done.pop(rid)

    def close(self) -> None:
        self.closed = True
        self._done.clear()
        self.sent.clear()

    def __enter__(self) -> "InProcessClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
