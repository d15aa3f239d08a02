"""Request handlers of the MDS, one per operation, registered by name.

Each handler validates its header (broker.protocol.check_fields), reads the namespace or
submits a record to the MetaStore, and returns the result map; the server loop sends it
only after the batch's fsync. Namespace events are appended to `events` and published by
the loop after that same fsync. DataNode traffic (heartbeats, reports) lands here too and
is handed to the RepairPlanner.
"""
from __future__ import annotations

import errno
import logging
import time
from typing import Any, Callable

import msgpack

from broker import protocol as P
from broker.worker import Request

from .cluster import ClusterView
from .metastore import MetaStore
from .repair import RepairPlanner

log = logging.getLogger(__name__)

MAX_ALLOCATE = 1024
FIRST_ALLOCATION = 16      # blocks allocated with a create that gives the expected size
MAX_DELETES_PER_HEARTBEAT = 1000
MAX_BATCH = 256            # operations in one `batch` request
# What a `batch` may carry: the namespace and write-protocol operations of clients.
BATCHABLE = frozenset({"mkdir", "stat", "ls", "create", "allocate", "replace_target",
                       "commit", "abort", "renew", "rm"})
Events = list


def _bad(message: str) -> OSError:
    return OSError(errno.EINVAL, message)


class Handlers:
    def __init__(self, store: MetaStore, cluster: ClusterView, repair: RepairPlanner,
                 settings: Any) -> None:
        self.store = store
        self.ns = store.ns
        self.cluster = cluster
        self.repair = repair
        self.s = settings
        self.table: dict[str, tuple[dict, Callable[[dict, list, Events], Any]]] = {
            "ping": ({}, self.ping),
            "mkdir": ({"path": str, "parents?": bool}, self.mkdir),
            "ls": ({"path": str}, self.ls),
            "stat": ({"path": str}, self.stat),
            "du": ({"path": str}, self.du),
            "create": ({"path": str, "replication?": int, "block_size?": int,
                        "parents?": bool, "size?": int}, self.create),
            "allocate": ({"handle": str, "count": int, "exclude?": list}, self.allocate),
            "replace_target": ({"handle": str, "block": bytes, "exclude": list},
                               self.replace_target),
            "commit": ({"handle": str, "blocks": list}, self.commit),
            "abort": ({"handle": str}, self.abort),
            "renew": ({"handle": str}, self.renew),
            "rm": ({"path": str, "recursive?": bool}, self.rm),
            "mv": ({"src": str, "dst": str}, self.mv),
            "bad_replica": ({"block": bytes, "node": str, "reason?": str}, self.bad_replica),
            "status": ({}, self.status),
            "fsck": ({"repair?": bool}, self.fsck),
            "dn_heartbeat": ({"node": str, "capacity": int, "used": int, "blocks": int,
                              "deleted?": list, "copy_failed?": list}, self.dn_heartbeat),
            "block_report": ({"node": str, "count?": int}, self.block_report),
            "replica_added": ({"node": str, "block": bytes, "size": int, "checksum": int},
                              self.replica_added),
            "block_corrupt": ({"node": str, "block": bytes}, self.block_corrupt),
            "batch": ({"ops": list}, self.batch),
        }

    def handle(self, req: Request, events: Events) -> Any:
        entry = self.table.get(req.op) if isinstance(req.op, str) else None
        if entry is None:
            raise OSError(errno.EOPNOTSUPP, f"the MDS has no operation {req.op!r}")
        schema, fn = entry
        P.check_fields(req.header, schema)
        return fn(req.header, req.payload, events)

    def batch(self, h, payload, events) -> dict:
        """Several client operations in one request, each with its own result.

        They run in order inside the same loop turn, so all their WAL records share the
        turn's one fsync, and the reply (like every reply) waits for it: many small files
        cost one round trip and one fsync per step instead of one per file. An operation
        that fails does not stop the others.
        """
        ops = h["ops"]
        if not 0 < len(ops) <= MAX_BATCH:
            raise _bad(f"a batch holds 1..{MAX_BATCH} operations, got {len(ops)}")
        results = []
        for sub in ops:
            try:
                op = sub.get("op") if isinstance(sub, dict) else None
                if op not in BATCHABLE:
                    raise OSError(errno.EOPNOTSUPP, f"operation {op!r} cannot be batched")
                schema, fn = self.table[op]
                P.check_fields(sub, schema)
                results.append(P.item_ok(fn(sub, [], events)))
            except OSError as exc:
                results.append(P.item_error(exc))
            except Exception as exc:   # a handler bug fails its item, not the batch
                log.exception("batched %r failed", sub.get("op") if isinstance(sub, dict) else sub)
                results.append(P.item_error(exc))
        return {"results": results}

    def submit(self, prepare: Callable) -> dict:
        return self.store.submit(prepare)

    # -- namespace -----------------------------------------------------------------------

    def ping(self, h, payload, events) -> dict:
        return {"pong": True, "safe_mode": self.repair.safe_mode}

    def mkdir(self, h, payload, events) -> dict:
        self.submit(lambda ns: ns.prepare_mkdir(h["path"], parents=bool(h.get("parents"))))
        events.append(("dir.create", {"path": h["path"]}))
        return {}

    def ls(self, h, payload, events) -> dict:
        return {"entries": self.ns.ls(h["path"])}

    def stat(self, h, payload, events) -> dict:
        info = self.ns.stat(h["path"])
        if info["type"] == "file":
            info = self.ns.file_info(h["path"])
        else:
            info["blocks"] = []
        return info

    def du(self, h, payload, events) -> dict:
        return self.ns.du(h["path"])

    def create(self, h, payload, events) -> dict:
        result = self.submit(lambda ns: ns.prepare_create(
            h["path"], replication=h.get("replication"), block_size=h.get("block_size"),
            parents=bool(h.get("parents"))))
        draft = self.ns.draft_info(result["handle"])
        out = {"handle": draft["handle"], "path": draft["path"],
               "replication": draft["replication"], "block_size": draft["block_size"],
               "lease": self.s.lease}
        size = h.get("size")
        if size:   # the expected size: allocate the first blocks in the same batch
            count = min(FIRST_ALLOCATION, -(-max(0, size) // draft["block_size"]))
            try:
                out["blocks"] = self._allocate(draft, count, [])
            except OSError:
                pass   # best effort: the client's own allocate reports why
        return out

    def allocate(self, h, payload, events) -> dict:
        count = h["count"]
        if not 0 < count <= MAX_ALLOCATE:
            raise _bad(f"count must be 1..{MAX_ALLOCATE}")
        draft = self.ns.draft_info(h["handle"])
        return {"blocks": self._allocate(draft, count, [str(n) for n in h.get("exclude") or []])}

    def _allocate(self, draft: dict, count: int, exclude: list[str]) -> list[dict]:
        now = time.monotonic()
        targets = [self.cluster.place(draft["replication"], now=now, exclude=exclude,
                                      min_nodes=1, reserve=draft["block_size"])
                   for _ in range(count)]
        self.submit(lambda ns: ns.prepare_allocate(draft["handle"], targets))
        blocks = self.ns.draft_info(draft["handle"])["blocks"][-count:]
        return [{"id": b["id"], "nodes": b["targets"]} for b in blocks]

    def replace_target(self, h, payload, events) -> dict:
        draft = self.ns.draft_info(h["handle"])
        exclude = {str(n) for n in h["exclude"]}
        for b in draft["blocks"]:
            if b["id"] == h["block"]:
                exclude.update(b["targets"])
                break
        else:
            raise OSError(errno.ENOENT, f"block {h['block'].hex()} is not part of this draft")
        node = self.cluster.place(1, now=time.monotonic(), exclude=sorted(exclude),
                                  reserve=draft["block_size"])[0]
        # a target of the draft from now on: if the file is never committed with it, its
        # copy there is queued for deletion instead of waiting for orphan GC
        self.submit(lambda ns: ns.prepare_add_target(draft["handle"], h["block"], node))
        return {"node": node}

    def commit(self, h, payload, events) -> dict:
        for b in h["blocks"]:
            # list() in prepare_commit would turn a replicas string "dn1" into d, n, 1
            if isinstance(b, dict) and not isinstance(b.get("replicas", []), list):
                raise _bad("a block's replicas must be a list of node ids")
        result = self.submit(lambda ns: ns.prepare_commit(h["handle"], h["blocks"]))
        path = result.get("path") or ""
        size = sum(int(b["size"]) for b in h["blocks"])
        events.append(("file.commit", {"path": path, "size": size,
                                       "blocks": len(h["blocks"])}))
        return {"path": path, "size": size}

    def abort(self, h, payload, events) -> dict:
        self.submit(lambda ns: ns.prepare_abort(h["handle"]))
        return {}

    def renew(self, h, payload, events) -> dict:
        self.submit(lambda ns: ns.prepare_renew(h["handle"]))
        return {"lease": self.s.lease}

    def rm(self, h, payload, events) -> dict:
        kind = self.ns.stat(h["path"])["type"]
        self.submit(lambda ns: ns.prepare_rm(h["path"], recursive=bool(h.get("recursive"))))
        events.append(("file.delete" if kind == "file" else "dir.delete", {"path": h["path"]}))
        return {}

    def mv(self, h, payload, events) -> dict:
        dst = self.ns.resolve_move(h["src"], h["dst"])
        self.submit(lambda ns: ns.prepare_rename(h["src"], dst))
        events.append(("file.rename", {"src": h["src"], "dst": dst}))
        return {"path": dst}

    # -- replicas and repair ----------------------------------------------------------------

    def _submit_all(self, records: list) -> None:
        for rec in records:
            try:
                self.store.submit(rec)
            except OSError as exc:   # the state moved on since the planner looked
                log.info("repair record %s skipped: %s", rec.get("op"), exc)

    def bad_replica(self, h, payload, events) -> dict:
        return self._corrupt(h["node"], h["block"], h.get("reason") or "reported by a client",
                             events)

    def block_corrupt(self, h, payload, events) -> dict:
        return self._corrupt(h["node"], h["block"], "found by the DataNode", events)

    def _corrupt(self, node: str, block: bytes, reason: str, events: Events) -> dict:
        records = self.repair.on_bad_replica(node, block)
        self._submit_all(records)
        if records:
            events.append(("repair.drop_replica", {"node": node, "block": block.hex(),
                                                   "reason": reason}))
        return {"dropped": bool(records)}

    def replica_added(self, h, payload, events) -> dict:
        records = self.repair.on_replica_added(h["node"], h["block"], h["size"], h["checksum"])
        self._submit_all(records)
        if records:
            events.append(("repair.replica_added", {"node": h["node"],
                                                    "block": h["block"].hex()}))
        return {"accepted": bool(records)}

    def status(self, h, payload, events) -> dict:
        now = time.monotonic()
        nodes = []
        for node, info in sorted(self.cluster.nodes().items()):
            nodes.append({"id": node, "state": "up" if self.cluster.is_live(node, now) else "down",
                          "capacity": info.get("capacity", 0), "used": info.get("used", 0),
                          "blocks": info.get("blocks", 0),
                          "last_seen": round(now - info.get("last_seen", now), 2)})
        return {"nodes": nodes, **self.ns.counts(), "health": self.repair.summary(),
                "safe_mode": self.repair.safe_mode}

    def fsck(self, h, payload, events) -> dict:
        if h.get("repair"):
            self.repair.kick()
        return self.repair.fsck()

    # -- DataNode traffic ----------------------------------------------------------------

    def dn_heartbeat(self, h, payload, events) -> dict:
        node, now = h["node"], time.monotonic()
        for ev in self.cluster.heartbeat(node, h["capacity"], h["used"], h["blocks"], now):
            events.append((ev.topic, {"node": ev.node, "reason": ev.reason}))
            self.repair.on_node_up(node)
        deleted = [b for b in h.get("deleted") or [] if isinstance(b, bytes)]
        if deleted:
            self.submit(lambda ns: ns.prepare_ack_delete(node, deleted))
            self.repair.on_deleted(node, deleted)
        failed = [b for b in h.get("copy_failed") or [] if isinstance(b, bytes)]
        if failed:
            self.repair.on_copy_failed(node, failed)
        commands: list[dict] = []
        if self.repair.wants_report(node):
            commands.append({"op": "report"})
        if not self.repair.safe_mode:
            deletes = self.repair.deletes_ready(node, MAX_DELETES_PER_HEARTBEAT)
            if deletes:
                commands.append({"op": "delete", "blocks": deletes})
            copies = self.repair.commands_for(node)
            for cmd in copies:
                events.append(("repair.copy", {"node": node, "block": cmd["block"].hex(),
                                               "target": cmd["target"]}))
            commands.extend(copies)
        return {"commands": commands}

    def block_report(self, h, payload, events) -> dict:
        if len(payload) != 1:
            raise _bad("block_report carries its list as one msgpack payload frame")
        try:
            blocks = msgpack.unpackb(payload[0], raw=False, use_list=True)
        except Exception:
            raise _bad("block_report payload is not valid msgpack") from None
        if not isinstance(blocks, list):
            raise _bad("block_report payload must be a list")
        entries = []
        for item in blocks:
            if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], bytes)
                    and len(item[0]) == 16 and isinstance(item[1], int) and isinstance(item[2], int)):
                entries.append((item[0], item[1], item[2]))
        self._submit_all(self.repair.on_report(h["node"], entries))
        return {"accepted": len(entries)}

    # -- between batches -----------------------------------------------------------------

    def upkeep(self) -> list[tuple[str, dict]]:
        events: list[tuple[str, dict]] = []
        now = time.monotonic()
        for ev in self.cluster.check(now):
            events.append((ev.topic, {"node": ev.node, "reason": ev.reason}))
            if ev.topic == "node.down":
                self.repair.on_node_down(ev.node)
        for rec in self.ns.expire_drafts(time.time()):
            self._submit_all([rec])
        records, repair_events = self.repair.tick()
        self._submit_all(records)
        events.extend(repair_events)
        return events
