"""Batch tasks, called as a worker runs them: the fast path on a first delivery, a split for anything else.

A split republishes each message as the single-message task (message id as task id, own headers, same
queue) before the batch is acknowledged; if that publish fails, the batch goes back to its queue.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import pytest
from celery.exceptions import Reject
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

import invoice_worker.processing as processing
import invoice_worker.tasks as tasks
from invoice_worker.database import InvoiceDatabase
from invoice_worker.models import Invoice
from tests.unit.test_invoice_processing import failing, payload

QUEUE = "test-invoices"


class Broker:
    """Records what a split publishes, or refuses like a stopped Redis."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.down = False

    def send_task(self, name: str, **options: Any) -> None:
        if self.down:
            raise BrokerUnavailable("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append({"name": name, **options})


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch, invoice_db: InvoiceDatabase) -> Broker:
    recorder = Broker()
    monkeypatch.setattr(tasks.app, "send_task", recorder.send_task)
    monkeypatch.setattr(tasks.app, "producer_or_acquire", lambda *_, **__: nullcontext(None))
    monkeypatch.setattr(tasks, "database", invoice_db)
    monkeypatch.setattr(tasks, "POLICY", replace(tasks.POLICY, first_delivery_uncounted=True))
    return recorder


def _entries(*payloads: Any) -> list[dict[str, Any]]:
    return [
        {"message_id": str(uuid.uuid4()), "payload": body, "headers": {"x_request_id": f"corr-{n}"}}
        for n, body in enumerate(payloads)
    ]


@pytest.fixture
def deliver() -> Iterator[Any]:
    """Run the batch task as a worker delivers it: ``redelivered``/``retries`` as the broker says."""
    pushed = 0

    def run(messages: list[dict[str, Any]], *, redelivered: bool = False, retries: int = 0) -> list[str]:
        nonlocal pushed
        tasks.order_placed_batch.push_request(
            id=str(uuid.uuid4()),
            args=[],
            kwargs={"messages": messages},
            retries=retries,
            called_directly=False,
            delivery_info={"exchange": "", "routing_key": QUEUE, "redelivered": redelivered},
        )
        pushed += 1
        return list(tasks.order_placed_batch.run(messages))

    yield run
    for _ in range(pushed):
        tasks.order_placed_batch.pop_request()


def _invoices(database: InvoiceDatabase) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(Invoice)) or 0)


def test_first_delivery_invoices_the_valid_messages_and_splits_off_the_invalid_one(
    broker: Broker, deliver: Any, invoice_db: InvoiceDatabase
) -> None:
    messages = _entries(payload(), payload(), payload(amount_total=1), payload())
    assert deliver(messages) == ["created", "created", "split", "created"]
    assert _invoices(invoice_db) == 3
    [single] = broker.sent
    assert (single["name"], single["task_id"], single["queue"]) == (
        processing.TASK_NAME,
        messages[2]["message_id"],
        QUEUE,
    )
    assert single["kwargs"] == {"payload": messages[2]["payload"]}
    assert single["headers"] == {"x_request_id": "corr-2"}


@pytest.mark.parametrize(("redelivered", "retries"), [(True, 0), (False, 1)], ids=["redelivered", "retried"])
def test_a_batch_that_may_have_run_before_is_split_without_touching_the_database(
    broker: Broker, deliver: Any, invoice_db: InvoiceDatabase, redelivered: bool, retries: int
) -> None:
    """A redelivered batch may have killed its worker: each message goes to the single task's counting."""
    messages = _entries(payload(), payload())
    assert deliver(messages, redelivered=redelivered, retries=retries) == ["split", "split"]
    assert _invoices(invoice_db) == 0
    assert [(m["task_id"], m["headers"]) for m in broker.sent] == [
        (m["message_id"], m["headers"]) for m in messages
    ]


def test_a_failed_batch_commits_nothing_and_is_split(
    broker: Broker, deliver: Any, invoice_db: InvoiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processing, "create_invoices", failing(OperationalError))
    messages = _entries(payload(), payload(), payload())
    assert deliver(messages) == ["split"] * 3
    assert _invoices(invoice_db) == 0
    assert [m["task_id"] for m in broker.sent] == [m["message_id"] for m in messages]


def test_a_split_the_broker_refuses_puts_the_batch_back(
    broker: Broker, deliver: Any, invoice_db: InvoiceDatabase
) -> None:
    broker.down = True
    with pytest.raises(Reject) as rejected:
        deliver(_entries(payload(), payload()), redelivered=True)
    assert rejected.value.requeue is True


def test_malformed_entries_reach_the_single_task_under_a_stable_id(broker: Broker, deliver: Any) -> None:
    """The single task parks what can never succeed; a batch never drops an entry it cannot read."""
    messages: list[Any] = ["not an entry", {"message_id": "not-a-uuid", "payload": payload()}]
    assert deliver(messages, redelivered=True) == ["split", "split"]
    sent = [(m["kwargs"]["payload"], uuid.UUID(m["task_id"])) for m in broker.sent]
    assert [body for body, _ in sent] == ["not an entry", messages[1]["payload"]]
    assert len({task_id for _, task_id in sent}) == 2


def test_a_batch_repeating_a_message_id_is_split(
    broker: Broker, deliver: Any, invoice_db: InvoiceDatabase
) -> None:
    [entry] = _entries(payload())
    assert deliver([entry, entry]) == ["split", "split"]
    assert _invoices(invoice_db) == 0
