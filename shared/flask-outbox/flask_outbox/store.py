"""The relay's SQL: claim (and stamp), release, back off, purge, retry parked. Each on a given connection.

Times come from the database's clock on Postgres (``statement_timestamp()``), the clock the writer
stamps rows with (``flask_outbox.writer``): a relay or an API host whose clock is off can neither
hide new rows nor release backed-off ones early. SQLite is embedded, on one machine: Python's clock.
A caller may still pass ``now`` explicitly (a test pinning time).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Engine,
    Interval,
    Table,
    Update,
    any_,
    bindparam,
    case,
    delete,
    event,
    exists,
    func,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement

from flask_outbox.backoff import jittered_backoff
from flask_outbox.db import UTCDateTime, database_clock, is_postgres, utcnow
from flask_outbox.messages import PendingMessage
from flask_outbox.table import NOTIFY_CHANNEL

__all__ = [
    "ClaimedBatch",
    "RecordedFailure",
    "backoff",
    "claim",
    "disable_jit",
    "purge_published",
    "record_failures",
    "release",
    "retry_parked",
]

Clock = ColumnElement[datetime] | datetime


def backoff(attempts: int, base: float, ceiling: float) -> timedelta:
    """When a row that failed ``attempts`` times may be tried again."""
    return timedelta(seconds=jittered_backoff(attempts, base, ceiling))


def _clock(conn: Connection, now: datetime | None) -> Clock:
    """``now`` if given; else the database's clock on Postgres, Python's on SQLite."""
    return now if now is not None else database_clock(conn.dialect)


def _held_back(t: Table) -> ColumnElement[bool]:
    """The row's aggregate has an earlier unpublished row that failed (in backoff or parked).

    That earlier row goes first: until it is published, nothing after it in its aggregate is
    claimed, so a retry is never overtaken. One probe of the ``ix_<outbox>_failed_unpublished``
    index per candidate row, whatever the backlog. ``OFFSET 0`` keeps Postgres from turning the
    NOT EXISTS into an anti-join, which stale statistics (nothing failed at the last ANALYZE, a
    whole backlog failed since) plan as a rescan of every failed row for every candidate.
    """
    earlier = t.alias("earlier")
    return exists(
        select(earlier.c.id)
        .where(
            earlier.c.aggregate_id == t.c.aggregate_id,
            earlier.c.id < t.c.id,
            earlier.c.published_at.is_(None),
            earlier.c.attempts > 0,
        )
        .offset(0)
    )


_JIT_OFF = "outbox.jit_off"


def _bound_or_database_clock(bound: bool) -> ColumnElement[datetime]:
    """A ``now`` parameter (SQLite, or a caller pinning time), else Postgres's ``statement_timestamp()``."""
    if bound:
        return bindparam("now", type_=UTCDateTime())
    return func.statement_timestamp(type_=UTCDateTime())


def disable_jit(engine: Engine) -> None:
    """Open the engine's Postgres connections with JIT off, so ``claim`` need not turn it off per batch.

    JIT compiling costs ~10 ms per claim once a long backlog lifts the plan's estimated cost past
    ``jit_above_cost``: far more than the claim itself (one index probe per row).
    """
    if not is_postgres(engine):
        return

    @event.listens_for(engine, "connect")
    def _jit_off(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET jit = off")
        dbapi_connection.commit()
        record.info[_JIT_OFF] = True


@lru_cache(maxsize=256)
def _claim_statement(
    t: Table, limit: int, scope: tuple[int, ...] | None, partition_count: int, bound_clock: bool, guard: bool
) -> Update:
    """The claim, built once per table, batch size and partition set: building it cost more CPU than
    running it. The clock is the database's (Postgres), or a ``now`` parameter (SQLite, tests).

    One statement locks the due rows and stamps them published: ``UPDATE … WHERE id IN (SELECT …
    FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``. The stamp is seen by others only if the batch's
    transaction commits, which the relay does once the broker has the messages (``release`` takes it
    back from the ones it did not publish), so a batch costs one statement and the commit.
    """
    clock = _bound_or_database_clock(bound_clock)
    in_scope = [] if scope is None else [(t.c.bucket % partition_count).in_(scope)]
    due = select(t.c.id).where(
        t.c.published_at.is_(None), t.c.parked_at.is_(None), t.c.available_at <= clock, *in_scope
    )
    if guard:
        due = due.where(~_held_back(t))
    locked = due.order_by(t.c.id).limit(limit).with_for_update(of=t, skip_locked=True)
    returned = (  # PendingMessage's fields, in its order, then what the publish lag is read from
        *(t.c.id, t.c.message_id, t.c.topic, t.c.aggregate_id, t.c.payload, t.c.headers, t.c.attempts),
        *(t.c.published_at, t.c.created_at, t.c.redrives),
    )
    stamp = update(t).where(t.c.id.in_(locked.scalar_subquery())).values(published_at=clock)
    return stamp.returning(*returned)


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    """Rows ``claim`` locked and stamped, in id order, and each first publication's seconds since its
    insert (a re-driven row's republication is no publish lag and is left out). Both ends of a lag are
    the database's clock (``published_at`` and ``created_at``)."""

    messages: list[PendingMessage]
    lags: dict[int, float]


def claim(
    conn: Connection,
    t: Table,
    *,
    limit: int,
    partitions: Collection[int] | None,
    partition_count: int,
    now: datetime | None = None,
    guard_order: bool = True,
) -> ClaimedBatch:
    """Lock the oldest due rows of ``partitions`` (all when ``None``) and stamp them published; other
    relays skip them. The caller publishes them, ``release``s the ones it could not, and commits.

    With ``guard_order`` (always, in the relay), a row is not claimed while an earlier row of its
    aggregate that failed is unpublished (``_held_back``). The batch keeps id order; a publisher
    holds back the rest of an aggregate whose row fails in it.
    """
    postgres = is_postgres(conn.dialect)
    if postgres and not conn.info.get(_JIT_OFF):  # see ``disable_jit``
        conn.execute(text("SELECT set_config('jit', 'off', true)"))
    everything = partitions is None or len(partitions) == partition_count
    scope = None if everything else tuple(sorted(partitions or ()))
    bound_clock = now is not None or not postgres
    query = _claim_statement(t, limit, scope, partition_count, bound_clock, guard_order)
    params = {"now": now if now is not None else utcnow()} if bound_clock else {}
    rows = sorted(conn.execute(query, params), key=lambda row: cast(int, row[0]))
    return ClaimedBatch(
        messages=[PendingMessage(*row[:7]) for row in rows],
        lags={row[0]: (row[7] - row[8]).total_seconds() for row in rows if not row[9]},
    )


@lru_cache(maxsize=64)
def _release_statement(t: Table, postgres: bool) -> Update:
    """Built once per table: ids as one array (Postgres) or an expanding IN list."""
    ids = (
        t.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
        if postgres
        else t.c.id.in_(bindparam("ids", expanding=True))
    )
    return update(t).where(ids).values(published_at=None)


def release(conn: Connection, t: Table, ids: list[int]) -> None:
    """Take back ``claim``'s stamp from rows of the batch that were held back (``record_failures`` takes
    it back from the ones that failed)."""
    if ids:
        conn.execute(_release_statement(t, is_postgres(conn.dialect)), {"ids": ids})


@dataclass(frozen=True, slots=True)
class RecordedFailure:
    """What ``record_failures`` did to one row."""

    message: PendingMessage
    error: str
    attempts: int
    retry_in: timedelta
    parked: bool


def record_failures(
    conn: Connection,
    t: Table,
    failures: list[tuple[PendingMessage, str]],
    *,
    transient: Collection[int] = (),
    now: datetime | None = None,
    max_attempts: int,
    base_backoff: float,
    max_backoff: float,
) -> list[RecordedFailure]:
    """Back off each failed row; park it once it has used up its attempts, unless the broker was at fault.
    A failed row is unpublished: ``claim``'s stamp is taken back in the same UPDATE.

    A row the broker failed (``transient``) stays due: the broker is one thing that is up or down, so
    the relay waits for it as a whole and sends everything the moment it answers, instead of each row
    waiting out a backoff of its own. Rows of one aggregate share one retry time, so they come due
    together and stay in order.
    """
    delays: dict[str, timedelta] = {}
    recorded: list[RecordedFailure] = []
    for message, error in failures:
        attempts = message.attempts + 1
        broker_fault = message.id in transient
        own = timedelta(0) if broker_fault else backoff(attempts, base_backoff, max_backoff)
        delay = delays.setdefault(message.aggregate_id, own)
        parked = attempts >= max_attempts and not broker_fault
        recorded.append(RecordedFailure(message, error, attempts, delay, parked))
    if not recorded:
        return recorded
    clock = _clock(conn, now)
    rows: list[dict[str, object]] = [
        {"row_id": r.message.id, "attempts": r.attempts, "last_error": r.error[:2000]} for r in recorded
    ]
    if isinstance(clock, datetime):  # Python's clock (SQLite): plain values
        times: dict[str, Any] = {
            "available_at": bindparam("available_at"),
            "parked_at": bindparam("parked_at"),
        }
        for row, r in zip(rows, recorded, strict=True):
            row.update(available_at=clock + r.retry_in, parked_at=clock if r.parked else None)
    else:  # the database's clock, read as the UPDATE runs (after the publish attempt)
        times = {
            "available_at": clock + bindparam("retry_in", type_=Interval()),
            "parked_at": case((bindparam("park", type_=Boolean()), clock), else_=null()),
        }
        for row, r in zip(rows, recorded, strict=True):
            row.update(retry_in=r.retry_in, park=r.parked)
    statement = (
        update(t)
        .where(t.c.id == bindparam("row_id"))
        .values(
            attempts=bindparam("attempts"), last_error=bindparam("last_error"), published_at=None, **times
        )
    )
    conn.execute(statement.execution_options(synchronize_session=False), rows)
    return recorded


def purge_published(
    conn: Connection,
    t: Table,
    *,
    cutoff: datetime,
    limit: int,
    expects_answer: Collection[str] = (),
    redrive_max: int | None = None,
) -> int:
    """Delete up to ``limit`` rows published before ``cutoff`` (oldest first, by the published_at index).

    A row of a topic in ``expects_answer`` goes only once acknowledged, or once it has used up its
    ``redrive_max`` re-drives (published that many times and never answered; ``relay status`` and
    the ``outbox_unanswered_exhausted`` gauge showed it for the whole retention): until then it is
    the re-drive's only record of a message that may still need sending.
    """
    oldest = (
        select(t.c.id)
        .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
        .order_by(t.c.published_at)
        .limit(limit)
    )
    if expects_answer:
        done: list[ColumnElement[bool]] = [
            t.c.acknowledged_at.is_not(None),
            t.c.topic.not_in(sorted(expects_answer)),
        ]
        if redrive_max is not None:
            done.append(t.c.redrives >= redrive_max)
        oldest = oldest.where(or_(*done))
    return conn.execute(delete(t).where(t.c.id.in_(oldest.scalar_subquery()))).rowcount


def retry_parked(
    conn: Connection, t: Table, *, now: datetime | None = None, ids: list[int] | None = None
) -> int:
    """Give parked rows a fresh set of attempts, due now; wakes listening relays on Postgres."""
    query = update(t).where(t.c.parked_at.is_not(None), t.c.published_at.is_(None))
    if ids:
        query = query.where(t.c.id.in_(ids))
    count = conn.execute(query.values(parked_at=None, attempts=0, available_at=_clock(conn, now))).rowcount
    if count and is_postgres(conn.dialect):
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})
    return count
