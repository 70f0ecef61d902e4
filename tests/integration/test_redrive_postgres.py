"""Re-drive and the order consumer on real Postgres: the indexed lookup, SKIP LOCKED, racing duplicates."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from flask_outbox import redrive
from flask_outbox.consumer import Consumer
from flask_outbox.db import database_now
from flask_outbox.redrive import RedriveRule
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from order_service.invoice_answers import Outcome
from order_service.models import outbox
from shared.contracts import ORDER_PLACED, InvoiceCreated
from tests.support.locks import waiting_on_a_lock

RULE = RedriveRule(topics=frozenset({ORDER_PLACED}), after=60, max_redrives=20)


def seed(engine: Engine, count: int, *, published_ago: str, acknowledged: bool, redrives: int = 0) -> None:
    """``count`` published outbox rows in one INSERT ... SELECT (a 50 000-row table in about a second)."""
    acked = "now()" if acknowledged else "NULL"
    with engine.begin() as conn:
        conn.execute(
            text(
                f"""
                INSERT INTO outbox (message_id, topic, aggregate_type, aggregate_id, bucket, payload, headers,
                                    created_at, available_at, published_at, acknowledged_at, redrives)
                SELECT gen_random_uuid(), :topic, 'order', g::text, g % 1024, '{{}}', '{{}}',
                       now() - interval '2 hours', now() - interval '2 hours',
                       now() - interval '{published_ago}', {acked}, :redrives
                FROM generate_series(1, :count) AS g
                """
            ),
            {"topic": ORDER_PLACED, "count": count, "redrives": redrives},
        )
        conn.execute(text("ANALYZE outbox"))


def plan(engine: Engine, rule: RedriveRule) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the re-drive statement, rolled back."""
    with engine.connect() as conn, conn.begin() as transaction:
        now = database_now(conn)
        compiled = redrive.redrive_statement(outbox, rule, now=now, postgres=True).compile(
            dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
        )
        explain = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled.string}"
        document = conn.exec_driver_sql(explain, compiled.params).scalar_one()
        transaction.rollback()
    return dict(document[0])


def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]


def test_the_redrive_touches_only_due_rows_through_its_index_on_a_50k_row_outbox(
    orders_engine: Engine,
) -> None:
    seed(orders_engine, 40_000, published_ago="3 hours", acknowledged=True)  # answered history
    seed(orders_engine, 9_700, published_ago="10 seconds", acknowledged=False)  # answers still coming
    seed(orders_engine, 200, published_ago="30 seconds", acknowledged=False, redrives=3)  # re-driven lately
    seed(orders_engine, 100, published_ago="90 seconds", acknowledged=False)  # due: first re-drive

    document = plan(orders_engine, RULE)
    all_nodes = nodes(document["Plan"])
    scans = [n for n in all_nodes if "Scan" in n["Node Type"] and n.get("Relation Name", "") == "outbox"]
    index_scans = [n for n in all_nodes if n.get("Index Name") == "ix_outbox_unacknowledged"]
    print(f"redrive plan: {[n['Node Type'] for n in all_nodes]}, {document['Execution Time']:.2f} ms")

    assert index_scans, all_nodes
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"]
    # One index range per level: only the 100 due entries are read, not the 9 900 waiting ones.
    assert sum(n["Actual Rows"] for n in index_scans) <= 100 + 5
    with orders_engine.connect() as conn:
        assert redrive.redrive_unanswered(conn, outbox, RULE) == 100
        assert redrive.redrive_unanswered(conn, outbox, RULE) == 0


def test_concurrent_redrives_take_each_row_once(orders_engine: Engine) -> None:
    seed(orders_engine, 2_000, published_ago="2 minutes", acknowledged=False)
    rule = replace(RULE, batch=50)
    barrier = threading.Barrier(4)

    def drive() -> int:
        barrier.wait()
        total = 0
        with orders_engine.connect() as conn:
            while True:
                with conn.begin():  # no advisory lock here: SKIP LOCKED alone must keep them apart
                    rows = redrive.redrive_due(conn, outbox, rule, now=database_now(conn))
                total += len(rows)
                if not rows:
                    return total

    with ThreadPoolExecutor(4) as pool:
        totals = list(pool.map(lambda _: drive(), range(4)))

    assert sum(totals) == 2_000
    with orders_engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT redrives, count(*) FROM outbox GROUP BY redrives")).all())
    assert counts == {1: 2_000}


def test_one_relay_at_a_time_redrives(orders_engine: Engine) -> None:
    seed(orders_engine, 10, published_ago="2 minutes", acknowledged=False)
    lock = redrive._lock_key(outbox)
    with orders_engine.connect() as holder, holder.begin():
        holder.execute(text("SELECT pg_advisory_xact_lock(:k, 1)"), {"k": lock})
        with orders_engine.connect() as conn:
            assert redrive.redrive_unanswered(conn, outbox, RULE) == 0  # another relay is at it
    with orders_engine.connect() as conn:
        assert redrive.redrive_unanswered(conn, outbox, RULE) == 10


def _order_with_outbox_row(engine: Engine) -> tuple[str, uuid.UUID]:
    order_id, message_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO orders (id, customer_id, currency, status, amount_total, created_at)"
                " VALUES (:id, 'cus_1', 'EUR', 'placed', 300, now())"
            ),
            {"id": order_id},
        )
        conn.execute(
            text(
                "INSERT INTO outbox (message_id, topic, aggregate_type, aggregate_id, bucket, payload,"
                " headers, created_at, available_at, published_at)"
                " VALUES (:m, :topic, 'order', :a, 1, '{}', '{}', now(), now(), now())"
            ),
            {"m": message_id, "topic": ORDER_PLACED, "a": str(order_id)},
        )
    return str(order_id), message_id


def _answer(order_id: str, causation: uuid.UUID, number: str) -> InvoiceCreated:
    return InvoiceCreated(
        order_id=order_id,
        invoice_number=number,
        currency="EUR",
        amount_total=300,
        causation_id=str(causation),
        invoiced_at=datetime(2026, 3, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize("same_message", [True, False], ids=["one-message-twice", "two-answers"])
def test_racing_deliveries_apply_one_effect(
    orders_engine: Engine, order_consumer: Consumer[InvoiceCreated], same_message: bool
) -> None:
    """Both deliveries are held at the database (the order row locked by a third session) until both wait."""
    order_id, placed = _order_with_outbox_row(orders_engine)
    sessions = sessionmaker(orders_engine, expire_on_commit=False)
    first_id = uuid.uuid4()
    deliveries = [(first_id, _answer(order_id, placed, "INV-A"))]
    deliveries.append((first_id if same_message else uuid.uuid4(), _answer(order_id, placed, "INV-B")))

    def apply(message_id: uuid.UUID, event: InvoiceCreated) -> Callable[[], str]:
        def run() -> str:
            return order_consumer.apply(message_id, event.to_payload())

        return run

    blocker: Session = sessions()
    blocker.execute(text("SELECT 1 FROM orders WHERE id = :id FOR UPDATE"), {"id": uuid.UUID(order_id)})
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(apply(m, e)) for m, e in deliveries]
        deadline = time.monotonic() + 10
        while waiting_on_a_lock(orders_engine) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_on_a_lock(orders_engine) == 2  # both in flight, blocked in the database
        blocker.rollback()
        blocker.close()
        outcomes = [f.result(timeout=10) for f in futures]

    with orders_engine.connect() as conn:
        status, number = conn.execute(
            text("SELECT status, invoice_number FROM orders WHERE id = :id"), {"id": uuid.UUID(order_id)}
        ).one()
        acked = conn.scalar(text("SELECT acknowledged_at FROM outbox WHERE message_id = :m"), {"m": placed})
        inbox = conn.scalar(text("SELECT count(*) FROM processed_messages"))
    loser = Outcome.DUPLICATE_MESSAGE if same_message else Outcome.NUMBER_CONFLICT
    assert sorted(outcomes) == sorted([Outcome.INVOICED, loser])
    assert inbox == (1 if same_message else 2)
    winner = deliveries[outcomes.index(Outcome.INVOICED)][1]
    assert (status, number) == ("invoiced", winner.invoice_number)  # the first committed number stays
    assert acked is not None
