"""The chaos soak at CI size, on the shipped defaults and with no reconciliation.

The whole loop runs (order relays, invoice workers, invoice relays, order consumers); each kind is
SIGKILLed at random and restarted, Redis is SIGKILLed once and the broker loses its messages twice
(queues and ``unacked`` deleted, then FLUSHALL). The checker then proves from the client's 201s,
both databases and the processes' logs that nothing was lost or doubled, that every order shows
its invoice's number, and that every order was invoiced within the bound after the last fault.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.databases import PostgresFactory
from tests.fault.chaos import run_chaos

FAULTS = (
    "relay_kill",
    "worker_kill",
    "invoice_relay_kill",
    "consumer_kill",
    "redis_kill",
    "broker_loss",
    "broker_flushall",
)


def test_chaos_soak_on_shipped_defaults_loses_doubles_and_delays_nothing(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    orders = int(os.environ.get("CHAOS_ORDERS", "500"))
    seed = int(os.environ.get("CHAOS_SEED", "20261124"))

    result = run_chaos(postgres, tmp_path, orders, seed)

    report = "\n".join(result.lines())
    print(report)
    assert all(result.faults.get(fault, 0) >= 1 for fault in FAULTS), report
    assert result.quiescent is not None, report
    assert result.findings.failures() == [], report
    assert result.findings.accepted == orders, report
    assert result.findings.marked_invoiced == orders, report
