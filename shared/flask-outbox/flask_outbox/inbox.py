"""The inbox: which messages a consumer has applied, how often each was delivered, and what it parked.

Three tables a consuming service adds to its metadata (``define_inbox``), and the statements the
consumer (``flask_outbox.consumer``) runs on them. A message id is recorded in ``processed_messages``
in the same transaction as its effect, behind the primary key: duplicates and concurrent deliveries
serialise on the index and the loser does nothing. ``message_deliveries`` counts deliveries before
the work (so a delivery that kills its worker still counts); ``dead_letters`` keeps what can never
succeed, with its reason, until an operator replays it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TextClause,
    Uuid,
    exists,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flask_outbox.db import BigIntPK, JSONDocument, UTCDateTime, database_clock, is_postgres, utcnow

__all__ = ["InboxTables", "define_inbox"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InboxTables:
    """The consumer's three tables on one database."""

    processed: Table
    deliveries: Table
    dead_letters: Table

    def _insert(self, session: Session, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that can say ON CONFLICT on either backend."""
        return postgresql.insert(table) if is_postgres(session.get_bind().dialect) else sqlite.insert(table)

    def record(self, session: Session, message_id: uuid.UUID, topic: str) -> bool:
        """Record the message as applied in the session's transaction; False if it already was.

        A dead letter of the same message (parked too early, e.g. redelivered while a slow first
        delivery still ran) is settled in the same transaction.
        """
        return bool(self.record_many(session, [message_id], topic))

    def record_many(self, session: Session, message_ids: Sequence[uuid.UUID], topic: str) -> set[uuid.UUID]:
        """``record`` for many messages in one round trip; returns the ids recorded now (the fresh ones)."""
        if not message_ids:
            return set()
        if is_postgres(session.get_bind().dialect):
            rows = session.execute(
                self._record_postgres(), {"ids": [str(mid) for mid in message_ids], "topic": topic}
            )
            return {uuid.UUID(str(mid)) for mid in rows.scalars()}
        now = database_clock(session.get_bind().dialect)
        statement = (
            sqlite.insert(self.processed)
            .values([{"message_id": mid, "topic": topic, "processed_at": now} for mid in message_ids])
            .on_conflict_do_nothing(index_elements=["message_id"])
            .returning(self.processed.c.message_id)
        )
        # RETURNING, not rowcount: an ORM-session INSERT reports rowcount -1 on psycopg.
        fresh = set(session.execute(statement).scalars())
        if fresh:
            session.execute(
                update(self.dead_letters)
                .where(self.dead_letters.c.message_id.in_(fresh), self.dead_letters.c.replayed_at.is_(None))
                .values(replayed_at=now)
            )
        return fresh

    def _record_postgres(self) -> TextClause:
        """Postgres: the inbox rows and the settled dead letters in one statement, one round trip."""
        return text(
            f"""
            WITH inbox AS (
                INSERT INTO {self.processed.name} (message_id, topic, processed_at)
                SELECT CAST(id AS uuid), :topic, statement_timestamp() FROM unnest(CAST(:ids AS text[])) AS id
                ON CONFLICT (message_id) DO NOTHING
                RETURNING message_id
            ), settled AS (
                UPDATE {self.dead_letters.name} SET replayed_at = statement_timestamp()
                WHERE replayed_at IS NULL AND message_id IN (SELECT message_id FROM inbox)
            )
            SELECT message_id FROM inbox
            """  # noqa: S608 - the interpolated names are this inbox's own tables, never input
        )

    def forget(self, session: Session, message_ids: Sequence[uuid.UUID]) -> None:
        """Take back ``record_many`` for messages the batch did not apply (left to the single task)."""
        if message_ids:
            session.execute(self.processed.delete().where(self.processed.c.message_id.in_(message_ids)))

    def is_processed(self, session: Session, message_id: uuid.UUID) -> bool:
        return bool(session.scalar(select(exists().where(self.processed.c.message_id == message_id))))

    def count_delivery(self, session: Session, message_id: uuid.UUID, first: int = 1) -> int:
        """Count one more delivery and commit before any work, so a delivery that crashes still counts.

        ``first``: the count a message's first counted delivery gets (2 when the broker's first
        delivery of it went uncounted: see ``DeliveryPolicy.first_delivery_uncounted``).
        """
        now = utcnow()
        insert = self._insert(session, self.deliveries).values(
            message_id=message_id, deliveries=first, first_delivered_at=now, last_delivered_at=now
        )
        statement = insert.on_conflict_do_update(
            index_elements=["message_id"],
            set_={"deliveries": self.deliveries.c.deliveries + 1, "last_delivered_at": now},
        ).returning(self.deliveries.c.deliveries)
        deliveries: int = session.execute(statement).scalar_one()
        session.commit()
        return deliveries

    def park(
        self,
        session: Session,
        message_id: uuid.UUID,
        task_name: str,
        payload: Any,
        reason: str,
        attempts: int,
    ) -> None:
        """Keep a message that cannot succeed as a dead letter; a redelivery updates the same row. Commits.

        The row keeps the latest message parked under the id with its reason, so a replay applies the
        payload the reason was given for (a forged copy parked first is replaced, never replayed).
        """
        statement = self._insert(session, self.dead_letters).values(
            message_id=message_id,
            task_name=task_name,
            payload=payload,
            reason=reason[:4000],
            attempts=attempts,
            created_at=utcnow(),
        )
        statement = statement.on_conflict_do_update(
            index_elements=["message_id"],
            set_={
                "task_name": statement.excluded.task_name,
                "payload": statement.excluded.payload,
                "reason": statement.excluded.reason,
                "attempts": statement.excluded.attempts,
                "replayed_at": None,
            },
        )
        session.execute(statement)
        session.commit()
        log.error("inbox.dead_lettered", message_id=str(message_id), reason=reason, attempts=attempts)


def define_inbox(metadata: MetaData) -> InboxTables:
    """Add the inbox's tables to ``metadata`` (the consuming service's own, so its migrations carry them)."""
    processed = Table(
        "processed_messages",
        metadata,
        Column("message_id", Uuid, primary_key=True),
        Column("topic", String(100), nullable=False),
        Column("processed_at", UTCDateTime, nullable=False, default=utcnow),
        Index("ix_processed_messages_processed_at", "processed_at"),
    )
    deliveries = Table(
        "message_deliveries",
        metadata,
        Column("message_id", Uuid, primary_key=True),
        Column("deliveries", Integer, nullable=False, default=1),
        Column("first_delivered_at", UTCDateTime, nullable=False, default=utcnow),
        Column("last_delivered_at", UTCDateTime, nullable=False, default=utcnow),
        Index("ix_message_deliveries_last_delivered_at", "last_delivered_at"),
    )
    dead_letters = Table(
        "dead_letters",
        metadata,
        Column("id", BigIntPK, primary_key=True, autoincrement=True),
        Column("message_id", Uuid, nullable=False, unique=True),
        Column("task_name", String(200), nullable=False),
        Column("payload", JSONDocument, nullable=False),
        Column("reason", Text, nullable=False),
        Column("attempts", Integer, nullable=False, default=1),
        Column("created_at", UTCDateTime, nullable=False, default=utcnow),
        Column("replayed_at", UTCDateTime, nullable=True),
    )
    return InboxTables(processed, deliveries, dead_letters)
