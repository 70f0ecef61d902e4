"""Faults 10 and 11: poison ends in the dead letters, the queue keeps flowing, replay is idempotent."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

from flask_outbox.db import utcnow
from flask_outbox.writer import bucket_of
from sqlalchemy import create_engine, insert

from harness.processes import ROOT
from harness.waiting import wait_until
from order_service.models import outbox
from shared.contracts import ORDER_PLACED
from tests.fault.faulty_worker import ALWAYS_RAISES, KILLS_EVERY_TIME
from tests.fault.harness import Cluster, report
from tests.fault.orders import bodies, place_in_process


def inject_raw_messages(cluster: Cluster, payloads: list[dict[str, Any]]) -> None:
    """Outbox rows no current order service would write: a buggy or newer producer."""
    now = utcnow()
    engine = create_engine(cluster.databases.orders_url)
    try:
        with engine.begin() as conn:
            for payload in payloads:
                aggregate = str(payload.get("order_id", uuid.uuid4()))
                conn.execute(
                    insert(outbox).values(
                        message_id=uuid.uuid4(), topic=ORDER_PLACED, aggregate_type="order",
                        aggregate_id=aggregate, bucket=bucket_of(aggregate), payload=payload,
                        headers={}, created_at=now, available_at=now, attempts=0,
                    )
                )  # fmt: skip
    finally:
        engine.dispose()


def dead_letters_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoice_worker", "dead-letters", *args],
        env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def pending_letters(cluster: Cluster) -> list[list[str]]:
    listing = dead_letters_cli(cluster, "list")
    assert listing.returncode == 0, listing.stderr
    return [line.split("\t") for line in listing.stdout.splitlines()]


def test_poison_messages_are_dead_lettered_with_reason_and_attempts_while_the_queue_flows(
    cluster: Cluster,
) -> None:
    cluster.start_worker(app="tests.fault.faulty_worker")
    cluster.start_relay()
    good = bodies(30, seed=101)
    inject_raw_messages(
        cluster,
        [
            {**good[0], "schema_version": 2, "order_id": "not-an-order-v2"},
            {"schema_version": 1, "order_id": "not-an-order-bad", "lines": "nonsense"},
        ],
    )
    place_in_process(cluster, bodies(1, seed=102, customer_id=ALWAYS_RAISES))
    place_in_process(cluster, bodies(1, seed=103, customer_id=KILLS_EVERY_TIME))
    place_in_process(cluster, good)

    letters = wait_until(lambda: len(pending_letters(cluster)) >= 4 and pending_letters(cluster), timeout=120)
    verdict = cluster.checker.verdict()
    report("poison messages", verdict)
    reasons = {row[4].split(":")[0]: int(row[2]) for row in letters}
    assert set(reasons) >= {"UnsupportedSchemaVersion", "ValidationError", "RuntimeError"}
    assert reasons["RuntimeError"] == 4  # bounded retries, then parked
    killed = [row for row in letters if row[4].startswith("delivered")]
    # Killed its worker at every delivery, then parked once the count passed WORKER_MAX_DELIVERIES (5): on the
    # 5th delivery, or the 6th when a copy restored by the visibility timeout was already in flight (seen in
    # CI). The bound is the guarantee: it never runs again after that.
    assert len(killed) == 1
    assert 5 <= int(killed[0][2]) <= 6
    assert len(verdict.lost) == 2  # exactly the two poisoned orders: all others flowed past them
    assert len(verdict.doubled) == 0


def test_replayed_dead_letters_make_one_invoice_and_replaying_twice_does_not_double(cluster: Cluster) -> None:
    faulty = cluster.start_worker(app="tests.fault.faulty_worker")
    cluster.start_relay()
    place_in_process(cluster, bodies(3, seed=111, customer_id=ALWAYS_RAISES) + bodies(10, seed=112))
    wait_until(lambda: len(pending_letters(cluster)) == 3, timeout=90, message="three dead letters")
    faulty.stop()  # "the fix is deployed": from now on the real invoicing code runs

    first_id = pending_letters(cluster)[0][0]
    one = dead_letters_cli(cluster, "replay", first_id)
    assert one.returncode == 0, one.stderr
    assert "\tok\tcreated" in one.stdout
    everything = dead_letters_cli(cluster, "replay", "--all")
    assert everything.returncode == 0, everything.stderr
    again = dead_letters_cli(cluster, "replay", first_id)
    assert "\tok\tduplicate-message" in again.stdout

    verdict = cluster.checker.verdict()
    report("dead letters replayed", verdict)
    assert (len(verdict.lost), len(verdict.doubled)) == (0, 0)
    assert verdict.dead_letters == 0
    assert pending_letters(cluster) == []
