"""Reading a cluster's evidence: both databases, the private broker, and the workers' JSON logs.

``Checker.verdict``/``settled`` are the quick counts the single-fault tests poll; ``Checker.evidence``
feeds ``tests.fault.checker.audit`` once ``Checker.wait_quiescent`` has seen the whole loop at rest
(every order ``invoiced`` and acknowledged, both outboxes published, both queues and ``unacked`` empty).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.exc import DBAPIError

from shared.contracts import INVOICE_CREATED, ORDER_PLACED, ROUTES
from tests.fault.checker import INVOICED, Accepted, Evidence, InvoiceRow, OrderRow

__all__ = ["Checker", "InvoicedWatch", "LogTally", "Snapshot", "Verdict", "invoice_effects", "read_logs"]

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
"""kombu's Redis transport keeps priorities 1-9 in sibling lists ``<queue>\\x06\\x16<step>``."""
UNACKED = "unacked"
"""kombu's hash of delivered, unacknowledged messages (the cluster's Redis is private: all are ours)."""


@dataclass(frozen=True)
class Verdict:
    orders: set[str]
    invoices: dict[str, int]  # order id -> number of invoices
    unpublished: int
    dead_letters: int  # pending ones
    redeliveries: int  # deliveries beyond the first, summed over messages

    @property
    def lost(self) -> set[str]:
        """Committed orders with no invoice."""
        return self.orders - set(self.invoices)

    @property
    def doubled(self) -> set[str]:
        """Orders with more than one invoice, and invoices for no committed order."""
        return {o for o, n in self.invoices.items() if n > 1 or o not in self.orders}

    def summary(self) -> str:
        return (
            f"orders={len(self.orders)} invoices={sum(self.invoices.values())} lost={len(self.lost)} "
            f"doubled={len(self.doubled)} unpublished={self.unpublished} dead_letters={self.dead_letters} "
            f"redeliveries={self.redeliveries}"
        )


@dataclass(frozen=True)
class Snapshot:
    """Counts that change while anything is in flight; ``None`` where the broker did not answer."""

    orders: int
    invoices: int
    not_invoiced: int
    """Orders whose status is not ``invoiced`` yet (the answer has not come back)."""
    pending_outbox: int
    parked_outbox: int
    unacknowledged: int
    """``order.placed`` rows with no ``acknowledged_at``: the relay will re-drive them."""
    redrives: int
    answers_unpublished: int
    """Rows of the invoices outbox (``invoice.created``) not yet published."""
    dead_letters: int
    order_dead_letters: int
    deliveries: int
    queued: int | None
    unacked: int | None

    @property
    def idle(self) -> bool:
        """The loop is closed: every order invoiced and acknowledged, both outboxes and the broker empty."""
        return (
            self.queued == 0
            and self.unacked == 0
            and self.pending_outbox == 0
            and self.not_invoiced == 0
            and self.unacknowledged == 0
            and self.answers_unpublished == 0
        )


@dataclass
class LogTally:
    """What the processes' JSON logs say happened: effects per order and counts per event."""

    effects: Counter[str] = field(default_factory=Counter)
    """Order id -> ``invoice.created`` lines (one per committed invoice transaction)."""
    garbled: int = 0
    events: Counter[str] = field(default_factory=Counter)
    """Event name (``order.invoice_recorded`` as ``order.invoice_recorded:<outcome>``) -> lines."""
    received: Counter[str] = field(default_factory=Counter)
    """``order.placed`` message id -> Celery's ``Task … received`` lines (a delivery started)."""
    finished: Counter[str] = field(default_factory=Counter)
    """``order.placed`` message id -> ``Task … succeeded/retry/failed…`` lines (a delivery ended)."""

    @property
    def interrupted(self) -> frozenset[str]:
        """Messages with a delivery that started and never ended: its worker died holding it."""
        return frozenset(m for m, n in self.received.items() if n > self.finished.get(m, 0))


COUNTED_EVENTS = frozenset(
    {
        "invoice.duplicate_message",
        "invoice.already_exists",
        "invoice.reanswered",
        "inbox.duplicate_message",
        "order.invoice_recorded",
        "order.invoice_number_conflict",
        "outbox.redriven",
    }
)
"""Events the soak reports: duplicates each inbox absorbed, answers sent again, re-drives.
(``inbox.duplicate_message`` is logged by both consumers: see ``checker.order_duplicates``.)"""


ORDER_PLACED_TASK = re.compile(
    rf"^Task {re.escape(ROUTES[ORDER_PLACED].task)}\[(?P<id>[0-9a-f-]{{36}})\] (?P<what>\w+)"
)
"""Celery's own lines about one delivery of ``order.placed`` (``received``, then ``succeeded`` …)."""


BATCH_DELIVERY_LINES = frozenset({"inbox.batch_received", "inbox.batch_settled"})
"""The consumer's lines around a batch's first delivery (``flask_outbox.tasks``), those of ``order.placed``
(``topic``) being the invoice worker's: each names its messages, as Celery's ``received``/``succeeded``
lines name a single task's."""


def read_logs(log_dir: Path) -> LogTally:
    """Tally every JSON log under ``log_dir``; a line that names ``invoice.created`` but does not parse
    is an effect that cannot be attributed (``garbled``)."""
    tally = LogTally()
    for path in sorted(log_dir.glob("*.log")):
        with path.open(errors="replace") as lines:
            for line in lines:
                if '"event"' not in line and "invoice.created" not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    tally.garbled += "invoice.created" in line
                    continue
                if not isinstance(record, dict):
                    continue
                event = record.get("event")
                if event == "invoice.created":
                    tally.effects[_uuid(record["order_id"])] += 1
                elif event == "order.invoice_recorded":
                    tally.events[f"{event}:{record.get('outcome')}"] += 1
                elif event in COUNTED_EVENTS:
                    tally.events[str(event)] += 1
                elif isinstance(event, str) and (task := ORDER_PLACED_TASK.match(event)):
                    seen = tally.received if task["what"] == "received" else tally.finished
                    seen[task["id"]] += 1
                elif (
                    event in BATCH_DELIVERY_LINES
                    and record.get("topic") == ORDER_PLACED
                    and isinstance(record.get("message_ids"), list)
                ):
                    seen = tally.received if event == "inbox.batch_received" else tally.finished
                    seen.update(str(message_id) for message_id in record["message_ids"])
    return tally


def invoice_effects(log_dir: Path) -> tuple[Counter[str], int]:
    """``invoice.created`` lines per order id in every JSON log under ``log_dir``, and unparseable ones.

    One line is logged after each committed invoice transaction, so unlike the invoices table
    (``UNIQUE(order_id)``) nothing deduplicates a second effect here.
    """
    tally = read_logs(log_dir)
    return tally.effects, tally.garbled


def _uuid(value: object) -> str:
    return str(uuid.UUID(str(value)))


class InvoicedWatch:
    """When each order was first seen ``invoiced``, on the database's clock.

    The consumer stamps ``orders.invoiced_at`` with the invoice worker's Python clock (the
    invoice's ``created_at``), so the soak reads the database clock instead: ``now()`` of the
    first read that saw the order invoiced, polled every ``interval`` s (an upper bound within
    one poll).
    """

    def __init__(self, checker: Checker, interval: float = 1.0) -> None:
        self._checker = checker
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.seen: dict[str, datetime] = {}
        self.failed_polls = 0

    def poll(self) -> None:
        now, invoiced = self._checker.invoiced_orders()
        for order_id in invoiced:
            self.seen.setdefault(order_id, now)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except DBAPIError:
                self.failed_polls += 1

    def start(self) -> InvoicedWatch:
        self._thread = threading.Thread(target=self._run, name="invoiced-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling, then read once more: every order invoiced by now has a time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.poll()


class Checker:
    """Reads both databases with engines of its own (so it can poll cheaply while faults happen)."""

    def __init__(
        self,
        orders_url: str,
        invoices_url: str,
        broker_url: str | None = None,
        queues: Sequence[str] = (),
        counts: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """``counts`` reads (queued, unacknowledged) from a broker other than Redis (``PrivateRabbit``);
        without it, and with no Redis URL, the broker's counts are unknown (``None``)."""
        self._orders = create_engine(orders_url, pool_pre_ping=True, pool_size=1)
        self._invoices = create_engine(invoices_url, pool_pre_ping=True, pool_size=1)
        self._broker_url = broker_url
        self._queues = tuple(queues)
        self._counts = counts

    def verdict(self) -> Verdict:
        with self._orders.connect() as conn:
            orders = {str(i) for i in conn.scalars(text("SELECT id FROM orders"))}
            unpublished = conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0
        with self._invoices.connect() as conn:
            counts = conn.execute(text("SELECT order_id, count(*) FROM invoices GROUP BY order_id"))
            invoices = {str(order_id): n for order_id, n in counts}
            dead = conn.scalar(text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")) or 0
            again = conn.scalar(text("SELECT coalesce(sum(deliveries - 1), 0) FROM message_deliveries")) or 0
        return Verdict(orders, invoices, unpublished, dead, int(again))

    def settled(self, expected_orders: int | None = None) -> Verdict | None:
        """The verdict once every order is invoiced and nothing waits in the outbox, else ``None``."""
        verdict = self.verdict()
        if expected_orders is not None and len(verdict.orders) < expected_orders:
            return None
        if verdict.lost or verdict.unpublished:
            return None
        return verdict

    def db_now(self) -> datetime:
        """The database server's clock (both databases live on it), to compare with its timestamps."""
        with self._orders.connect() as conn:
            now: datetime = conn.execute(text("SELECT now()")).scalar_one()
        return now

    def _broker_counts(self) -> tuple[int | None, int | None]:
        """Messages waiting in the queues (every priority list), and delivered but unacknowledged."""
        if self._counts is not None:
            try:
                return self._counts()
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                return None, None
        if self._broker_url is None or not self._broker_url.startswith("redis") or not self._queues:
            return None, None
        client = redis.Redis.from_url(self._broker_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            names = [
                name
                for queue in self._queues
                for name in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS))
            ]
            return sum(int(client.llen(name)) for name in names), int(client.hlen(UNACKED))
        except redis.RedisError:
            return None, None
        finally:
            client.close()

    def snapshot(self) -> Snapshot:
        with self._orders.connect() as conn:
            orders, not_invoiced = conn.execute(
                text(f"SELECT count(*), count(*) FILTER (WHERE status <> '{INVOICED}') FROM orders")
            ).one()
            pending, parked, unacknowledged, redrives = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE published_at IS NULL AND parked_at IS NULL),"
                    " count(*) FILTER (WHERE published_at IS NULL AND parked_at IS NOT NULL),"
                    " count(*) FILTER (WHERE topic = :placed AND acknowledged_at IS NULL),"
                    " coalesce(sum(redrives), 0) FROM outbox"
                ),
                {"placed": ORDER_PLACED},
            ).one()
            order_dead = conn.scalar(text("SELECT count(*) FROM dead_letters")) or 0
        with self._invoices.connect() as conn:
            invoices = conn.scalar(text("SELECT count(*) FROM invoices")) or 0
            unanswered = conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL")) or 0
            dead = conn.scalar(text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")) or 0
            deliveries = conn.scalar(text("SELECT coalesce(sum(deliveries), 0) FROM message_deliveries")) or 0
        queued, unacked = self._broker_counts()
        return Snapshot(
            orders=orders,
            invoices=invoices,
            not_invoiced=not_invoiced,
            pending_outbox=pending,
            parked_outbox=parked,
            unacknowledged=unacknowledged,
            redrives=int(redrives),
            answers_unpublished=unanswered,
            dead_letters=dead,
            order_dead_letters=order_dead,
            deliveries=int(deliveries),
            queued=queued,
            unacked=unacked,
        )

    def invoiced_orders(self) -> tuple[datetime, list[str]]:
        """The database clock, and the orders that say ``invoiced`` at that moment."""
        with self._orders.connect() as conn:
            rows = conn.execute(
                text(f"SELECT statement_timestamp() AS now, id FROM orders WHERE status = '{INVOICED}'")
            ).all()
            now: datetime = rows[0].now if rows else conn.execute(text("SELECT now()")).scalar_one()
        return now, [_uuid(row.id) for row in rows]

    def wait_quiescent(self, timeout: float, gap: float = 3.0, interval: float = 1.0) -> Snapshot | None:
        """The first idle snapshot confirmed by an identical idle read ``gap`` s earlier, else ``None``.

        One idle read is not enough: kombu pops a message before recording it as unacked, and a
        worker holds a delivery for a moment before its first write, so counts are read twice.
        """
        deadline = time.monotonic() + timeout
        previous: Snapshot | None = None
        while time.monotonic() < deadline:
            current = self.snapshot()
            if current.idle and current == previous:
                return current
            previous = current if current.idle else None
            time.sleep(gap if current.idle else interval)
        return None

    def evidence(
        self,
        accepted: Sequence[Accepted],
        log_dir: Path,
        last_fault_at: datetime | None,
        invoiced_seen: Mapping[str, datetime],
    ) -> Evidence:
        """Read everything ``audit`` needs; ``invoiced_seen`` is ``InvoicedWatch.seen`` (stopped)."""
        lines: dict[str, list[tuple[str, int, int]]] = {}
        heads: dict[str, Any] = {}
        with self._orders.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT o.id, o.customer_id, o.currency, o.amount_total, o.status, o.invoice_number,"
                    " ob.created_at AS accepted_at, l.sku, l.quantity, l.unit_amount"
                    " FROM orders o"
                    " LEFT JOIN outbox ob ON ob.aggregate_id = o.id::text AND ob.topic = :placed"
                    " LEFT JOIN order_lines l ON l.order_id = o.id ORDER BY o.id, l.position"
                ),
                {"placed": ORDER_PLACED},
            )
            for row in rows:
                order_id = _uuid(row.id)
                heads[order_id] = row
                found = lines.setdefault(order_id, [])
                if row.sku is not None:
                    found.append((row.sku, row.quantity, row.unit_amount))
            redrives, redriven = conn.execute(
                text(
                    "SELECT coalesce(sum(redrives), 0), count(*) FILTER (WHERE redrives > 0)"
                    " FROM outbox WHERE topic = :placed"
                ),
                {"placed": ORDER_PLACED},
            ).one()
        orders = [
            OrderRow(
                o,
                h.customer_id,
                h.currency,
                h.amount_total,
                tuple(lines[o]),
                h.accepted_at,
                status=h.status,
                invoice_number=h.invoice_number,
                invoiced_at=invoiced_seen.get(o),
            )
            for o, h in heads.items()
        ]
        with self._invoices.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT i.order_id, i.customer_id, i.currency, i.amount_total, i.number, i.message_id,"
                    " coalesce(d.deliveries, 0) AS deliveries,"
                    " (SELECT min(ob.created_at) FROM outbox ob WHERE ob.aggregate_id = i.order_id"
                    "  AND ob.topic = :created) AS answered_at"
                    " FROM invoices i LEFT JOIN message_deliveries d ON d.message_id = i.message_id"
                ),
                {"created": INVOICE_CREATED},
            )
            invoices = [
                InvoiceRow(
                    _uuid(r.order_id),
                    r.customer_id,
                    r.currency,
                    r.amount_total,
                    r.number,
                    r.answered_at,
                    r.deliveries,
                    str(r.message_id),
                )
                for r in rows
            ]
            again = conn.scalar(text("SELECT coalesce(sum(deliveries - 1), 0) FROM message_deliveries")) or 0
            answers = conn.scalar(
                text("SELECT count(*) FROM outbox WHERE topic = :created"), {"created": INVOICE_CREATED}
            )
        tally = read_logs(log_dir)
        return Evidence(
            list(accepted),
            orders,
            invoices,
            tally.effects,
            tally.garbled,
            last_fault_at,
            redrives=int(redrives),
            redriven_messages=int(redriven),
            redeliveries=int(again),
            answers=int(answers or 0),
            events=dict(tally.events),
            interrupted=tally.interrupted,
        )

    def diagnose(self, order_ids: Iterable[str]) -> list[str]:
        """For each order: its outbox row (published? answered? re-driven?) and whether a worker got it."""
        ids = sorted(order_ids)
        if not ids:
            return []
        with self._orders.connect() as conn:
            outbox = conn.execute(
                text(
                    "SELECT aggregate_id, message_id, published_at, attempts, parked_at, last_error,"
                    " acknowledged_at, redrives FROM outbox WHERE aggregate_id IN :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": ids},
            ).all()
        message_ids = [row.message_id for row in outbox]
        with self._invoices.connect() as conn:
            received = {
                row.message_id: row
                for row in conn.execute(
                    text(
                        "SELECT message_id, deliveries, first_delivered_at, last_delivered_at"
                        " FROM message_deliveries WHERE message_id IN :ids"
                    ).bindparams(bindparam("ids", expanding=True)),
                    {"ids": message_ids or [uuid.uuid4()]},
                )
            }
            dead = set(
                conn.scalars(
                    text("SELECT message_id FROM dead_letters WHERE message_id IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": message_ids or [uuid.uuid4()]},
                )
            )
        found = {row.aggregate_id for row in outbox}
        report = [f"  order {o}: no outbox row" for o in ids if o not in found]
        for row in outbox:
            delivery = received.get(row.message_id)
            seen = (
                f"delivered {delivery.deliveries}x (first {delivery.first_delivered_at:%H:%M:%S.%f}, "
                f"last {delivery.last_delivered_at:%H:%M:%S.%f})"
                if delivery
                else "never delivered to a worker"
            )
            report.append(
                f"  order {row.aggregate_id}: message {row.message_id} published_at={row.published_at} "
                f"attempts={row.attempts} parked_at={row.parked_at} last_error={row.last_error!r} "
                f"acknowledged_at={row.acknowledged_at} redrives={row.redrives}; {seen}"
                + ("; dead-lettered" if row.message_id in dead else "")
            )
        return report

    def close(self) -> None:
        self._orders.dispose()
        self._invoices.dispose()
