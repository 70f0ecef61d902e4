"""What ``relay status`` reports: the backlog, its age, parked rows, the last error, the live relays.

``read_backlog`` is also what the relay's ``/metrics`` report (``outbox_backlog``,
``outbox_oldest_due_age_seconds``, ``outbox_parked``): one query, so the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Table, and_, func, select

from flask_outbox.db import database_now, is_postgres
from flask_outbox.partitions import LockKeys, RelayHolding, relay_holdings

__all__ = ["Backlog", "OutboxStatus", "read_backlog", "read_status"]


@dataclass(frozen=True, slots=True)
class Backlog:
    """Unpublished rows now, on the database's clock.

    ``backlog``: unpublished and not parked (rows in backoff included). ``oldest_due_age_s``: how
    long the longest-waiting *due* row has been due (``now - available_at``; a new row is due from
    its insert, a retried one from the end of its backoff, a re-driven one from its last
    publication), 0 with none: a row in backoff is not late yet, so a broker outage shows as a
    backlog, not as a growing age, until a retry comes due and is not taken.
    """

    backlog: int
    oldest_due_age_s: float
    parked: int
    exhausted: int = 0
    """Published rows that used up their re-drives unanswered (a topic that expects an answer)."""


def read_backlog(conn: Connection, t: Table, now: datetime | None = None) -> Backlog:
    """One scan of the unpublished rows (the partial pending index and the parked ones)."""
    now = now or database_now(conn)
    waiting = t.c.parked_at.is_(None)
    due = and_(waiting, t.c.available_at <= now)
    backlog, parked, oldest_due = conn.execute(
        select(
            func.count().filter(waiting),
            func.count().filter(t.c.parked_at.is_not(None)),
            func.min(t.c.available_at).filter(due),
        ).where(t.c.published_at.is_(None))
    ).one()
    age = max(0.0, (now - oldest_due).total_seconds()) if oldest_due is not None else 0.0
    return Backlog(int(backlog or 0), age, int(parked or 0))


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    backlog: int
    retrying: int
    oldest_unpublished_age_s: float
    parked: int
    last_error: str | None
    relays: list[RelayHolding] = field(default_factory=list)
    oldest_due_age_s: float = 0.0


def read_status(conn: Connection, t: Table, now: datetime) -> OutboxStatus:
    pending = (t.c.published_at.is_(None), t.c.parked_at.is_(None))
    backlog = conn.scalar(select(func.count()).where(*pending)) or 0
    retrying = conn.scalar(select(func.count()).where(*pending, t.c.attempts > 0)) or 0
    oldest = conn.scalar(select(func.min(t.c.created_at)).where(t.c.published_at.is_(None)))
    parked = conn.scalar(select(func.count()).where(t.c.parked_at.is_not(None), t.c.published_at.is_(None)))
    last_error = conn.scalar(
        select(t.c.last_error)
        .where(t.c.last_error.is_not(None), t.c.published_at.is_(None))
        .order_by(t.c.available_at.desc())
        .limit(1)
    )
    relays = relay_holdings(conn, LockKeys.for_table(t.name)) if is_postgres(conn.dialect) else []
    age = (now - oldest).total_seconds() if oldest else 0.0
    due = read_backlog(conn, t, now)
    return OutboxStatus(backlog, retrying, age, parked or 0, last_error, relays, due.oldest_due_age_s)
