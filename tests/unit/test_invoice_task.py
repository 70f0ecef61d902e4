"""The Celery task body, called directly as a worker runs it: nothing it raises may acknowledge a message.

A worker with ``acks_late`` acknowledges a message whose task raised, and Celery turns a retry whose publish
failed into ``Reject(requeue=False)``, which kombu's Redis transport carries out as a delete. So the body
must end every delivery in one of: a result (invoiced or dead-lettered), ``Retry`` (a new message was
published first), or ``Reject(requeue=True)`` (the message goes back to the broker).

The task is ``flask_outbox.tasks``' single-message task, as the invoice worker registers it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Task
from celery.canvas import Signature
from celery.exceptions import Reject, Retry
from flask_outbox import InboxTables, InboxWorker
from flask_outbox.signing import SIGNATURE_HEADER
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import DBAPIError, InternalError, OperationalError

import invoice_worker.celery_app as invoice_celery
import order_service.worker as order_celery
from shared.contracts import INVOICE_CREATED, ORDER_PLACED, ROUTES
from tests.unit.test_invoice_processing import INVOICE_POLICY, failing, payload

TASK_NAME = ROUTES[ORDER_PLACED].task


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
def publisher(monkeypatch: pytest.MonkeyPatch) -> Publisher:
    recorder = Publisher()

    def apply_async(signature: Signature, *args: Any, **kwargs: Any) -> None:
        recorder.apply_async(signature, *args, **kwargs)

    monkeypatch.setattr(Signature, "apply_async", apply_async)
    return recorder


@pytest.fixture
def task(invoice_worker: InboxWorker) -> Task:
    return invoice_worker.app.tasks[TASK_NAME]


@pytest.fixture
def delivery(task: Task, invoice_worker: InboxWorker) -> Iterator[uuid.UUID]:
    """The request context a worker pushes around one delivery (not ``called_directly``), signed."""
    message_id = uuid.uuid4()
    body = payload()
    task.push_request(
        id=str(message_id),
        args=[body],
        kwargs={},
        retries=0,
        called_directly=False,
        delivery_info={"exchange": "", "routing_key": "invoices"},
        **{SIGNATURE_HEADER: invoice_worker.signer.sign(message_id, ORDER_PLACED, body)},
    )
    yield message_id
    task.pop_request()


def run(task: Task) -> str:
    [body] = task.request.args
    return str(task.run(body))


def test_delivery_is_invoiced(publisher: Publisher, task: Task, delivery: uuid.UUID) -> None:
    assert run(task) == "created"
    assert publisher.published == []


def test_database_trouble_publishes_a_retry_before_the_message_is_acknowledged(
    publisher: Publisher, task: Task, delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(InboxTables, "count_delivery", failing(InternalError))
    with pytest.raises(Retry):
        run(task)
    [retry] = publisher.published
    assert 0 < retry["countdown"] <= INVOICE_POLICY.backoff_max


@pytest.mark.parametrize("family", [OperationalError, InternalError], ids=lambda f: f.__name__)
def test_retry_whose_publish_fails_is_requeued_not_acknowledged(
    publisher: Publisher,
    task: Task,
    delivery: uuid.UUID,
    monkeypatch: pytest.MonkeyPatch,
    family: type[DBAPIError],
) -> None:
    """Celery's own answer to a failed retry publish is ``Reject(requeue=False)``: a delete on Redis."""
    monkeypatch.setattr(InboxTables, "count_delivery", failing(family))
    publisher.down = True
    with pytest.raises(Reject) as rejected:
        run(task)
    assert rejected.value.requeue is True


def test_unclassified_exception_is_retried_not_acknowledged(
    publisher: Publisher, task: Task, delivery: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*_: Any, **__: Any) -> None:
        raise KeyError("a bug outside the invoicing logic")

    monkeypatch.setattr(InboxTables, "count_delivery", bug)
    with pytest.raises(Retry):
        run(task)
    assert len(publisher.published) == 1


def test_unclassified_exception_with_the_broker_down_is_requeued(
    publisher: Publisher,
    task: Task,
    delivery: uuid.UUID,
    invoice_worker: InboxWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = invoice_worker.consumer(TASK_NAME)
    monkeypatch.setattr(consumer, "deliver", lambda *_, **__: (_ for _ in ()).throw(RuntimeError("bug")))
    publisher.down = True
    with pytest.raises(Reject) as rejected:
        run(task)
    assert rejected.value.requeue is True


@pytest.mark.parametrize(
    ("app", "task_name"),
    [(invoice_celery.app, ROUTES[ORDER_PLACED].task), (order_celery.app, ROUTES[INVOICE_CREATED].task)],
    ids=["invoice-worker", "order-consumer"],
)
def test_worker_does_not_acknowledge_a_task_that_failed(app: Any, task_name: str) -> None:
    """Belt and braces: should anything still escape, a failure or time limit is not an acknowledgement."""
    registered = app.tasks[task_name]
    assert registered.acks_late is True
    assert app.conf.task_acks_on_failure_or_timeout is False
    assert registered.reject_on_worker_lost is True
