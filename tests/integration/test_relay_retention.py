"""Retention: only rows published longer ago than the limit go, in bounded batches."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from flask_outbox.db import create_db_engine, utcnow
from sqlalchemy import select, update

from harness.outbox import insert_rows, outbox_rows
from order_service.models import outbox
from order_service.relay import build_relay
from shared.config import Settings


def test_retention_deletes_only_published_rows_older_than_the_limit(pg_settings: Settings) -> None:
    engine = create_db_engine(pg_settings.orders_database_url)
    now = utcnow()
    old_published, recent_published, old_unpublished, old_parked, old_unanswered = (
        outbox_rows(7, 7),
        outbox_rows(2, 2),
        outbox_rows(2, 2),
        outbox_rows(1, 1),
        outbox_rows(1, 1),
    )
    long_ago = now - timedelta(days=10)
    insert_rows(engine, old_published + recent_published + old_unpublished + old_parked + old_unanswered)
    with engine.begin() as conn:

        def set_rows(rows: list[dict[str, object]], **values: object) -> None:
            ids = [r["message_id"] for r in rows]
            conn.execute(update(outbox).where(outbox.c.message_id.in_(ids)).values(**values))

        # Answered (invoice.created came back): an unanswered order.placed is never purged.
        set_rows(old_published, created_at=long_ago, published_at=long_ago, acknowledged_at=long_ago)
        set_rows(old_unanswered, created_at=long_ago, published_at=long_ago)
        set_rows(recent_published, published_at=now - timedelta(hours=1))
        set_rows(old_unpublished, created_at=long_ago)
        set_rows(old_parked, created_at=long_ago, parked_at=long_ago, attempts=20)

    relay = build_relay(pg_settings, engine)
    relay.policy = replace(relay.policy, retention=timedelta(days=7), purge_batch=3)
    try:
        assert relay.purge_published() == 7
    finally:
        relay.disconnect()
        relay.publisher.close()

    with engine.connect() as conn:
        left = set(conn.scalars(select(outbox.c.message_id)))
    engine.dispose()
    assert left == {r["message_id"] for r in recent_published + old_unpublished + old_parked + old_unanswered}
