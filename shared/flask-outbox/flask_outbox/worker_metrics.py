"""A Celery worker's metrics, probes, correlation ids and tracing, wired by ``instrument_worker``.

Metrics: the prefork pool's children count into the process group's multiprocess folder
(``flask_outbox.metrics``); the parent serves the sum on ``METRICS_PORT`` (default 9101; 0 picks a
free port and logs it) with ``/healthz`` (the parent answers) and ``/readyz`` (its database and
broker answer, bounded by ``flask_outbox.probes``), usable from compose healthchecks. The server starts
once the worker is ready (``worker_ready``, in the parent, after the pool forked: no child inherits
the socket). A taken port is logged (``worker.metrics_unavailable``), not fatal.

Every delivery is counted by outcome (the task's return value, e.g. ``created``,
``duplicate-message``, ``dead-lettered``; a batch task's list counts each of its messages; else
Celery's state: ``retry``, ``failure``, ...),
timed, and its log lines carry the message's correlation id (``x_request_id`` header) as
``correlation_id``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from celery.signals import (
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import Counter, Histogram

from flask_outbox import tracing
from flask_outbox.health import HealthServer, json_response, serve_wsgi
from flask_outbox.logs import CORRELATION_HEADER, bind_correlation
from flask_outbox.metrics import CONTENT_TYPE_LATEST, enable_multiprocess, exposition, process_dead
from flask_outbox.probes import broker_check, database_check, probe_engine, run_checks
from flask_outbox.settings import OutboxSettings as Settings

__all__ = ["DEAD_LETTERED", "WorkerMetrics", "instrument_worker"]

log = structlog.get_logger(__name__)

DEAD_LETTERED = "dead-lettered"
"""The outcome both workers return for a message parked in their dead letters."""

TASK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

OnOutcome = Callable[[str, dict[str, Any]], None]
"""Called after a delivery that returned: ``(outcome, task kwargs)``; a service's own metrics."""


class WorkerMetrics:
    """Per-task delivery metrics; the files of the multiprocess folder are their registry."""

    def __init__(self) -> None:
        self.deliveries = Counter(
            "worker_task_deliveries", "Deliveries by task and outcome", ["task", "outcome"], registry=None
        )
        self.duration = Histogram(
            "worker_task_duration_seconds",
            "Time a delivery took",
            ["task"],
            buckets=TASK_BUCKETS,
            registry=None,
        )
        self.retries = Counter(
            "worker_task_retries", "Deliveries that scheduled a retry", ["task"], registry=None
        )
        self.dead_letters = Counter(
            "worker_dead_letters", "Messages parked in the dead letters", ["task"], registry=None
        )


def _header(task: Any, name: str) -> str | None:
    """A custom message header: Celery puts them on ``task.request`` (and in ``request.headers``)."""
    request = task.request
    value = getattr(request, name, None)
    if value is None and isinstance(getattr(request, "headers", None), dict):
        value = request.headers.get(name)
    return str(value) if value else None


class _Deliveries:
    """The signal receivers: time, count and correlate each delivery in the pool process that runs it."""

    def __init__(self, metrics: WorkerMetrics, on_outcome: OnOutcome | None) -> None:
        self._metrics = metrics
        self._on_outcome = on_outcome
        self._started: dict[str, float] = {}

    def prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        structlog.contextvars.clear_contextvars()
        if task is not None:
            bind_correlation(_header(task, CORRELATION_HEADER))
        if task_id:
            self._started[task_id] = time.perf_counter()

    def postrun(
        self,
        task_id: str | None = None,
        task: Any = None,
        kwargs: dict[str, Any] | None = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        name = getattr(task, "name", "unknown")
        started = self._started.pop(task_id or "", None)
        if started is not None:
            self._metrics.duration.labels(name).observe(time.perf_counter() - started)
        if state == "SUCCESS" and isinstance(retval, list):  # a batch task: an outcome per message
            entries = (kwargs or {}).get("messages")
            entries = (
                entries if isinstance(entries, list) and len(entries) == len(retval) else [{}] * len(retval)
            )
            for outcome, entry in zip(retval, entries, strict=True):
                payload = entry.get("payload") if isinstance(entry, dict) else None
                self._record(name, str(outcome), state, {"payload": payload})
            return
        outcome = retval if state == "SUCCESS" and isinstance(retval, str) else (state or "unknown").lower()
        self._record(name, outcome, state, kwargs or {})

    def _record(self, name: str, outcome: str, state: str | None, kwargs: dict[str, Any]) -> None:
        self._metrics.deliveries.labels(name, outcome).inc()
        if outcome == "retry":
            self._metrics.retries.labels(name).inc()
        elif outcome == DEAD_LETTERED:
            self._metrics.dead_letters.labels(name).inc()
        if self._on_outcome is not None and state == "SUCCESS":
            try:
                self._on_outcome(outcome, kwargs)
            except Exception:  # a metric must never fail a delivery
                log.warning("worker.metrics_failed", exc_info=True)


def _probe_app(settings: Settings, database_url: str) -> Callable[..., Iterable[bytes]]:
    checks = {
        "database": database_check(probe_engine(database_url)),
        "broker": broker_check(settings.broker_url, settings.broker_folder),
    }

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/healthz":
            return json_response(start_response, True, {"status": "ok"})
        if path == "/readyz":
            ready, results = run_checks(checks)
            return json_response(
                start_response, ready, {"status": "ready" if ready else "unavailable", "checks": results}
            )
        data = exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(data)))])
        return [data]

    return app


def instrument_worker(
    service: str,
    settings: Settings,
    database_url: str,
    outcome_metrics: Callable[[], OnOutcome] | None = None,
) -> None:
    """Call in the ``celery -A`` module: everything happens when a worker starts (``celeryd_init``).

    Importing the module elsewhere (a test calling a task body, the CLI) changes nothing: no
    metrics folder, no server, no tracing. ``outcome_metrics`` builds a service's own metrics
    (after the multiprocess mode is on) and returns what records them per delivery.
    """
    server: list[HealthServer] = []

    def _start(**_: Any) -> None:
        enable_multiprocess(service)
        deliveries = _Deliveries(WorkerMetrics(), outcome_metrics() if outcome_metrics else None)
        task_prerun.connect(deliveries.prerun, weak=False)
        task_postrun.connect(deliveries.postrun, weak=False)
        if tracing.configure_tracing(settings.otel_service_name or service, settings.otel_traces_exporter):
            tracing.instrument_celery()
        worker_ready.connect(_serve, weak=False)
        worker_shutdown.connect(_close, weak=False)
        worker_process_shutdown.connect(_child_exit, weak=False)

    def _serve(**_: Any) -> None:
        port = settings.metrics_port
        try:
            running = serve_wsgi(_probe_app(settings, database_url), "0.0.0.0", port)  # noqa: S104
        except OSError as exc:
            log.error("worker.metrics_unavailable", port=port, error=str(exc))
            return
        server.append(running)
        log.info("worker.metrics_serving", port=running.port, service=service)

    def _close(**_: Any) -> None:
        while server:
            server.pop().close()

    def _child_exit(**_: Any) -> None:
        process_dead(os.getpid())

    celeryd_init.connect(_start, weak=False)
