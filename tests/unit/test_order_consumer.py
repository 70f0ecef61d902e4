"""The order side of invoice.created: placed -> invoiced once, with the first number, outbox row acknowledged.

Deliveries go through ``worker.deliver`` (what the Celery task runs) on the app's SQLite file.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from flask_outbox.db import create_db_engine
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import InternalError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from order_service.extensions import db
from order_service.inbox import Outcome, prune_processed
from order_service.models import DeadLetter, Order, ProcessedMessage, outbox
from order_service.worker import DEAD_LETTERED, DeliveryPolicy, RetryLater, deliver
from shared.config import Settings
from shared.contracts import InvoiceCreated

POLICY = DeliveryPolicy(max_retries=3, backoff_base=0.5, backoff_max=4.0)
INVOICED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(app: Flask, api_settings: Settings) -> Iterator[Engine]:
    """A plain engine on the app's database, as the worker has (no Flask app context)."""
    engine = create_db_engine(api_settings.orders_database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


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


def order_row(sessions: sessionmaker[Session], order_id: str) -> Order:
    with sessions() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        return order


def acknowledged_at(sessions: sessionmaker[Session], message_id: uuid.UUID) -> datetime | None:
    with sessions() as session:
        return session.scalar(select(outbox.c.acknowledged_at).where(outbox.c.message_id == message_id))


def count(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_an_answer_invoices_the_order_and_acknowledges_the_outbox_row_it_answers(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    order_id, placed_message = place(client)
    other_id, other_message = place(client)

    outcome = deliver(sessions, uuid.uuid4(), answer(order_id, placed_message, "INV-00000001"), 0, POLICY)

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
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    order_id, placed_message = place(client)
    before = client.get(f"/orders/{order_id}").get_json()
    deliver(sessions, uuid.uuid4(), answer(order_id, placed_message, "INV-00000042"), 0, POLICY)

    after = client.get(f"/orders/{order_id}").get_json()
    listed = client.get("/orders", query_string={"status": "invoiced"}).get_json()["data"]

    assert (before["status"], before["invoice_number"], before["invoiced_at"]) == ("placed", None, None)
    assert (after["status"], after["invoice_number"]) == ("invoiced", "INV-00000042")
    assert datetime.fromisoformat(after["invoiced_at"]) == INVOICED_AT
    assert [o["id"] for o in listed] == [order_id]
    assert client.get("/orders", query_string={"status": "placed"}).get_json()["data"] == []


def test_a_duplicate_delivery_changes_nothing_and_does_not_fail(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    order_id, placed_message = place(client)
    message_id, payload = uuid.uuid4(), answer(order_id, placed_message, "INV-00000001")

    first = deliver(sessions, message_id, payload, 0, POLICY)
    acked = acknowledged_at(sessions, placed_message)
    second = deliver(sessions, message_id, payload, 0, POLICY)

    assert (first, second) == (Outcome.INVOICED, Outcome.DUPLICATE_MESSAGE)
    assert count(sessions, ProcessedMessage) == 1
    assert acknowledged_at(sessions, placed_message) == acked


def test_a_later_answer_with_another_number_keeps_the_first_and_never_moves_the_order_back(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    order_id, placed_message = place(client)
    deliver(sessions, uuid.uuid4(), answer(order_id, placed_message, "INV-00000001"), 0, POLICY)

    later = answer(order_id, placed_message, "INV-00000099", invoiced_at=INVOICED_AT + timedelta(hours=1))
    again = answer(order_id, placed_message, "INV-00000001")  # a re-driven order.placed answered again

    assert deliver(sessions, uuid.uuid4(), later, 0, POLICY) == Outcome.NUMBER_CONFLICT
    assert deliver(sessions, uuid.uuid4(), again, 0, POLICY) == Outcome.ALREADY_INVOICED
    order = order_row(sessions, order_id)
    assert (order.status, order.invoice_number, order.invoiced_at) == (
        "invoiced",
        "INV-00000001",
        INVOICED_AT,
    )


def test_duplicated_and_reordered_answers_leave_each_order_invoiced_once_with_its_first_number(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    placed = [place(client) for _ in range(12)]
    deliveries: list[tuple[uuid.UUID, dict[str, Any]]] = []
    for n, (order_id, message) in enumerate(placed):
        first = (uuid.uuid4(), answer(order_id, message, f"INV-{n:08d}"))
        conflicting = (uuid.uuid4(), answer(order_id, message, f"INV-9{n:07d}"))
        deliveries += [first, first, conflicting, first]  # a redelivery and a second, different answer
    rng = random.Random(1012)
    rng.shuffle(deliveries)

    outcomes = [deliver(sessions, message_id, payload, 0, POLICY) for message_id, payload in deliveries]

    assert outcomes.count(Outcome.INVOICED) == len(placed)  # each order moved exactly once
    first_applied: dict[str, str] = {}
    for (_, payload), outcome in zip(deliveries, outcomes, strict=True):
        if outcome == Outcome.INVOICED:
            first_applied[payload["order_id"]] = payload["invoice_number"]
    for order_id, message in placed:
        order = order_row(sessions, order_id)
        assert (order.status, order.invoice_number) == ("invoiced", first_applied[order_id])
        assert acknowledged_at(sessions, message) is not None
    assert count(sessions, ProcessedMessage) == 2 * len(placed)  # two distinct messages per order


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (["not", "an", "object"], "InvalidAnswer"),
        ({"schema_version": 2, "order_id": "x"}, "UnsupportedSchemaVersion"),
        ({"schema_version": 1, "order_id": "x"}, "ValidationError"),
    ],
)
def test_an_unreadable_answer_is_dead_lettered_at_once(
    sessions: sessionmaker[Session], payload: Any, reason: str
) -> None:
    message_id = uuid.uuid4()

    assert deliver(sessions, message_id, payload, 0, POLICY) == DEAD_LETTERED
    with sessions() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert (letter.message_id, letter.payload) == (message_id, payload)
    assert letter.reason.startswith(reason)
    assert count(sessions, ProcessedMessage) == 0


def test_an_answer_for_an_unknown_order_is_dead_lettered_and_acknowledges_nothing(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    _, placed_message = place(client)

    outcome = deliver(sessions, uuid.uuid4(), answer(str(uuid.uuid4()), placed_message, "INV-1"), 0, POLICY)

    assert outcome == DEAD_LETTERED
    assert acknowledged_at(sessions, placed_message) is None
    assert (count(sessions, DeadLetter), count(sessions, ProcessedMessage)) == (1, 0)


class _BrokenDatabase:
    """A session factory whose every statement fails the way a database in trouble does."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self) -> Session:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("SELECT 1", {}, Exception("connection refused")),
        InternalError("UPDATE", {}, Exception("cannot execute UPDATE in a read-only transaction")),
        ProgrammingError("UPDATE", {}, Exception("permission denied")),
    ],
    ids=["unreachable", "read-only", "programming"],
)
def test_every_database_error_is_retried_and_never_dropped(error: Exception) -> None:
    payload = answer(str(uuid.uuid4()), uuid.uuid4(), "INV-1")

    delays = []
    for retries in range(
        POLICY.max_retries + 3
    ):  # past max_retries: the dead letter cannot be written either
        with pytest.raises(RetryLater) as raised:
            deliver(_BrokenDatabase(error), uuid.uuid4(), payload, retries, POLICY)
        delays.append(raised.value.countdown)

    assert all(0 < delay <= POLICY.backoff_max for delay in delays)
    assert delays[-1] == POLICY.backoff_max


def test_after_its_retries_a_failing_answer_is_parked_once_the_database_takes_it(
    client: FlaskClient, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id, placed_message = place(client)

    def fail(*_: Any) -> Outcome:
        raise OperationalError("UPDATE", {}, Exception("deadlock detected"))

    monkeypatch.setattr("order_service.worker.record_invoice", fail)
    payload = answer(order_id, placed_message, "INV-1")
    with pytest.raises(RetryLater):
        deliver(sessions, uuid.uuid4(), payload, POLICY.max_retries - 1, POLICY)

    assert deliver(sessions, uuid.uuid4(), payload, POLICY.max_retries, POLICY) == DEAD_LETTERED
    assert count(sessions, DeadLetter) == 1


def test_the_inbox_forgets_old_entries_in_batches_and_a_forgotten_answer_still_changes_nothing(
    client: FlaskClient, sessions: sessionmaker[Session]
) -> None:
    order_id, placed_message = place(client)
    message_id, payload = uuid.uuid4(), answer(order_id, placed_message, "INV-00000001")
    deliver(sessions, message_id, payload, 0, POLICY)
    with sessions() as session:
        for _ in range(4):
            session.add(
                ProcessedMessage(message_id=uuid.uuid4(), topic="invoice.created", processed_at=INVOICED_AT)
            )
        session.commit()
    later = INVOICED_AT + timedelta(days=31)

    with sessions() as session:
        pruned = [
            prune_processed(session, older_than=timedelta(days=30), batch=3, now=later) for _ in range(3)
        ]

    assert pruned == [3, 1, 0]
    assert count(sessions, ProcessedMessage) == 1  # today's entry stays
    with sessions() as session:
        prune_processed(session, older_than=timedelta(0), batch=10)
    assert deliver(sessions, message_id, payload, 0, POLICY) == Outcome.ALREADY_INVOICED
    assert order_row(sessions, order_id).invoice_number == "INV-00000001"
