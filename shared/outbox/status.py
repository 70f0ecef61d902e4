"""What ``relay status`` reports: the backlog, its age, parked rows, the last error, the live relays."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, Table, func, select

from shared.db import is_postgres
from shared.outbox.partitions import LockKeys, RelayHolding, relay_holdings

__all__ = ["OutboxStatus", "read_status"]


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    backlog: int
    retrying: int
    oldest_unpublished_age_s: float
    parked: int
    last_error: str | None
    relays: list[RelayHolding] = field(default_factory=list)


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
    return OutboxStatus(backlog, retrying, age, parked or 0, last_error, relays)
