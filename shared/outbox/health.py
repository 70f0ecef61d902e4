"""The relay's health and metrics over HTTP: ``/healthz`` and ``/metrics`` (Prometheus text format).

Served by ``wsgiref`` from a daemon thread, apart from the relay loop, so that it still answers
when the loop is stuck: ``/healthz`` is 503 once the loop's last progress (a claim, or a wait
for new rows, completed) is older than the stall bound (``RELAY_STALL_SECONDS``), 200 before.
A process that is stopped as a whole (SIGSTOP, a frozen VM) answers nothing: the probe's
timeout is its failure.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app

__all__ = ["HealthServer", "RelayMetrics", "health_app"]

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
        self._progress = time.monotonic()
        self.last_progress.set_to_current_time()

    def progressed(self) -> None:
        """The loop completed a claim or a wait."""
        self._progress = time.monotonic()
        self.last_progress.set_to_current_time()

    def progress_age(self) -> float:
        return time.monotonic() - self._progress

    def healthy(self) -> bool:
        return self.progress_age() <= self.stall_seconds


def health_app(metrics: RelayMetrics) -> WSGIApplication:
    """``/healthz`` (200 or 503, a small JSON body) and everything else as Prometheus ``/metrics``."""
    prometheus = make_wsgi_app(metrics.registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            exposition: Iterable[bytes] = prometheus(environ, start_response)
            return exposition
        age = metrics.progress_age()
        healthy = age <= metrics.stall_seconds
        body = json.dumps(
            {
                "status": "ok" if healthy else "stalled",
                "last_progress_age_s": round(age, 3),
                "stall_bound_s": metrics.stall_seconds,
            }
        ).encode()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (probes every few seconds), and a slow client cannot hold the thread."""

    timeout = 5

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HealthServer:
    """``health_app`` on ``host:port`` in a daemon thread (port 0: a free port, see ``port``)."""

    def __init__(self, metrics: RelayMetrics, host: str, port: int) -> None:
        self._server: WSGIServer = make_server(host, port, health_app(metrics), handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="relay-health", daemon=True)

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
