"""What the pipeline page shows, read from the orders database alone: cheap enough to poll.

Every query is an index range over a bounded window or a capped count:

- placed per second: ``orders.created_at`` (indexed; stamped by the API's clock);
- invoiced per second and order->invoiced latency: the ``order.placed`` outbox rows acknowledged in
  the window (``ix_outbox_acknowledged_at``). The consumer acknowledges the row in the transaction
  that moves the order to ``invoiced``, so its ``acknowledged_at`` is when the order turned
  invoiced here, on this database's clock. Latency is ``orders.invoiced_at`` (the invoice's own
  time) minus the row's ``created_at`` (the order's commit, database clock), over the latest
  ``LATENCY_SAMPLES`` invoiced orders of the window;
- backlog, retrying, parked, unacknowledged and re-driven: partial indexes of the outbox, each count
  capped at ``COUNT_CAP``;
- the oldest *due* unpublished row (rows waiting out a backoff are not late), found by walking the
  pending index in publish order to its first due row.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from flask_outbox import database_clock
from sqlalchemy import ColumnElement, Integer, Select, cast, func, select
from sqlalchemy.orm import Session

from order_service.models import Order, outbox
from shared.contracts import ORDER_PLACED

__all__ = ["COUNT_CAP", "LATENCY_SAMPLES", "LatestOrder", "Snapshot", "percentile", "read_snapshot"]

COUNT_CAP = 100_000
"""Counts stop here (the page shows "100000+"): a huge backlog must not make each poll a long scan."""
LATENCY_SAMPLES = 2_000
"""Latency percentiles over at most this many of the window's most recently invoiced orders."""
LATEST_ORDERS = 15


@dataclass(frozen=True, slots=True)
class LatestOrder:
    id: str
    customer_id: str
    amount_total: int
    currency: str
    status: str
    created_at: datetime
    invoice_number: str | None
    invoiced_at: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reading of the pipeline; ``*_per_s`` are per-bucket rates, oldest bucket first."""

    now: datetime
    window_s: int
    bucket_s: int
    bucket_starts: list[int]
    placed_per_s: list[float]
    invoiced_per_s: list[float]
    placed: int
    invoiced: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_samples: int
    backlog: int
    retrying: int
    oldest_due_age_s: float
    parked: int
    unacknowledged: int
    redriven_unanswered: int
    redriven_answered: int
    latest: list[LatestOrder] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["now"] = self.now.isoformat()
        for order in body["latest"]:
            for name in ("created_at", "invoiced_at"):
                order[name] = order[name].isoformat() if order[name] else None
        body["count_cap"] = COUNT_CAP
        return body


def percentile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (as Postgres ``percentile_cont``); ``None`` if empty."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _epoch(column: Any, dialect: str) -> ColumnElement[int]:
    """Whole seconds since the epoch, computed in the database (for grouping into buckets)."""
    if dialect == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), Integer)
    return cast(func.strftime("%s", column), Integer)  # SQLite keeps UTC text


def _capped_count(session: Session, query: Select[Any]) -> int:
    bounded = query.limit(COUNT_CAP).subquery()
    return int(session.scalar(select(func.count()).select_from(bounded)) or 0)


def _per_bucket(
    session: Session, column: Any, query: Select[Any], start: int, step: int, n: int
) -> list[int]:
    index = ((_epoch(column, session.get_bind().dialect.name) - start) // step).label("i")
    counts = [0] * n
    for i, count in session.execute(query.with_only_columns(index, func.count()).group_by(index)):
        if 0 <= int(i) < n:
            counts[int(i)] += int(count)
    return counts


def _rates(counts: list[int], step: int, now_epoch: float, start: int) -> list[float]:
    """Per-second rates; the current bucket is divided by the seconds it has had so far."""
    rates = [count / step for count in counts]
    if counts:
        elapsed = now_epoch - (start + step * (len(counts) - 1))
        rates[-1] = counts[-1] / min(step, max(1.0, elapsed))
    return [round(rate, 3) for rate in rates]


def _latencies(session: Session, acknowledged_since: datetime) -> list[float]:
    rows = session.execute(
        select(outbox.c.aggregate_id, outbox.c.created_at)
        .where(outbox.c.acknowledged_at >= acknowledged_since, outbox.c.topic == ORDER_PLACED)
        .order_by(outbox.c.acknowledged_at.desc())
        .limit(LATENCY_SAMPLES)
    ).all()
    placed_at = {uuid.UUID(aggregate_id): created_at for aggregate_id, created_at in rows}
    if not placed_at:
        return []
    invoiced = session.execute(
        select(Order.id, Order.invoiced_at).where(Order.id.in_(placed_at), Order.invoiced_at.is_not(None))
    )
    return sorted((invoiced_at - placed_at[order_id]).total_seconds() for order_id, invoiced_at in invoiced)


def _outbox_counts(session: Session, now: datetime) -> dict[str, Any]:
    o = outbox.c
    pending = (o.published_at.is_(None), o.parked_at.is_(None))
    failed = (o.published_at.is_(None), o.attempts > 0)  # ix_outbox_failed_unpublished
    unacknowledged = (o.acknowledged_at.is_(None), o.published_at.is_not(None), o.topic == ORDER_PLACED)
    oldest_due = session.scalar(
        select(o.created_at).where(*pending, o.available_at <= now).order_by(o.id).limit(1)
    )
    return {
        "backlog": _capped_count(session, select(o.id).where(*pending)),
        "retrying": _capped_count(session, select(o.id).where(*failed, o.parked_at.is_(None))),
        "oldest_due_age_s": round(max(0.0, (now - oldest_due).total_seconds()), 3) if oldest_due else 0.0,
        "parked": _capped_count(session, select(o.id).where(*failed, o.parked_at.is_not(None))),
        "unacknowledged": _capped_count(session, select(o.id).where(*unacknowledged)),
        # Re-driven and still unanswered: published again and waiting, or back in the backlog.
        "redriven_unanswered": _capped_count(session, select(o.id).where(*unacknowledged, o.redrives > 0))
        + _capped_count(session, select(o.id).where(*pending, o.redrives > 0, o.acknowledged_at.is_(None))),
    }


def _latest(session: Session) -> list[LatestOrder]:
    orders = session.scalars(select(Order).order_by(Order.created_at.desc()).limit(LATEST_ORDERS))
    return [
        LatestOrder(
            str(o.id),
            o.customer_id,
            o.amount_total,
            o.currency,
            o.status,
            o.created_at,
            o.invoice_number,
            o.invoiced_at,
        )
        for o in orders
    ]


def read_snapshot(session: Session, window_s: int = 300, bucket_s: int = 5) -> Snapshot:
    """Read the pipeline now (the database's clock on Postgres); nothing is written."""
    clock = database_clock(session.get_bind().dialect)
    now = clock if isinstance(clock, datetime) else session.execute(select(clock)).scalar_one()
    n = window_s // bucket_s
    end = (math.floor(now.timestamp()) // bucket_s + 1) * bucket_s
    start = end - n * bucket_s
    since = datetime.fromtimestamp(start, now.tzinfo)
    placed_rows = select().select_from(Order).where(Order.created_at >= since)
    acknowledged = (
        select().select_from(outbox).where(outbox.c.acknowledged_at >= since, outbox.c.topic == ORDER_PLACED)
    )
    placed = _per_bucket(session, Order.created_at, placed_rows, start, bucket_s, n)
    invoiced = _per_bucket(session, outbox.c.acknowledged_at, acknowledged, start, bucket_s, n)
    latencies = _latencies(session, since)
    redriven_answered = _capped_count(
        session, acknowledged.with_only_columns(outbox.c.id).where(outbox.c.redrives > 0)
    )
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return Snapshot(
        now=now,
        window_s=n * bucket_s,
        bucket_s=bucket_s,
        bucket_starts=[start + i * bucket_s for i in range(n)],
        placed_per_s=_rates(placed, bucket_s, now.timestamp(), start),
        invoiced_per_s=_rates(invoiced, bucket_s, now.timestamp(), start),
        placed=sum(placed),
        invoiced=sum(invoiced),
        latency_p50_s=None if p50 is None else round(p50, 3),
        latency_p95_s=None if p95 is None else round(p95, 3),
        latency_samples=len(latencies),
        redriven_answered=redriven_answered,
        latest=_latest(session),
        **_outbox_counts(session, now),
    )
