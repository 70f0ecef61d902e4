"""Wake-up: NOTIFY at commit publishes at once; polling still publishes when notifications are lost."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from flask_outbox.messages import BatchOutcome
from flask_outbox.relay import OutboxRelay
from flask_outbox.wakeup import waiter_for
from flask_outbox.writer import OutboxMessage, add_message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from harness.outbox import (
    insert_rows,
    order_id_for,
    order_payload,
    outbox_rows,
    queued_messages,
    running_relay,
)
from harness.waiting import wait_until
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings

POLL_INTERVAL = 5.0


class FinishedBatches:
    """Counts the relay's finished batches: after one that was not full, ``run`` goes straight to wait."""

    def __init__(self, relay: OutboxRelay, monkeypatch: pytest.MonkeyPatch) -> None:
        self.empty = 0
        self.published = 0
        relay_batch = relay.relay_batch

        def counted() -> BatchOutcome:
            outcome = relay_batch()
            self.published += len(outcome.published)
            self.empty += not outcome.published and not outcome.failed
            return outcome

        monkeypatch.setattr(relay, "relay_batch", counted)


def _commit_one_message(engine: Engine, order_id: str) -> None:
    """The writer's path: INSERT plus pg_notify in the order's transaction."""
    with Session(engine) as session, session.begin():
        message = OutboxMessage("order.placed", "order", order_id, order_payload(order_id))
        add_message(session, outbox, message)


def test_notify_publishes_a_commit_well_before_the_poll_interval(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = pg_settings.queue("invoices")
    relay = build_relay(pg_settings, orders_engine)
    batches = FinishedBatches(relay, monkeypatch)
    latencies = []
    with running_relay(relay, POLL_INTERVAL):
        wait_until(lambda: batches.empty, timeout=10, message="the relay to find nothing and wait")
        for n in range(5):
            started = time.monotonic()
            _commit_one_message(orders_engine, order_id_for(f"order-{n}"))
            wait_until(
                lambda n=n: queued_messages(redis_client, queue) > n, timeout=POLL_INTERVAL, interval=0.002
            )
            latencies.append(time.monotonic() - started)
            # The batch that sent it has returned: the relay is back on LISTEN before the next commit.
            wait_until(lambda n=n: batches.published > n, timeout=5, message="the batch to finish")

    assert sorted(latencies)[2] < POLL_INTERVAL / 10, latencies


def test_polling_publishes_when_notifications_are_lost(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = pg_settings.queue("invoices")
    relay = build_relay(pg_settings, orders_engine)
    batches = FinishedBatches(relay, monkeypatch)
    with running_relay(relay, poll_interval=0.5):
        # The relay's first claim found nothing: the rows below can only be found by a later poll.
        wait_until(lambda: batches.empty, timeout=10, message="the relay to find nothing and wait")
        insert_rows(orders_engine, outbox_rows(25, 5), notify=False)
        wait_until(
            lambda: queued_messages(redis_client, queue) == 25, timeout=10, message="polling to publish"
        )
    assert batches.published == 25


def test_a_new_listener_returns_at_once_then_waits_for_a_commit_or_the_interval(
    orders_engine: Engine,
) -> None:
    """Notifications sent before LISTEN are lost: a listener that only now connects lets the relay claim
    once more (a commit between its last claim and its LISTEN is published at once, not after a poll)."""
    stop = threading.Event()
    waiter = waiter_for(orders_engine, stop, interval=1.0)
    try:
        started = time.monotonic()
        waiter.wait()  # connects and listens: returns without waiting
        first = time.monotonic() - started

        _commit_one_message(orders_engine, order_id_for("order-notified"))
        started = time.monotonic()
        waiter.wait()  # the commit's notification is there
        notified = time.monotonic() - started

        started = time.monotonic()
        waiter.wait()  # nothing committed: the interval passes
        idle = time.monotonic() - started
    finally:
        waiter.close()
    assert first < 0.5, first
    assert notified < 0.5, notified
    assert idle >= 0.9, idle
