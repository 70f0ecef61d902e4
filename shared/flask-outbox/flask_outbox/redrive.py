"""Re-drive: republish messages whose answer never came, so a broker that lost them is repaired by itself.

A topic that *expects an answer* (``order.placed`` is answered by ``invoice.created``) keeps its
outbox row unacknowledged until the answer's consumer sets ``acknowledged_at`` through the
answer's causation id. A row published more than ``after`` ago and still unacknowledged may
have been lost by the broker (FLUSHALL, failover to a lagging replica, a message popped but not
yet recorded as unacknowledged): the re-drive puts it back in the relay's queue
(``published_at = NULL``), so the ordinary claim republishes it with the same ``message_id``
(the consumer deduplicates a message that was merely slow).

A row is due ``after`` seconds after its last publication, however often it was re-driven before:
a message lost for the fifth time comes back as fast as the first. What keeps a backlog from being
copied again and again is the relay, which re-drives only on evidence of loss (no task waiting in
its queue, ``OutboxRelay._redrive_when_due``), not a delay growing with time. After
``max_redrives`` re-drives a row is left for an operator (``relay status`` counts it; retention
never purges it). Nothing here depends on another process having reported anything: the absence of
an acknowledgement is the whole signal.

Cost: one UPDATE over a partial index on ``(redrives, published_at)`` of the unacknowledged
published rows, so a tick touches only rows that are due, at most ``batch`` of them, whatever the
backlog. Times come from the database's clock.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import BigInteger, Connection, Table, Update, and_, any_, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from flask_outbox.db import database_now, is_postgres
from flask_outbox.table import NOTIFY_CHANNEL

__all__ = [
    "RedriveRule",
    "Redriven",
    "Unanswered",
    "redrive_due",
    "redrive_statement",
    "redrive_unanswered",
    "unanswered",
]

log = structlog.get_logger(__name__)

_LOGGED_IDS = 20
"""Message ids named in one ``outbox.redriven`` line (the count is always complete)."""


@dataclass(frozen=True, slots=True)
class RedriveRule:
    """Which topics expect an answer, and when an unanswered one is republished."""

    topics: frozenset[str]
    after: float = 90.0
    max_redrives: int = 20
    batch: int = 5_000
    max_batches: int = 20


@dataclass(frozen=True, slots=True)
class Redriven:
    id: int
    message_id: uuid.UUID
    aggregate_id: str
    redrives: int


@dataclass(frozen=True, slots=True)
class Unanswered:
    """What ``relay status`` shows: published rows still waiting for their answer."""

    waiting: int
    overdue: int
    exhausted: int


def _unacknowledged(t: Table, topics: Collection[str]) -> list[ColumnElement[bool]]:
    """Exactly the partial index's predicate (so the planner can use it), and the topics."""
    return [t.c.acknowledged_at.is_(None), t.c.published_at.is_not(None), t.c.topic.in_(sorted(topics))]


def _due(t: Table, rule: RedriveRule, now: datetime) -> ColumnElement[bool]:
    """Re-drives left, and published before the cut-off: one range of the partial index."""
    cut = now - timedelta(seconds=rule.after)
    return and_(t.c.redrives.between(0, rule.max_redrives - 1), t.c.published_at < cut)


def redrive_statement(t: Table, rule: RedriveRule, *, now: datetime, postgres: bool) -> Update:
    """The UPDATE that re-drives up to ``rule.batch`` due rows, returning them.

    The rows are chosen and locked first (``FOR UPDATE SKIP LOCKED``: a row an answer is
    acknowledging right now is skipped, and one acknowledged meanwhile fails the re-check), then
    updated by primary key: on Postgres through ``id = ANY(ARRAY(...))``, evaluated once, so the
    planner never joins the choice against every unacknowledged row. ``available_at`` becomes the
    row's last publication time: in the past by any relay's clock, so the next claim takes it.
    """
    chosen = (
        select(t.c.id)
        .where(*_unacknowledged(t, rule.topics), _due(t, rule, now))
        .limit(rule.batch)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    chosen_ids = (
        t.c.id == any_(func.array(chosen, type_=ARRAY(BigInteger))) if postgres else t.c.id.in_(chosen)
    )
    return (
        update(t)
        .where(chosen_ids)
        .values(published_at=None, available_at=t.c.published_at, redrives=t.c.redrives + 1)
        .returning(t.c.id, t.c.message_id, t.c.aggregate_id, t.c.redrives)
    )


def redrive_due(conn: Connection, t: Table, rule: RedriveRule, *, now: datetime) -> list[Redriven]:
    """Put up to ``rule.batch`` due, unanswered rows back in the relay's queue; return them."""
    if not rule.topics or rule.max_redrives <= 0:
        return []
    statement = redrive_statement(t, rule, now=now, postgres=is_postgres(conn.dialect))
    rows = [Redriven(*row) for row in conn.execute(statement)]
    if rows and is_postgres(conn.dialect):
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    return rows


def _lock_key(t: Table) -> int:
    return zlib.crc32(f"{t.name}:redrive".encode()) & 0x7FFFFFFF


def redrive_unanswered(conn: Connection, t: Table, rule: RedriveRule) -> int:
    """Re-drive every due row, in bounded batches; on Postgres one relay at a time (advisory lock).

    Each batch is its own transaction on ``conn``; logs ``outbox.redriven`` with the count.
    """
    total = 0
    for _ in range(rule.max_batches):
        with conn.begin():
            if is_postgres(conn.dialect) and not conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(:k, 1)"), {"k": _lock_key(t)}
            ):
                break
            rows = redrive_due(conn, t, rule, now=database_now(conn))
        if rows:
            total += len(rows)
            log.warning(
                "outbox.redriven",
                count=len(rows),
                message_ids=[str(row.message_id) for row in rows[:_LOGGED_IDS]],
                aggregate_ids=[row.aggregate_id for row in rows[:_LOGGED_IDS]],
                max_redrives_in_batch=max(row.redrives for row in rows),
            )
        if len(rows) < rule.batch:
            break
    return total


def unanswered(conn: Connection, t: Table, rule: RedriveRule, *, now: datetime) -> Unanswered:
    """Counts for ``relay status``: waiting, overdue (older than ``after``), out of re-drives."""
    if not rule.topics:
        return Unanswered(0, 0, 0)
    base = _unacknowledged(t, rule.topics)
    overdue = t.c.published_at < now - timedelta(seconds=rule.after)
    query = select(
        func.count(),
        func.count().filter(overdue),
        func.count().filter(t.c.redrives >= rule.max_redrives),
    ).where(*base)
    waiting, late, exhausted = conn.execute(query).one()
    return Unanswered(waiting, late, exhausted)
