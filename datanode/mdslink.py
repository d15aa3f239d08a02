"""The DataNode's side of the MDS link: one heartbeat turn (acks of deletes and failed
copies out; keys and commands in, from the current MDS epoch only), the commands carried
out (deletes, copies, block reports), and the actions the operations share with it (delete,
copy to a peer, corrupt-replica report, usage).

A part of ``datanode.ops.DataNodeOps`` (a mixin: its methods run on the node and use its
store, guard and ack lists). No sockets or threads: calls go to `_client()`, and the process
(datanode/server.py) decides when to beat and where `_start_delete`/`_start_copy` run.
"""
from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any, Callable

import msgpack

from broker.limits import MAX_DELETES, MDS_SERVICE, datanode_service

from .blockid import parse_block_id
from .store import BlockCorrupt

if TYPE_CHECKING:
    import threading

    from .guard import Guard
    from .store import BlockStore

log = logging.getLogger(__name__)

MAX_COMMANDS = MAX_DELETES  # deletes carried out per heartbeat answer


class MdsLink:
    """Heartbeats, MDS commands and the shared actions, mixed into DataNodeOps."""

    if TYPE_CHECKING:    # what this part uses of the DataNodeOps
        node_id: str
        store: BlockStore
        events: Any
        guard: Guard
        capacity_limit: int | None
        advert: dict | None
        mds_epoch: int
        _make_client: Callable[[], Any] | None
        _now: Callable[[], float]
        _wall: Callable[[], float]
        _report_now: threading.Event
        _deleted: list[bytes]
        _deleting: set[bytes]
        _copy_failed: list[bytes]
        _acks_lock: threading.Lock

    # -- shared actions -----------------------------------------------------------------

    def _client(self) -> Any:
        """Where this node's own calls go (the MDS, a copy's target), as this DataNode."""
        if self._make_client is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"DataNode {self.node_id} "
                                         "has no connection for its own calls")
        return self._make_client()

    def _delete(self, block: bytes) -> bool:
        return self._delete_many([block])[0]

    def _delete_many(self, blocks: list[bytes]) -> list[bool]:
        """Durable on return, with one shared sync for the small blocks among them."""
        done = self.store.delete_many(blocks)
        for block, deleted in zip(blocks, done):
            if deleted:
                self.events.publish("block.delete", node=self.node_id, block=block.hex())
        return done

    def _copy(self, block: bytes, target: str, target_cap: bytes | None = None) -> dict:
        """Re-replication: read and verify here, store on `target`, tell the MDS."""
        try:
            data = self.store.get(block)
        except BlockCorrupt as exc:
            self._corrupt(block, exc)
            raise
        info = self.store.stat(block)
        # the target tells the MDS it holds the replica (a node speaks only for itself)
        put = {"op": "put_block", "id": block, "checksum": info.crc}
        if target_cap is not None:
            put["cap"] = target_cap
        self._client().call(datanode_service(target), put, [data])
        log.info("copied block %s to %s", block.hex(), target)
        return {"size": info.size, "checksum": info.crc}

    def _corrupt(self, block: bytes, exc: Exception) -> None:
        """A bad replica is never served again: set aside, published, reported."""
        log.error("corrupt replica %s: %s", block.hex(), exc)
        self.store.quarantine(block)
        self.events.publish("block.corrupt", node=self.node_id, block=block.hex(),
                            reason=str(exc))
        try:
            self._client().call(MDS_SERVICE, {"op": "block_corrupt", "node": self.node_id,
                                        "block": block}, timeout=5.0)
        except OSError as err:
            log.warning("could not report corrupt block %s to the MDS: %s", block.hex(), err)

    def _stats(self) -> dict:
        usage = self.store.usage()
        cap = self.store.capacity()
        total = cap.total if self.capacity_limit is None else self.capacity_limit
        return {"node": self.node_id, "capacity": total, "used": usage.bytes_used,
                "free": min(cap.free, max(0, total - usage.bytes_used)),
                "blocks": usage.blocks}

    def _send_report(self, client: Any) -> None:
        blocks = [[i.id, i.size, i.crc] for i in self.store.infos()]
        client.call(MDS_SERVICE, {"op": "block_report", "node": self.node_id, "count": len(blocks)},
                    [msgpack.packb(blocks, use_bin_type=True)], timeout=60.0)
        log.info("block report sent: %d blocks", len(blocks))

    def _carry_out(self, commands: list) -> None:
        for cmd in commands[:MAX_COMMANDS]:
            if not isinstance(cmd, dict):
                continue
            op = cmd.get("op")
            try:
                if op == "delete":
                    ids = [parse_block_id(raw) for raw in cmd.get("blocks", [])[:MAX_COMMANDS]]
                    with self._acks_lock:
                        ids = [b for b in ids if b not in self._deleting]
                        self._deleting.update(ids)
                    if ids:
                        self._start_delete(ids)
                elif op == "copy":
                    block = parse_block_id(cmd["block"])
                    try:
                        self.guard.check(cmd.get("cap"), block, "copy", self._wall(),
                                         self._now())
                    except OSError:
                        with self._acks_lock:     # the MDS re-plans it with fresh caps
                            self._copy_failed.append(block)
                        raise
                    self._start_copy(block, str(cmd["target"]), cmd.get("target_cap"))
                elif op == "report":
                    self._report_now.set()
                else:
                    log.warning("unknown command from the MDS: %r", op)
            except (OSError, KeyError, TypeError) as exc:
                log.warning("command %r failed: %s", op, exc)

    def _delete_logged(self, blocks: list[bytes]) -> None:
        """Carry out deletes the MDS asked for; acked with the next heartbeat once durable.
        A failure is logged and the ids forgotten: the MDS names them again."""
        try:
            self._delete_many(blocks)
        except OSError as exc:
            log.warning("deleting %d blocks failed: %s", len(blocks), exc)
            self._forget_deleting(blocks)
        else:
            self._forget_deleting(blocks, done=True)

    def _forget_deleting(self, blocks: list[bytes], done: bool = False) -> None:
        """The ids are no longer being deleted: acked with the next heartbeat when `done`,
        else left for the MDS to name again."""
        with self._acks_lock:
            self._deleting.difference_update(blocks)
            if done:
                self._deleted.extend(blocks)

    def _start_delete(self, blocks: list[bytes]) -> None:
        """Carry out deletes the MDS asked for (the process runs them in a thread of
        their own, so that a slow disk never holds up its heartbeat)."""
        self._delete_logged(blocks)

    def _copy_logged(self, block: bytes, target: str,
                     target_cap: bytes | None = None) -> None:
        try:
            self._copy(block, target, target_cap)
        except OSError as exc:
            log.warning("copy of %s to %s failed: %s", block.hex(), target, exc)
            with self._acks_lock:     # told to the MDS with the next heartbeat: it re-plans
                self._copy_failed.append(block)

    def _start_copy(self, block: bytes, target: str, target_cap: bytes | None = None) -> None:
        """Carry out a copy the MDS asked for (the process runs it in its copy pool)."""
        self._copy_logged(block, target, target_cap)

    def report_if_due(self, client: Any) -> bool:
        """The full block report, when one was asked for; whether it was sent."""
        if not self._report_now.is_set():
            return False
        self._send_report(client)
        self._report_now.clear()
        return True

    def beat(self, client: Any, timeout: float) -> None:
        """One heartbeat to the MDS (acknowledging deletions and failed copies), whose
        commands are carried out; the OSError of a failed call is raised."""
        with self._acks_lock:
            acked, self._deleted = self._deleted, []
            failed, self._copy_failed = self._copy_failed, []
        try:
            extra = {"data": self.advert} if self.advert else {}
            reply = client.call(MDS_SERVICE, {"op": "dn_heartbeat", **self._stats(),
                                        "deleted": acked, "copy_failed": failed, **extra},
                                timeout=timeout)
        except OSError:
            with self._acks_lock:         # ack them with the next heartbeat
                self._deleted[:0] = acked
                self._copy_failed[:0] = failed
            raise
        if not self._current_epoch(reply.result.get("epoch")):
            with self._acks_lock:         # a deposed MDS heard them: tell the leader
                self._deleted[:0] = acked
                self._copy_failed[:0] = failed
            return
        self.guard.install(reply.result.get("keys"), self._now())
        self._carry_out(reply.result.get("commands") or [])

    def _current_epoch(self, epoch: Any) -> bool:
        """Whether a heartbeat answer may be acted on: no epoch (an MDS without HA) or one
        at least the highest seen; a lower one is refused and logged."""
        if epoch is None:
            return True
        if type(epoch) is not int or epoch < 1:
            log.warning("heartbeat answer with a malformed epoch %r ignored", epoch)
            return False
        if epoch < self.mds_epoch:
            log.warning("heartbeat answer of a deposed MDS (epoch %d < %d): its commands "
                        "and keys are ignored", epoch, self.mds_epoch)
            return False
        self.mds_epoch = epoch
        return True
