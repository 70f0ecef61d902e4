"""Inbox retention: processed-message ids and delivery counts are deleted once no redelivery can need them.

Both tables grow by one row per message. A row may only go once nothing can deliver its message
again, so ``INBOX_RETENTION_SECONDS`` (default 30 days) must exceed the longest redelivery window:
the order relay's re-drive (up to ``settings.REDRIVE_MAX`` republishes, each at least
``OUTBOX_REDRIVE_AFTER_SECONDS`` after the last, and only while the queue is empty: no fixed
bound in time, so the check takes an hour between re-drives, far above what they ever wait) plus
the worker's own retries and broker redeliveries (minutes). ``check_retention`` refuses a shorter
setting at start.

Even past it a consumer's effect should not double: its handler keeps its own uniqueness (the
invoice worker's ``invoices.order_id`` is UNIQUE), so a message whose inbox row is gone changes
nothing. An inbox row is also kept while its delivery count is younger than the cutoff, so a late
redelivery is never mistaken for a poison message that was "delivered N times without completing".
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, and_, delete, exists, select, text

from flask_outbox.db import database_now, is_postgres
from flask_outbox.inbox import InboxTables
from flask_outbox.settings import REDRIVE_MAX
from flask_outbox.settings import OutboxSettings as Settings
from flask_outbox.worker_db import WorkerDatabase

__all__ = [
    "InboxPruner",
    "InboxRetention",
    "Pruned",
    "check_retention",
    "prune_inbox",
    "redelivery_window",
]

log = structlog.get_logger(__name__)

_REDRIVE_SPACING_ALLOWED = 3600.0
"""Seconds allowed between two re-drives of one message in the redelivery window: re-drive waits for an
empty queue, so no bound is strict; an hour per re-drive keeps 20 of them inside a day."""

_LOCK_KEY = zlib.crc32(b"flask_outbox:inbox-prune") & 0x7FFFFFFF
"""One pruner at a time per database (Postgres advisory lock); the others skip that round."""


def redelivery_window(settings: Settings) -> timedelta:
    """The longest a message can still arrive after it was first processed (an upper bound)."""
    redrive = settings.outbox_redrive_after_seconds + settings.outbox_redrive_max * _REDRIVE_SPACING_ALLOWED
    worker = (
        settings.worker_max_retries * settings.worker_retry_backoff_max
        + settings.worker_max_deliveries * settings.broker_visibility_timeout
    )
    return timedelta(seconds=redrive + worker)


def check_retention(settings: Settings) -> None:
    """Refuse a retention that would forget messages which can still be redelivered."""
    window = redelivery_window(settings)
    if timedelta(seconds=settings.inbox_retention_seconds) <= window:
        raise ValueError(
            f"INBOX_RETENTION_SECONDS={settings.inbox_retention_seconds:g} must exceed the redelivery window "
            f"({window.total_seconds():g} s: OUTBOX_REDRIVE_AFTER_SECONDS, then {REDRIVE_MAX} re-drives "
            f"allowed {_REDRIVE_SPACING_ALLOWED:g} s apart each, plus the worker's retries)"
        )


@dataclass(frozen=True, slots=True)
class InboxRetention:
    retention: timedelta = timedelta(days=30)
    batch: int = 5_000
    """Rows per DELETE, each in its own short transaction."""

    @classmethod
    def from_settings(cls, settings: Settings) -> InboxRetention:
        check_retention(settings)
        return cls(timedelta(seconds=settings.inbox_retention_seconds))


@dataclass(frozen=True, slots=True)
class Pruned:
    processed_messages: int = 0
    message_deliveries: int = 0
    skipped: bool = False
    """Another process held the prune lock; it is doing this round."""
    dead_letters: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.processed_messages + other.processed_messages,
            self.message_deliveries + other.message_deliveries,
            self.skipped or other.skipped,
            self.dead_letters + other.dead_letters,
        )


def _prune_batch(conn: Connection, tables: InboxTables, cutoff: datetime, batch: int) -> Pruned:
    delivered_c, processed_c = tables.deliveries.c, tables.processed.c
    deliveries = select(delivered_c.message_id).where(delivered_c.last_delivered_at < cutoff)
    delivered = delete(tables.deliveries).where(
        delivered_c.message_id.in_(
            deliveries.order_by(delivered_c.last_delivered_at).limit(batch).scalar_subquery()
        )
    )
    recently_delivered = exists().where(
        and_(
            delivered_c.message_id == processed_c.message_id,
            delivered_c.last_delivered_at >= cutoff,
        )
    )
    processed = (
        select(processed_c.message_id)
        .where(processed_c.processed_at < cutoff, ~recently_delivered)
        .order_by(processed_c.processed_at)
        .limit(batch)
    )
    inbox = delete(tables.processed).where(processed_c.message_id.in_(processed.scalar_subquery()))
    letters_c = tables.dead_letters.c
    old_letters = select(letters_c.id).where(letters_c.created_at < cutoff).order_by(letters_c.created_at)
    letters = delete(tables.dead_letters).where(letters_c.id.in_(old_letters.limit(batch).scalar_subquery()))
    return Pruned(
        processed_messages=conn.execute(inbox).rowcount,
        message_deliveries=conn.execute(delivered).rowcount,
        dead_letters=conn.execute(letters).rowcount,
    )


def prune_inbox(
    engine: Engine, tables: InboxTables, policy: InboxRetention, max_batches: int | None = None
) -> Pruned:
    """Delete inbox rows older than the retention, oldest first, ``policy.batch`` rows per transaction.

    Stops when a batch comes back short (caught up) or after ``max_batches``; the cutoff is read
    once from the database clock, so a long run does not chase rows that age while it works.
    """
    with engine.connect() as conn:
        cutoff = database_now(conn) - policy.retention
    total = Pruned()
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        with engine.begin() as conn:
            if is_postgres(conn.dialect) and not conn.scalar(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}
            ):
                return total + Pruned(skipped=True)
            pruned = _prune_batch(conn, tables, cutoff, policy.batch)
        total += pruned
        if max(pruned.processed_messages, pruned.message_deliveries, pruned.dead_letters) < policy.batch:
            break
    if total.processed_messages or total.message_deliveries or total.dead_letters:
        log.info(
            "inbox.pruned",
            processed_messages=total.processed_messages,
            message_deliveries=total.message_deliveries,
            dead_letters=total.dead_letters,
            cutoff=cutoff.isoformat(),
        )
    return total


@dataclass
class InboxPruner:
    """Prunes the inbox at most every ``interval`` seconds, in passing, in the process that calls it.

    Called by the task after a delivery, in the pool process: a thread in the prefork parent would
    be forked mid-import or mid-query into every new pool child (and deadlock it). A failed round
    (database down) is logged and tried again next interval; it never fails the delivery.
    """

    database: WorkerDatabase
    tables: InboxTables
    policy: InboxRetention
    interval: float = 300.0
    """Seconds between prune rounds per worker: expired rows are few per round, and a round is cheap."""
    _next: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, database: WorkerDatabase, tables: InboxTables) -> InboxPruner:
        return cls(database, tables, InboxRetention.from_settings(settings))

    def prune_when_due(self) -> Pruned | None:
        """One round if ``interval`` has passed since the last; never raises."""
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.interval
        try:
            return prune_inbox(self.database.engine, self.tables, self.policy)
        except Exception as exc:
            log.warning("inbox.prune_failed", error=f"{type(exc).__name__}: {exc}")
            return None
