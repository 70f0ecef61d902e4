"""The relay core: claim due outbox rows, publish them, commit them published. Knows no Flask or Celery.

Design (why it is safe to run several):

* One transaction per batch on one held connection: claim (one statement: ``FOR UPDATE SKIP
  LOCKED``, by state, in id order, stamped published), publish, release the stamp of any row not
  published, commit. A crash before the commit republishes the batch; consumers dedup on
  ``message_id`` (at least once, exactly-once effect).
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

Liveness (the stall bound, ``RelayPolicy.stall_seconds`` = ``RELAY_STALL_SECONDS``, 30 s):

* The loop survives every exception: it logs it, drops its session (its locks go with it), backs
  off (jittered, at most 30 s) and reconnects. Only the stop event ends it.
* A relay's main connection runs a query at least every ``stall_seconds / 3`` (the rebalance
  period is capped at that, and the entry point caps the idle wait too), and a batch keeps its
  transaction idle only while it publishes, which the publisher's own timeouts bound below the
  stall bound (Redis: connect 5 s, each socket operation 10 s). So a relay session idle longer
  than the bound has stopped (SIGSTOP, frozen VM, vanished host): live relays terminate it at
  their rebalance (``partitions.PartitionLeases.retire_stalled``) and take its partitions. A
  stopped relay's partitions move within ``stall_seconds`` + one rebalance period (~31 s).
  A broker so slow that one batch outlasts the bound gets its relay retired too: its batch rolls
  back and is republished by the new holder (at least once; consumers dedup).
* The session also sets ``idle_in_transaction_session_timeout`` to the bound (a relay stopped
  mid-batch, with no live relay to retire it, still releases its row locks) and server-side TCP
  keepalives, and the entry point sets libpq keepalives and ``tcp_user_timeout`` on the client
  side (``flask_outbox.db.keepalive_connect_args``), so a vanished peer is noticed on both ends.
* A relay that resumes after being retired finds its session gone at its next query, reconnects
  and rebalances. Stopped while waiting (the usual case) it had nothing claimed and publishes
  nothing twice; stopped between claim and commit, it may publish that one batch again on resume.
* ``metrics`` records the loop's progress for ``/healthz`` and the batches, lags, parked and
  re-driven rows for ``/metrics`` (``health.py``); the backlog gauges are read per scrape.
"""

from __future__ import annotations

import dataclasses
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

from flask_outbox import redrive, status, store
from flask_outbox.backoff import jittered_backoff
from flask_outbox.broker import BROKER_ERRORS
from flask_outbox.db import is_postgres, utcnow
from flask_outbox.flow_control import HOLD_TICK, FlowControl
from flask_outbox.health import BacklogCollector, RelayMetrics
from flask_outbox.host_cpu import HostCpu
from flask_outbox.logs import CORRELATION_HEADER
from flask_outbox.messages import BatchOutcome, PendingMessage, Publisher
from flask_outbox.partitions import LockKeys, PartitionLeases
from flask_outbox.settings import REDRIVE_MAX

__all__ = ["OutboxRelay", "RelayPolicy"]

log = structlog.get_logger(__name__)

_LOOP_BACKOFF_MAX = 30.0
"""Longest pause between attempts after the loop failed (a database or broker outage, a bug)."""


_BROKER_PROBE_EVERY = 1.0
"""How often a relay whose broker failed asks it again: the most a broker that is back waits to be used."""

_LOGGED_IDS = 20
"""Message and correlation ids named in one ``outbox.batch_relayed`` line (the counts are complete)."""


def _correlation(batch: list[PendingMessage]) -> dict[str, list[str]]:
    """The first messages of a batch by id and correlation id, so one request's lines can be found."""
    head = batch[:_LOGGED_IDS]
    ids = [str(m.headers[CORRELATION_HEADER]) for m in head if m.headers.get(CORRELATION_HEADER)]
    return {"message_ids": [str(message.message_id) for message in head], "correlation_ids": ids}


@dataclass(frozen=True, slots=True)
class RelayPolicy:
    """How a relay works. The settings (``RelaySettings``) fill the first fields; the rest are constants
    nobody should need to tune, each with its reason (tests and benches may still pass others)."""

    batch_size: int = 500
    max_backoff: float = 30.0
    expects_answer: frozenset[str] = frozenset()
    """Topics whose rows wait for an acknowledgement; unanswered ones are re-driven (``redrive.py``)."""
    redrive_after: float = 90.0
    stall_seconds: float = 30.0
    max_attempts: int = 20
    """Failed publishes of a row (not a broker outage: those are transient and never park it) before it
    is parked for an operator: with the 30 s backoff ceiling, minutes of a message Celery refuses."""
    base_backoff: float = 0.5
    """First retry delay of a failed row: a broker blip is over by then."""
    retention: timedelta = timedelta(days=7)
    """Published rows kept for inspection (``relay status``, an audit); only disk depends on it."""
    partitions: int = 16
    """Partitions of the outbox: enough for a handful of relays to share, few enough that a rebalance
    is one cheap query. Changing it moves aggregates between partitions: not a knob for a live system."""
    rebalance_interval: float = 1.0
    """Seconds between partition rebalances (also the heartbeat live relays judge stalls by)."""
    purge_interval: float = 60.0
    """Seconds between purges of published rows past the retention: a minute keeps each purge short."""
    purge_batch: int = 5_000
    """Rows per purge DELETE: a short transaction whatever the table's size."""
    purge_max_batches: int = 20
    """DELETEs per purge round: the loop gets back to publishing within a second or so."""
    redrive_max: int = REDRIVE_MAX
    redrive_interval: float = 5.0
    """Seconds between scans for unanswered messages: small against the re-drive delay (90 s)."""
    redrive_batch: int = 5_000
    """Most messages one re-drive scan republishes: an outage's worth per scan, in one short transaction."""
    gather: float = 0.0
    """Seconds to wait after a batch that published, so the next claim takes what arrived meanwhile: for
    messages nobody waits on (answers), one consumer task per busy moment instead of one per message.
    At 0 the relay still gathers briefly while the host's CPU is saturated (``flow_control``)."""

    def backoff(self, attempts: int) -> timedelta:
        return store.backoff(attempts, self.base_backoff, self.max_backoff)

    def redrive_rule(self) -> redrive.RedriveRule:
        return redrive.RedriveRule(
            topics=self.expects_answer,
            after=self.redrive_after,
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
        saturated: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.outbox = outbox
        self.publisher = publisher
        self.policy = policy or RelayPolicy()
        self._clock = clock
        self.flow = FlowControl(
            publisher.waiting, saturated or HostCpu().saturated, self.policy.batch_size, self.policy.gather
        )
        postgres = is_postgres(engine)
        self.leases = (
            PartitionLeases(
                LockKeys.for_table(outbox.name), self.policy.partitions, self.policy.stall_seconds
            )
            if postgres
            else None
        )
        self.metrics = RelayMetrics(self.policy.stall_seconds)
        self.metrics.registry.register(BacklogCollector(outbox.name, self.read_backlog))
        # The heartbeat that tells live relays from stopped ones: a query at least this often.
        self._rebalance_every = min(self.policy.rebalance_interval, self.policy.stall_seconds / 3)
        self._partitions: frozenset[int] | None = frozenset() if postgres else None
        self._conn: Connection | None = None
        self._next_rebalance = 0.0
        self._next_purge = 0.0
        self._next_redrive = 0.0

    def read_backlog(self) -> status.Backlog:
        """The table's backlog now, on a pooled connection of the scrape's thread (not the loop's)."""
        with self.engine.connect() as conn:
            if is_postgres(conn.dialect):
                conn.execute(text("SELECT set_config('statement_timeout', '5000', true)"))
            backlog = status.read_backlog(conn, self.outbox)
            if not self.policy.expects_answer:
                return backlog
            unanswered = redrive.unanswered(conn, self.outbox, self.policy.redrive_rule(), now=utcnow())
            return dataclasses.replace(backlog, exhausted=unanswered.exhausted)

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
                    self._configure_session(self._conn)
        return self._conn

    def _configure_session(self, conn: Connection) -> None:
        """Name the session (``status``) and bound how long the server keeps it when the relay stops."""
        bound_ms = int(self.policy.stall_seconds * 1000)
        settings = {
            "application_name": f"outbox-relay {socket.gethostname()}:{os.getpid()}"[:63],
            "idle_in_transaction_session_timeout": str(bound_ms),
            # The server's side of a vanished client (no FIN): probes after a third of the bound.
            "tcp_keepalives_idle": str(max(1, int(self.policy.stall_seconds / 3))),
            "tcp_keepalives_interval": str(max(1, int(self.policy.stall_seconds / 9))),
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": str(bound_ms),
        }
        for name, value in settings.items():
            conn.execute(text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value})

    def disconnect(self) -> None:
        """Close the session for real: its advisory locks end with it (a pooled one would keep them)."""
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.invalidate()
                conn.close()
        finally:
            if self.leases is not None:
                self.leases.reset()
                self._partitions = frozenset()
                self.metrics.partitions.set(0)

    def rebalance(self, force: bool = False) -> frozenset[int] | None:
        """Re-take this relay's fair share of partitions (at most every ``rebalance_interval``)."""
        conn = self._connection()
        if self.leases is None or (not force and time.monotonic() < self._next_rebalance):
            return self._partitions
        with conn.begin():
            retired = self.leases.retire_stalled(conn)
            owned = self.leases.rebalance(conn)
        self.metrics.retired.inc(len(retired))
        self._partitions = owned
        self.metrics.partitions.set(len(owned))
        # Partitions a retired relay held are free now (PG 14+ waits for its exit): take them at once.
        self._next_rebalance = 0.0 if retired else time.monotonic() + self._rebalance_every
        return owned

    def relay_batch(self) -> BatchOutcome:
        """One transaction: claim (stamped), publish, unstamp what was not published (held back, or failed
        and backed off). A crash before commit republishes (consumers dedup)."""
        self.rebalance()
        conn = self._connection()
        if self._partitions is not None and not self._partitions:
            return BatchOutcome()
        started = time.perf_counter()
        with conn.begin():
            claimed = store.claim(  # times: the database's clock (store's docstring)
                conn,
                self.outbox,
                limit=self.policy.batch_size,
                partitions=self._partitions,
                partition_count=self.policy.partitions,
            )
            batch = claimed.messages
            if not batch:
                return BatchOutcome()
            outcome = self.publisher.publish(batch)
            settled = {*outcome.published, *outcome.failed}
            store.release(conn, self.outbox, [m.id for m in batch if m.id not in settled])  # held back
            if outcome.failed:
                failures = [(m, outcome.failed[m.id]) for m in batch if m.id in outcome.failed]
                self._record_failures(conn, failures, outcome.transient)
        self.metrics.batch_duration.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        for row_id in outcome.published:
            if (lag := claimed.lags.get(row_id)) is not None:
                self.metrics.publish_lag.observe(lag)
        log.info(
            "outbox.batch_relayed",
            published=len(outcome.published),
            failed=len(outcome.failed),
            held_back=len(batch) - len(outcome.published) - len(outcome.failed),
            first_message_id=str(batch[0].message_id),
            **_correlation(batch),
        )
        return outcome

    def _record_failures(
        self, conn: Connection, failures: list[tuple[PendingMessage, str]], transient: set[int]
    ) -> None:
        recorded = store.record_failures(
            conn,
            self.outbox,
            failures,
            transient=transient,
            max_attempts=self.policy.max_attempts,
            base_backoff=self.policy.base_backoff,
            max_backoff=self.policy.max_backoff,
        )
        self.metrics.parked.inc(sum(1 for failure in recorded if failure.parked))
        refused = [failure for failure in recorded if failure.message.id in transient]
        if refused:  # one line per batch: the broker is down, and every row says the same
            log.warning(
                "outbox.broker_refused",
                rows=len(refused),
                error=refused[0].error,
                message_ids=[str(failure.message.message_id) for failure in refused[:_LOGGED_IDS]],
            )
        for failure in recorded:
            if failure.message.id in transient:
                continue
            log.warning(
                "outbox.publish_failed",
                message_id=str(failure.message.message_id),
                aggregate_id=failure.message.aggregate_id,
                topic=failure.message.topic,
                correlation_id=failure.message.headers.get(CORRELATION_HEADER),
                attempts=failure.attempts,
                parked=failure.parked,
                retry_in_s=round(failure.retry_in.total_seconds(), 3),
                error=failure.error,
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
                    redrive_max=self.policy.redrive_max,
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
        count = redrive.redrive_unanswered(self._connection(), self.outbox, self.policy.redrive_rule())
        self.metrics.redriven.inc(count)
        return count

    def _redrive_when_due(self) -> None:
        """Re-drive on evidence of loss: not while tasks still wait in the queue, where an unanswered
        message may well be (a copy would only queue behind it and spend a re-drive level)."""
        if self.policy.expects_answer and time.monotonic() >= self._next_redrive and not self._queued_now():
            self.redrive_unanswered()
            self._next_redrive = time.monotonic() + self.policy.redrive_interval

    def _queued_now(self) -> bool:
        try:
            return self.publisher.waiting() > 0
        except BROKER_ERRORS:
            return False

    def run(self, stop: threading.Event, wait: Callable[[], None]) -> None:
        """Relay until ``stop`` is set; the current batch always finishes (or rolls back) first.

        Any exception (database, broker, a bug) is logged, the session dropped, and the loop backs
        off and goes on: a relay that crash-looped would hold nothing, but publish nothing either.
        """
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if self.flow.workers_behind():
                        self._hold(stop)
                        continue
                    outcome = self.relay_batch()
                    self.flow.published(outcome)
                    self._purge_when_due()
                    self._redrive_when_due()
                    self._record_progress(outcome)
                    if failures:
                        log.info(
                            "relay.recovered",
                            after_failures=failures,
                            partitions=sorted(self._partitions or ()),
                        )
                        failures = 0
                    if outcome.transient:
                        self._await_broker(stop)
                    elif (
                        outcome.published
                        and not outcome.failed
                        and (pause := self.flow.gather_after(outcome))
                    ):
                        stop.wait(pause)  # then claim again: no notification needed
                    elif outcome.failed or len(outcome.published) < self.policy.batch_size:
                        wait()
                        self.metrics.progressed()
                except Exception as exc:  # the loop must outlive any one failure, whatever it is
                    failures += 1
                    self._back_off(exc, failures, stop)
        finally:
            self.disconnect()

    def _await_broker(self, stop: threading.Event) -> None:
        """The broker refused a publish: wait for it as one thing, probing it every second.

        The failed rows stay due (``store.record_failures``), so everything that waited goes out in the
        claims that follow the first answer. Half the stall bound into the wait, a relay that holds
        partitions gives them up: the broker may well answer the other relays (a broken route or
        password here is not an outage there), which take them at their next rebalance; this relay
        takes its share again once its broker answers.
        """
        since = time.monotonic()
        log.warning("relay.broker_unavailable", partitions=sorted(self._partitions or ()))
        while not stop.wait(_BROKER_PROBE_EVERY):
            self.metrics.progressed()  # alive and waiting: /readyz, not /healthz, reports the broker
            if self.publisher.reachable():
                log.info("relay.broker_back", waited_s=round(time.monotonic() - since, 1))
                return
            if self._conn is None:
                continue
            if self._partitions and time.monotonic() - since >= self.policy.stall_seconds / 2:
                log.warning("relay.partitions_released", partitions=sorted(self._partitions))
                self.disconnect()
            else:
                self.rebalance()  # the heartbeat of a relay that still holds its partitions

    def _hold(self, stop: threading.Event) -> None:
        """Leave due rows in the outbox while the workers are behind (``flow_control``), and keep the
        loop's other duties and its heartbeat going meanwhile."""
        self.rebalance()
        self._purge_when_due()
        self._redrive_when_due()
        self.metrics.progressed()
        stop.wait(HOLD_TICK)

    def _record_progress(self, outcome: BatchOutcome) -> None:
        self.metrics.published.inc(len(outcome.published))
        self.metrics.failed.inc(len(outcome.failed))
        self.metrics.progressed()

    def _back_off(self, exc: Exception, failures: int, stop: threading.Event) -> None:
        """Log the failure, drop the session (its locks and any open batch go with it), wait.

        Backing off is progress of the loop (``/healthz`` stays 200, ``/readyz`` names the database):
        a relay waiting out a database outage is alive, and its watchdog must not end it.
        """
        self.metrics.loop_errors.inc()
        self.metrics.progressed()
        delay = jittered_backoff(failures, self.policy.base_backoff, _LOOP_BACKOFF_MAX)
        if isinstance(exc, DBAPIError):
            sqlstate = getattr(exc.orig, "sqlstate", None)
            log.warning(
                "relay.database_unavailable",
                error=str(exc.orig),
                sqlstate=sqlstate,
                attempt=failures,
                retry_in_s=round(delay, 2),
            )
        else:
            log.error("relay.loop_failed", attempt=failures, retry_in_s=round(delay, 2), exc_info=exc)
        try:
            self.disconnect()
        except Exception:  # a broken connection may fail to close; it is dropped all the same
            log.warning("relay.disconnect_failed", exc_info=True)
        stop.wait(delay)
