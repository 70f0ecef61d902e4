"""The relay core: claim due outbox rows, publish them, mark them. Knows nothing of Flask or Celery.

Design (why it is safe to run several):

* One transaction per batch on one held connection: claim (``FOR UPDATE SKIP LOCKED``, by state,
  in id order), publish, mark published in one statement, commit. A crash before the commit
  republishes the batch; consumers dedup on ``message_id`` (at least once, exactly-once effect).
* Partitions: a row belongs to partition ``bucket % partitions`` (``bucket`` is a crc32 of the
  aggregate id, so an aggregate never changes partition). A relay claims only rows of the
  partitions it holds as session-level advisory locks on that same connection (see
  ``partitions.py``); one holder per partition means one relay publishes an aggregate's rows, and
  it does so batch after batch in id order. Handover happens between batches (after a commit) or
  when a holder's session ends, which also aborts its open batch. No table, lease row or clock
  skew is involved: the database is the arbiter, and a dead relay frees its share at once.
* Order across failures: a row that fails goes into backoff (or is parked); while it is
  unpublished, later rows of its aggregate are not claimed, and the rest of its batch's
  aggregate is held back, so a retry can never overtake. Rows of one aggregate that fail
  together get one retry time.
* SQLite (embedded mode) has no row locks or advisory locks: one relay runs, and claims all rows.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.exc import DBAPIError

from shared.db import is_postgres, utcnow
from shared.outbox import redrive, store
from shared.outbox.messages import BatchOutcome, PendingMessage, Publisher
from shared.outbox.partitions import LockKeys, PartitionLeases

__all__ = ["OutboxRelay", "RelayPolicy"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    batch_size: int = 500
    max_attempts: int = 20
    base_backoff: float = 0.5
    max_backoff: float = 300.0
    retention: timedelta = timedelta(days=7)
    partitions: int = 16
    rebalance_interval: float = 1.0
    purge_interval: float = 60.0
    purge_batch: int = 5_000
    purge_max_batches: int = 20
    expects_answer: frozenset[str] = frozenset()
    """Topics whose rows wait for an acknowledgement; unanswered ones are re-driven (``redrive.py``)."""
    redrive_after: float = 60.0
    redrive_max_interval: float = 3600.0
    redrive_max: int = 20
    redrive_interval: float = 5.0
    redrive_batch: int = 5_000

    def backoff(self, attempts: int) -> timedelta:
        return store.backoff(attempts, self.base_backoff, self.max_backoff)

    def redrive_rule(self) -> redrive.RedriveRule:
        return redrive.RedriveRule(
            topics=self.expects_answer,
            after=self.redrive_after,
            max_interval=self.redrive_max_interval,
            max_redrives=self.redrive_max,
            batch=self.redrive_batch,
        )


class OutboxRelay:
    """Moves committed outbox rows to the broker, at least once, in per-aggregate order."""

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
        postgres = is_postgres(engine)
        self.leases = (
            PartitionLeases(LockKeys.for_table(outbox.name), self.policy.partitions) if postgres else None
        )
        self._partitions: frozenset[int] | None = frozenset() if postgres else None
        self._conn: Connection | None = None
        self._next_rebalance = 0.0
        self._next_purge = 0.0
        self._next_redrive = 0.0
        self._guard_order = True

    @property
    def partitions(self) -> frozenset[int] | None:
        """The partitions this relay holds now (``None``: all rows, on SQLite)."""
        return self._partitions

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.engine.connect()
            if self.leases is not None:
                self.leases.reset()
                self._partitions = frozenset()
                self._next_rebalance = 0.0
                with self._conn.begin():
                    name = f"outbox-relay {socket.gethostname()}:{os.getpid()}"[:63]
                    self._conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name})
            self._guard_order = True
        return self._conn

    def disconnect(self) -> None:
        """Close the session for real: its advisory locks end with it (a pooled one would keep them)."""
        if self._conn is not None:
            self._conn.invalidate()
            self._conn.close()
            self._conn = None
        if self.leases is not None:
            self.leases.reset()
            self._partitions = frozenset()

    def rebalance(self, force: bool = False) -> frozenset[int] | None:
        """Re-take this relay's fair share of partitions (at most every ``rebalance_interval``)."""
        conn = self._connection()
        if self.leases is None or (not force and time.monotonic() < self._next_rebalance):
            return self._partitions
        with conn.begin():
            owned = self.leases.rebalance(conn)
        if owned - (self._partitions or frozenset()):
            self._guard_order = True  # new partitions may hold rows that failed under their last owner
        self._partitions = owned
        self._next_rebalance = time.monotonic() + self.policy.rebalance_interval
        return owned

    def relay_batch(self) -> BatchOutcome:
        """One transaction: claim, publish, mark. A crash before commit republishes (consumers dedup)."""
        self.rebalance()
        conn = self._connection()
        if self._partitions is not None and not self._partitions:
            return BatchOutcome()
        with conn.begin():
            batch, troubled = store.claim(
                conn,
                self.outbox,
                limit=self.policy.batch_size,
                now=self._clock(),
                partitions=self._partitions,
                partition_count=self.policy.partitions,
                guard_order=self._guard_order,
            )
            if troubled == 0:
                self._guard_order = False
            if not batch:
                return BatchOutcome()
            outcome = self.publisher.publish(batch)
            now = self._clock()
            store.mark_published(conn, self.outbox, outcome.published, now)
            if outcome.failed:
                self._guard_order = True
                failures = [(m, outcome.failed[m.id]) for m in batch if m.id in outcome.failed]
                self._record_failures(conn, failures, outcome.transient)
        log.info(
            "outbox.batch_relayed",
            published=len(outcome.published),
            failed=len(outcome.failed),
            held_back=len(batch) - len(outcome.published) - len(outcome.failed),
            first_message_id=str(batch[0].message_id),
        )
        return outcome

    def _record_failures(
        self, conn: Connection, failures: list[tuple[PendingMessage, str]], transient: set[int]
    ) -> None:
        rows = store.record_failures(
            conn,
            self.outbox,
            failures,
            transient=transient,
            now=self._clock(),
            max_attempts=self.policy.max_attempts,
            base_backoff=self.policy.base_backoff,
            max_backoff=self.policy.max_backoff,
        )
        for (message, error), row in zip(failures, rows, strict=True):
            log.warning(
                "outbox.publish_failed",
                message_id=str(message.message_id),
                aggregate_id=message.aggregate_id,
                topic=message.topic,
                attempts=row["attempts"],
                parked=row["parked_at"] is not None,
                retry_at=str(row["available_at"]),
                error=error,
            )

    def drain(self, stop: threading.Event | None = None) -> int:
        """Publish everything that is due now; return how many messages went out."""
        total = 0
        while stop is None or not stop.is_set():
            outcome = self.relay_batch()
            total += len(outcome.published)
            if not outcome.published:
                break
        return total

    def purge_published(self) -> int:
        """Delete rows published longer ago than the retention, in bounded batches (one relay at a time)."""
        conn = self._connection()
        cutoff = self._clock() - self.policy.retention
        total = 0
        for _ in range(self.policy.purge_max_batches):
            with conn.begin():
                if self.leases is not None and not conn.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:k, 0)"), {"k": self.leases.keys.purge}
                ):
                    break
                deleted = store.purge_published(
                    conn,
                    self.outbox,
                    cutoff=cutoff,
                    limit=self.policy.purge_batch,
                    expects_answer=self.policy.expects_answer,
                )
            total += deleted
            if deleted < self.policy.purge_batch:
                break
        if total:
            log.info("outbox.purged", rows=total, cutoff=str(cutoff))
        return total

    def _purge_when_due(self) -> None:
        if time.monotonic() >= self._next_purge:
            self.purge_published()
            self._next_purge = time.monotonic() + self.policy.purge_interval

    def redrive_unanswered(self) -> int:
        """Put unanswered messages whose backoff has passed back in the queue (one relay at a time)."""
        if not self.policy.expects_answer:
            return 0
        return redrive.redrive_unanswered(self._connection(), self.outbox, self.policy.redrive_rule())

    def _redrive_when_due(self) -> None:
        if self.policy.expects_answer and time.monotonic() >= self._next_redrive:
            self.redrive_unanswered()
            self._next_redrive = time.monotonic() + self.policy.redrive_interval

    def run(self, stop: threading.Event, wait: Callable[[], None]) -> None:
        """Relay until ``stop`` is set; the current batch always finishes (or rolls back) first."""
        outages = 0
        try:
            while not stop.is_set():
                try:
                    outcome = self.relay_batch()
                    self._purge_when_due()
                    self._redrive_when_due()
                except DBAPIError as exc:
                    outages += 1
                    delay = store.backoff(outages, self.policy.base_backoff, 30.0).total_seconds()
                    log.warning("relay.database_unavailable", error=str(exc.orig), retry_in_s=round(delay, 2))
                    self.disconnect()
                    stop.wait(delay)
                    continue
                if outages:
                    log.info("relay.database_reconnected", partitions=sorted(self._partitions or ()))
                    outages = 0
                if outcome.failed or len(outcome.published) < self.policy.batch_size:
                    wait()
        finally:
            self.disconnect()
