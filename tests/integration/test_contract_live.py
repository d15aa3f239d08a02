"""The file-system contract (tests/contract/suite.py) against a live cluster through
AegisClient: broker, MDS and DataNodes as real processes on loopback."""
from __future__ import annotations

import itertools

import pytest

from client import AegisClient
from tests.contract.suite import FileSystemContract

BLOCK = 64 * 1024
_seq = itertools.count()


@pytest.fixture(scope="module")
def fsc(cluster):
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as client:
        yield _Sized(client, BLOCK)


@pytest.fixture
def base(fsc):
    path = f"/contract/t{next(_seq)}"
    fsc.mkdir(path, parents=True)
    return path


@pytest.fixture
def block_size():
    return BLOCK


class _Sized:
    """AegisClient with a fixed block size for writes, so small sizes straddle blocks."""

    def __init__(self, client: AegisClient, block_size: int) -> None:
        self._c, self._bs = client, block_size

    def write_bytes(self, path, data, parents=True):
        return self._c.write_bytes(path, data, block_size=self._bs, parents=parents)

    def __getattr__(self, name):
        return getattr(self._c, name)


class TestLiveCluster(FileSystemContract):
    pass
