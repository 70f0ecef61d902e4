"""The relay on RabbitMQ: quorum queues, publisher confirms, probes; a vhost of its own per test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask_outbox.amqp_publisher import AmqpConfirmPublisher
from flask_outbox.db import create_db_engine
from flask_outbox.probes import broker_check
from flask_outbox.publisher import publisher_for
from flask_outbox.signing import SIGNATURE_HEADER
from kombu import Connection
from sqlalchemy import Engine, select

from harness.outbox import insert_rows, outbox_rows
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings
from shared.contracts import ORDER_PLACED, ROUTES
from tests.integration.conftest import SIGNER
from tests.support.rabbitmq import Vhost, rabbitmqctl

QUEUE = ROUTES[ORDER_PLACED].queue


@pytest.fixture
def engine(amqp_settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(amqp_settings.orders_database_url)
    yield engine
    engine.dispose()


def _rows(engine: Engine) -> list[tuple[bool, int, bool]]:
    """(published, attempts, parked) of every outbox row, in id order."""
    with engine.connect() as conn:
        query = select(outbox.c.published_at, outbox.c.attempts, outbox.c.parked_at).order_by(outbox.c.id)
        return [(p is not None, int(a), k is not None) for p, a, k in conn.execute(query)]


def _take_all(vhost: Vhost, queue: str) -> list[dict[str, Any]]:
    """Every message in ``queue`` as batch entries (``message_id``, ``payload``, ``headers``)."""
    entries: list[dict[str, Any]] = []
    with Connection(vhost.url) as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            _args, kwargs, _embed = json.loads(message.body)
            headers = message.properties["application_headers"]
            if "messages" in kwargs:
                entries.extend(kwargs["messages"])
            else:
                entries.append(
                    {"message_id": headers["id"], "payload": kwargs["payload"], "headers": headers}
                )
    return entries


def test_relay_publishes_signed_messages_to_a_quorum_queue_it_declared_itself(
    amqp_settings: Settings, rabbit_vhost: Vhost, engine: Engine
) -> None:
    insert_rows(engine, outbox_rows(30, 10))
    relay = build_relay(amqp_settings, engine)
    assert isinstance(relay.publisher, AmqpConfirmPublisher)
    try:
        assert relay.drain() == 30
        queue = amqp_settings.queue(QUEUE)
        assert relay.publisher.waiting() == 1  # one batch task: no worker ever ran, the queue exists
    finally:
        relay.disconnect()
        relay.publisher.close()

    assert rabbit_vhost.queue_types()[queue] == "quorum"
    assert _rows(engine) == [(True, 0, False)] * 30
    entries = _take_all(rabbit_vhost, queue)
    assert len(entries) == 30
    for entry in entries:
        signature = entry["headers"][SIGNATURE_HEADER]
        assert SIGNER.verifies(uuid.UUID(entry["message_id"]), ORDER_PLACED, entry["payload"], signature)


def test_rows_the_broker_nacks_stay_due_as_a_broker_fault(
    amqp_settings: Settings, rabbit_vhost: Vhost, engine: Engine
) -> None:
    """A full queue that rejects publishes (``overflow: reject-publish``) nacks: nothing is marked."""
    queue = amqp_settings.queue(QUEUE)
    rabbitmqctl(
        "set_policy", "-p", rabbit_vhost.name, "--apply-to", "queues", "full", f"^{queue}$",
        '{"max-length": 0, "overflow": "reject-publish"}',
    )  # fmt: skip
    relay = build_relay(amqp_settings, engine)
    try:
        insert_rows(engine, outbox_rows(1, 1))
        assert relay.drain() == 1  # a quorum queue takes one message past its limit, then refuses
        insert_rows(engine, outbox_rows(3, 3, start=1))
        outcome = relay.relay_batch()
        assert outcome.published == []
        assert outcome.transient == set(outcome.failed)
        assert len(outcome.failed) == 3
        assert "nacked" in next(iter(outcome.failed.values()))
        assert _rows(engine)[1:] == [(False, 1, False)] * 3  # due again, never parked

        rabbitmqctl("clear_policy", "-p", rabbit_vhost.name, "full")
        assert relay.publisher.reachable()
        assert relay.drain() == 3
    finally:
        relay.disconnect()
        relay.publisher.close()
    assert [published for published, _, _ in _rows(engine)] == [True] * 4


def test_rows_stay_due_when_the_broker_refuses_the_publish(
    amqp_settings: Settings, rabbit_vhost: Vhost, engine: Engine
) -> None:
    """No write permission on the vhost: the channel is closed by the broker, the batch is not marked."""
    insert_rows(engine, outbox_rows(4, 2))
    relay = build_relay(amqp_settings, engine)
    try:
        assert relay.publisher.reachable()  # connected, queues declared
        rabbit_vhost.grant(write="^$")
        outcome = relay.relay_batch()
        assert outcome.published == []
        assert len(outcome.transient) == 4
        assert "ACCESS_REFUSED" in next(iter(outcome.failed.values()))
        assert _rows(engine)[:2] == [(False, 1, False)] * 2

        rabbit_vhost.grant()
        assert relay.publisher.reachable()
        assert relay.drain() == 4
    finally:
        relay.disconnect()
        relay.publisher.close()


def test_rows_stay_due_when_the_connection_is_closed_under_the_relay(
    amqp_settings: Settings, rabbit_vhost: Vhost, engine: Engine
) -> None:
    insert_rows(engine, outbox_rows(2, 2))
    relay = build_relay(amqp_settings, engine)
    try:
        assert relay.publisher.reachable()
        rabbitmqctl("close_all_connections", "-p", rabbit_vhost.name, "closed by the test")
        outcome = relay.relay_batch()
        assert outcome.published == []
        assert len(outcome.transient) == 2
        assert _rows(engine) == [(False, 1, False)] * 2
        assert relay.drain() == 2  # a fresh connection at the next publish
    finally:
        relay.disconnect()
        relay.publisher.close()


def test_broker_probe_opens_an_amqp_connection_on_any_host_of_a_failover_list(rabbit_vhost: Vhost) -> None:
    unreachable = rabbit_vhost.url.replace("127.0.0.1:5672", "127.0.0.1:1")
    unused = Path("no-file-broker")
    broker_check(f"{unreachable};{rabbit_vhost.url}", unused)()
    with pytest.raises(Exception, match="refused"):
        broker_check(unreachable, unused)()
    with pytest.raises(Exception, match="NOT_ALLOWED"):
        broker_check(rabbit_vhost.url + "-missing", unused)()


def test_failover_list_gets_the_confirming_publisher(amqp_settings: Settings, rabbit_vhost: Vhost) -> None:
    unreachable = rabbit_vhost.url.replace("127.0.0.1:5672", "127.0.0.1:1")
    settings = amqp_settings.model_copy(update={"broker_url": f"{unreachable};{rabbit_vhost.url}"})
    publisher = publisher_for(settings, ROUTES)
    try:
        assert isinstance(publisher, AmqpConfirmPublisher)
        assert publisher.reachable()
        assert publisher.waiting() == 0
    finally:
        publisher.close()
