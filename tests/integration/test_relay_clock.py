"""Outbox times come from the database's clock: a skewed API host or relay host delays nothing.

The writer stamps ``created_at``/``available_at`` and the relay compares and stamps with the
server's clock, so the two hosts' clocks never meet. Each test skews one side by an hour, as an
unsynchronised VM or a wrong timezone setting would, and expects the row to go out at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from flask_outbox.db import utcnow
from flask_outbox.messages import BatchOutcome, PendingMessage
from flask_outbox.publisher import publisher_for
from flask_outbox.relay import OutboxRelay
from flask_outbox.writer import OutboxMessage, add_message
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from harness.outbox import consumed, order_id_for, order_payload
from order_service.models import outbox
from order_service.relay import PROGRAM, build_relay
from shared.config import Settings
from shared.contracts import ROUTES

HOUR = timedelta(hours=1)


def _ahead() -> datetime:
    return utcnow() + HOUR


def _behind() -> datetime:
    return utcnow() - HOUR


@pytest.fixture
def relay_behind(pg_settings: Settings, orders_engine: Engine) -> Iterator[OutboxRelay]:
    """A relay on a host whose clock runs an hour behind (the relay's own clock is injectable)."""
    publisher = publisher_for(pg_settings, ROUTES, "order_relay")
    relay = OutboxRelay(orders_engine, outbox, publisher, PROGRAM.policy(pg_settings), clock=_behind)
    yield relay
    relay.disconnect()
    publisher.close()


def _write(engine: Engine, aggregate: str, timezone: str = "UTC") -> datetime:
    """One message through the product writer; returns the database's ``now()`` of that transaction."""
    with Session(engine) as session, session.begin():
        session.execute(text("SELECT set_config('TimeZone', :tz, true)"), {"tz": timezone})
        message = OutboxMessage("order.placed", "order", aggregate, order_payload(aggregate))
        add_message(session, outbox, message)
        database_now: datetime = session.execute(text("SELECT now()")).scalar_one()
    return database_now


@pytest.mark.parametrize("timezone", ["UTC", "Pacific/Kiritimati"])
def test_row_written_by_an_api_host_an_hour_ahead_is_claimed_at_once(
    pg_settings: Settings,
    orders_engine: Engine,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    timezone: str,
) -> None:
    monkeypatch.setattr("flask_outbox.writer.utcnow", _ahead)  # the API host's clock
    database_now = _write(orders_engine, order_id_for("skewed-writer"), timezone)
    relay = build_relay(pg_settings, orders_engine)
    try:
        assert relay.drain() == 1, "the row was hidden until the API host's clock came round"
    finally:
        relay.disconnect()
        relay.publisher.close()

    delivered = consumed(redis_client, pg_settings.queue("invoices"))
    assert [d.aggregate for d in delivered] == [order_id_for("skewed-writer")]
    with orders_engine.connect() as conn:
        row = conn.execute(select(outbox.c.created_at, outbox.c.available_at)).one()
    assert row.created_at == row.available_at == database_now


def test_relay_an_hour_behind_claims_new_rows_at_once(
    relay_behind: OutboxRelay, orders_engine: Engine, redis_client: redis.Redis, pg_settings: Settings
) -> None:
    _write(orders_engine, order_id_for("skewed-relay"))

    assert relay_behind.drain() == 1, "the relay's clock hid a row that is due by the database's"
    assert len(consumed(redis_client, pg_settings.queue("invoices"))) == 1


class RefusesOnce:
    """A broker that refuses the first batch."""

    def __init__(self) -> None:
        self.calls = 0

    def waiting(self) -> int:
        return 0

    def publish(self, messages: list[PendingMessage]) -> BatchOutcome:
        self.calls += 1
        if self.calls == 1:
            return BatchOutcome(failed={m.id: "ConnectionError: broker away" for m in messages})
        return BatchOutcome(published=[m.id for m in messages])

    def close(self) -> None:
        pass


def test_backoff_and_publication_are_stamped_by_the_database_clock(
    pg_settings: Settings, orders_engine: Engine
) -> None:
    """A relay an hour ahead would otherwise put a failed row an hour into backoff."""
    _write(orders_engine, order_id_for("stamped"))
    relay = OutboxRelay(orders_engine, outbox, RefusesOnce(), PROGRAM.policy(pg_settings), clock=_ahead)
    try:
        with orders_engine.connect() as conn:
            before = conn.execute(text("SELECT now()")).scalar_one()
        assert relay.relay_batch().failed
        with orders_engine.connect() as conn:
            failed = conn.execute(select(outbox.c.available_at, outbox.c.attempts)).one()
            after = conn.execute(text("SELECT now()")).scalar_one()
        assert failed.attempts == 1
        assert before <= failed.available_at <= after + timedelta(seconds=relay.policy.base_backoff)

        with orders_engine.begin() as conn:
            conn.execute(outbox.update().values(available_at=text("now()")))
        assert len(relay.relay_batch().published) == 1
        with orders_engine.connect() as conn:
            published_at = conn.execute(select(outbox.c.published_at)).scalar_one()
            now = conn.execute(text("SELECT now()")).scalar_one()
        assert before <= published_at <= now
    finally:
        relay.disconnect()
