"""The API's Prometheus metrics, made on first use (``api_metrics``), not at import.

Under gunicorn the entry point (``order_service.wsgi``) switches prometheus-client to multiprocess
mode first, so that a scrape of any worker sums all of them (``flask_outbox.metrics``); importing
``order_service.wsgi`` imports this package before it, hence no metric may exist at import time.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["ApiMetrics", "api_metrics"]

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Requests by route template and status with latency, orders placed, idempotent replays, hand-overs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.orders_placed = Counter(
            "orders_placed", "Orders committed with their outbox messages", registry=self.registry
        )
        self.idempotent_replays = Counter(
            "orders_idempotent_replays",
            "POST /orders retries answered with the first order (same Idempotency-Key)",
            registry=self.registry,
        )


@cache
def api_metrics() -> ApiMetrics:
    """One set per process, shared by every app made in it (tests make many)."""
    return ApiMetrics()
