"""The pipelined Redis publisher: Celery's own message, per-aggregate order, parking and retrying."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
from flask_outbox.broker import publishing_app
from flask_outbox.db import create_db_engine
from flask_outbox.messages import PendingMessage
from flask_outbox.publisher import publisher_for
from flask_outbox.redis_publisher import RedisPipelinePublisher
from flask_outbox.writer import bucket_of
from sqlalchemy import Engine, select

from harness.outbox import consumed, insert_rows, order_violations, outbox_rows
from order_service.models import outbox
from order_service.relay import build_relay, main
from shared.config import Settings
from shared.contracts import ROUTES
from tests.integration.conftest import SIGNER


@pytest.fixture
def orders_engine(pg_settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(pg_settings.orders_database_url)
    yield engine
    engine.dispose()


def test_redis_broker_gets_the_pipelined_publisher(pg_settings: Settings) -> None:
    publisher = publisher_for(pg_settings, ROUTES)
    try:
        assert isinstance(publisher, RedisPipelinePublisher)
    finally:
        publisher.close()


def test_pipelined_message_is_the_one_send_task_pushes(
    pg_settings: Settings, redis_client: redis.Redis, queue_prefix: str
) -> None:
    """Same envelope, headers, properties and body as Celery's own ``send_task`` over kombu."""
    [row] = outbox_rows(1, 1)
    message = PendingMessage(
        1, row["message_id"], row["topic"], row["aggregate_id"], row["payload"], row["headers"], 0
    )
    route = ROUTES[row["topic"]]
    queue = f"{queue_prefix}{route.queue}"
    app = publishing_app(pg_settings, "probe")
    signed = SIGNER.signed_headers(message.message_id, message.topic, message.payload, message.headers)
    app.send_task(
        route.task,
        kwargs={"payload": message.payload},
        task_id=str(message.message_id),
        queue=queue,
        headers=signed,
        retry=False,
    )
    app.close()
    celery_sent = json.loads(redis_client.rpop(queue) or b"{}")
    publisher = publisher_for(pg_settings, ROUTES)
    assert isinstance(publisher, RedisPipelinePublisher)
    _, data = publisher.encode(message, route)
    publisher.close()
    ours = json.loads(data)

    assert set(ours) == set(celery_sent)
    assert ours["body"] == celery_sent["body"]
    volatile = {"origin", "kwargsrepr", "ignore_result"}
    assert {k: v for k, v in ours["headers"].items() if k not in volatile} == {
        k: v for k, v in celery_sent["headers"].items() if k not in volatile
    }
    assert set(ours["properties"]) == set(celery_sent["properties"])
    for key in ("correlation_id", "delivery_mode", "delivery_info", "priority", "body_encoding"):
        assert ours["properties"][key] == celery_sent["properties"][key]


def test_one_relay_publishes_every_row_once_in_aggregate_order(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    insert_rows(orders_engine, outbox_rows(3_000, 97))
    relay = build_relay(pg_settings, orders_engine)
    try:
        assert relay.drain() == 3_000
    finally:
        relay.disconnect()
        relay.publisher.close()

    deliveries = consumed(redis_client, pg_settings.queue("invoices"))
    assert len(deliveries) == len({d.task_id for d in deliveries}) == 3_000
    assert order_violations(deliveries) == []
    assert {d.task for d in deliveries} == {"invoices.order_placed_batch"}
    assert redis_client.llen(pg_settings.queue("invoices")) == 30, "3 000 rows in tasks of 100 messages"
    with orders_engine.connect() as conn:
        assert conn.scalar(select(outbox.c.id).where(outbox.c.published_at.is_(None))) is None


def test_unroutable_message_is_parked_holds_back_its_aggregate_and_can_be_retried(
    pg_settings: Settings,
    orders_engine: Engine,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, later = outbox_rows(2, 1)
    [other] = outbox_rows(1, 1)
    insert_rows(orders_engine, [{**first, "topic": "order.unknown"}, later])
    insert_rows(orders_engine, [{**other, "aggregate_id": "other", "bucket": bucket_of("other")}])
    relay = build_relay(pg_settings, orders_engine)
    relay.policy = replace(relay.policy, max_attempts=2, base_backoff=0.0)
    try:
        relay.drain()
        relay.drain()
    finally:
        relay.disconnect()
        relay.publisher.close()

    with orders_engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(select(outbox))}
    parked = rows[first["message_id"]]
    assert parked.parked_at is not None
    assert parked.attempts == 2
    assert "no route for topic 'order.unknown'" in parked.last_error
    assert rows[later["message_id"]].published_at is None, "a later row overtook its parked predecessor"
    assert [d.task_id for d in consumed(redis_client, pg_settings.queue("invoices"))] == [
        str(other["message_id"])
    ]

    for name, value in {
        "ORDERS_DATABASE_URL": pg_settings.orders_database_url,
        "BROKER_URL": pg_settings.broker_url,
        "QUEUE_PREFIX": pg_settings.queue_prefix,
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "parked: 1" in status
    assert "order.unknown" in status
    assert main(["retry-parked"]) == 0
    assert "retried: 1" in capsys.readouterr().out
    with orders_engine.connect() as conn:
        retried = conn.execute(select(outbox).where(outbox.c.message_id == first["message_id"])).one()
    assert (retried.parked_at, retried.attempts) == (None, 0)


def test_waiting_counts_the_tasks_no_worker_has_taken_from_the_routes_queues(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    """What the relay's flow control reads (``FlowControl.workers_behind``): the queue's length, per route."""
    relay = build_relay(pg_settings, orders_engine)
    try:
        assert relay.publisher.waiting() == 0
        insert_rows(orders_engine, outbox_rows(3, 3))
        assert relay.drain() == 3
        assert relay.publisher.waiting() == 1, "three messages, one batch task"
        redis_client.rpop(pg_settings.queue("invoices"))  # a worker takes it
        assert relay.publisher.waiting() == 0
    finally:
        relay.disconnect()
        relay.publisher.close()


def test_a_publish_says_how_many_tasks_already_waited_in_its_queue(
    pg_settings: Settings, orders_engine: Engine, redis_client: redis.Redis
) -> None:
    """``BatchOutcome.waiting_before``, from the ``LPUSH`` answers: flow control reads it instead of an
    ``LLEN`` before the next claim."""
    relay = build_relay(pg_settings, orders_engine)
    try:
        insert_rows(orders_engine, outbox_rows(1, 1))
        assert relay.relay_batch().waiting_before == 0, "an empty queue"
        insert_rows(orders_engine, outbox_rows(3, 3))
        assert relay.relay_batch().waiting_before == 1, "the first task, not taken yet"
        redis_client.delete(pg_settings.queue("invoices"))  # workers take both
        insert_rows(orders_engine, outbox_rows(1, 1))
        assert relay.relay_batch().waiting_before == 0
    finally:
        relay.disconnect()
        relay.publisher.close()
