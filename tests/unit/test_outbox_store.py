"""The relay's SQL on SQLite (embedded mode): the order guard and Python's clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask_outbox import store
from flask_outbox.db import create_db_engine, utcnow
from flask_outbox.table import define_outbox
from flask_outbox.writer import OutboxMessage, add_message
from sqlalchemy import Engine, MetaData, Table, select, update
from sqlalchemy.orm import Session


@pytest.fixture
def outbox() -> Table:
    return define_outbox(MetaData())


@pytest.fixture
def engine(tmp_path: Path, outbox: Table) -> Iterator[Engine]:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    outbox.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _write(engine: Engine, outbox: Table, *aggregates: str) -> None:
    with Session(engine) as session, session.begin():
        for aggregate in aggregates:
            add_message(session, outbox, OutboxMessage("order.placed", "order", aggregate, {"n": 1}))


def _claimed(engine: Engine, outbox: Table) -> list[tuple[str, int]]:
    """What a claim would take now; rolled back, so the rows stay due."""
    with engine.connect() as conn, conn.begin() as transaction:
        batch = store.claim(conn, outbox, limit=100, partitions=None, partition_count=1).messages
        transaction.rollback()
    return [(m.aggregate_id, m.id) for m in batch]


def test_rows_written_on_sqlite_are_due_at_once(engine: Engine, outbox: Table) -> None:
    before = utcnow()
    _write(engine, outbox, "a", "b")

    assert [aggregate for aggregate, _ in _claimed(engine, outbox)] == ["a", "b"]
    with engine.connect() as conn:
        row = conn.execute(select(outbox.c.created_at, outbox.c.available_at).limit(1)).one()
    assert before <= row.created_at == row.available_at <= utcnow()


def test_failed_row_holds_back_later_rows_of_its_aggregate_only(engine: Engine, outbox: Table) -> None:
    _write(engine, outbox, "a", "b", "a", "b")
    [(_, first_a), _, (_, later_a), (_, later_b)] = _claimed(engine, outbox)
    with engine.begin() as conn:
        [message] = store.claim(conn, outbox, limit=1, partitions=None, partition_count=1).messages
        store.release(conn, outbox, [message.id])
        failed = store.record_failures(
            conn, outbox, [(message, "ConnectionError")], max_attempts=3, base_backoff=60, max_backoff=60
        )
    assert (failed[0].message.id, failed[0].attempts, failed[0].parked) == (first_a, 1, False)

    claimed = _claimed(engine, outbox)
    assert later_a not in [row_id for _, row_id in claimed], "a later row overtook a row in backoff"
    assert later_b in [row_id for _, row_id in claimed]

    with engine.begin() as conn:  # the failed row comes due: it goes first, its successor with it
        conn.execute(update(outbox).where(outbox.c.id == first_a).values(available_at=utcnow()))
    assert [row_id for aggregate, row_id in _claimed(engine, outbox) if aggregate == "a"] == [first_a]


def test_backoff_and_parking_use_pythons_clock_on_sqlite(engine: Engine, outbox: Table) -> None:
    _write(engine, outbox, "a")
    before = utcnow()
    with engine.begin() as conn:
        [message] = store.claim(conn, outbox, limit=1, partitions=None, partition_count=1).messages
        store.release(conn, outbox, [message.id])
        [failure] = store.record_failures(
            conn, outbox, [(message, "boom")], max_attempts=1, base_backoff=10, max_backoff=10
        )
    with engine.connect() as conn:
        row = conn.execute(select(outbox.c.available_at, outbox.c.parked_at, outbox.c.attempts)).one()

    assert failure.parked
    assert row.attempts == 1
    assert before <= row.parked_at <= utcnow()
    assert before + timedelta(seconds=5) <= row.available_at <= utcnow() + timedelta(seconds=10)
    assert _claimed(engine, outbox) == []
    with engine.begin() as conn:
        assert store.retry_parked(conn, outbox) == 1
    assert [aggregate for aggregate, _ in _claimed(engine, outbox)] == ["a"]


def test_a_failed_row_loses_the_claims_stamp_with_its_backoff(engine: Engine, outbox: Table) -> None:
    _write(engine, outbox, "a")
    with engine.begin() as conn:
        [message] = store.claim(conn, outbox, limit=1, partitions=None, partition_count=1).messages
        store.record_failures(
            conn, outbox, [(message, "ConnectionError")], max_attempts=3, base_backoff=60, max_backoff=60
        )
    with engine.connect() as conn:
        row = conn.execute(select(outbox.c.published_at, outbox.c.attempts)).one()
    assert (row.published_at, row.attempts) == (None, 1)
