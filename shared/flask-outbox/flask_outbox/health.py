"""The relay's health and metrics over HTTP: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus).

Served by ``wsgiref`` from a daemon thread, apart from the relay loop, so that it still answers
when the loop is stuck: ``/healthz`` is 503 once the loop's last progress (a claim, or a wait
for new rows, completed) is older than the stall bound (``RELAY_STALL_SECONDS``), 200 before.
``/readyz`` is 503 as well when the relay's database or broker does not answer (the checks
run per probe, bounded: ``flask_outbox.probes``). A process that is stopped as a whole (SIGSTOP, a
frozen VM) answers nothing: the probe's timeout is its failure.

``/metrics`` also reports the table's backlog, the age of its oldest due row and its parked
rows, read per scrape with the query ``relay status`` uses (``status.read_backlog``), so the
two agree; every relay of a table reports the same values (aggregate with ``max``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from flask_outbox.probes import Check, run_checks
from flask_outbox.status import Backlog

__all__ = ["BacklogCollector", "HealthServer", "RelayMetrics", "health_app", "json_response", "serve_wsgi"]

log = structlog.get_logger(__name__)


class RelayMetrics:
    """One relay's counters and its loop's last progress, in a registry of its own."""

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.registry = CollectorRegistry()
        self.published = Counter(
            "outbox_relay_published", "Outbox messages published", registry=self.registry
        )
        self.failed = Counter(
            "outbox_relay_publish_failures", "Outbox messages whose publish failed", registry=self.registry
        )
        self.loop_errors = Counter(
            "outbox_relay_loop_errors",
            "Relay loop iterations that raised (then backed off)",
            registry=self.registry,
        )
        self.retired = Counter(
            "outbox_relay_stalled_relays_retired",
            "Stalled relay sessions this relay terminated",
            registry=self.registry,
        )
        self.partitions = Gauge(
            "outbox_relay_partitions_held", "Partitions this relay holds", registry=self.registry
        )
        self.last_progress = Gauge(
            "outbox_relay_last_progress_timestamp_seconds",
            "Unix time of the relay loop's last completed claim or wait",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "outbox_relay_batch_size",
            "Rows claimed per non-empty batch",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000),
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "outbox_relay_batch_duration_seconds",
            "One non-empty batch: claim, publish, release the unpublished, commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.publish_lag = Histogram(
            "outbox_relay_publish_lag_seconds",
            "From a row's insert to its first publication, on the database's clock (re-drives excluded)",
            buckets=(
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                30.0,
                60.0,
                300.0,
                1800.0,
            ),
            registry=self.registry,
        )
        self.parked = Counter(
            "outbox_relay_parked", "Rows this relay parked after their last attempt", registry=self.registry
        )
        self.redriven = Counter(
            "outbox_relay_redriven",
            "Unanswered messages this relay put back to be published again",
            registry=self.registry,
        )
        self._progress = time.monotonic()
        self.last_progress.set_to_current_time()
        self.readiness: dict[str, Check] = {}
        """Checks ``/readyz`` runs besides the stall bound (database, broker), set by the entry point."""

    def progressed(self) -> None:
        """The loop completed a claim or a wait."""
        self._progress = time.monotonic()
        self.last_progress.set_to_current_time()

    def progress_age(self) -> float:
        return time.monotonic() - self._progress

    def healthy(self) -> bool:
        return self.progress_age() <= self.stall_seconds


class BacklogCollector:
    """``outbox_backlog``, ``outbox_oldest_due_age_seconds``, ``outbox_parked`` and
    ``outbox_unanswered_exhausted``: read when scraped.

    A failed read (database down) yields ``outbox_status_up 0`` and no stale numbers.
    """

    def __init__(self, table: str, read: Callable[[], Backlog]) -> None:
        self._table = table
        self._read = read

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "outbox_status_up", "1 if the outbox could be read for this scrape", labels=["table"]
        )
        try:
            backlog = self._read()
        except Exception as exc:  # a scrape reports a failed read; it never raises
            log.warning("relay.backlog_unreadable", table=self._table, error=str(exc).strip()[:200])
            up.add_metric([self._table], 0)
            return [up]
        up.add_metric([self._table], 1)
        families = [up]
        for name, doc, value in (
            ("outbox_backlog", "Unpublished rows, not parked (rows in backoff included)", backlog.backlog),
            (
                "outbox_oldest_due_age_seconds",
                "How long the longest-waiting due row has been due",
                backlog.oldest_due_age_s,
            ),
            ("outbox_parked", "Unpublished rows parked after their last attempt", backlog.parked),
            (
                "outbox_unanswered_exhausted",
                "Published rows that used up their re-drives without an answer (purged after the retention)",
                backlog.exhausted,
            ),
        ):
            family = GaugeMetricFamily(name, doc, labels=["table"])
            family.add_metric([self._table], value)
            families.append(family)
        return families


def json_response(start_response: StartResponse, ok: bool, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def health_app(metrics: RelayMetrics) -> WSGIApplication:
    """``/healthz`` and ``/readyz`` (200 or 503, a small JSON body); everything else is ``/metrics``."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path not in ("/healthz", "/readyz"):
            exposition: Iterable[bytes] = prometheus(environ, start_response)
            return exposition
        age = metrics.progress_age()
        healthy = age <= metrics.stall_seconds
        body: dict[str, Any] = {
            "status": "ok" if healthy else "stalled",
            "last_progress_age_s": round(age, 3),
            "stall_bound_s": metrics.stall_seconds,
        }
        ok = healthy
        if path == "/readyz":
            ready, body["checks"] = run_checks(metrics.readiness)
            ok = healthy and ready
            if healthy and not ready:
                body["status"] = "unavailable"
        return json_response(start_response, ok, body)

    return app


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (probes every few seconds), and a slow client cannot hold the thread."""

    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(WSGIServer):
    """One thread per probe or scrape: a slow database check must not hold up ``/healthz``."""

    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True)
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class HealthServer:
    """``health_app`` (or any WSGI app) on ``host:port`` in a daemon thread (port 0: a free port)."""

    def __init__(
        self, metrics: RelayMetrics | None, host: str, port: int, app: WSGIApplication | None = None
    ) -> None:
        wsgi = app if app is not None else health_app(_required(metrics))
        self._server: WSGIServer = make_server(
            host, port, wsgi, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _required(metrics: RelayMetrics | None) -> RelayMetrics:
    if metrics is None:
        raise ValueError("HealthServer needs the relay's metrics or an app")
    return metrics


def serve_wsgi(app: WSGIApplication, host: str, port: int) -> HealthServer:
    """Any process's probes and metrics on ``host:port``, from a daemon thread."""
    return HealthServer(None, host, port, app=app).start()
