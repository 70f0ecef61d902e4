"""A broker's first delivery skips the committed count; the bound on poison stays exactly the same.

Redis flags every redelivery (kombu marks a restored message ``redelivered``), so the first delivery
of a message's first attempt need not commit a count before its work: if it kills the worker, the
message comes back flagged and is counted from 2. Brokers that do not flag (the embedded file
broker) count every delivery, as before. The library's consumer, through the invoice worker's handler.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from flask_outbox import DEAD_LETTERED, DUPLICATE, DeliveryPolicy, InboxWorker
from flask_outbox.consumer import Consumer
from sqlalchemy import select

from shared.config import Settings
from tests.unit.test_invoice_processing import payload

UNCOUNTED = DeliveryPolicy(max_retries=2, max_deliveries=3, backoff_base=0.01, first_delivery_uncounted=True)


def consumer_with(worker: InboxWorker, policy: DeliveryPolicy) -> Consumer[object]:
    [consumer] = worker.consumers.values()
    return replace(consumer, policy=policy)


def deliveries(worker: InboxWorker, message_id: uuid.UUID) -> int | None:
    table = worker.inbox.deliveries
    with worker.database.session() as session:
        return session.scalar(select(table.c.deliveries).where(table.c.message_id == message_id))


def test_only_the_first_delivery_of_the_first_attempt_skips_the_count() -> None:
    assert UNCOUNTED.is_first_delivery(retries=0, redelivered=False)
    assert not UNCOUNTED.is_first_delivery(retries=0, redelivered=True)  # restored: it may have crashed
    assert not UNCOUNTED.is_first_delivery(retries=1, redelivered=False)  # a retry counts, as before
    assert not DeliveryPolicy().is_first_delivery(retries=0, redelivered=False)  # off by default


def test_the_policy_skips_it_on_redis_only(tmp_path: Path) -> None:
    redis = Settings(var_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0")
    assert DeliveryPolicy.from_settings(redis).first_delivery_uncounted
    assert not DeliveryPolicy.from_settings(Settings(var_dir=tmp_path)).first_delivery_uncounted


def test_a_first_delivery_invoices_without_writing_a_count_and_a_redelivery_counts_from_two(
    invoice_worker: InboxWorker,
) -> None:
    consumer = consumer_with(invoice_worker, UNCOUNTED)
    message_id, body = uuid.uuid4(), payload()
    assert consumer.deliver(message_id, body, 0, first_delivery=True) == "created"
    assert deliveries(invoice_worker, message_id) is None

    assert consumer.deliver(message_id, body, 0, first_delivery=False) == DUPLICATE
    assert deliveries(invoice_worker, message_id) == 2  # the uncounted first delivery, and this one


@pytest.mark.parametrize("policy", [UNCOUNTED, DeliveryPolicy(max_retries=2, max_deliveries=3)])
def test_a_message_that_kills_its_worker_every_time_is_parked_after_the_same_deliveries(
    invoice_worker: InboxWorker, monkeypatch: pytest.MonkeyPatch, policy: DeliveryPolicy
) -> None:
    """Each delivery 'crashes' after the count (nothing else is written); then the next one is parked."""
    consumer = consumer_with(invoice_worker, policy)
    message_id, body = uuid.uuid4(), payload()
    monkeypatch.setattr(consumer, "apply", lambda *_: None)  # a crash: returns, writes nothing
    first = policy.is_first_delivery(retries=0, redelivered=False)
    consumer.deliver(message_id, body, 0, first_delivery=first)
    for _ in range(policy.max_deliveries - 1):  # redeliveries, flagged by the broker
        consumer.deliver(message_id, body, 0, first_delivery=False)
    assert deliveries(invoice_worker, message_id) == policy.max_deliveries

    monkeypatch.setattr(consumer, "apply", lambda *_: pytest.fail("ran a parked message"))
    assert consumer.deliver(message_id, body, 0) == DEAD_LETTERED
    letters = invoice_worker.inbox.dead_letters
    with invoice_worker.database.session() as session:
        letter = session.execute(select(letters)).one()
    assert letter.attempts == policy.max_deliveries + 1


def test_a_republished_copy_of_a_processed_message_is_counted_as_a_second_delivery(
    invoice_worker: InboxWorker,
) -> None:
    """A relay that crashed between publishing and marking sends a fresh copy: not flagged, yet not new."""
    consumer = consumer_with(invoice_worker, UNCOUNTED)
    message_id, body = uuid.uuid4(), payload()
    assert consumer.deliver(message_id, body, 0, first_delivery=True) == "created"
    assert consumer.deliver(message_id, body, 0, first_delivery=True) == DUPLICATE
    assert deliveries(invoice_worker, message_id) == 2
