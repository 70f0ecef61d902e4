"""Wake-up: NOTIFY at commit publishes at once; polling still publishes when notifications are lost."""

from __future__ import annotations

import time

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings
from shared.outbox.writer import OutboxMessage, add_message
from tests.support.outbox import insert_rows, order_payload, outbox_rows, running_relay
from tests.support.waiting import wait_until

POLL_INTERVAL = 5.0


def _commit_one_message(engine: Engine, order_id: str) -> None:
    """The writer's path: INSERT plus pg_notify in the order's transaction."""
    with Session(engine) as session, session.begin():
        add_message(
            session, outbox, OutboxMessage("order.placed", "order", order_id, order_payload(order_id))
        )


def test_notify_publishes_a_commit_well_before_the_poll_interval(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    queue = pg_settings.queue("invoices")
    relay = build_relay(pg_settings, orders_engine)
    latencies = []
    with running_relay(relay, POLL_INTERVAL):
        time.sleep(0.5)  # the relay is idle, waiting on LISTEN
        for n in range(5):
            started = time.monotonic()
            _commit_one_message(orders_engine, f"order-{n}")
            wait_until(lambda n=n: redis_client.llen(queue) > n, timeout=POLL_INTERVAL, interval=0.002)
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)

    assert sorted(latencies)[2] < POLL_INTERVAL / 10, latencies


def test_polling_publishes_when_notifications_are_lost(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    queue = pg_settings.queue("invoices")
    relay = build_relay(pg_settings, orders_engine)
    with running_relay(relay, poll_interval=0.5):
        time.sleep(0.3)
        insert_rows(orders_engine, outbox_rows(25, 5), notify=False)
        wait_until(lambda: redis_client.llen(queue) == 25, timeout=10, message="polling to publish")
