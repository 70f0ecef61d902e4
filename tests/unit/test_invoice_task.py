"""The Celery task body, called directly as a worker runs it: nothing it raises may acknowledge a message.

A worker with ``acks_late`` acknowledges a message whose task raised, and Celery turns a retry whose publish
failed into ``Reject(requeue=False)``, which kombu's Redis transport carries out as a delete. So the body
must end every delivery in one of: a result (invoiced or dead-lettered), ``Retry`` (a new message was
published first), or ``Reject(requeue=True)`` (the message goes back to the broker).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.canvas import Signature
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import DBAPIError, InternalError, OperationalError

import invoice_worker.processing as processing
import invoice_worker.tasks as tasks
from invoice_worker.database import InvoiceDatabase
from invoice_worker.processing import DeliveryPolicy
from tests.unit.test_invoice_processing import failing, payload

POLICY = DeliveryPolicy(max_retries=2, max_deliveries=3, backoff_base=0.01, backoff_max=0.05)


class Publisher:
    """Stands in for the broker a retry is published to: records each retry, or fails like a stopped Redis."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.down = False

    def apply_async(self, signature: Signature, *_: Any, **__: Any) -> None:
        if self.down:
            raise BrokerUnavailable("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.published.append(dict(signature.options))


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch, invoice_db: InvoiceDatabase) -> Publisher:
    recorder = Publisher()

    def apply_async(signature: Signature, *args: Any, **kwargs: Any) -> None:
        recorder.apply_async(signature, *args, **kwargs)

    monkeypatch.setattr(Signature, "apply_async", apply_async)
    monkeypatch.setattr(tasks, "database", invoice_db)
    monkeypatch.setattr(tasks, "POLICY", POLICY)
    return recorder


@pytest.fixture
def delivery() -> Iterator[uuid.UUID]:
    """The request context a worker pushes around one delivery (not ``called_directly``)."""
    message_id = uuid.uuid4()
    body = payload()
    tasks.order_placed.push_request(
        id=str(message_id),
        args=[body],
        kwargs={},
        retries=0,
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": "invoices"},
    )
    yield message_id
    tasks.order_placed.pop_request()


def run(message_id: uuid.UUID) -> str:
    [body] = tasks.order_placed.request.args
    return str(tasks.order_placed.run(body))


def test_delivery_is_invoiced(publisher: Publisher, delivery: uuid.UUID) -> None:
    assert run(delivery) == "created"
    assert publisher.published == []


def test_database_trouble_publishes_a_retry_before_the_message_is_acknowledged(
    publisher: Publisher, delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processing, "count_delivery", failing(InternalError))
    with pytest.raises(Retry):
        run(delivery)
    [retry] = publisher.published
    assert 0 < retry["countdown"] <= POLICY.backoff_max


@pytest.mark.parametrize("family", [OperationalError, InternalError], ids=lambda f: f.__name__)
def test_retry_whose_publish_fails_is_requeued_not_acknowledged(
    publisher: Publisher, delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch, family: type[DBAPIError]
) -> None:
    """Celery's own answer to a failed retry publish is ``Reject(requeue=False)``: a delete on Redis."""
    monkeypatch.setattr(processing, "count_delivery", failing(family))
    publisher.down = True
    with pytest.raises(Reject) as rejected:
        run(delivery)
    assert rejected.value.requeue is True


def test_unclassified_exception_is_retried_not_acknowledged(
    publisher: Publisher, delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*_: Any) -> None:
        raise KeyError("a bug outside the invoicing logic")

    monkeypatch.setattr(processing, "count_delivery", bug)
    with pytest.raises(Retry):
        run(delivery)
    assert len(publisher.published) == 1


def test_unclassified_exception_with_the_broker_down_is_requeued(
    publisher: Publisher, delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        processing, "handle_order_placed", lambda *_: (_ for _ in ()).throw(RuntimeError("bug"))
    )
    monkeypatch.setattr(tasks, "handle_order_placed", processing.handle_order_placed)
    publisher.down = True
    with pytest.raises(Reject) as rejected:
        run(delivery)
    assert rejected.value.requeue is True


def test_worker_does_not_acknowledge_a_task_that_failed() -> None:
    """Belt and braces: should anything still escape, a failure or time limit is not an acknowledgement."""
    assert tasks.order_placed.acks_late is True
    assert tasks.app.conf.task_acks_on_failure_or_timeout is False
    assert tasks.order_placed.reject_on_worker_lost is True
