"""Outages: a stopped broker and a killed database session never stop the relay, and nothing is lost."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from harness.outbox import (
    consumed,
    insert_rows,
    order_violations,
    outbox_rows,
    queued_messages,
    running_relay,
)
from harness.waiting import wait_until
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings
from tests.support.servers import PrivateRedis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.kill()


def _count(engine: Engine, *where: object) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(outbox).where(*where)) or 0


def test_broker_outage_keeps_rows_due_then_drains_everything_in_order(
    pg_settings: Settings, orders_engine: Engine, private_redis: PrivateRedis
) -> None:
    """Rows wait for the broker as a whole: none backs off on its own or is parked; all go when it returns."""
    settings = pg_settings.model_copy(update={"broker_url": private_redis.url})
    relay = build_relay(settings, orders_engine)
    relay.policy = replace(relay.policy, max_attempts=3)
    with running_relay(relay, poll_interval=0.3) as thread:
        private_redis.stop()
        insert_rows(orders_engine, outbox_rows(300, 30), notify=True)
        wait_until(
            lambda: _count(orders_engine, outbox.c.attempts >= 1) == 300,
            timeout=30,
            message="every row refused by the broker",
        )
        insert_rows(orders_engine, outbox_rows(300, 30, start=300), notify=True)
        assert thread.is_alive()
        assert _count(orders_engine, outbox.c.published_at.is_not(None)) == 0
        assert _count(orders_engine, outbox.c.last_error.like("%Connection%")) >= 300
        assert _count(orders_engine, outbox.c.parked_at.is_not(None)) == 0, "a broker outage parked rows"
        with orders_engine.connect() as conn:
            backing_off = conn.scalar(text("SELECT count(*) FROM outbox WHERE available_at > now()"))
        assert backing_off == 0, "a row backs off on its own instead of waiting for the broker"

        private_redis.start()
        wait_until(
            lambda: _count(orders_engine, outbox.c.published_at.is_(None)) == 0,
            timeout=30,
            message="the backlog to drain after the broker returns",
        )

    client = redis.Redis.from_url(private_redis.url)
    deliveries = consumed(client, settings.queue("invoices"))
    client.close()
    assert {d.task_id for d in deliveries} == {str(m) for m in _message_ids(orders_engine)}, (
        "a message was lost"
    )
    assert order_violations(deliveries) == []
    assert _count(orders_engine, outbox.c.parked_at.is_not(None)) == 0


def _message_ids(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(conn.scalars(select(outbox.c.message_id)))


def test_relay_reconnects_after_its_database_session_is_killed(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    queue = pg_settings.queue("invoices")
    relay = build_relay(pg_settings, orders_engine)
    with running_relay(relay, poll_interval=0.3) as thread:
        insert_rows(orders_engine, outbox_rows(50, 5), notify=True)
        wait_until(
            lambda: queued_messages(redis_client, queue) == 50, timeout=10, message="first rows to publish"
        )
        # Killed once its batch committed: a kill between publish and commit rolls the stamp back and the
        # rows are republished (at least once; covered by the relay-kill fault tests), 150 in the queue.
        wait_until(
            lambda: _count(orders_engine, outbox.c.published_at.is_not(None)) == 50,
            timeout=10,
            message="first rows marked published",
        )
        with orders_engine.begin() as conn:
            killed = conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name LIKE 'outbox-relay%'"
                )
            )
        assert killed == 1
        insert_rows(orders_engine, outbox_rows(50, 5, start=50), notify=True)
        wait_until(
            lambda: queued_messages(redis_client, queue) == 100,
            timeout=20,
            message="publishing after reconnect",
        )
        assert thread.is_alive()
        wait_until(lambda: relay.partitions == frozenset(range(16)), timeout=10, message="partitions re-held")
