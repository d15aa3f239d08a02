"""The file-system contract (tests/contract/suite.py) against a live cluster through
AegisClient: broker, MDS and DataNodes as real processes on loopback."""
from __future__ import annotations

import itertools

import pytest

from client import AegisClient
from tests.contract.suite import FileSystemContract, FixedBlockSize

BLOCK = 64 * 1024
_seq = itertools.count()


@pytest.fixture(scope="module")
def fsc(cluster):
    with AegisClient(cluster.broker, timeout=30.0, key=cluster.key) as client:
        yield FixedBlockSize(client, BLOCK)


@pytest.fixture
def base(fsc):
    path = f"/contract/t{next(_seq)}"
    fsc.mkdir(path, parents=True)
    return path


@pytest.fixture
def block_size():
    return BLOCK


class TestLiveCluster(FileSystemContract):
    pass
