"""Operation ids: a client's retried mutation is applied once and answered the same.

A client names each logical mutation with 16 random bytes (`opid`) and sends the same id
with every retry. The MDS logs the mutation's records and its answer together as ONE WAL
record, so a retry after a crash and replay still finds the first answer.

Theory of operation. `MetaStore.once(opid, wall, call)` runs a handler with the store in
collecting mode: each record the handler submits is validated, applied to memory and
packed, but not yet logged; afterwards one ``once`` record is appended instead:

    once {id: bytes, wall: float, records: [msgpack bytes, ...], answer: msgpack bytes}

where ``id`` is the client's 16-byte opid followed by the caller id the broker stamped
(mds/ops.py), so one user's id can never fetch another user's answer, and
``answer`` is the reply entry (``{"ok": result}`` / ``{"err": [code, message]}``,
the protocol's batch-item form). Replay (`apply_once`) validates and applies the inner
records in order, then remembers the answer, so memory after replay equals memory
before the crash. A handler that changed nothing (a refused request) logs nothing and is
simply run again on retry. Answers are kept in `OpResults`, bounded by count
(WINDOW_COUNT) and by age (WINDOW_AGE seconds of the records' own wall times, so replay
evicts exactly as the live MDS did), and travel in snapshots.

Public API: `OpResults` (get, add, export, restore, len), `check_once`, `apply_once`,
`pack`, `unpack`, `answer_of`, `result_of`, WINDOW_COUNT, WINDOW_AGE, OPID_LEN,
MAX_ID_LEN.
"""
from __future__ import annotations

import errno
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import msgpack

from broker import protocol as P

if TYPE_CHECKING:
    from mds.namespace import Namespace

OPID_LEN = 16
MAX_ID_LEN = OPID_LEN + 256       # the opid and the caller's id
# Longer than any client's retry deadline (default 60 s) with room for a slow restart;
# 65,536 answers of <= ~3 KiB (a create with its first blocks and capabilities) bound the
# memory at ~200 MiB worst case, ~10 MiB for typical small answers.
WINDOW_COUNT = 65_536
WINDOW_AGE = 600.0

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    """The WAL's own encoding (use_bin_type), for records and answers held as bytes."""
    return _packer.pack(obj)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def answer_of(result: Mapping[str, Any] | None, exc: BaseException | None) -> bytes:
    """A handler's outcome in the form it is kept and logged in."""
    return pack(P.item_error(exc) if exc is not None else P.item_ok(result))


def result_of(answer: bytes) -> dict[str, Any]:
    """The first answer again: its result map, or raise its error."""
    return P.item_result(unpack(answer))


class OpResults:
    """opid -> (wall time, packed answer), oldest first, bounded by count and age."""

    def __init__(self, max_count: int = WINDOW_COUNT, max_age: float = WINDOW_AGE) -> None:
        self.max_count, self.max_age = max_count, max_age
        self._by_id: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, opid: bytes) -> bytes | None:
        entry = self._by_id.get(opid)
        return None if entry is None else entry[1]

    def add(self, opid: bytes, wall: float, answer: bytes) -> None:
        """Remember an answer; evicts by the newest record time, never by a clock."""
        self._by_id[opid] = (wall, answer)
        self._by_id.move_to_end(opid)
        by_id = self._by_id
        while len(by_id) > self.max_count:
            by_id.popitem(last=False)
        horizon = wall - self.max_age
        while by_id:
            first = next(iter(by_id.values()))
            if first[0] >= horizon:
                break
            by_id.popitem(last=False)

    def export(self) -> list[list]:
        """[[opid, wall, answer], ...] oldest first, for a snapshot."""
        return [[k, w, a] for k, (w, a) in self._by_id.items()]

    def restore(self, entries: Iterable[Any]) -> None:
        for opid, wall, answer in entries:
            if type(opid) is not bytes or type(answer) is not bytes:
                raise ValueError("an operation id entry must hold bytes")
            self._by_id[opid] = (float(wall), answer)


def check_once(record: Mapping[str, Any]) -> None:
    """The shape of a ``once`` record; its inner records are checked as they apply."""
    opid, records, answer = record["id"], record["records"], record["answer"]
    if type(opid) is not bytes or not OPID_LEN <= len(opid) <= MAX_ID_LEN:
        raise OSError(errno.EINVAL, f"once record: id must be {OPID_LEN}..{MAX_ID_LEN} bytes")
    if not isinstance(records, list) or not all(type(r) is bytes for r in records):
        raise OSError(errno.EINVAL, "once record: records must be a list of bytes")
    if type(answer) is not bytes or not isinstance(record["wall"], (int, float)):
        raise OSError(errno.EINVAL, "once record: bad answer or wall time")


def apply_once(ns: "Namespace", record: Mapping[str, Any]) -> dict:
    """Replay: the inner records in order (each validated against the state the previous
    ones left), then the answer. Live, MetaStore.once applied them as they came."""
    for raw in record["records"]:
        inner = unpack(raw)
        ns.validate(inner)
        ns.apply(inner)
    ns.opids.add(record["id"], float(record["wall"]), record["answer"])
    return {}
