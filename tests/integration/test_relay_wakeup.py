"""Wake-up: NOTIFY at commit publishes at once; polling still publishes when notifications are lost."""

from __future__ import annotations

import time

import pytest
import redis
from flask_outbox.messages import BatchOutcome
from flask_outbox.relay import OutboxRelay
from flask_outbox.writer import OutboxMessage, add_message
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from harness.outbox import insert_rows, order_payload, outbox_rows, queued_messages, running_relay
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
        add_message(
            session, outbox, OutboxMessage("order.placed", "order", order_id, order_payload(order_id))
        )


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
            _commit_one_message(orders_engine, f"order-{n}")
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


def test_a_lingering_relay_publishes_the_first_commit_at_once_and_gathers_the_next_into_one_batch(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``linger`` after every batch that found rows (the invoice relay's rule, min batch 1): the relay
    pauses before its next claim, so commits made meanwhile leave as one batch task."""
    linger = 1.0  # long enough that ten commits surely land within one pause on a busy machine
    queue = pg_settings.queue("invoices")
    settings = pg_settings.model_copy(update={"relay_linger_seconds": linger, "relay_linger_min_batch": 1})
    relay = build_relay(settings, orders_engine)
    assert relay.policy.linger == linger
    sizes = _batch_sizes(relay, monkeypatch)
    with running_relay(relay, POLL_INTERVAL):
        started = time.monotonic()
        _commit_one_message(orders_engine, "first")
        wait_until(lambda: queued_messages(redis_client, queue) == 1, timeout=POLL_INTERVAL, interval=0.002)
        first_latency = time.monotonic() - started
        for n in range(10):
            _commit_one_message(orders_engine, f"next-{n}")
        wait_until(
            lambda: queued_messages(redis_client, queue) == 11, timeout=10, message="the gathered batch"
        )
    assert first_latency < linger / 2, "the first commit after a quiet spell is not held back"
    assert sizes[:2] == [1, 10], sizes
    assert redis_client.llen(queue) == 2, "one single task, then one batch task of ten"


def _batch_sizes(relay: OutboxRelay, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the relay's batches that published something, in order, as they happen."""
    sizes: list[int] = []
    relay_batch = relay.relay_batch

    def recorded() -> BatchOutcome:
        outcome = relay_batch()
        if outcome.published:
            sizes.append(len(outcome.published))
        return outcome

    monkeypatch.setattr(relay, "relay_batch", recorded)
    return sizes


def test_the_order_relay_lingers_only_after_a_batch_that_shows_load(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped ``RELAY_LINGER_MIN_BATCH`` (2): commits that come one at a time each leave at once;
    a batch of two or more makes the relay pause, and the commits of that pause leave together. The
    pause is stretched to 1 s (shipped: 50 ms) so that ten commits surely land within it."""
    linger = 1.0
    queue = pg_settings.queue("invoices")
    relay = build_relay(pg_settings.model_copy(update={"relay_linger_seconds": linger}), orders_engine)
    assert relay.policy.linger_min_batch == 2
    sizes = _batch_sizes(relay, monkeypatch)
    batches = FinishedBatches(relay, monkeypatch)
    latencies: list[float] = []
    with running_relay(relay, POLL_INTERVAL):
        wait_until(lambda: batches.empty, timeout=10, message="the relay to find nothing and wait")
        for n in range(2):
            started = time.monotonic()
            _commit_one_message(orders_engine, f"alone-{n}")
            wait_until(
                lambda n=n: queued_messages(redis_client, queue) == n + 1,
                timeout=POLL_INTERVAL,
                interval=0.002,
            )
            latencies.append(time.monotonic() - started)
        with Session(orders_engine) as session, session.begin():  # two rows at once: a batch of two
            for order_id in ("pair-a", "pair-b"):
                message = OutboxMessage("order.placed", "order", order_id, order_payload(order_id))
                add_message(session, outbox, message)
        wait_until(lambda: queued_messages(redis_client, queue) == 4, timeout=POLL_INTERVAL, interval=0.002)
        for n in range(10):
            _commit_one_message(orders_engine, f"next-{n}")
        wait_until(
            lambda: queued_messages(redis_client, queue) == 14, timeout=10, message="the gathered batch"
        )
    assert max(latencies) < linger / 2, f"a commit after a batch of one was held back: {latencies}"
    assert sizes[:4] == [1, 1, 2, 10], sizes
