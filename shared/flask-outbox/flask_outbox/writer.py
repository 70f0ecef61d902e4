"""Adding a message to the outbox: an INSERT on the caller's session, due at once."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import Insert, Table, func, insert
from sqlalchemy.orm import Session

from flask_outbox.db import UTCDateTime, is_postgres, utcnow
from flask_outbox.logs import correlation_id
from flask_outbox.table import BUCKETS, NOTIFY_CHANNEL
from flask_outbox.tracing import outbox_headers

__all__ = ["NOTIFY_CHANNEL", "OutboxMessage", "add_message", "bucket_of", "one_insert"]

_GATHERED = "flask_outbox.gathered"
"""``session.info`` key: the rows ``add_message`` gathers inside ``one_insert``, by outbox table."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish once the surrounding transaction commits."""

    topic: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: uuid.UUID = field(default_factory=uuid.uuid4)


def bucket_of(aggregate_id: str) -> int:
    """Stable across processes and languages (unlike ``hash()``), so every relay agrees."""
    return zlib.crc32(aggregate_id.encode()) % BUCKETS


@cache
def _insert(outbox: Table, database_clock: bool) -> Insert:
    """Built once per table and backend: the INSERT sits on every order's hot path.

    On Postgres the row is stamped by the database's clock (``now()``, the transaction's start),
    the clock the relay compares ``available_at`` with: an API host whose clock runs ahead cannot
    hide its rows from the relay until the next poll. SQLite (embedded, one machine) uses
    Python's clock, in the format its ``UTCDateTime`` columns store.
    """
    if not database_clock:
        return insert(outbox)
    now = func.now(type_=UTCDateTime())
    return insert(outbox).values(created_at=now, available_at=now)


def add_message(session: Session, outbox: Table, message: OutboxMessage) -> None:
    """Insert ``message`` in the session's transaction, due at once; never commits. The writer never
    talks to the broker: the relay publishes the row once it has committed. The current correlation id
    and trace context go with it in its headers (the message's own headers win).

    On Postgres the outbox's statement trigger (``notify_trigger_ddl``) queues a NOTIFY within
    this INSERT, which the server delivers only if and when the transaction commits: relays wake
    at once for committed rows and never for rolled-back ones, at no extra round trip.
    """
    conn = session.connection()
    row = {
        "message_id": message.message_id,
        "topic": message.topic,
        "aggregate_type": message.aggregate_type,
        "aggregate_id": message.aggregate_id,
        "bucket": bucket_of(message.aggregate_id),
        "payload": message.payload,
        "headers": {**outbox_headers(correlation_id()), **message.headers},
        "attempts": 0,
    }
    postgres = is_postgres(conn.dialect)
    if not postgres:
        row["created_at"] = row["available_at"] = utcnow()
    gathered: dict[Table, list[dict[str, Any]]] | None = session.info.get(_GATHERED)
    if gathered is not None:
        gathered.setdefault(outbox, []).append(row)
        return
    conn.execute(_insert(outbox, postgres), row)


@contextmanager
def one_insert(session: Session) -> Iterator[None]:
    """Inside, ``add_message`` on ``session`` gathers its rows; on the way out they go in as one INSERT.

    The consumer applies a batch of deliveries inside it: a handler whose receivers add a message per
    delivery then costs the batch one statement (and one NOTIFY) instead of one each. The rows are not
    in the table until the block ends, so nothing inside may read them back. On an exception nothing
    is inserted (the transaction is rolled back anyway). Nested blocks share the outermost one's insert.
    """
    if _GATHERED in session.info:
        yield
        return
    gathered: dict[Table, list[dict[str, Any]]] = {}
    session.info[_GATHERED] = gathered
    try:
        yield
    finally:
        del session.info[_GATHERED]
    conn = session.connection()
    postgres = is_postgres(conn.dialect)
    for outbox, rows in gathered.items():
        # RETURNING makes SQLAlchemy send the rows as one multi-row INSERT ("insertmanyvalues"), where a
        # plain executemany runs the statement, and its NOTIFY trigger, once per row.
        conn.execute(_insert(outbox, postgres).returning(outbox.c.id), rows).all()
