"""The client's checks of what DataNodes send (client/reading.py): range reads verified
against the MDS's block checksum through the DataNode's chunk table, and a refused
capability answered by fetching fresh ones and asking again."""
from __future__ import annotations

import errno
import os
from collections import deque

import crc32c
import pytest

from broker.client import Reply
from client.blocks import Piece
from client.reading import BlockReader, _verified_range
from datanode.fileformat import checksums

CS = 1024


def table(data: bytes) -> list[int]:
    return checksums([memoryview(data)], CS)[1]


@pytest.fixture
def block():
    data = os.urandom(5 * CS + 100)
    return data, {"id": b"\x01" * 16, "size": len(data), "checksum": crc32c.crc32c(data)}


def test_a_true_range_is_sliced_out(block):
    data, b = block
    piece = Piece(0, CS + 10, 2 * CS, False)
    sent = data[CS:4 * CS]
    problem, _, got = _verified_range(piece, b, {"offset": CS, "chunk_size": CS,
                                                 "chunks": table(data)}, memoryview(sent))
    assert problem is None and bytes(got) == data[CS + 10:3 * CS + 10]


def test_altered_bytes_never_pass(block):
    data, b = block
    piece = Piece(0, 0, 100, False)
    altered = bytearray(data)
    altered[5] ^= 1
    cases = [
        # the chunk does not match its entry
        ({"offset": 0, "chunk_size": CS, "chunks": table(data)}, altered[:CS]),
        # a table made for the altered data: it no longer folds to the MDS's checksum
        ({"offset": 0, "chunk_size": CS, "chunks": table(bytes(altered))}, altered[:CS]),
        # a table with the wrong number of chunks, or none at all
        ({"offset": 0, "chunk_size": CS, "chunks": table(data)[:-1]}, data[:CS]),
        ({"offset": 0, "chunk_size": CS}, data[:CS]),
        ({"offset": 0, "chunk_size": 0, "chunks": []}, data[:CS]),
        # data that starts after the piece
        ({"offset": CS, "chunk_size": CS, "chunks": table(data)}, data[CS:2 * CS]),
    ]
    for result, sent in cases:
        problem, report, got = _verified_range(piece, b, result, memoryview(bytes(sent)))
        assert problem and report and got.nbytes == 0, result


class Refusing:
    """A Mux whose DataNode refuses the first `refusals` reads with `code`."""

    def __init__(self, data: bytes, code: int, refusals: int) -> None:
        self.data, self.code, self.refusals = data, code, refusals
        self.queue: deque = deque()
        self.caps_seen: list = []
        self.calls: list = []

    def send(self, owner, service, header, payload=(), timeout=None) -> int:
        rid = len(self.caps_seen) + 1
        self.caps_seen.append(header.get("cap"))
        if self.refusals:
            self.refusals -= 1
            err = (PermissionError if self.code == errno.EACCES else BlockingIOError)(
                self.code, "capability refused")
            self.queue.append(Reply(rid, service, error=err))
        else:
            self.queue.append(Reply(rid, service, {"size": len(self.data)},
                                    payload=[memoryview(self.data)]))
        return rid

    def next(self, owner, timeout):
        return self.queue.popleft() if self.queue else None

    def cancel(self, owner, rids):
        pass

    def call(self, service, header, payload=(), timeout=None):
        self.calls.append(header)
        return Reply(0, service, {})


@pytest.mark.parametrize("code", [errno.EACCES, errno.EAGAIN])
def test_a_refused_capability_is_renewed_and_the_read_retried(monkeypatch, code):
    monkeypatch.setattr("client.reading.CAP_RETRY_PAUSE", 0.0)
    data = b"payload"
    b = {"id": b"\x02" * 16, "size": len(data), "checksum": crc32c.crc32c(data),
         "replicas": ["dn1"], "cap": b"old"}
    mux = Refusing(data, code, refusals=2)
    asked = []

    def refresh(index):
        asked.append(index)
        return [{"id": b["id"], "cap": b"new%d" % len(asked)}]

    got = b"".join(BlockReader(mux, "/f", [b], [Piece(0, 0, len(data), True)],
                               refresh=refresh))
    assert got == data and asked == [0, 0]
    assert mux.caps_seen == [b"old", b"new1", b"new2"]
    assert not [c for c in mux.calls if c["op"] == "bad_replica"]   # not the replica's fault


def test_renewal_gives_up_after_a_few_tries():
    data = b"payload"
    b = {"id": b"\x02" * 16, "size": len(data), "checksum": crc32c.crc32c(data),
         "replicas": ["dn1"], "cap": b"old"}
    mux = Refusing(data, errno.EACCES, refusals=10)
    with pytest.raises(OSError) as info:
        b"".join(BlockReader(mux, "/f", [b], [Piece(0, 0, len(data), True)],
                             refresh=lambda i: []))
    assert info.value.errno == errno.EIO and len(mux.caps_seen) == 4
