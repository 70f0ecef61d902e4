"""The relay's SQL: claim, mark, back off, purge, retry parked. Each runs on a connection it is given."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    Table,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from shared.backoff import jittered_backoff
from shared.db import is_postgres
from shared.outbox.messages import PendingMessage
from shared.outbox.table import NOTIFY_CHANNEL

__all__ = ["backoff", "claim", "mark_published", "purge_published", "record_failures", "retry_parked"]


def backoff(attempts: int, base: float, ceiling: float) -> timedelta:
    """When a row that failed ``attempts`` times may be tried again."""
    return timedelta(seconds=jittered_backoff(attempts, base, ceiling))


def _ids_match(t: Table, conn: Connection, ids: list[int]) -> ColumnElement[bool]:
    """One array parameter on Postgres (one plan for any batch size); an IN list elsewhere."""
    if is_postgres(conn.dialect):
        return t.c.id == any_(bindparam("ids", ids, type_=ARRAY(BigInteger)))
    return t.c.id.in_(ids)


def claim(
    conn: Connection,
    t: Table,
    *,
    limit: int,
    now: datetime,
    partitions: Collection[int] | None,
    partition_count: int,
    guard_order: bool,
) -> tuple[list[PendingMessage], int | None]:
    """Lock the oldest due rows of ``partitions`` (all when ``None``); other relays skip them.

    With ``guard_order``, a row whose aggregate has an earlier unpublished row that already
    failed (in backoff or parked) is not claimed: that earlier row goes first. The guard scans
    the unpublished rows, so the relay turns it on only while such rows may exist; the second
    value returned is how many aggregates were held back (``None`` when unguarded).
    """
    everything = partitions is None or len(partitions) == partition_count
    scope = [] if everything else [(t.c.bucket % partition_count).in_(sorted(partitions or ()))]
    query: Select[tuple[object, ...]] = select(  # PendingMessage's fields, in its order
        t.c.id, t.c.message_id, t.c.topic, t.c.aggregate_id, t.c.payload, t.c.headers, t.c.attempts
    ).where(t.c.published_at.is_(None), t.c.parked_at.is_(None), t.c.available_at <= now, *scope)
    if guard_order:
        troubled = (
            select(t.c.aggregate_id, func.min(t.c.id).label("head"))
            .where(t.c.published_at.is_(None), t.c.attempts > 0, *scope)
            .group_by(t.c.aggregate_id)
            .cte("troubled")
        )
        query = query.add_columns(
            select(func.count()).select_from(troubled).scalar_subquery().label("troubled")
        ).where(
            or_(
                t.c.id.in_(select(troubled.c.head)),
                t.c.aggregate_id.not_in(select(troubled.c.aggregate_id)),
            )
        )
    query = query.order_by(t.c.id).limit(limit).with_for_update(of=t, skip_locked=True)
    rows = conn.execute(query).all()
    troubled_count = (rows[0].troubled if rows else None) if guard_order else None
    return [PendingMessage(*cast(tuple[Any, ...], row[:7])) for row in rows], troubled_count


def mark_published(conn: Connection, t: Table, ids: list[int], now: datetime) -> None:
    """One statement for the whole batch."""
    if ids:
        conn.execute(update(t).where(_ids_match(t, conn, ids)).values(published_at=now))


def record_failures(
    conn: Connection,
    t: Table,
    failures: list[tuple[PendingMessage, str]],
    *,
    transient: Collection[int] = (),
    now: datetime,
    max_attempts: int,
    base_backoff: float,
    max_backoff: float,
) -> list[dict[str, object]]:
    """Back off each failed row; park it once it has used up its attempts, unless the broker was at fault.

    Rows of one aggregate share one retry time, so they come due together and stay in order.
    """
    due: dict[str, datetime] = {}
    rows: list[dict[str, object]] = []
    for message, error in failures:
        attempts = message.attempts + 1
        retry_at = due.setdefault(message.aggregate_id, now + backoff(attempts, base_backoff, max_backoff))
        rows.append(
            {
                "row_id": message.id,
                "attempts": attempts,
                "last_error": error[:2000],
                "available_at": retry_at,
                "parked_at": now if attempts >= max_attempts and message.id not in transient else None,
            }
        )
    if rows:
        statement = (
            update(t)
            .where(t.c.id == bindparam("row_id"))
            .values(
                attempts=bindparam("attempts"),
                last_error=bindparam("last_error"),
                available_at=bindparam("available_at"),
                parked_at=bindparam("parked_at"),
            )
        )
        conn.execute(statement.execution_options(synchronize_session=False), rows)
    return rows


def purge_published(
    conn: Connection, t: Table, *, cutoff: datetime, limit: int, expects_answer: Collection[str] = ()
) -> int:
    """Delete up to ``limit`` rows published before ``cutoff`` (oldest first, by the published_at index).

    A row of a topic in ``expects_answer`` goes only once acknowledged: until then it is the
    re-drive's only record of a message that may still need sending.
    """
    oldest = (
        select(t.c.id)
        .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
        .order_by(t.c.published_at)
        .limit(limit)
    )
    if expects_answer:
        answered = t.c.acknowledged_at.is_not(None)
        oldest = oldest.where(or_(answered, t.c.topic.not_in(sorted(expects_answer))))
    return conn.execute(delete(t).where(t.c.id.in_(oldest.scalar_subquery()))).rowcount


def retry_parked(conn: Connection, t: Table, *, now: datetime, ids: list[int] | None = None) -> int:
    """Give parked rows a fresh set of attempts, due now; wakes listening relays on Postgres."""
    query = update(t).where(t.c.parked_at.is_not(None), t.c.published_at.is_(None))
    if ids:
        query = query.where(t.c.id.in_(ids))
    count = conn.execute(query.values(parked_at=None, attempts=0, available_at=now)).rowcount
    if count and is_postgres(conn.dialect):
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    return count
