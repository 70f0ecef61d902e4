"""Several relays: disjoint fair shares of the partitions, takeover, and order across backoff."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
from flask_outbox.messages import BatchOutcome, PendingMessage, Publisher
from flask_outbox.relay import OutboxRelay
from sqlalchemy import Engine, select, text

from harness.outbox import consumed, insert_rows, order_violations, outbox_rows
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings


@pytest.fixture
def relays(pg_settings: Settings, orders_engine: Engine) -> Iterator[list[OutboxRelay]]:
    made = [build_relay(pg_settings, orders_engine) for _ in range(3)]
    yield made
    for relay in made:
        relay.disconnect()
        relay.publisher.close()


def _settle(relays: list[OutboxRelay]) -> list[frozenset[int]]:
    """Rebalance every relay a few rounds, as their periodic rebalances would."""
    for _ in range(3):
        for relay in relays:
            relay.rebalance(force=True)
    return [relay.partitions or frozenset() for relay in relays]


def test_relays_hold_disjoint_fair_shares_covering_every_partition(relays: list[OutboxRelay]) -> None:
    shares = _settle(relays)

    assert sorted(len(share) for share in shares) == [4, 6, 6]
    assert frozenset().union(*shares) == frozenset(range(16))
    assert sum(len(share) for share in shares) == 16


def test_partitions_of_a_relay_whose_session_ends_are_taken_over(relays: list[OutboxRelay]) -> None:
    _settle(relays)
    dead, *alive = relays
    dead.disconnect()

    shares = _settle(alive)

    assert sorted(len(share) for share in shares) == [8, 8]
    assert frozenset().union(*shares) == frozenset(range(16))


def test_relays_draining_in_turns_publish_each_message_once_in_aggregate_order(
    relays: list[OutboxRelay], orders_engine: Engine, redis_client: redis.Redis, pg_settings: Settings
) -> None:
    insert_rows(orders_engine, outbox_rows(6_000, 200))
    _settle(relays)
    for _ in range(30):
        if sum(len(relay.relay_batch().published) for relay in relays) == 0:
            break

    deliveries = consumed(redis_client, pg_settings.queue("invoices"))
    assert len(deliveries) == len({d.task_id for d in deliveries}) == 6_000
    assert order_violations(deliveries) == []


class FailsFirstBatch:
    """A broker that refuses the first batch, then recovers."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.calls = 0

    def waiting(self) -> int:
        return 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.calls += 1
        if self.calls == 1:
            return BatchOutcome(failed={m.id: "ConnectionError: broker away" for m in messages})
        return self.inner.publish(messages)

    def close(self) -> None:
        self.inner.close()


def test_a_later_row_never_overtakes_an_earlier_row_of_its_aggregate_in_backoff(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    earlier = outbox_rows(10, 10)
    insert_rows(orders_engine, earlier)
    relay = build_relay(pg_settings, orders_engine)
    relay.publisher = FailsFirstBatch(relay.publisher)
    relay.policy = replace(relay.policy, base_backoff=0.5, max_backoff=0.5)
    try:
        relay.relay_batch()
        insert_rows(orders_engine, outbox_rows(10, 10, start=10))
        assert len(relay.relay_batch().published) == 0, "later rows went out while earlier ones backed off"
        with orders_engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET available_at = now() WHERE attempts > 0"))
        relay.drain()
    finally:
        relay.disconnect()
        relay.publisher.close()

    deliveries = consumed(redis_client, pg_settings.queue("invoices"))
    assert len(deliveries) == 20
    assert order_violations(deliveries) == []
    with orders_engine.connect() as conn:
        assert conn.scalar(select(outbox.c.id).where(outbox.c.published_at.is_(None))) is None
