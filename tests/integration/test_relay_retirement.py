"""Live relays retire a relay that stopped making progress, and never one that is busy in the database.

In-process relays on the real Postgres. The stall bound is 2 s here instead of the shipped 30 s
(``RELAY_STALL_SECONDS``, which refuses less than 5): these tests check the predicate (idle
past the bound vs. active), and the fault test ``test_relay_hang`` checks the shipped default
with real, SIGSTOPped processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask_outbox.messages import BatchOutcome, PendingMessage
from flask_outbox.relay import OutboxRelay
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from order_service.models import outbox
from order_service.relay import PROGRAM
from shared.config import Settings

STALL = 2.0


class NoPublisher:
    def waiting(self) -> int:
        return 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        raise AssertionError("these tests only rebalance")

    def close(self) -> None:
        """Nothing held."""


@pytest.fixture
def pair(pg_settings: Settings, orders_engine: Engine) -> Iterator[tuple[OutboxRelay, OutboxRelay]]:
    policy = replace(PROGRAM.policy(pg_settings), stall_seconds=STALL)
    made = (
        OutboxRelay(orders_engine, outbox, NoPublisher(), policy),
        OutboxRelay(orders_engine, outbox, NoPublisher(), policy),
    )
    for _ in range(2):
        for relay in made:
            relay.rebalance(force=True)
    assert sorted(len(relay.partitions or ()) for relay in made) == [8, 8]
    yield made
    for relay in made:
        relay.disconnect()


def backend_pid(relay: OutboxRelay) -> int:
    """The relay session's server pid; the session is left idle (not idle in transaction)."""
    conn = relay._connection()
    pid = int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)
    conn.rollback()
    return pid


def session_exists(engine: Engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}))


def test_relay_idle_past_the_stall_bound_is_retired_and_its_partitions_taken_over(
    pair: tuple[OutboxRelay, OutboxRelay], orders_engine: Engine
) -> None:
    live, stopped = pair
    pid = backend_pid(stopped)  # the stopped relay's last query
    stopped_at = time.monotonic()
    while live.partitions != frozenset(range(16)):  # the live relay's loop: a rebalance when due
        assert time.monotonic() - stopped_at < STALL + 3, "partitions not taken over"
        live.rebalance()
        time.sleep(0.05)
    handover = time.monotonic() - stopped_at
    print(f"handover after {handover:.2f} s (stall bound {STALL} s)")

    assert STALL <= handover < STALL + 1.5
    assert live.metrics.retired._value.get() == 1
    assert not session_exists(orders_engine, pid)
    # The retired relay notices at its next query, and gets its share back once it reconnects.
    with pytest.raises(DBAPIError):
        stopped.rebalance(force=True)
    stopped.disconnect()
    stopped.rebalance(force=True)
    live.rebalance(force=True)
    stopped.rebalance(force=True)
    assert sorted(len(relay.partitions or ()) for relay in pair) == [8, 8]


def test_relay_busy_in_a_statement_longer_than_the_bound_is_not_retired(
    pair: tuple[OutboxRelay, OutboxRelay], orders_engine: Engine
) -> None:
    live, busy = pair
    pid = backend_pid(busy)
    conn = busy._connection()
    finished = threading.Event()

    def long_statement() -> None:
        conn.execute(text("SELECT pg_sleep(:s)"), {"s": STALL + 1.5})
        conn.rollback()
        finished.set()

    worker = threading.Thread(target=long_statement, daemon=True)
    worker.start()
    while not finished.is_set():
        live.rebalance(force=True)
        time.sleep(0.2)
    worker.join(5)

    assert live.metrics.retired._value.get() == 0
    assert session_exists(orders_engine, pid)
    assert sorted(len(relay.partitions or ()) for relay in pair) == [8, 8]


def test_lone_relay_stopped_mid_batch_loses_its_session_after_the_bound(
    pg_settings: Settings, orders_engine: Engine
) -> None:
    """No live peer to retire it: ``idle_in_transaction_session_timeout`` ends its open batch."""
    relay = OutboxRelay(
        orders_engine, outbox, NoPublisher(), replace(PROGRAM.policy(pg_settings), stall_seconds=STALL)
    )
    try:
        relay.rebalance(force=True)
        conn = relay._connection()
        conn.begin()
        pid = int(conn.scalar(text("SELECT pg_backend_pid()")) or 0)  # a batch claimed, then the relay stops
        started = time.monotonic()
        while session_exists(orders_engine, pid):
            assert time.monotonic() - started < STALL + 3, "idle-in-transaction session still there"
            time.sleep(0.1)
        assert time.monotonic() - started >= STALL - 0.2
    finally:
        relay.disconnect()
