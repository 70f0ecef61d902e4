"""Request ids, request metrics and tracing for the API, wired by ``init_observability``.

The metrics are scraped from the gunicorn master on ``METRICS_PORT`` (``order_service.gunicorn_conf``),
not from the public port.

Every request gets a correlation id: the client's ``X-Request-ID`` if it is a sane token, else a
new one. It is bound to the request's log lines (``correlation_id``), returned in the response's
``X-Request-ID``, and written by the receivers into the outbox headers, from where it follows the
order through the relay, the worker, the answer and the order consumer.

Cost per request: one ``uuid4`` when the client sent no id, two ``perf_counter`` calls, a counter
and a histogram observation (a few microseconds). Tracing is installed only when enabled.
"""

from __future__ import annotations

import time

import structlog
from flask import Flask, Response, g, request
from flask_outbox import bind_correlation, configure_tracing, instrument_flask, valid_correlation_id
from prometheus_client import Counter, Histogram

from order_service.metrics import ApiMetrics, api_metrics
from shared.config import Settings

__all__ = ["REQUEST_ID_HEADER", "init_observability"]

REQUEST_ID_HEADER = "X-Request-ID"
_UNMATCHED = "<unmatched>"
"""The route label of a request no rule matched (a 404): one series, not one per probed URL."""


def _start() -> None:
    cid = valid_correlation_id(request.headers.get(REQUEST_ID_HEADER))
    g.observed = (time.perf_counter(), cid)
    structlog.contextvars.clear_contextvars()
    bind_correlation(cid)


_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
"""Each (route, method, status)'s counter and histogram: ``labels()`` takes a lock and builds a key."""


def _children(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    key = (route, method, status)
    found = _series.get(key)
    if found is None:
        metrics: ApiMetrics = api_metrics()
        found = _series[key] = (
            metrics.requests.labels(route, method, str(status)),
            metrics.request_duration.labels(route, method),
        )
    return found


def _finish(response: Response) -> Response:
    observed = g.get("observed")
    if observed is None:  # a request that failed before ``_start`` ran
        return response
    started, cid = observed
    rule = request.url_rule
    counter, histogram = _children(
        rule.rule if rule is not None else _UNMATCHED, request.method, response.status_code
    )
    histogram.observe(time.perf_counter() - started)
    counter.inc()
    response.headers[REQUEST_ID_HEADER] = cid
    return response


def _forget(_exc: BaseException | None) -> None:
    structlog.contextvars.clear_contextvars()


def init_observability(app: Flask, settings: Settings) -> None:
    """Register first, so every request (a 401 and a 429 too) is timed and carries its id."""
    service = settings.otel_service_name or "order-api"
    if configure_tracing(service, settings.otel_traces_exporter):
        instrument_flask(app)
    api_metrics()  # made now: after the entry point chose the metrics mode, before any request
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_forget)
