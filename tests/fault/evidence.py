"""Reading a cluster's evidence: both databases, the broker's private Redis, and the workers' JSON logs.

``Checker.verdict``/``settled`` are the quick counts the single-fault tests poll; ``Checker.evidence``
feeds ``tests.fault.checker.audit`` once ``Checker.wait_quiescent`` has seen the pipeline at rest.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis
from sqlalchemy import bindparam, create_engine, text

from tests.fault.checker import Accepted, Evidence, InvoiceRow, OrderRow

__all__ = ["Checker", "Snapshot", "Verdict", "invoice_effects"]

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
    pending_outbox: int
    parked_outbox: int
    dead_letters: int
    deliveries: int
    queued: int | None
    unacked: int | None

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing delivered and unacknowledged, nothing left to publish."""
        return self.queued == 0 and self.unacked == 0 and self.pending_outbox == 0


def invoice_effects(log_dir: Path) -> tuple[Counter[str], int]:
    """``invoice.created`` lines per order id in every JSON log under ``log_dir``, and unparseable ones.

    One line is logged after each committed invoice transaction, so unlike the invoices table
    (``UNIQUE(order_id)``) nothing deduplicates a second effect here.
    """
    counts: Counter[str] = Counter()
    garbled = 0
    for path in sorted(log_dir.glob("*.log")):
        with path.open(errors="replace") as lines:
            for line in lines:
                if "invoice.created" not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    garbled += 1
                    continue
                if isinstance(record, dict) and record.get("event") == "invoice.created":
                    counts[_uuid(record["order_id"])] += 1
    return counts, garbled


def _uuid(value: object) -> str:
    return str(uuid.UUID(str(value)))


class Checker:
    """Reads both databases with engines of its own (so it can poll cheaply while faults happen)."""

    def __init__(
        self, orders_url: str, invoices_url: str, broker_url: str | None = None, queue: str | None = None
    ) -> None:
        self._orders = create_engine(orders_url, pool_pre_ping=True, pool_size=1)
        self._invoices = create_engine(invoices_url, pool_pre_ping=True, pool_size=1)
        self._broker_url = broker_url
        self._queue = queue

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
        if self._broker_url is None or self._queue is None:
            return None, None
        client = redis.Redis.from_url(self._broker_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            names = [self._queue, *(f"{self._queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)]
            return sum(int(client.llen(name)) for name in names), int(client.hlen(UNACKED))
        except redis.RedisError:
            return None, None
        finally:
            client.close()

    def snapshot(self) -> Snapshot:
        with self._orders.connect() as conn:
            orders = conn.scalar(text("SELECT count(*) FROM orders")) or 0
            pending, parked = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE parked_at IS NULL),"
                    " count(*) FILTER (WHERE parked_at IS NOT NULL) FROM outbox WHERE published_at IS NULL"
                )
            ).one()
        with self._invoices.connect() as conn:
            invoices = conn.scalar(text("SELECT count(*) FROM invoices")) or 0
            dead = conn.scalar(text("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")) or 0
            deliveries = conn.scalar(text("SELECT coalesce(sum(deliveries), 0) FROM message_deliveries")) or 0
        queued, unacked = self._broker_counts()
        return Snapshot(orders, invoices, pending, parked, dead, int(deliveries), queued, unacked)

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
        self, accepted: Sequence[Accepted], log_dir: Path, last_fault_at: datetime | None
    ) -> Evidence:
        lines: dict[str, list[tuple[str, int, int]]] = {}
        heads: dict[str, tuple[str, str, int, datetime]] = {}
        with self._orders.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT o.id, o.customer_id, o.currency, o.amount_total, o.created_at,"
                    " l.sku, l.quantity, l.unit_amount"
                    " FROM orders o LEFT JOIN order_lines l ON l.order_id = o.id ORDER BY o.id, l.position"
                )
            )
            for row in rows:
                order_id = _uuid(row.id)
                heads[order_id] = (row.customer_id, row.currency, row.amount_total, row.created_at)
                found = lines.setdefault(order_id, [])
                if row.sku is not None:
                    found.append((row.sku, row.quantity, row.unit_amount))
        orders = [OrderRow(o, c, cur, total, tuple(lines[o]), at) for o, (c, cur, total, at) in heads.items()]
        with self._invoices.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT i.order_id, i.customer_id, i.currency, i.amount_total, i.created_at,"
                    " coalesce(d.deliveries, 0) AS deliveries"
                    " FROM invoices i LEFT JOIN message_deliveries d ON d.message_id = i.message_id"
                )
            )
            invoices = [
                InvoiceRow(
                    _uuid(r.order_id), r.customer_id, r.currency, r.amount_total, r.created_at, r.deliveries
                )
                for r in rows
            ]
        events, garbled = invoice_effects(log_dir)
        return Evidence(list(accepted), orders, invoices, events, garbled, last_fault_at)

    def diagnose(self, order_ids: Iterable[str]) -> list[str]:
        """For each order: its outbox row (was it published?) and whether a worker ever received it."""
        ids = sorted(order_ids)
        if not ids:
            return []
        with self._orders.connect() as conn:
            outbox = conn.execute(
                text(
                    "SELECT aggregate_id, message_id, published_at, attempts, parked_at, last_error"
                    " FROM outbox WHERE aggregate_id IN :ids"
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
                f"attempts={row.attempts} parked_at={row.parked_at} last_error={row.last_error!r}; {seen}"
                + ("; dead-lettered" if row.message_id in dead else "")
            )
        return report

    def close(self) -> None:
        self._orders.dispose()
        self._invoices.dispose()
