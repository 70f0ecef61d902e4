"""The invoice worker's own metrics, beside every worker's delivery metrics (``worker_metrics``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask_outbox import OnOutcome, utcnow
from prometheus_client import Counter, Histogram

from invoice_worker.invoicing import Outcome

__all__ = ["invoice_metrics"]

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_DUPLICATES = frozenset({Outcome.DUPLICATE_MESSAGE.value, Outcome.ALREADY_INVOICED.value})


def _placed_at(kwargs: dict[str, Any]) -> datetime | None:
    payload = kwargs.get("payload")
    value = payload.get("placed_at") if isinstance(payload, dict) else None
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def invoice_metrics() -> OnOutcome:
    """Made when the worker starts, in multiprocess mode; returns what records one delivery."""
    created = Counter("invoices_created", "Invoices created (one per order)", registry=None)
    duplicates = Counter(
        "invoice_duplicates_skipped",
        "Deliveries that found their message or their order's invoice already there (answered again)",
        registry=None,
    )
    latency = Histogram(
        "order_to_invoice_latency_seconds",
        "From the order's placed_at to its invoice's commit (this worker's clock)",
        buckets=LATENCY_BUCKETS,
        registry=None,
    )

    def record(outcome: str, kwargs: dict[str, Any]) -> None:
        if outcome == Outcome.CREATED.value:
            created.inc()
            placed_at = _placed_at(kwargs)
            if placed_at is not None and placed_at.tzinfo is not None:
                latency.observe(max(0.0, (utcnow() - placed_at).total_seconds()))
        elif outcome in _DUPLICATES:
            duplicates.inc()

    return record
