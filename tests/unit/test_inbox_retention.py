"""Inbox retention on SQLite: old processed ids and delivery counts go in bounded batches; nothing doubles."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from flask_outbox.db import utcnow
from sqlalchemy import func, insert, select

from invoice_worker.__main__ import main
from invoice_worker.database import InvoiceDatabase
from invoice_worker.invoicing import Outcome, create_invoice
from invoice_worker.models import Invoice, MessageDelivery, ProcessedMessage, outbox
from invoice_worker.retention import InboxPruner, InboxRetention, check_retention, prune_inbox
from shared.config import Settings
from shared.contracts import ORDER_PLACED
from tests.support.events import order_placed_event

RETENTION = InboxRetention(retention=timedelta(days=30), batch=2)


def _seed(
    database: InvoiceDatabase, *, age: timedelta, count: int, delivered_age: timedelta | None = None
) -> None:
    """``count`` messages processed ``age`` ago, last delivered ``delivered_age`` ago (default: the same)."""
    processed_at = utcnow() - age
    delivered_at = utcnow() - (delivered_age if delivered_age is not None else age)
    ids = [uuid.uuid4() for _ in range(count)]
    with database.engine.begin() as conn:
        conn.execute(
            insert(ProcessedMessage),
            [{"message_id": i, "topic": ORDER_PLACED, "processed_at": processed_at} for i in ids],
        )
        conn.execute(
            insert(MessageDelivery),
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


def _counts(database: InvoiceDatabase) -> tuple[int, int]:
    with database.session() as session:
        processed = session.scalar(select(func.count()).select_from(ProcessedMessage)) or 0
        delivered = session.scalar(select(func.count()).select_from(MessageDelivery)) or 0
    return processed, delivered


def test_rows_older_than_the_retention_are_pruned_in_batches_and_younger_ones_kept(
    invoice_db: InvoiceDatabase,
) -> None:
    _seed(invoice_db, age=timedelta(days=31), count=5)
    _seed(invoice_db, age=timedelta(days=29), count=3)

    pruned = prune_inbox(invoice_db.engine, RETENTION)

    assert (pruned.processed_messages, pruned.message_deliveries, pruned.skipped) == (5, 5, False)
    assert _counts(invoice_db) == (3, 3)


def test_a_bounded_prune_stops_after_its_batches(invoice_db: InvoiceDatabase) -> None:
    _seed(invoice_db, age=timedelta(days=40), count=5)

    pruned = prune_inbox(invoice_db.engine, RETENTION, max_batches=1)

    assert (pruned.processed_messages, pruned.message_deliveries) == (2, 2)
    assert _counts(invoice_db) == (3, 3)


def test_an_old_inbox_row_is_kept_while_its_message_is_still_being_delivered(
    invoice_db: InvoiceDatabase,
) -> None:
    """Else a late redelivery would find a delivery count but no inbox row, and look like poison."""
    _seed(invoice_db, age=timedelta(days=31), count=1, delivered_age=timedelta(days=1))

    pruned = prune_inbox(invoice_db.engine, RETENTION)

    assert (pruned.processed_messages, pruned.message_deliveries) == (0, 0)
    assert _counts(invoice_db) == (1, 1)


def test_a_message_redelivered_after_its_inbox_row_was_pruned_is_answered_not_invoiced_again(
    invoice_db: InvoiceDatabase,
) -> None:
    event, message_id = order_placed_event(), uuid.uuid4()
    with invoice_db.session() as session:
        create_invoice(session, message_id, event)
    prune_inbox(invoice_db.engine, InboxRetention(retention=timedelta(0)))
    assert _counts(invoice_db) == (0, 0)

    with invoice_db.session() as session:
        outcome = create_invoice(session, message_id, event)

    assert outcome is Outcome.ALREADY_INVOICED
    with invoice_db.session() as session:
        assert session.scalar(select(func.count()).select_from(Invoice)) == 1
        assert session.scalar(select(func.count()).select_from(outbox)) == 2


def test_a_retention_shorter_than_the_redelivery_window_is_refused(sqlite_settings: Settings) -> None:
    with pytest.raises(ValueError, match="INBOX_RETENTION_SECONDS"):
        check_retention(sqlite_settings.model_copy(update={"inbox_retention_seconds": 3600}))
    check_retention(sqlite_settings)  # the default (30 days) is far beyond it


def test_the_pruner_prunes_in_passing_at_most_once_per_interval(invoice_db: InvoiceDatabase) -> None:
    _seed(invoice_db, age=timedelta(days=31), count=3)
    pruner = InboxPruner(invoice_db, RETENTION, interval=3600)

    first = pruner.prune_when_due()
    _seed(invoice_db, age=timedelta(days=31), count=2)
    second = pruner.prune_when_due()

    assert first is not None
    assert (first.processed_messages, first.message_deliveries) == (3, 3)
    assert second is None  # not due again within the interval: the 2 new old rows wait for the next round
    assert _counts(invoice_db) == (2, 2)


def test_prune_command_prints_what_it_deleted(
    sqlite_settings: Settings,
    invoice_db: InvoiceDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _seed(invoice_db, age=timedelta(days=31), count=4)
    monkeypatch.setenv("VAR_DIR", str(Path(sqlite_settings.var_dir)))

    assert main(["prune"]) == 0

    assert capsys.readouterr().out.strip() == "pruned processed_messages=4 message_deliveries=4"
    monkeypatch.setenv("INBOX_RETENTION_SECONDS", "60")
    assert main(["prune"]) == 2
    assert "must exceed the redelivery window" in capsys.readouterr().err
