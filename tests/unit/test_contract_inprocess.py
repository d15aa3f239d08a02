"""The file-system contract (tests/contract/suite.py) against the in-process cluster: the
same AegisClient verbs over the real MDS and DataNode services, without sockets, so a
semantic difference from the live cluster (tests/integration/test_contract_live.py) shows
up in the unit run."""
from __future__ import annotations

import itertools

import pytest

from tests.contract.suite import FileSystemContract, FixedBlockSize
from tests.support.inprocess import InProcessCluster

BLOCK = 64 * 1024
_seq = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    with InProcessCluster(datanodes=3) as c:
        yield c


@pytest.fixture(scope="module")
def fsc(cluster):
    with cluster.client() as client:
        yield FixedBlockSize(client, BLOCK)


@pytest.fixture
def base(fsc):
    path = f"/contract/t{next(_seq)}"
    fsc.mkdir(path, parents=True)
    return path


@pytest.fixture
def block_size():
    return BLOCK


class TestInProcessCluster(FileSystemContract):
    pass
