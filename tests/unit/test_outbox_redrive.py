"""Re-drive on SQLite (embedded mode): which rows come due, the backoff per row, the cap, and retention.

The Postgres plan (one index range per level) and concurrency: tests/integration/test_redrive_postgres.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask_outbox import redrive
from flask_outbox.db import create_db_engine, utcnow
from flask_outbox.messages import BatchOutcome, PendingMessage
from flask_outbox.redrive import RedriveRule
from flask_outbox.relay import OutboxRelay, RelayPolicy
from flask_outbox.writer import bucket_of
from sqlalchemy import Engine, insert, select, update

from order_service.models import outbox
from shared.config import Settings
from shared.contracts import ORDER_PLACED

RULE = RedriveRule(topics=frozenset({ORDER_PLACED}), after=60, max_redrives=20)


@pytest.fixture
def engine(app: Flask, api_settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(api_settings.orders_database_url)
    yield engine
    engine.dispose()


def add_row(
    engine: Engine,
    *,
    published_ago: float | None,
    redrives: int = 0,
    acknowledged: bool = False,
    topic: str = ORDER_PLACED,
) -> int:
    now = utcnow()
    published_at = None if published_ago is None else now - timedelta(seconds=published_ago)
    aggregate = str(uuid.uuid4())
    with engine.begin() as conn:
        return conn.execute(
            insert(outbox)
            .values(
                message_id=uuid.uuid4(),
                topic=topic,
                aggregate_type="order",
                aggregate_id=aggregate,
                bucket=bucket_of(aggregate),
                payload={"order_id": aggregate},
                headers={},
                created_at=now - timedelta(hours=3),
                available_at=now - timedelta(hours=3),
                published_at=published_at,
                acknowledged_at=now if acknowledged else None,
                redrives=redrives,
            )
            .returning(outbox.c.id)
        ).scalar_one()


def row(engine: Engine, row_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(outbox).where(outbox.c.id == row_id)).one()


def test_only_unacknowledged_rows_unanswered_for_the_delay_are_redriven_however_often_before(
    engine: Engine,
) -> None:
    """Lost for the fifth time, a message comes back as fast as the first: no backoff grows with redrives."""
    due = {
        "first, just late": add_row(engine, published_ago=61),
        "once, just late": add_row(engine, published_ago=61, redrives=1),
        "five times, just late": add_row(engine, published_ago=61, redrives=5),
        "last allowed": add_row(engine, published_ago=61, redrives=19),
    }
    not_due = {
        "answer may still come": add_row(engine, published_ago=59),
        "once, answer may still come": add_row(engine, published_ago=59, redrives=1),
        "many, answer may still come": add_row(engine, published_ago=59, redrives=10),
        "acknowledged": add_row(engine, published_ago=9999, acknowledged=True),
        "not published yet": add_row(engine, published_ago=None),
        "out of redrives": add_row(engine, published_ago=99999, redrives=20),
        "expects no answer": add_row(engine, published_ago=9999, topic="invoice.created"),
    }
    before = {name: row(engine, row_id) for name, row_id in (due | not_due).items()}

    with engine.begin() as conn:
        redriven = redrive.redrive_due(conn, outbox, RULE, now=utcnow())

    assert sorted(r.id for r in redriven) == sorted(due.values())
    for name, row_id in due.items():
        after = row(engine, row_id)
        assert after.published_at is None, name
        assert after.redrives == before[name].redrives + 1
        assert after.available_at == before[name].published_at  # due for the claim by any clock
        assert after.message_id == before[name].message_id
    for name, row_id in not_due.items():
        assert row(engine, row_id) == before[name], name


def test_a_tick_redrives_in_bounded_batches_until_nothing_is_due(engine: Engine) -> None:
    ids = [add_row(engine, published_ago=100) for _ in range(7)]
    rule = replace(RULE, batch=3, max_batches=2)

    with engine.connect() as conn:
        first = redrive.redrive_unanswered(conn, outbox, rule)
        second = redrive.redrive_unanswered(conn, outbox, rule)
        third = redrive.redrive_unanswered(conn, outbox, rule)

    assert (first, second, third) == (6, 1, 0)
    assert all(row(engine, i).published_at is None for i in ids)


class RecordingPublisher:
    """Accepts every message and remembers what it sent."""

    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    def waiting(self) -> int:
        return 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.sent += [m.message_id for m in messages]
        return BatchOutcome(published=[m.id for m in messages])

    def close(self) -> None:
        """Nothing held."""


def relay_with(engine: Engine, **policy: Any) -> tuple[OutboxRelay, RecordingPublisher]:
    publisher = RecordingPublisher()
    defaults: dict[str, Any] = {"expects_answer": frozenset({ORDER_PLACED}), "redrive_after": 60.0}
    return OutboxRelay(engine, outbox, publisher, RelayPolicy(**{**defaults, **policy})), publisher


def set_published(engine: Engine, row_id: int, ago: float) -> None:
    with engine.begin() as conn:
        published_at = utcnow() - timedelta(seconds=ago)
        conn.execute(update(outbox).where(outbox.c.id == row_id).values(published_at=published_at))


def test_the_relay_republishes_an_unanswered_message_with_its_message_id_until_the_cap(
    engine: Engine,
) -> None:
    lost = add_row(engine, published_ago=None)
    answered = add_row(engine, published_ago=None)
    relay, publisher = relay_with(engine, redrive_max=2)
    message_id = row(engine, lost).message_id
    assert relay.drain() == 2
    with engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == answered).values(acknowledged_at=utcnow()))

    sent_per_tick = []
    for _ in range(4):
        set_published(engine, lost, ago=RULE.after + 1)  # unanswered for the delay, every time
        set_published(engine, answered, ago=99999)
        relay.redrive_unanswered()
        before = len(publisher.sent)
        relay.drain()
        sent_per_tick.append(publisher.sent[before:])

    assert sent_per_tick == [[message_id], [message_id], [], []]  # capped at redrive_max = 2
    assert row(engine, lost).redrives == 2
    with engine.connect() as conn:
        counts = redrive.unanswered(conn, outbox, relay.policy.redrive_rule(), now=utcnow())
    assert (counts.waiting, counts.overdue, counts.exhausted) == (1, 1, 1)


def test_a_relay_without_answered_topics_never_redrives(engine: Engine) -> None:
    add_row(engine, published_ago=99999)
    relay, _ = relay_with(engine, expects_answer=frozenset())

    assert relay.redrive_unanswered() == 0


def test_retention_keeps_an_unanswered_row_while_it_may_be_redriven_and_purges_it_once_exhausted(
    engine: Engine,
) -> None:
    week = 8 * 24 * 3600
    kept = add_row(engine, published_ago=week, redrives=19)  # one re-drive left: the only record of it
    purged = [
        add_row(engine, published_ago=week, acknowledged=True),
        add_row(engine, published_ago=week, topic="invoice.created"),
        add_row(engine, published_ago=week, redrives=20),  # exhausted, shown by the gauge all week
    ]
    relay, _ = relay_with(engine, retention=timedelta(days=7))
    assert relay.read_backlog().exhausted == 1

    assert relay.purge_published() == 3
    assert row(engine, kept).id == kept
    with engine.connect() as conn:
        left = set(conn.scalars(select(outbox.c.id)))
    assert left == {kept}
    assert not left & set(purged)


def test_no_redrive_while_tasks_still_wait_in_the_queue_then_one_once_it_is_empty(engine: Engine) -> None:
    """Evidence of loss: an unanswered message may still sit in a queue that holds tasks."""
    unanswered = add_row(engine, published_ago=RULE.after + 1)
    relay, publisher = relay_with(engine)
    publisher.waiting = lambda: 3  # type: ignore[method-assign]  # no worker has taken them yet

    relay._redrive_when_due()
    assert row(engine, unanswered).redrives == 0
    assert row(engine, unanswered).published_at is not None

    publisher.waiting = lambda: 0  # type: ignore[method-assign]  # the queue is empty: the message is lost
    relay._redrive_when_due()
    assert row(engine, unanswered).redrives == 1
    assert row(engine, unanswered).published_at is None  # due again: the next claim publishes it
