"""Batch tasks, called as a worker runs them: the fast path on a first delivery, a split for anything else.

A split republishes each message as the single-message task (message id as task id, own headers, same
queue) before the batch is acknowledged; if that publish fails, the batch goes back to its queue.
The tasks are ``flask_outbox.tasks``' batch task, as the invoice worker registers it on Redis (a broker
that flags redeliveries: the only one where the fast path runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from celery import Task
from celery.exceptions import Reject
from flask_outbox import DUPLICATE, InboxWorker
from flask_outbox.signing import SIGNATURE_HEADER, MessageSigner
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from harness.processes import TEST_SIGNING_KEY
from invoice_worker.models import Invoice, outbox
from shared.contracts import ORDER_PLACED, ROUTES
from tests.unit.conftest import invoice_worker_on, worker_settings
from tests.unit.test_invoice_processing import failing, payload

QUEUE = "test-invoices"
ROUTE = ROUTES[ORDER_PLACED]
SIGNER = MessageSigner(TEST_SIGNING_KEY.encode())


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
def worker(tmp_path: Path) -> Iterator[InboxWorker]:
    """The invoice worker on Redis (never contacted: what a split publishes is recorded by ``Broker``)."""
    settings = worker_settings(
        tmp_path / "var", broker_url="redis://127.0.0.1:6379/0", message_signing_key=TEST_SIGNING_KEY
    )
    yield from invoice_worker_on(settings)


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch, worker: InboxWorker) -> Broker:
    recorder = Broker()
    monkeypatch.setattr(worker.app, "send_task", recorder.send_task)
    monkeypatch.setattr(worker.app, "producer_or_acquire", lambda *_, **__: nullcontext(None))
    return recorder


def _entries(*payloads: Any) -> list[dict[str, Any]]:
    """Batch entries as the relay sends them: each with its correlation id and its signature."""
    ids = [uuid.uuid4() for _ in payloads]
    return [
        {
            "message_id": str(message_id),
            "payload": body,
            "headers": SIGNER.signed_headers(message_id, ORDER_PLACED, body, {"x_request_id": f"corr-{n}"}),
        }
        for n, (message_id, body) in enumerate(zip(ids, payloads, strict=True))
    ]


@pytest.fixture
def deliver(worker: InboxWorker) -> Iterator[Any]:
    """Run the batch task as a worker delivers it: ``redelivered``/``retries`` as the broker says."""
    assert ROUTE.batch_task is not None
    task: Task = worker.app.tasks[ROUTE.batch_task]
    pushed = 0

    def run(messages: list[dict[str, Any]], *, redelivered: bool = False, retries: int = 0) -> list[str]:
        nonlocal pushed
        task.push_request(
            id=str(uuid.uuid4()),
            args=[],
            kwargs={"messages": messages},
            retries=retries,
            called_directly=False,
            delivery_info={"exchange": "", "routing_key": QUEUE, "redelivered": redelivered},
        )
        pushed += 1
        return list(task.run(messages))

    yield run
    for _ in range(pushed):
        task.pop_request()


def _count(worker: InboxWorker, table: Any) -> int:
    with worker.database.session() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def test_the_fast_path_runs_where_the_broker_flags_redeliveries(worker: InboxWorker) -> None:
    assert worker.policy.first_delivery_uncounted


def test_first_delivery_invoices_the_valid_messages_and_splits_off_the_invalid_one(
    broker: Broker, deliver: Any, worker: InboxWorker
) -> None:
    messages = _entries(payload(), payload(), payload(amount_total=1), payload())
    assert deliver(messages) == ["created", "created", "split", "created"]
    assert _count(worker, Invoice) == 3
    assert _count(worker, worker.inbox.processed) == 3
    [single] = broker.sent
    assert (single["name"], single["task_id"], single["queue"]) == (
        ROUTE.task,
        messages[2]["message_id"],
        QUEUE,
    )
    assert single["kwargs"] == {"payload": messages[2]["payload"]}
    assert single["headers"] == messages[2]["headers"]  # its correlation id and its signature


@pytest.mark.parametrize(("redelivered", "retries"), [(True, 0), (False, 1)], ids=["redelivered", "retried"])
def test_a_batch_that_may_have_run_before_is_split_without_touching_the_database(
    broker: Broker, deliver: Any, worker: InboxWorker, redelivered: bool, retries: int
) -> None:
    """A redelivered batch may have killed its worker: each message goes to the single task's counting."""
    messages = _entries(payload(), payload())
    assert deliver(messages, redelivered=redelivered, retries=retries) == ["split", "split"]
    assert _count(worker, Invoice) == 0
    assert [(m["task_id"], m["headers"]) for m in broker.sent] == [
        (m["message_id"], m["headers"]) for m in messages
    ]


def test_a_failed_batch_commits_nothing_and_is_split(
    broker: Broker, deliver: Any, worker: InboxWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = worker.consumer(ROUTE.task)
    monkeypatch.setattr(consumer, "handler", replace(consumer.handler, apply_batch=failing(OperationalError)))
    messages = _entries(payload(), payload(), payload())
    assert deliver(messages) == ["split"] * 3
    assert (_count(worker, Invoice), _count(worker, worker.inbox.processed)) == (0, 0)
    assert [m["task_id"] for m in broker.sent] == [m["message_id"] for m in messages]


def test_a_split_the_broker_refuses_puts_the_batch_back(broker: Broker, deliver: Any) -> None:
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


def test_a_batch_repeating_a_message_id_is_split(broker: Broker, deliver: Any, worker: InboxWorker) -> None:
    [entry] = _entries(payload())
    assert deliver([entry, entry]) == ["split", "split"]
    assert _count(worker, Invoice) == 0


def test_a_copy_of_a_processed_message_in_a_batch_is_answered_again_and_counted_as_a_second_delivery(
    broker: Broker, deliver: Any, worker: InboxWorker
) -> None:
    """A relay that republished a message sends a fresh, unflagged copy: not new, so it counts from 2."""
    [entry] = _entries(payload())
    assert deliver([entry]) == ["created"]
    [other] = _entries(payload())
    assert deliver([entry, other]) == [DUPLICATE, "created"]
    assert (_count(worker, Invoice), _count(worker, outbox)) == (2, 3)  # the copy is answered again
    deliveries = worker.inbox.deliveries
    with worker.database.session() as session:
        counted = {row.message_id: row.deliveries for row in session.execute(select(deliveries))}
    assert counted == {uuid.UUID(entry["message_id"]): 2}
    assert broker.sent == []


def test_a_badly_signed_entry_is_split_off_and_the_single_task_parks_it(
    broker: Broker, deliver: Any, worker: InboxWorker
) -> None:
    """An entry pushed without the relay's key never reaches the inbox: its single task dead-letters it."""
    messages = _entries(payload(), payload(), payload())
    messages[1]["payload"] = payload(customer_id="cus_forged")  # signed for another payload
    del messages[2]["headers"][SIGNATURE_HEADER]
    assert deliver(messages) == ["created", "split", "split"]
    assert _count(worker, Invoice) == 1
    assert [m["task_id"] for m in broker.sent] == [messages[1]["message_id"], messages[2]["message_id"]]
