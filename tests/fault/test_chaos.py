"""The chaos soak at CI size: relays and workers SIGKILLed at random, Redis killed once, nothing lost."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fault.chaos import run_chaos
from tests.support.databases import PostgresFactory


def test_chaos_soak_loses_and_doubles_nothing(postgres: PostgresFactory, tmp_path: Path) -> None:
    orders = int(os.environ.get("CHAOS_ORDERS", "500"))
    seed = int(os.environ.get("CHAOS_SEED", "20261124"))

    result = run_chaos(postgres, tmp_path, orders, seed, drain_timeout=180)

    print("\n".join(result.lines()))
    assert len(result.verdict.lost) == 0, "\n".join(result.lines())
    assert len(result.verdict.doubled) == 0, "\n".join(result.lines())
    assert result.drained
    assert len(result.verdict.orders) == orders
