"""The relay core: claim due outbox rows, publish them, mark them. Knows nothing of Flask or Celery."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, Table, bindparam, delete, select, update
from sqlalchemy.exc import DBAPIError

from shared.db import utcnow
from shared.outbox.messages import BatchOutcome, PendingMessage, Publisher

__all__ = ["OutboxRelay", "RelayPolicy"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    batch_size: int = 500
    max_attempts: int = 20
    base_backoff: float = 0.5
    max_backoff: float = 300.0
    retention: timedelta = timedelta(days=7)

    def backoff(self, attempts: int) -> timedelta:
        """Exponential with full jitter in its upper half, so relays do not retry in lockstep."""
        ceiling = min(self.max_backoff, self.base_backoff * 2 ** max(attempts - 1, 0))
        return timedelta(seconds=random.uniform(ceiling / 2, ceiling))  # noqa: S311 - jitter, not crypto


class OutboxRelay:
    """Moves committed outbox rows to the broker, at least once, in id order."""

    def __init__(
        self,
        engine: Engine,
        outbox: Table,
        publisher: Publisher,
        policy: RelayPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.publisher = publisher
        self.policy = policy or RelayPolicy()
        self._clock = clock

    def claim(self, conn: Connection, limit: int | None = None) -> list[PendingMessage]:
        """Lock the oldest due, unpublished rows; other relays skip them (SKIP LOCKED on Postgres)."""
        t = self.outbox
        query = (
            select(
                t.c.id, t.c.message_id, t.c.topic, t.c.aggregate_id, t.c.payload, t.c.headers, t.c.attempts
            )
            .where(t.c.published_at.is_(None), t.c.parked_at.is_(None), t.c.available_at <= self._clock())
            .order_by(t.c.id)
            .limit(limit or self.policy.batch_size)
            .with_for_update(skip_locked=True)
        )
        return [PendingMessage(**row._mapping) for row in conn.execute(query)]

    def mark_published(self, conn: Connection, ids: list[int]) -> None:
        if ids:
            t = self.outbox
            conn.execute(update(t).where(t.c.id.in_(ids)).values(published_at=self._clock()))

    def record_failures(self, conn: Connection, batch: list[PendingMessage], failed: dict[int, str]) -> None:
        """Back off each failed row; park it once it has used up its attempts."""
        now = self._clock()
        rows = []
        for message in batch:
            if message.id not in failed:
                continue
            attempts = message.attempts + 1
            parked = attempts >= self.policy.max_attempts
            rows.append(
                {
                    "row_id": message.id,
                    "attempts": attempts,
                    "last_error": failed[message.id][:2000],
                    "available_at": now + self.policy.backoff(attempts),
                    "parked_at": now if parked else None,
                }
            )
            log.warning(
                "outbox.publish_failed",
                message_id=str(message.message_id),
                aggregate_id=message.aggregate_id,
                attempts=attempts,
                parked=parked,
                error=failed[message.id],
            )
        if rows:
            t = self.outbox
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
            conn.execute(statement, rows)

    def relay_batch(self) -> BatchOutcome:
        """One transaction: claim, publish, mark. A crash before commit republishes (consumers dedup)."""
        with self.engine.begin() as conn:
            batch = self.claim(conn)
            if not batch:
                return BatchOutcome()
            outcome = self.publisher.publish(batch)
            self.mark_published(conn, outcome.published)
            self.record_failures(conn, batch, outcome.failed)
        log.info("outbox.batch_published", published=len(outcome.published), failed=len(outcome.failed))
        return outcome

    def drain(self, stop: threading.Event | None = None) -> int:
        """Publish everything that is due now; return how many messages went out."""
        total = 0
        while stop is None or not stop.is_set():
            outcome = self.relay_batch()
            total += len(outcome.published)
            if not outcome.published:
                break
        return total

    def purge_published(self, limit: int = 5_000) -> int:
        """Delete up to ``limit`` rows published longer ago than the retention."""
        t = self.outbox
        cutoff = self._clock() - self.policy.retention
        oldest = (
            select(t.c.id)
            .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
            .order_by(t.c.id)
            .limit(limit)
        )
        with self.engine.begin() as conn:
            return conn.execute(delete(t).where(t.c.id.in_(oldest.scalar_subquery()))).rowcount

    def run(self, stop: threading.Event, wait: Callable[[], None], purge_every: float = 60.0) -> None:
        """Relay until ``stop`` is set; the current batch always finishes (or rolls back) first."""
        next_purge = 0.0
        while not stop.is_set():
            try:
                outcome = self.relay_batch()
                if self._clock().timestamp() >= next_purge:
                    purged = self.purge_published()
                    if purged:
                        log.info("outbox.purged", rows=purged)
                    next_purge = self._clock().timestamp() + purge_every
            except DBAPIError as exc:
                log.warning("relay.database_unavailable", error=str(exc.orig))
                stop.wait(self.policy.base_backoff)
                continue
            if len(outcome.published) + len(outcome.failed) < self.policy.batch_size:
                wait()
