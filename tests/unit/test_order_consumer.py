"""The order side of invoice.created: placed -> invoiced once, with the first number, outbox row acknowledged.

Deliveries go through the library's ``Consumer.deliver`` (what the Celery task runs) with the order
consumer's handler (``order_service.invoice_answers``), on the app's SQLite file. The rules both
consumers share (poison, retries, database trouble, replay, retention) are tested once for both
services in test_invoice_processing.py and test_inbox_retention.py.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from flask_outbox import DEAD_LETTERED, InboxWorker
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from order_service.extensions import db
from order_service.invoice_answers import Outcome
from order_service.models import Order, inbox, outbox
from shared.contracts import INVOICE_CREATED, ROUTES, InvoiceCreated

INVOICED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Sessions = Callable[[], Session]


@pytest.fixture
def sessions(order_worker: InboxWorker) -> Sessions:
    """Sessions on the app's database, as the worker has them (no Flask app context)."""
    return order_worker.database.session


@pytest.fixture
def deliver(order_worker: InboxWorker) -> Callable[..., str]:
    """One first delivery (``retries`` 0) of an answer, as the Celery task runs it."""
    consumer = order_worker.consumer(ROUTES[INVOICE_CREATED].task)

    def run(message_id: uuid.UUID, payload: Any) -> str:
        return consumer.deliver(message_id, payload, 0)

    return run


def place(client: FlaskClient) -> tuple[str, uuid.UUID]:
    """An order through the API; returns its id and the message id of its order.placed row."""
    body = {
        "customer_id": "cus_1",
        "currency": "EUR",
        "lines": [{"sku": "A", "quantity": 2, "unit_amount": 150}],
    }
    order_id = client.post("/orders", json=body).get_json()["id"]
    with client.application.app_context():
        message_id = db.session.scalar(select(outbox.c.message_id).where(outbox.c.aggregate_id == order_id))
    assert message_id is not None
    return order_id, message_id


def answer(order_id: str, causation_id: uuid.UUID, number: str, **changes: Any) -> dict[str, Any]:
    fields = {
        "order_id": order_id,
        "invoice_number": number,
        "currency": "EUR",
        "amount_total": 300,
        "causation_id": str(causation_id),
        "invoiced_at": INVOICED_AT,
    }
    return InvoiceCreated(**{**fields, **changes}).to_payload()


def order_row(sessions: Sessions, order_id: str) -> Order:
    with sessions() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        return order


def acknowledged_at(sessions: Sessions, message_id: uuid.UUID) -> datetime | None:
    with sessions() as session:
        return session.scalar(select(outbox.c.acknowledged_at).where(outbox.c.message_id == message_id))


def count(sessions: Sessions, model: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_an_answer_invoices_the_order_and_acknowledges_the_outbox_row_it_answers(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    order_id, placed_message = place(client)
    other_id, other_message = place(client)

    outcome = deliver(uuid.uuid4(), answer(order_id, placed_message, "INV-00000001"))

    assert outcome == Outcome.INVOICED
    order = order_row(sessions, order_id)
    assert (order.status, order.invoice_number, order.invoiced_at) == (
        "invoiced",
        "INV-00000001",
        INVOICED_AT,
    )
    assert acknowledged_at(sessions, placed_message) is not None
    assert acknowledged_at(sessions, other_message) is None  # only the row it answers
    assert order_row(sessions, other_id).status == "placed"


def test_the_order_api_shows_status_invoice_number_and_time(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    order_id, placed_message = place(client)
    before = client.get(f"/orders/{order_id}").get_json()
    deliver(uuid.uuid4(), answer(order_id, placed_message, "INV-00000042"))

    after = client.get(f"/orders/{order_id}").get_json()
    listed = client.get("/orders", query_string={"status": "invoiced"}).get_json()["data"]

    assert (before["status"], before["invoice_number"], before["invoiced_at"]) == ("placed", None, None)
    assert (after["status"], after["invoice_number"]) == ("invoiced", "INV-00000042")
    assert datetime.fromisoformat(after["invoiced_at"]) == INVOICED_AT
    assert [o["id"] for o in listed] == [order_id]
    assert client.get("/orders", query_string={"status": "placed"}).get_json()["data"] == []


def test_a_duplicate_delivery_changes_nothing_and_does_not_fail(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    order_id, placed_message = place(client)
    message_id, payload = uuid.uuid4(), answer(order_id, placed_message, "INV-00000001")

    first = deliver(message_id, payload)
    acked = acknowledged_at(sessions, placed_message)
    second = deliver(message_id, payload)

    assert (first, second) == (Outcome.INVOICED, Outcome.DUPLICATE_MESSAGE)
    assert count(sessions, inbox.processed) == 1
    assert acknowledged_at(sessions, placed_message) == acked


def test_a_later_answer_with_another_number_keeps_the_first_and_never_moves_the_order_back(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    order_id, placed_message = place(client)
    deliver(uuid.uuid4(), answer(order_id, placed_message, "INV-00000001"))

    later = answer(order_id, placed_message, "INV-00000099", invoiced_at=INVOICED_AT + timedelta(hours=1))
    again = answer(order_id, placed_message, "INV-00000001")  # a re-driven order.placed answered again

    assert deliver(uuid.uuid4(), later) == Outcome.NUMBER_CONFLICT
    assert deliver(uuid.uuid4(), again) == Outcome.ALREADY_INVOICED
    order = order_row(sessions, order_id)
    assert (order.status, order.invoice_number, order.invoiced_at) == (
        "invoiced",
        "INV-00000001",
        INVOICED_AT,
    )


def test_duplicated_and_reordered_answers_leave_each_order_invoiced_once_with_its_first_number(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    placed = [place(client) for _ in range(12)]
    deliveries: list[tuple[uuid.UUID, dict[str, Any]]] = []
    for n, (order_id, message) in enumerate(placed):
        first = (uuid.uuid4(), answer(order_id, message, f"INV-{n:08d}"))
        conflicting = (uuid.uuid4(), answer(order_id, message, f"INV-9{n:07d}"))
        deliveries += [first, first, conflicting, first]  # a redelivery and a second, different answer
    rng = random.Random(1012)
    rng.shuffle(deliveries)

    outcomes = [deliver(message_id, payload) for message_id, payload in deliveries]

    assert outcomes.count(Outcome.INVOICED) == len(placed)  # each order moved exactly once
    first_applied: dict[str, str] = {}
    for (_, payload), outcome in zip(deliveries, outcomes, strict=True):
        if outcome == Outcome.INVOICED:
            first_applied[payload["order_id"]] = payload["invoice_number"]
    for order_id, message in placed:
        order = order_row(sessions, order_id)
        assert (order.status, order.invoice_number) == ("invoiced", first_applied[order_id])
        assert acknowledged_at(sessions, message) is not None
    assert count(sessions, inbox.processed) == 2 * len(placed)  # two distinct messages per order


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"order_id": str(uuid.uuid4())}, "UnknownOrder: no order"),
        ({"order_id": "not-an-order-id"}, "ValidationError"),
        ({"causation_id": "not-a-message-id"}, "ValidationError"),
        ({"causation_id": str(uuid.uuid4())}, "InvalidAnswer: causation_id"),
        ({"amount_total": 299}, "InvalidAnswer: the answer's 299 EUR is not order"),
        ({"currency": "USD"}, "InvalidAnswer: the answer's 300 USD is not order"),
    ],
    ids=[
        "unknown-order",
        "not-an-order-id",
        "not-a-causation-id",
        "unasked",
        "other-amount",
        "other-currency",
    ],
)
def test_an_answer_that_cannot_apply_here_is_dead_lettered_and_changes_nothing(
    client: FlaskClient,
    sessions: Sessions,
    deliver: Callable[..., str],
    changes: dict[str, str],
    reason: str,
) -> None:
    placed_order, placed_message = place(client)
    payload = answer(placed_order, placed_message, "INV-1") | changes

    outcome = deliver(uuid.uuid4(), payload)

    assert outcome == DEAD_LETTERED
    assert acknowledged_at(sessions, placed_message) is None
    assert order_row(sessions, placed_order).status == "placed"
    assert (count(sessions, inbox.dead_letters), count(sessions, inbox.processed)) == (1, 0)
    with sessions() as session:
        [letter] = session.execute(select(inbox.dead_letters))
    assert letter.reason.startswith(reason)
    assert letter.attempts == 1


def test_an_answer_citing_another_orders_question_is_refused_and_moves_neither_order(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    """Forged with a real ``causation_id``: the row it names is another order's; nothing is acknowledged."""
    first_order, first_message = place(client)
    second_order, second_message = place(client)

    outcome = deliver(uuid.uuid4(), answer(second_order, first_message, "INV-FORGED"))

    assert outcome == DEAD_LETTERED
    assert [order_row(sessions, order).status for order in (first_order, second_order)] == [
        "placed",
        "placed",
    ]
    assert acknowledged_at(sessions, first_message) is None
    assert acknowledged_at(sessions, second_message) is None
    with sessions() as session:
        [letter] = session.execute(select(inbox.dead_letters))
    assert letter.reason.startswith(f"InvalidAnswer: causation_id {first_message} is no order.placed")


def test_a_second_answer_to_an_acknowledged_question_is_harmless_not_a_dead_letter(
    client: FlaskClient, sessions: Sessions, deliver: Callable[..., str]
) -> None:
    """The invoice worker answers a re-driven ``order.placed`` again: another message, the same answer."""
    order_id, message = place(client)
    assert deliver(uuid.uuid4(), answer(order_id, message, "INV-1")) == Outcome.INVOICED

    assert deliver(uuid.uuid4(), answer(order_id, message, "INV-1")) == Outcome.ALREADY_INVOICED
    assert count(sessions, inbox.dead_letters) == 0
    assert order_row(sessions, order_id).invoice_number == "INV-1"
