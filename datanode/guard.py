"""The DataNode's door for block capabilities and the receipts it signs: it holds the key
ring and the receipt key the MDS sends in heartbeat replies, checks a request's `cap`
before any byte is read or written, and counts what it refused.

Sans-IO (clocks are arguments) and thread-safe: request threads check while the MDS link
thread installs new keys. Public API: `Guard` (install, check, receipt, counters, ready).
"""
from __future__ import annotations

import errno
import logging
import threading

from broker.capability import CapabilityError, KeyRing, sign_receipt, verify

log = logging.getLogger(__name__)


class Guard:
    """Until the first heartbeat reply brings keys every check fails with EAGAIN (the
    client retries); so does an "unknown key" while the keys are stale (no reply for
    `stale_after` seconds: the MDS may have restarted with a new ring the node has not
    heard of yet). Every other refusal is EACCES and counted in `cap_refused`.
    `enforce=False` (a DataNode benchmarked alone, without an MDS) checks nothing."""

    def __init__(self, node: str, *, stale_after: float = 5.0, enforce: bool = True) -> None:
        self.node = node
        self.enforce = enforce
        self.stale_after = stale_after
        self._ring: KeyRing | None = None
        self._receipt_key: bytes | None = None
        self._seen = None            # the export last installed, to skip re-parsing it
        self._fresh_at = float("-inf")
        self._lock = threading.Lock()
        self.refused = 0
        self.unready = 0
        self.reasons: dict[str, int] = {}

    def install(self, keys: object, now: float) -> None:
        """Keys from a heartbeat reply: {ring: KeyRing export, receipt_key: bytes}. A bad
        map is logged and the keys held so far are kept."""
        if not isinstance(keys, dict):
            log.warning("heartbeat reply without capability keys; keeping the old ones")
            return
        export, key = keys.get("ring"), keys.get("receipt_key")
        if export != self._seen:
            try:
                ring = KeyRing.load(export)
            except ValueError as exc:
                log.error("capability key ring from the MDS refused: %s", exc)
                return
            self._ring, self._seen = ring, export
        if isinstance(key, bytes) and len(key) == 32:
            self._receipt_key = key
        self._fresh_at = now

    def ready(self) -> bool:
        return self._ring is not None and self._receipt_key is not None

    def check(self, token: object, block: bytes, access: str, wall: float, now: float) -> None:
        """Accept `token` for `access` to `block` on this node, or raise: EACCES
        (CapabilityError, counted) or EAGAIN while this node has no usable keys."""
        if not self.enforce:
            return
        ring = self._ring
        if ring is None:
            self._count_unready()
            raise BlockingIOError(errno.EAGAIN, f"DataNode {self.node} has no capability "
                                  "keys from the MDS yet; retry shortly")
        try:
            verify(ring, token, block, access, wall, node=self.node)
        except CapabilityError as exc:
            if exc.reason == "unknown key" and now - self._fresh_at >= self.stale_after:
                self._count_unready()
                raise BlockingIOError(errno.EAGAIN, f"DataNode {self.node}: capability key "
                                      "not known yet (keys from the MDS are stale); retry "
                                      "shortly") from None
            with self._lock:
                self.refused += 1
                self.reasons[exc.reason] = self.reasons.get(exc.reason, 0) + 1
            raise

    def _count_unready(self) -> None:
        with self._lock:
            self.unready += 1

    def receipt(self, block: bytes, size: int, checksum: int) -> bytes | None:
        """This node's signed statement that it stored the block (None without a key)."""
        key = self._receipt_key
        return None if key is None else sign_receipt(key, self.node, block, size, checksum)

    def counters(self) -> dict:
        with self._lock:
            return {"cap_refused": self.refused, "cap_unready": self.unready,
                    "cap_refused_by_reason": dict(self.reasons)}
