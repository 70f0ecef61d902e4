"""The chaos soak at CI size, on the shipped defaults and with no reconciliation.

Relays and workers are SIGKILLed at random and Redis once; the checker then proves from the
client's 201s, both databases and the workers' logs that nothing was lost or doubled and that
every order was invoiced within the lateness bound after the last fault.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.fault.chaos import run_chaos
from tests.support.databases import PostgresFactory


def test_chaos_soak_on_shipped_defaults_loses_doubles_and_delays_nothing(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    orders = int(os.environ.get("CHAOS_ORDERS", "500"))
    seed = int(os.environ.get("CHAOS_SEED", "20261124"))

    result = run_chaos(postgres, tmp_path, orders, seed)

    report = "\n".join(result.lines())
    print(report)
    assert result.quiescent is not None, report
    assert result.findings.failures() == [], report
    assert result.findings.accepted == orders, report
