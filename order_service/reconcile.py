"""Republish outbox messages the consumer never confirmed: recovery from a broker that lost messages.

``python -m invoice_worker confirmed --since 86400 | python -m order_service.reconcile --older-than 600``

The relay marks a row published once the broker accepted it; if the broker then loses it (a Redis
without persistence killed, a failover to a lagging replica) nothing else would ever send it again.
This command takes the message ids the consumer has settled (on stdin, one per line: the only thing
the two services share is that id), and puts every row published in the window but not settled back
in the relay's queue. A row that was merely slow is harmless to republish: the consumer dedups.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, Table, select, text, update

from order_service.models import outbox
from shared.config import Settings
from shared.db import create_db_engine, is_postgres, utcnow
from shared.logs import configure_logging
from shared.outbox.table import NOTIFY_CHANNEL

__all__ = ["main", "republish_unconfirmed"]

log = structlog.get_logger(__name__)


def republish_unconfirmed(
    conn: Connection,
    t: Table,
    confirmed: set[uuid.UUID],
    *,
    published_after: datetime,
    published_before: datetime,
) -> list[uuid.UUID]:
    """Reset rows published in the window whose message id is not confirmed; return their ids."""
    published = conn.execute(
        select(t.c.id, t.c.message_id).where(
            t.c.published_at >= published_after, t.c.published_at < published_before
        )
    ).all()
    missing = [(row.id, row.message_id) for row in published if row.message_id not in confirmed]
    for start in range(0, len(missing), 1000):
        chunk = [row_id for row_id, _ in missing[start : start + 1000]]
        conn.execute(
            update(t)
            .where(t.c.id.in_(chunk), t.c.published_at.is_not(None))
            .values(published_at=None, available_at=utcnow())
        )
    if missing and is_postgres(conn.dialect):
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    for _, message_id in missing:
        log.warning("outbox.republished_unconfirmed", message_id=str(message_id))
    return [message_id for _, message_id in missing]


def _read_ids(lines: Iterable[str]) -> set[uuid.UUID]:
    return {uuid.UUID(line.strip()) for line in lines if line.strip()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m order_service.reconcile", description=__doc__)
    parser.add_argument(
        "--older-than", type=float, default=600, help="only rows published at least this many seconds ago"
    )
    parser.add_argument("--window", type=float, default=86_400, help="and at most this many seconds ago")
    parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
    args = parser.parse_args(argv)
    if args.window <= args.older_than:
        parser.error("--window must be longer than --older-than")

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    confirmed = _read_ids(sys.stdin)
    now = utcnow()
    engine = create_db_engine(settings.orders_database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            missing = republish_unconfirmed(
                conn,
                outbox,
                confirmed,
                published_after=now - timedelta(seconds=args.window),
                published_before=now - timedelta(seconds=args.older_than),
            )
            if args.dry_run:
                transaction.rollback()
            else:
                transaction.commit()
    finally:
        engine.dispose()
    verb = "would republish" if args.dry_run else "republished"
    print(f"{verb}: {len(missing)} (confirmed ids given: {len(confirmed)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
