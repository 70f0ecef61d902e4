"""Inbox retention on SQLite: old processed ids and delivery counts go in bounded batches; nothing doubles.

``flask_outbox.retention`` on both services' inboxes (the invoice worker's and the order consumer's:
the same three tables, ``define_inbox``), and a message redelivered after its inbox row was pruned
still changes nothing on either side (each handler keeps its own uniqueness).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from flask_outbox import DUPLICATE, InboxWorker
from flask_outbox.db import utcnow
from flask_outbox.retention import InboxPruner, InboxRetention, check_retention, prune_inbox
from sqlalchemy import func, insert, select

from invoice_worker.__main__ import main
from invoice_worker.invoicing import Outcome
from invoice_worker.models import Invoice, outbox
from order_service.invoice_answers import Outcome as AnswerOutcome
from order_service.models import Order
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ORDER_PLACED, ROUTES
from tests.support.events import order_placed_event
from tests.unit.test_order_consumer import answer, place

RETENTION = InboxRetention(retention=timedelta(days=30), batch=2)


@pytest.fixture(params=["invoice", "order"])
def worker(request: pytest.FixtureRequest) -> InboxWorker:
    """The invoice worker's inbox, or the order consumer's."""
    worker: InboxWorker = request.getfixturevalue(f"{request.param}_worker")
    return worker


def _seed(worker: InboxWorker, *, age: timedelta, count: int, delivered_age: timedelta | None = None) -> None:
    """``count`` messages processed ``age`` ago, last delivered ``delivered_age`` ago (default: the same)."""
    processed_at = utcnow() - age
    delivered_at = utcnow() - (delivered_age if delivered_age is not None else age)
    ids = [uuid.uuid4() for _ in range(count)]
    with worker.database.engine.begin() as conn:
        conn.execute(
            insert(worker.inbox.processed),
            [{"message_id": i, "topic": ORDER_PLACED, "processed_at": processed_at} for i in ids],
        )
        conn.execute(
            insert(worker.inbox.deliveries),
            [
                {
                    "message_id": i,
                    "deliveries": 1,
                    "first_delivered_at": processed_at,
                    "last_delivered_at": delivered_at,
                }
                for i in ids
            ],
        )


def _counts(worker: InboxWorker) -> tuple[int, int]:
    with worker.database.session() as session:
        processed = session.scalar(select(func.count()).select_from(worker.inbox.processed)) or 0
        delivered = session.scalar(select(func.count()).select_from(worker.inbox.deliveries)) or 0
    return processed, delivered


def test_rows_older_than_the_retention_are_pruned_in_batches_and_younger_ones_kept(
    worker: InboxWorker,
) -> None:
    _seed(worker, age=timedelta(days=31), count=5)
    _seed(worker, age=timedelta(days=29), count=3)

    pruned = prune_inbox(worker.database.engine, worker.inbox, RETENTION)

    assert (pruned.processed_messages, pruned.message_deliveries, pruned.skipped) == (5, 5, False)
    assert _counts(worker) == (3, 3)


def test_dead_letters_older_than_the_retention_are_pruned_too(worker: InboxWorker) -> None:
    """A dead letter is an operator's to replay or drop; one older than the retention goes by itself."""
    now = utcnow()
    ages = [timedelta(days=31), timedelta(days=45), timedelta(days=29)]
    with worker.database.engine.begin() as conn:
        conn.execute(
            insert(worker.inbox.dead_letters),
            [
                {
                    "message_id": uuid.uuid4(),
                    "task_name": "t",
                    "payload": {},
                    "reason": "r",
                    "created_at": now - age,
                }
                for age in ages
            ],
        )

    pruned = prune_inbox(worker.database.engine, worker.inbox, RETENTION)

    assert pruned.dead_letters == 2
    with worker.database.session() as session:
        left = list(session.scalars(select(worker.inbox.dead_letters.c.created_at)))
    assert len(left) == 1  # the 29-day-old one


def test_a_bounded_prune_stops_after_its_batches(worker: InboxWorker) -> None:
    _seed(worker, age=timedelta(days=40), count=5)

    pruned = prune_inbox(worker.database.engine, worker.inbox, RETENTION, max_batches=1)

    assert (pruned.processed_messages, pruned.message_deliveries) == (2, 2)
    assert _counts(worker) == (3, 3)
    later = [prune_inbox(worker.database.engine, worker.inbox, RETENTION, max_batches=1) for _ in range(3)]
    assert [(p.processed_messages, p.message_deliveries) for p in later] == [(2, 2), (1, 1), (0, 0)]
    assert _counts(worker) == (0, 0)


def test_an_old_inbox_row_is_kept_while_its_message_is_still_being_delivered(worker: InboxWorker) -> None:
    """Else a late redelivery would find a delivery count but no inbox row, and look like poison."""
    _seed(worker, age=timedelta(days=31), count=1, delivered_age=timedelta(days=1))

    pruned = prune_inbox(worker.database.engine, worker.inbox, RETENTION)

    assert (pruned.processed_messages, pruned.message_deliveries) == (0, 0)
    assert _counts(worker) == (1, 1)


def test_a_message_redelivered_after_its_inbox_row_was_pruned_is_answered_not_invoiced_again(
    invoice_worker: InboxWorker,
) -> None:
    consumer = invoice_worker.consumer(ROUTES[ORDER_PLACED].task)
    body, message_id = order_placed_event().to_payload(), uuid.uuid4()
    assert consumer.deliver(message_id, body, 0) == Outcome.CREATED
    prune_inbox(invoice_worker.database.engine, invoice_worker.inbox, InboxRetention(retention=timedelta(0)))
    assert _counts(invoice_worker) == (0, 0)

    assert consumer.deliver(message_id, body, 0) == Outcome.ALREADY_INVOICED

    with invoice_worker.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == 1
        assert session.scalar(select(func.count()).select_from(outbox)) == 2


def test_an_answer_redelivered_after_its_inbox_row_was_pruned_changes_nothing(
    order_worker: InboxWorker, client: FlaskClient
) -> None:
    consumer = order_worker.consumer(ROUTES[INVOICE_CREATED].task)
    order_id, placed_message = place(client)
    message_id, body = uuid.uuid4(), answer(order_id, placed_message, "INV-00000001")
    assert consumer.deliver(message_id, body, 0) == AnswerOutcome.INVOICED
    assert consumer.deliver(message_id, body, 0) == DUPLICATE
    prune_inbox(order_worker.database.engine, order_worker.inbox, InboxRetention(retention=timedelta(0)))
    assert _counts(order_worker) == (0, 0)

    assert consumer.deliver(message_id, body, 0) == AnswerOutcome.ALREADY_INVOICED

    with order_worker.database.session() as session:
        order = session.get(Order, uuid.UUID(order_id))
        assert order is not None
        assert (order.status, order.invoice_number) == ("invoiced", "INV-00000001")


def test_a_retention_shorter_than_the_redelivery_window_is_refused(sqlite_settings: Settings) -> None:
    with pytest.raises(ValueError, match="INBOX_RETENTION_SECONDS"):
        check_retention(sqlite_settings.model_copy(update={"inbox_retention_seconds": 3600}))
    check_retention(sqlite_settings)  # the default (30 days) is far beyond it


def test_the_pruner_prunes_in_passing_at_most_once_per_interval(worker: InboxWorker) -> None:
    _seed(worker, age=timedelta(days=31), count=3)
    pruner = InboxPruner(worker.database, worker.inbox, RETENTION, interval=3600)

    first = pruner.prune_when_due()
    _seed(worker, age=timedelta(days=31), count=2)
    second = pruner.prune_when_due()

    assert first is not None
    assert (first.processed_messages, first.message_deliveries) == (3, 3)
    assert second is None  # not due again within the interval: the 2 new old rows wait for the next round
    assert _counts(worker) == (2, 2)


def test_each_worker_prunes_in_passing_after_a_delivery(invoice_worker: InboxWorker) -> None:
    """The worker's pruner: retention from ``INBOX_RETENTION_SECONDS``, a round every 5 minutes at most."""
    assert invoice_worker.pruner.policy.retention == timedelta(
        seconds=invoice_worker.settings.inbox_retention_seconds
    )
    assert invoice_worker.pruner.interval == 300.0
    _seed(invoice_worker, age=timedelta(days=31), count=2)
    task = invoice_worker.app.tasks[ROUTES[ORDER_PLACED].task]
    message_id, body = uuid.uuid4(), order_placed_event().to_payload()
    signature = invoice_worker.signer.sign(message_id, ORDER_PLACED, body)
    task.push_request(
        id=str(message_id), retries=0, called_directly=False, delivery_info={}, outbox_signature=signature
    )
    try:
        assert task.run(body) == Outcome.CREATED
    finally:
        task.pop_request()
    assert _counts(invoice_worker) == (1, 1)  # the 2 old rows went; this delivery's stays


def _seed_invoices_db(var_dir: Path, count: int) -> None:
    from tests.unit.conftest import invoice_worker_on, worker_settings

    for seeded in invoice_worker_on(worker_settings(var_dir)):
        _seed(seeded, age=timedelta(days=31), count=count)


def test_prune_command_prints_what_it_deleted(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed_invoices_db(Path(sqlite_settings.var_dir), 4)
    monkeypatch.setenv("VAR_DIR", str(Path(sqlite_settings.var_dir)))

    assert main(["prune"]) == 0

    assert (
        capsys.readouterr().out.strip() == "pruned processed_messages=4 message_deliveries=4 dead_letters=0"
    )


def test_prune_command_refuses_a_retention_shorter_than_the_redelivery_window(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VAR_DIR", str(Path(sqlite_settings.var_dir)))
    monkeypatch.setenv("INBOX_RETENTION_SECONDS", "60")

    assert main(["prune"]) == 2

    assert "must exceed the redelivery window" in capsys.readouterr().err
