"""Chaos: a mixed workload while random roles are SIGKILLed and restarted; every
acknowledged write must read back byte-identical once the cluster has healed itself.
The same code as `python bench/chaos.py --minutes N` (longer with --soak)."""
from __future__ import annotations

import logging
import os

import pytest

from tests.support.chaos import run_chaos

from .conftest import record

SECONDS = float(os.environ.get("AEGISFS_CHAOS_SECONDS", "60"))


@pytest.mark.timeout(1200)      # --soak runs 10 minutes of chaos
def test_chaos(tmp_path, soak, caplog):
    caplog.set_level(logging.ERROR, logger="client")    # failover warnings are expected
    seed = int(os.environ["AEGISFS_CHAOS_SEED"]) if "AEGISFS_CHAOS_SEED" in os.environ else None
    result = run_chaos(tmp_path, 600 if soak else SECONDS, seed=seed)
    record(result.summary())
    assert result.lost == []
    assert result.restart_failures == []
    assert not result.unhealed, result.unhealed
    assert result.ops["acked"] > 100
    assert sum(result.kills.values()) >= 5
