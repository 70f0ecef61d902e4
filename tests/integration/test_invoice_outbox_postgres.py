"""The invoice outbox on real Postgres and Redis: NOTIFY at commit, the shared relay routes it, retention."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis
from flask_outbox import WorkerDatabase
from flask_outbox.consumer import Consumer
from flask_outbox.publisher import publisher_for
from flask_outbox.relay import OutboxRelay, RelayPolicy
from flask_outbox.retention import _LOCK_KEY, InboxRetention, prune_inbox
from flask_outbox.table import NOTIFY_CHANNEL
from sqlalchemy import func, insert, make_url, select, text

from harness.outbox import consumed
from invoice_worker.models import Invoice, inbox, outbox
from invoice_worker.signals import invoice_created
from shared.config import Settings
from shared.contracts import INVOICE_CREATED, ROUTES, OrderPlaced, parse_invoice_created
from tests.support.events import order_placed_event


def _listener(url: str) -> psycopg.Connection[tuple[object, ...]]:
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def test_a_committed_invoice_notifies_the_relay_and_a_rolled_back_one_does_not(
    pg_settings: Settings, pg_invoice_db: WorkerDatabase, invoice_consumer: Consumer[OrderPlaced]
) -> None:
    def failing_receiver(sender: Any, **_: Any) -> None:
        raise RuntimeError("a receiver failed before commit")

    listener = _listener(pg_settings.invoices_database_url)
    try:
        with invoice_created.connected_to(failing_receiver), pytest.raises(RuntimeError):
            invoice_consumer.apply(uuid.uuid4(), order_placed_event().to_payload())
        with pg_invoice_db.engine.begin() as conn:  # a marker: notifications arrive in commit order
            conn.execute(text("SELECT pg_notify(:channel, 'marker')"), {"channel": NOTIFY_CHANNEL})
        invoice_consumer.apply(uuid.uuid4(), order_placed_event().to_payload())

        notifications = [n.payload for n in listener.notifies(timeout=10, stop_after=2)]
    finally:
        listener.close()

    assert notifications == ["marker", ""], "the rolled-back invoice notified, or the committed one did not"


def test_the_shared_relay_publishes_answers_to_the_order_service_queue(
    pg_settings: Settings,
    pg_invoice_db: WorkerDatabase,
    invoice_consumer: Consumer[OrderPlaced],
    redis_client: redis.Redis,
) -> None:
    events = [order_placed_event() for _ in range(3)]
    causes = [uuid.uuid4() for _ in events]
    for event, cause in zip(events, causes, strict=True):
        invoice_consumer.apply(cause, event.to_payload())
    relay = OutboxRelay(
        pg_invoice_db.engine, outbox, publisher_for(pg_settings, ROUTES, "invoice_relay"), RelayPolicy()
    )
    try:
        assert relay.drain() == 3
    finally:
        relay.disconnect()
        relay.publisher.close()

    deliveries = consumed(redis_client, pg_settings.queue(ROUTES[INVOICE_CREATED].queue))
    route = ROUTES[INVOICE_CREATED]
    assert {d.task for d in deliveries} == {route.batch_task}, "three due answers travel as one batch task"
    answers = {parse_invoice_created(d.payload).order_id: d for d in deliveries}
    assert set(answers) == {e.order_id for e in events}
    with pg_invoice_db.session() as session:
        rows = {r.aggregate_id: r for r in session.execute(select(outbox))}
        numbers = {
            order_id: number for order_id, number in session.execute(select(Invoice.order_id, Invoice.number))
        }
    for event, cause in zip(events, causes, strict=True):
        delivered = answers[event.order_id]
        assert delivered.task_id == str(rows[event.order_id].message_id)
        assert delivered.headers["causation_id"] == str(cause)
        assert parse_invoice_created(delivered.payload).invoice_number == numbers[event.order_id]
        assert rows[event.order_id].published_at is not None


def _seed_by_database_clock(database: WorkerDatabase, age: timedelta, count: int) -> None:
    with database.engine.begin() as conn:
        stamp = conn.execute(select(func.now())).scalar_one() - age
        ids = [uuid.uuid4() for _ in range(count)]
        conn.execute(
            insert(inbox.processed),
            [{"message_id": i, "topic": "order.placed", "processed_at": stamp} for i in ids],
        )
        conn.execute(
            insert(inbox.deliveries),
            [
                {"message_id": i, "deliveries": 1, "first_delivered_at": stamp, "last_delivered_at": stamp}
                for i in ids
            ],
        )


def _inbox_size(database: WorkerDatabase) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(inbox.processed)) or 0


def test_inbox_pruning_takes_turns_and_deletes_only_what_aged_out_by_the_database_clock(
    pg_invoice_db: WorkerDatabase,
) -> None:
    policy = InboxRetention(retention=timedelta(days=30), batch=100)
    _seed_by_database_clock(pg_invoice_db, timedelta(days=30, minutes=1), 250)
    _seed_by_database_clock(pg_invoice_db, timedelta(days=29, hours=23), 7)

    with pg_invoice_db.engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        busy = prune_inbox(pg_invoice_db.engine, inbox, policy)
    pruned = prune_inbox(pg_invoice_db.engine, inbox, policy)

    assert (busy.skipped, busy.processed_messages) == (True, 0)
    assert (pruned.skipped, pruned.processed_messages, pruned.message_deliveries) == (False, 250, 250)
    assert _inbox_size(pg_invoice_db) == 7
