"""The one-statement Postgres paths of the invoice worker and the order consumer keep every outcome.

The consumer records the inbox row (settling an early dead letter) and, in the same transaction, the
handler writes in one CTE: the invoice side the numbered invoice (``invoicing.apply``), the order side
``placed -> invoiced`` and the acknowledgement (``invoice_answers.apply``); each has a batch form. The
portable (SQLite) paths are covered by the unit tests; these pin the Postgres ones to the same results.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from flask_outbox import WorkerDatabase
from flask_outbox.batches import BatchItem
from flask_outbox.consumer import Consumer
from flask_outbox.writer import bucket_of
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.orm import Session, sessionmaker

from harness.waiting import wait_until
from invoice_worker.invoicing import Outcome
from invoice_worker.models import Invoice
from invoice_worker.models import inbox as invoice_inbox
from invoice_worker.models import outbox as invoice_outbox
from invoice_worker.signals import invoice_created
from order_service.invoice_answers import InvalidAnswer, UnknownOrder
from order_service.invoice_answers import Outcome as Applied
from order_service.models import Order
from order_service.models import inbox as order_inbox
from order_service.models import outbox as order_outbox
from shared.contracts import INVOICE_CREATED, ORDER_PLACED, InvoiceCreated, OrderPlaced, parse_invoice_created
from tests.integration.conftest import SIGNER
from tests.support.events import order_placed_event
from tests.support.locks import waiting_on_a_lock

pytestmark = pytest.mark.integration


def test_invoice_is_numbered_from_its_id_answered_and_settles_an_early_dead_letter(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    event, message_id = order_placed_event(), uuid.uuid4()
    with pg_invoice_db.session() as session:  # parked too early, e.g. redelivered during a slow first run
        invoice_inbox.park(session, message_id, "invoices.order_placed", {}, "delivered 6 times", 6)
    assert invoice_consumer.apply(message_id, event.to_payload()) == Outcome.CREATED
    with pg_invoice_db.session() as session:
        invoice = session.scalars(select(Invoice)).one()
        processed_at = session.scalar(select(invoice_inbox.processed.c.processed_at))
        letter = session.execute(select(invoice_inbox.dead_letters)).one()
        answers = [parse_invoice_created(p) for p in session.scalars(select(invoice_outbox.c.payload))]
    assert invoice.number == f"INV-{invoice.id:08d}"
    assert (invoice.order_id, invoice.amount_total, invoice.message_id) == (
        event.order_id,
        event.amount_total,
        message_id,
    )
    assert invoice.lines == [line.model_dump(mode="json") for line in event.lines]
    assert invoice.placed_at == event.placed_at
    # One transaction, one database clock: inbox row, the dead letter's settlement, then the invoice.
    assert processed_at <= letter.replayed_at <= invoice.created_at
    assert invoice.created_at - processed_at < timedelta(seconds=5)
    assert [(a.invoice_number, a.causation_id, a.invoiced_at) for a in answers] == [
        (invoice.number, str(message_id), invoice.created_at)
    ]


def test_duplicate_message_and_second_message_for_an_invoiced_order_write_no_second_invoice(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    event, first, second = order_placed_event(), uuid.uuid4(), uuid.uuid4()
    outcomes = [
        invoice_consumer.apply(message_id, event.to_payload()) for message_id in (first, first, second)
    ]
    assert outcomes == [Outcome.CREATED, Outcome.DUPLICATE_MESSAGE, Outcome.ALREADY_INVOICED]
    with pg_invoice_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == 1
        inbox = set(session.scalars(select(invoice_inbox.processed.c.message_id)))
        answers = [parse_invoice_created(p) for p in session.scalars(select(invoice_outbox.c.payload))]
    assert inbox == {first, second}
    assert len({a.invoice_number for a in answers}) == 1  # every answer carries the one number
    assert len(answers) == 3


def _placed_order(engine: Engine) -> tuple[uuid.UUID, uuid.UUID]:
    """An order and its published ``order.placed`` outbox row; returns (order id, message id)."""
    order_id, message_id, now = uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(Order.__table__).values(
                id=order_id,
                customer_id="cus_1",
                currency="EUR",
                status="placed",
                amount_total=100,
                created_at=now,
            )
        )
        conn.execute(
            insert(order_outbox).values(
                message_id=message_id, topic=ORDER_PLACED, aggregate_type="order", aggregate_id=str(order_id),
                bucket=bucket_of(str(order_id)), payload={}, headers={}, created_at=now, available_at=now,
                attempts=0, published_at=now,
            )
        )  # fmt: skip
    return order_id, message_id


def _answer(
    order_id: uuid.UUID, causation_id: uuid.UUID, number: str = "INV-00000001", **changes: object
) -> InvoiceCreated:
    fields: dict[str, object] = {
        "order_id": str(order_id),
        "invoice_number": number,
        "currency": "EUR",
        "amount_total": 100,
        "causation_id": str(causation_id),
        "invoiced_at": datetime(2026, 3, 1, 12, tzinfo=UTC),
    }
    return InvoiceCreated.model_validate(fields | changes)


def _unanswered(engine: Engine, *order_ids: uuid.UUID) -> dict[uuid.UUID, tuple[str, bool]]:
    """Each order's status and whether its ``order.placed`` row is still unacknowledged."""
    with engine.connect() as conn:
        statuses = {
            row.id: row.status
            for row in conn.execute(select(Order.id, Order.status).where(Order.id.in_(order_ids)))
        }
        open_rows = set(
            conn.scalars(select(order_outbox.c.aggregate_id).where(order_outbox.c.acknowledged_at.is_(None)))
        )
    return {order_id: (statuses[order_id], str(order_id) in open_rows) for order_id in order_ids}


def _mismatches(
    order_id: uuid.UUID, placed: uuid.UUID, other_placed: uuid.UUID
) -> list[tuple[InvoiceCreated, str]]:
    """Answers to something this order did not ask, and the reason each is refused with."""
    return [
        (_answer(order_id, other_placed), "is no order.placed of order"),
        (_answer(order_id, uuid.uuid4()), "is no order.placed of order"),
        (_answer(order_id, placed, amount_total=99), "the answer's 99 EUR is not order"),
        (_answer(order_id, placed, currency="USD"), "the answer's 100 USD is not order"),
    ]


def test_an_answer_to_what_the_order_did_not_ask_is_refused_in_the_one_statement(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated]
) -> None:
    """Another order's row, no row, another amount or currency: nothing moves, nothing is acknowledged."""
    (order_id, placed), (other, other_placed) = _placed_order(orders_engine), _placed_order(orders_engine)
    for forged, reason in _mismatches(order_id, placed, other_placed):
        with pytest.raises(InvalidAnswer, match=reason):
            order_consumer.apply(uuid.uuid4(), forged.to_payload())
    assert _unanswered(orders_engine, order_id, other) == {
        order_id: ("placed", True),
        other: ("placed", True),
    }
    assert order_consumer.apply(uuid.uuid4(), _answer(order_id, placed).to_payload()) == Applied.INVOICED


def test_a_batch_leaves_answers_to_what_was_not_asked_unwritten_for_the_single_task(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated]
) -> None:
    (order_id, placed), (other, other_placed) = _placed_order(orders_engine), _placed_order(orders_engine)
    forged = [answer for answer, _ in _mismatches(order_id, placed, other_placed)]
    batch = [_item(uuid.uuid4(), a.to_payload(), f"corr-{n}") for n, a in enumerate(forged)]
    batch.append(_item(uuid.uuid4(), _answer(other, other_placed).to_payload(), "corr-ok"))

    assert order_consumer.apply_batch(batch) == [None, None, None, None, Applied.INVOICED]
    assert _unanswered(orders_engine, order_id, other) == {
        order_id: ("placed", True),
        other: ("invoiced", False),
    }


def test_answer_moves_the_order_once_acknowledges_and_refuses_unknown_orders(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated]
) -> None:
    sessions: sessionmaker[Session] = sessionmaker(orders_engine, expire_on_commit=False)
    order_id, placed = _placed_order(orders_engine)
    first, again, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    outcomes = []
    for message_id, number in ((first, "INV-00000001"), (first, "INV-00000001"), (again, "INV-00000001")):
        outcomes.append(order_consumer.apply(message_id, _answer(order_id, placed, number).to_payload()))
    outcomes.append(order_consumer.apply(other, _answer(order_id, placed, "INV-99999999").to_payload()))
    assert outcomes == [
        Applied.INVOICED,
        Applied.DUPLICATE_MESSAGE,
        Applied.ALREADY_INVOICED,
        Applied.NUMBER_CONFLICT,
    ]
    with sessions() as session:
        order = session.get(Order, order_id)
        acknowledged = session.scalar(
            select(order_outbox.c.acknowledged_at).where(order_outbox.c.message_id == placed)
        )
        inbox = set(session.scalars(select(order_inbox.processed.c.message_id)))
    assert order is not None
    assert (order.status, order.invoice_number) == ("invoiced", "INV-00000001")
    assert acknowledged is not None
    assert inbox == {first, again, other}

    unknown = uuid.uuid4()
    with pytest.raises(UnknownOrder):
        order_consumer.apply(unknown, _answer(uuid.uuid4(), placed).to_payload())
    with sessions() as session:  # rolled back with the CTE's other writes
        recorded = order_inbox.processed.c.message_id == unknown
        assert session.scalar(select(func.count()).select_from(order_inbox.processed).where(recorded)) == 0


def test_answer_for_a_row_acknowledged_already_still_moves_nothing_twice(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated]
) -> None:
    sessions: sessionmaker[Session] = sessionmaker(orders_engine, expire_on_commit=False)
    order_id, placed = _placed_order(orders_engine)
    with orders_engine.begin() as conn:
        conn.execute(update(order_outbox).values(acknowledged_at=datetime(2026, 1, 1, tzinfo=UTC)))
    assert order_consumer.apply(uuid.uuid4(), _answer(order_id, placed).to_payload()) == Applied.INVOICED
    with sessions() as session:
        kept = session.scalar(select(order_outbox.c.acknowledged_at))
    assert kept == datetime(2026, 1, 1, tzinfo=UTC)  # the first acknowledgement is not moved


def _item(message_id: uuid.UUID, payload: dict[str, object], correlation: str) -> BatchItem:
    """A batch entry as the relay sends it: its correlation id and its signature."""
    topic = INVOICE_CREATED if "causation_id" in payload else ORDER_PLACED
    return BatchItem(
        message_id, payload, SIGNER.signed_headers(message_id, topic, payload, {"x_request_id": correlation})
    )


def test_a_batch_invoices_each_new_order_once_and_answers_every_message(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    """One statement for the batch; duplicates, a second message for an order in the same batch, and a
    message for an order invoiced earlier are answered again with the one invoice, never invoiced twice."""
    a, b, c = order_placed_event(), order_placed_event(), order_placed_event()
    earlier = uuid.uuid4()
    assert invoice_consumer.apply(earlier, a.to_payload()) == Outcome.CREATED
    ids = [earlier, uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()]
    events = [a, b, c, b, a]
    batch = [_item(i, e.to_payload(), f"corr-{n}") for n, (i, e) in enumerate(zip(ids, events, strict=True))]
    outcomes = invoice_consumer.apply_batch(batch)
    assert outcomes == [
        Outcome.DUPLICATE_MESSAGE,
        Outcome.CREATED,
        Outcome.CREATED,
        Outcome.ALREADY_INVOICED,
        Outcome.ALREADY_INVOICED,
    ]
    with pg_invoice_db.session() as session:
        invoices = {i.order_id: i for i in session.scalars(select(Invoice))}
        inbox = set(session.scalars(select(invoice_inbox.processed.c.message_id)))
        answers = [
            (parse_invoice_created(row.payload), row.headers)
            for row in session.execute(select(invoice_outbox.c.payload, invoice_outbox.c.headers))
        ]
    assert set(invoices) == {a.order_id, b.order_id, c.order_id}
    assert all(i.number == f"INV-{i.id:08d}" for i in invoices.values())
    assert invoices[b.order_id].message_id == ids[1]
    assert invoices[b.order_id].lines == [line.model_dump(mode="json") for line in b.lines]
    assert inbox == set(ids)
    by_cause = {answer.causation_id: (answer, headers) for answer, headers in answers}
    assert len(answers) == 6  # a's first answer, b and c, and one again for each of the other three
    for n, (message_id, event) in enumerate(zip(ids, events, strict=True)):
        answer, headers = by_cause[str(message_id)]
        assert answer.invoice_number == invoices[event.order_id].number
        if n:
            assert headers["x_request_id"] == f"corr-{n}", "each answer carries its own message's correlation"


def test_a_batch_of_answers_moves_each_order_once_and_leaves_unknown_orders_unwritten(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated]
) -> None:
    sessions: sessionmaker[Session] = sessionmaker(orders_engine, expire_on_commit=False)
    (first, first_placed), (second, second_placed) = (
        _placed_order(orders_engine),
        _placed_order(orders_engine),
    )
    ids = [uuid.uuid4() for _ in range(4)]
    answers = [
        _answer(first, first_placed, "INV-00000001"),
        _answer(second, second_placed, "INV-00000002"),
        _answer(uuid.uuid4(), uuid.uuid4(), "INV-00000003"),  # an order this database does not hold
        _answer(first, first_placed, "INV-00000009"),  # a second number for the first order
    ]
    batch = [_item(i, a.to_payload(), f"corr-{n}") for n, (i, a) in enumerate(zip(ids, answers, strict=True))]
    outcomes = order_consumer.apply_batch(batch)
    assert outcomes == [Applied.INVOICED, Applied.INVOICED, None, Applied.NUMBER_CONFLICT]
    assert order_consumer.apply_batch(batch[:1]) == [Applied.DUPLICATE_MESSAGE]
    with sessions() as session:
        orders = {o.id: (o.status, o.invoice_number) for o in session.scalars(select(Order))}
        inbox = set(session.scalars(select(order_inbox.processed.c.message_id)))
        unacknowledged = session.scalar(
            select(func.count()).select_from(order_outbox).where(order_outbox.c.acknowledged_at.is_(None))
        )
    assert orders == {first: ("invoiced", "INV-00000001"), second: ("invoiced", "INV-00000002")}
    assert inbox == {ids[0], ids[1], ids[3]}, (
        "nothing written for the unknown order: the single task parks it"
    )
    assert unacknowledged == 0


def test_a_batch_answer_racing_another_consumers_answer_for_its_order_is_no_number_conflict(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated]
) -> None:
    """Another consumer invoices the order and commits while the batch statement waits for the order's
    row: the batch compares the number that committed, not its statement's snapshot, which held none
    (the soak logged such races as ``order.invoice_number_conflict``)."""
    order_id, placed = _placed_order(orders_engine)
    item = _item(uuid.uuid4(), _answer(order_id, placed, "INV-00000001").to_payload(), "corr-race")
    other = orders_engine.connect()
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        other.execute(
            update(Order.__table__)
            .where(Order.__table__.c.id == order_id)
            .values(status="invoiced", invoice_number="INV-00000001", invoiced_at=datetime.now(UTC))
        )
        racing = pool.submit(order_consumer.apply_batch, [item])
        wait_until(
            lambda: waiting_on_a_lock(orders_engine),
            timeout=30,
            message="the batch statement waiting for the order's row",
        )
        other.commit()
        outcomes = racing.result(timeout=60)
    finally:
        other.close()  # rolls back what did not commit: the batch is never left waiting
        pool.shutdown()

    assert outcomes == [Applied.ALREADY_INVOICED]
    assert _unanswered(orders_engine, order_id) == {order_id: ("invoiced", False)}


def test_a_batchs_answers_go_into_the_outbox_as_one_insert(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    """The receivers add an answer per invoice; inside the consumer's batch they cost one statement."""
    events = [order_placed_event() for _ in range(5)]
    batch = [_item(uuid.uuid4(), e.to_payload(), f"corr-{n}") for n, e in enumerate(events)]
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    sqlalchemy_event.listen(pg_invoice_db.engine, "before_cursor_execute", record)
    try:
        assert invoice_consumer.apply_batch(batch) == [Outcome.CREATED] * 5
    finally:
        sqlalchemy_event.remove(pg_invoice_db.engine, "before_cursor_execute", record)
    outbox_inserts = [s for s in statements if s.lstrip().startswith("INSERT INTO outbox")]
    assert len(outbox_inserts) == 1, outbox_inserts
    with pg_invoice_db.session() as session:
        answers = {
            parse_invoice_created(row.payload).order_id: row.headers
            for row in session.execute(select(invoice_outbox.c.payload, invoice_outbox.c.headers))
        }
    assert set(answers) == {e.order_id for e in events}
    assert [answers[e.order_id]["x_request_id"] for e in events] == [f"corr-{n}" for n in range(5)]


def test_a_failed_batch_inserts_none_of_its_gathered_answers(
    pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    calls: list[str] = []

    def fail_on_the_third(sender: object, **_: object) -> None:
        calls.append("answer")
        if len(calls) == 3:
            raise RuntimeError("a receiver failed mid-batch")

    batch = [_item(uuid.uuid4(), order_placed_event().to_payload(), f"corr-{n}") for n in range(4)]
    with invoice_created.connected_to(fail_on_the_third), pytest.raises(RuntimeError):
        invoice_consumer.apply_batch(batch)
    with pg_invoice_db.session() as session:
        assert session.scalar(select(func.count()).select_from(invoice_outbox)) == 0
        assert session.scalar(select(func.count()).select_from(Invoice)) == 0
